//! The nodes as the scheduler sees them, kept from one round to the next.
//!
//! Building a `SnapshotNode` copies a node's id, rack and labels, and reading a node out of
//! the node map is a cache miss or two; at 10,000 nodes doing either every round was most of a
//! round's cost (profiled: `snapshot_nodes`, then a walk of the map per round). The view is a
//! plain vector kept up to date: a node's id, rack, labels, capacity and whether it takes
//! containers change only with its record, and every such change marks the record for the
//! store (`mark_node`), which also marks the view stale: the next round builds it again. Its
//! free room changes all the time, with each grant and completion, which update it in place
//! (`set_headroom`). Tests check after every change that the view equals a fresh build.

use spindle_protocol::{NodeId, Resources};

use super::{Cluster, Node};
use crate::scheduler::snapshot::SnapshotNode;

#[derive(Debug)]
pub(super) struct NodeView {
    /// Schedulable, registered nodes in id order (the node map's order).
    nodes: Vec<SnapshotNode>,
    /// A node's record changed since the view was built: build it again.
    stale: bool,
}

impl Default for NodeView {
    /// Stale: built on the first round, after recovery has filled the node map.
    fn default() -> NodeView {
        NodeView {
            nodes: Vec::new(),
            stale: true,
        }
    }
}

impl NodeView {
    pub(super) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// A node's free room changed (a grant, a completion).
    pub(super) fn set_headroom(&mut self, node_id: &NodeId, headroom: Resources) {
        if self.stale {
            return;
        }
        // Absent: the node takes no containers now (its completions still free room).
        if let Ok(index) = self.nodes.binary_search_by(|node| node.node_id.cmp(node_id)) {
            self.nodes[index].headroom = headroom;
        }
    }

    /// Schedulable capacity and what of it is free.
    pub(super) fn totals(&self) -> (Resources, Resources) {
        self.nodes
            .iter()
            .fold((Resources::ZERO, Resources::ZERO), |(capacity, free), node| {
                (capacity + node.capacity, free + node.headroom)
            })
    }

    /// Schedulable nodes, sorted by id, with their free room now (once `refresh_node_view` ran).
    pub(super) fn nodes(&self) -> &[SnapshotNode] {
        &self.nodes
    }
}

impl Cluster {
    /// Builds the node view again if a node's record changed, before a round reads it.
    pub(super) fn refresh_node_view(&mut self) {
        if self.node_view.stale {
            self.node_view.nodes = self.nodes.values().filter(|node| schedulable(node)).map(snapshot_node).collect();
            self.node_view.stale = false;
        }
    }
}

fn schedulable(node: &Node) -> bool {
    node.record.state.is_schedulable() && node.registered
}

fn snapshot_node(node: &Node) -> SnapshotNode {
    let mut labels = node.record.labels.clone();
    labels.sort();
    SnapshotNode {
        node_id: node.record.node_id.clone(),
        rack: node.record.rack.clone(),
        labels,
        capacity: node.record.capacity,
        headroom: free(node),
        schedulable: true,
    }
}

fn free(node: &Node) -> Resources {
    node.record.capacity.saturating_sub(&node.used)
}

#[cfg(test)]
impl Cluster {
    /// Panics unless the view, brought up to date as a round would, is what building it anew
    /// gives: a change to a node's record that did not mark it would show here.
    pub(super) fn check_node_view(&mut self) {
        self.refresh_node_view();
        let fresh: Vec<SnapshotNode> = self.nodes.values().filter(|node| schedulable(node)).map(snapshot_node).collect();
        assert_eq!(self.node_view.nodes, fresh, "the scheduler's node view is out of date");
    }
}
