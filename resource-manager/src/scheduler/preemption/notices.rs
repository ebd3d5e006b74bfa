//! The caller's side of the preemption contract, shared by the RM and the simulator: which
//! containers are under notice, until when, and what a new plan changes.

use std::collections::BTreeMap;

use spindle_protocol::{AppId, ContainerId};

/// How long the plans must keep wanting victims before the first notice goes out. Under batch
/// churn a queue is often below its guarantee for a moment, until tasks that end anyway free
/// room: without this, most notices were withdrawn again (the simulator counted ~1,000 notices
/// per kill).
pub const STARVATION_PATIENCE_MS: u64 = 1_000;

/// Containers under a preemption notice and their deadlines.
#[derive(Debug, Clone)]
pub struct NoticeBook {
    grace_ms: u64,
    /// Container → when it is killed if the plans still choose it.
    deadlines: BTreeMap<ContainerId, u64>,
    /// Since when every plan has chosen some victim; `None` after a plan that chose none.
    wanting_since_ms: Option<u64>,
}

/// What one plan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoticeChanges {
    /// Newly under notice: tell their AMs.
    pub noticed: Vec<ContainerId>,
    /// No longer chosen: their notice is withdrawn.
    pub withdrawn: Vec<ContainerId>,
    /// Chosen and past their deadline: kill them as PREEMPTED.
    pub due: Vec<ContainerId>,
}

impl NoticeBook {
    pub fn new(grace_ms: u64) -> NoticeBook {
        NoticeBook {
            grace_ms,
            deadlines: BTreeMap::new(),
            wanting_since_ms: None,
        }
    }

    /// Applies a plan (`preemption::victims` of a snapshot taken at `now_ms`, whose
    /// `preempting` flags came from `is_under_notice`).
    pub fn apply(&mut self, chosen: &[ContainerId], now_ms: u64) -> NoticeChanges {
        let mut changes = NoticeChanges::default();
        let mut still_chosen = BTreeMap::new();
        let patient_enough = if chosen.is_empty() {
            self.wanting_since_ms = None;
            false
        } else {
            now_ms.saturating_sub(*self.wanting_since_ms.get_or_insert(now_ms)) >= STARVATION_PATIENCE_MS
        };
        for &container_id in chosen {
            match self.deadlines.remove(&container_id) {
                Some(deadline) => {
                    if deadline <= now_ms {
                        changes.due.push(container_id);
                    }
                    still_chosen.insert(container_id, deadline);
                }
                None if patient_enough => {
                    changes.noticed.push(container_id);
                    still_chosen.insert(container_id, now_ms + self.grace_ms);
                }
                None => {}
            }
        }
        changes.withdrawn = std::mem::replace(&mut self.deadlines, still_chosen).into_keys().collect();
        changes
    }

    pub fn is_under_notice(&self, container_id: &ContainerId) -> bool {
        self.deadlines.contains_key(container_id)
    }

    /// A container ended (killed or not): it needs no notice any more.
    pub fn forget(&mut self, container_id: &ContainerId) {
        self.deadlines.remove(container_id);
    }

    /// Keeps only the notices of containers `live` says are still running.
    pub fn retain(&mut self, mut live: impl FnMut(&ContainerId) -> bool) {
        self.deadlines.retain(|id, _| live(id));
    }

    /// The containers of `app_id` under notice, in id order.
    pub fn of_app(&self, app_id: AppId) -> impl Iterator<Item = ContainerId> + '_ {
        self.deadlines.keys().filter(move |id| id.app == app_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(seq: u64) -> ContainerId {
        ContainerId {
            app: AppId { cluster_ts: 1, seq: 1 },
            attempt: 1,
            epoch: 1,
            seq,
        }
    }

    #[test]
    fn notices_wait_for_patience_then_run_their_grace_and_come_due() {
        let mut book = NoticeBook::new(15_000);
        let (a, b) = (container(1), container(2));
        assert_eq!(
            book.apply(&[a], 0),
            NoticeChanges::default(),
            "a moment of starvation is not enough"
        );
        assert_eq!(book.apply(&[a], 500).noticed, []);
        assert_eq!(book.apply(&[a, b], STARVATION_PATIENCE_MS).noticed, [a, b]);
        assert!(book.is_under_notice(&a));
        let at_deadline = book.apply(&[a], STARVATION_PATIENCE_MS + 15_000);
        assert_eq!(at_deadline.due, [a]);
        assert_eq!(at_deadline.withdrawn, [b], "b is no longer chosen");
        assert!(!book.is_under_notice(&b));
    }

    #[test]
    fn a_plan_without_victims_resets_the_patience_and_withdraws_everything() {
        let mut book = NoticeBook::new(15_000);
        let a = container(1);
        book.apply(&[a], 0);
        book.apply(&[a], STARVATION_PATIENCE_MS);
        assert_eq!(book.apply(&[], 2_000).withdrawn, [a]);
        assert_eq!(book.apply(&[a], 2_500).noticed, [], "patience starts again");
        assert_eq!(book.apply(&[a], 2_500 + STARVATION_PATIENCE_MS).noticed, [a]);
    }
}
