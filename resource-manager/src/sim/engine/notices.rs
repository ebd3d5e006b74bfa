//! The RM's side of the preemption contract (the shared `NoticeBook`): notices, withdrawals and
//! kills from each plan.

use std::time::Instant;

use super::{EndReason, Simulation};
use crate::scheduler::preemption;

impl Simulation {
    /// Asks the preemption planner which containers should be under notice, and applies the
    /// contract: new ones get a notice (deadline now + grace), ones no longer chosen have it
    /// withdrawn, chosen ones whose deadline has passed are killed.
    pub(super) fn plan_preemption(&mut self) {
        let (chosen, wall) = self.with_snapshot(|_, snapshot| {
            let started = Instant::now();
            let chosen = preemption::victims(snapshot);
            (chosen, started.elapsed())
        });
        self.recorder.record_preemption_planning(wall);
        let changes = self.notices.apply(&chosen, self.now_ms);
        for id in changes.withdrawn {
            // Containers that ended on their own leave the book this way too: not counted.
            if let Some(slot) = self.containers.slot_of(&id) {
                self.set_notice(slot, None);
                self.recorder.preemption_notices_withdrawn += 1;
            }
        }
        for id in changes.noticed {
            if let Some(slot) = self.containers.slot_of(&id) {
                self.set_notice(slot, Some(self.now_ms + self.config.grace_ms));
                self.recorder.preemption_notices += 1;
            }
        }
        for id in changes.due {
            self.notices.forget(&id);
            // Killing an AM ends its app's other containers, which may be due too.
            let Some(slot) = self.containers.slot_of(&id) else { continue };
            self.recorder.preemption_kills += 1;
            self.end_container(slot, EndReason::Preempted);
        }
    }

    fn set_notice(&mut self, slot: usize, deadline_ms: Option<u64>) {
        let container = self.containers.get_mut(slot).expect("live container");
        container.notice_deadline_ms = deadline_ms;
        let (app, position) = (container.app, container.position);
        let app_position = self.runs[app].position.expect("running app has a snapshot");
        self.apps[app_position].containers[position].preempting = deadline_ms.is_some();
    }
}
