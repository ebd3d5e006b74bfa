//! The invariants the load generator checks while it runs, and the violations it found.
//!
//! The fake agents and AMs see every grant, launch, acknowledgement and completion, so they can
//! check what no single AM or agent could:
//!
//! - no container id is granted twice, across all AMs;
//! - no AM is granted more containers of a shape than it asked for (asks are absolute);
//! - no completion is delivered twice to an attempt, and none for a container it was not granted;
//! - a completion the RM acknowledged to an agent is in the reply to any allocate call the AM
//!   *sent* after that acknowledgement (the RM records it before it commits and replies, and an
//!   AM has one call in flight), unless the AM's previous call failed (the RM then replays the
//!   reply the AM missed);
//! - at every launch, the containers a node runs fit its capacity;
//! - an AM that finished was told of the end of every container it was granted, once.
//!
//! The first and the acknowledgement rule need a view across tasks: that is this ledger. The
//! others each fall to one AM or one agent, which report what they find here.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use spindle_protocol::ContainerId;

/// How many violations are listed in full; the rest are counted.
const LISTED_VIOLATIONS: usize = 50;

/// Containers granted and acknowledged, and the violations found.
pub struct Ledger {
    containers: Mutex<ContainerBook>,
    violations: Mutex<Violations>,
}

#[derive(Default)]
struct ContainerBook {
    /// Every task container id granted in this run.
    granted: HashSet<ContainerId>,
    /// Task containers whose completion the RM acknowledged to their agent, and when the agent
    /// heard, until their AM hears of the completion.
    acknowledged: HashMap<ContainerId, Instant>,
    /// Completions already delivered: an acknowledgement that arrives after its completion
    /// (the AM's reply overtook the agent's) must not wait for a delivery that happened.
    delivered: HashSet<ContainerId>,
}

#[derive(Default)]
struct Violations {
    listed: Vec<String>,
    total: usize,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            containers: Mutex::new(ContainerBook::default()),
            violations: Mutex::new(Violations::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ContainerBook> {
        self.containers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a violation (logged at once, listed in the summary).
    pub fn violation(&self, what: String) {
        tracing::error!(violation = %what, "invariant violated");
        let mut violations = self.violations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        violations.total += 1;
        if violations.listed.len() < LISTED_VIOLATIONS {
            violations.listed.push(what);
        }
    }

    /// The violations, the ones beyond `LISTED_VIOLATIONS` summed up in a last entry.
    pub fn violations(&self) -> Vec<String> {
        let violations = self.violations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut listed = violations.listed.clone();
        if violations.total > listed.len() {
            listed.push(format!("… and {} more", violations.total - listed.len()));
        }
        listed
    }

    /// A task container was granted to an AM.
    pub fn granted(&self, container_id: ContainerId) {
        if !self.book().granted.insert(container_id) {
            self.violation(format!("container {container_id} was granted twice"));
        }
    }

    /// The RM acknowledged a task container's completion to its agent.
    pub fn acknowledged(&self, container_id: ContainerId, at: Instant) {
        let mut book = self.book();
        if !book.delivered.contains(&container_id) {
            book.acknowledged.insert(container_id, at);
        }
    }

    /// A task container's completion reached its AM.
    pub fn delivered(&self, container_id: ContainerId) {
        let mut book = self.book();
        book.acknowledged.remove(&container_id);
        book.delivered.insert(container_id);
    }

    /// Of `outstanding` (containers an AM was granted and has not heard the end of), those whose
    /// completion the RM acknowledged to their agent before `sent`.
    pub fn acknowledged_before(&self, outstanding: impl Iterator<Item = ContainerId>, sent: Instant) -> Vec<ContainerId> {
        let book = self.book();
        outstanding
            .filter(|container_id| book.acknowledged.get(container_id).is_some_and(|at| *at < sent))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::AppId;

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
    fn a_second_grant_of_one_id_is_a_violation() {
        let ledger = Ledger::new();
        ledger.granted(container(1));
        ledger.granted(container(2));
        assert!(ledger.violations().is_empty());
        ledger.granted(container(1));
        assert_eq!(ledger.violations().len(), 1);
    }

    #[test]
    fn an_acknowledgement_waits_for_its_delivery_unless_the_delivery_came_first() {
        let ledger = Ledger::new();
        let before = Instant::now();
        ledger.acknowledged(container(1), before);
        ledger.delivered(container(2));
        ledger.acknowledged(container(2), before);
        let later = before + std::time::Duration::from_millis(1);
        let outstanding = [container(1), container(2), container(3)];
        assert_eq!(ledger.acknowledged_before(outstanding.into_iter(), later), [container(1)]);
        assert!(ledger.acknowledged_before(outstanding.into_iter(), before).is_empty(), "not before");
        ledger.delivered(container(1));
        assert!(ledger.acknowledged_before(outstanding.into_iter(), later).is_empty());
    }

    #[test]
    fn violations_beyond_the_list_are_counted() {
        let ledger = Ledger::new();
        for index in 0..LISTED_VIOLATIONS + 3 {
            ledger.violation(format!("v{index}"));
        }
        let listed = ledger.violations();
        assert_eq!(listed.len(), LISTED_VIOLATIONS + 1);
        assert_eq!(listed.last().unwrap(), "… and 3 more");
    }
}
