//! The nodes as the scheduler sees them, kept from one round to the next.
//!
//! Building a `SnapshotNode` copies a node's id, rack and labels; at 10,000 nodes doing that
//! every round was most of a round's cost (profiled: `snapshot_nodes` and the allocator under
//! it). Those fields change only with the node's record (a registration, a state change),
//! which every change marks for the store (`mark_node`); that mark also marks this view stale.
//! What changes all the time is the free room, so each round walks the nodes once to copy it,
//! and checks on the way that the schedulable nodes are still the ones the view lists.

use spindle_protocol::Resources;

use super::{Cluster, Node};
use crate::scheduler::snapshot::SnapshotNode;

#[derive(Debug, Default)]
pub(super) struct NodeView {
    /// Schedulable, registered nodes in id order (the node map's order).
    nodes: Vec<SnapshotNode>,
    /// A node's record changed since the view was built: build it again.
    stale: bool,
}

impl NodeView {
    pub(super) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Schedulable nodes, sorted by id, with their free room as of the last `refresh`.
    pub(super) fn nodes(&self) -> &[SnapshotNode] {
        &self.nodes
    }
}

impl Cluster {
    /// Brings the node view up to date, before a round reads it.
    pub(super) fn refresh_node_view(&mut self) {
        let view = &mut self.node_view;
        if view.stale || !refresh_headroom(&mut view.nodes, self.nodes.values().filter(|node| schedulable(node))) {
            view.nodes = self.nodes.values().filter(|node| schedulable(node)).map(snapshot_node).collect();
            view.stale = false;
        }
    }
}

fn schedulable(node: &Node) -> bool {
    node.record.state.is_schedulable() && node.registered
}

/// Copies each node's free room into the view; false if the nodes are not the view's.
fn refresh_headroom<'n>(view: &mut [SnapshotNode], mut nodes: impl Iterator<Item = &'n Node>) -> bool {
    for entry in view.iter_mut() {
        match nodes.next() {
            Some(node) if node.record.node_id == entry.node_id => entry.headroom = free(node),
            _ => return false,
        }
    }
    nodes.next().is_none()
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
