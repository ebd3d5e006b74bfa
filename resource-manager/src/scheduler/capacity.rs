//! The multi-tenant capacity scheduler: a pure `solve(snapshot) -> decisions`.
//!
//! One container at a time, each placement walks this pipeline:
//!
//! ```text
//! leaf queue  lowest used/guaranteed first (under-served queues first; over-guarantee
//!             queues borrow idle capacity up to their maximum — elastic)
//!   user      lowest dominant share (DRF over vcores and memory)
//!     app     higher priority, then earlier submit time, then app id
//!       ask   AM first; asks in table order
//!         checks    label → queue maximum (leaf and parents) → user limit → AM share
//!         labels    the node classes the ask may use: its queue may use every label of
//!                   the node, and the node carries the label the ask requires  (labels.rs)
//!         locality  asks naming nodes/racks: preferred node → preferred rack → any node,
//!                   as far as the ask's missed opportunities allow  (locality.rs)
//!         node      first fit from a rotating cursor, one ring per label class (`NodeRing`)
//! ```
//!
//! The AM container has no locality or label of its own: it goes through `labels` as an
//! unlabelled ask of its queue and straight to `node`. Asks without preferences skip `locality`,
//! and a snapshot without labelled nodes has one class, so the common path is the plain ring.
//!
//! Within one round usage only grows and free space only shrinks, so a check that fails now fails
//! for the rest of the round: a failed ask is set aside with its `WaitReason` (or, waiting for
//! locality, without one) and never retried, and shares are re-evaluated only for the queue and
//! user that just got a container (heaps with re-insertion), which keeps a placement at
//! O(log queues + log users) plus the node search.
//!
//! Between rounds the scheduler keeps only the node cursor and the locality miss counters, so
//! the same sequence of snapshots always gives the same decisions.

mod labels;
mod locality;
mod node_choice;
mod round;

#[cfg(test)]
mod locality_tests;
#[cfg(test)]
mod tests;

use locality::LocalityMisses;
use round::Round;

use super::snapshot::{ClusterSnapshot, Decisions};

/// How long asks with locality preferences wait for a better node, in scheduling opportunities
/// (rounds in which the ask could have been placed elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalitySettings {
    /// Rounds an ask waits for one of its preferred nodes before it accepts its preferred racks.
    pub node_delay: u32,
    /// Further rounds it waits for its preferred racks before it accepts any node.
    pub rack_delay: u32,
}

impl Default for LocalitySettings {
    fn default() -> Self {
        LocalitySettings {
            node_delay: 4,
            rack_delay: 4,
        }
    }
}

/// Hierarchical capacity scheduling with DRF between users, node labels and delay scheduling.
#[derive(Debug, Default)]
pub struct CapacityScheduler {
    /// Snapshot node index where the next round starts its node search, so consecutive rounds
    /// spread containers over the cluster like `FirstFit`.
    node_cursor: usize,
    /// How long asks with preferences hold out for them.
    locality: LocalitySettings,
    /// Opportunities each waiting ask with preferences has turned down so far.
    locality_misses: LocalityMisses,
}

impl CapacityScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A scheduler whose asks with preferences wait as `locality` says.
    pub fn with_locality(locality: LocalitySettings) -> Self {
        CapacityScheduler {
            locality,
            ..Self::default()
        }
    }

    /// Decides where pending containers go this round. Pure: the same scheduler state and
    /// snapshot give the same decisions.
    pub fn solve(&mut self, snapshot: &ClusterSnapshot<'_>) -> Decisions {
        let mut round = Round::new(snapshot, self.node_cursor, self.locality, &self.locality_misses);
        round.run();
        let (decisions, node_cursor, evaluated_asks) = round.finish();
        self.node_cursor = node_cursor;
        self.locality_misses.advance(&snapshot.apps, &evaluated_asks, self.locality);
        decisions
    }
}
