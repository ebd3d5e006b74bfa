//! Which nodes the job avoids: a node where tasks keep failing (a full disk, a broken
//! install) would otherwise eat every retry of every task.
//!
//! Cap: at most a third of the nodes the job has been granted containers on are avoided (as
//! Hadoop's 33 % blacklist limit), so avoidance never leaves a small cluster without nodes;
//! with one or two nodes nothing is avoided.

use std::collections::{BTreeMap, BTreeSet};

use spindle_protocol::NodeId;

#[derive(Debug, Clone, Default)]
pub(super) struct NodeHealth {
    /// Counted task failures (and fetch failures of output served there) per node.
    failures: BTreeMap<NodeId, u32>,
    /// Every node the job was granted a container on: the base of the avoidance cap.
    seen: BTreeSet<NodeId>,
    avoided: BTreeSet<NodeId>,
}

impl NodeHealth {
    pub fn saw(&mut self, node: &NodeId) {
        if !self.seen.contains(node) {
            self.seen.insert(node.clone());
        }
    }

    pub fn is_avoided(&self, node: &NodeId) -> bool {
        self.avoided.contains(node)
    }

    pub fn avoided(&self) -> impl Iterator<Item = &NodeId> {
        self.avoided.iter()
    }

    /// Counts one failure on `node`; returns whether the node became avoided now.
    pub fn record_failure(&mut self, node: &NodeId, threshold: u32) -> bool {
        self.saw(node);
        let failures = self.failures.entry(node.clone()).or_default();
        *failures += 1;
        let over_threshold = *failures >= threshold.max(1);
        let within_cap = (self.avoided.len() + 1) * 3 <= self.seen.len();
        if over_threshold && within_cap && !self.avoided.contains(node) {
            self.avoided.insert(node.clone());
            return true;
        }
        false
    }
}
