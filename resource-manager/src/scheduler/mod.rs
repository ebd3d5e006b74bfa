//! Placement behind the scheduler interface: a pure function of a snapshot of pending asks and
//! node headroom, with no I/O and no clock. This first implementation is first-fit; the
//! multi-tenant scheduler (queues, fairness, preemption, locality) replaces it behind the same
//! trait.
//!
//! The multi-tenant core (issue 3) is being built beside it: [`queues`] (the queue tree from the
//! config) and [`capacity`] (hierarchical capacity + DRF `solve`), not yet wired into the RM.

pub mod capacity;
mod node_ring;
pub mod preemption;
pub mod queues;
pub mod snapshot;

use spindle_protocol::{AppId, NodeId, Resources};

/// Some containers one app wants, in the order the app should be served.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAsk {
    pub app_id: AppId,
    /// Index of the ask in the app's ask table, or `None` for the app's AM container.
    pub ask_index: Option<usize>,
    pub resources: Resources,
    pub count: u32,
    /// Preferred nodes; first-fit tries them first but does not wait for them.
    pub preferred_nodes: Vec<NodeId>,
}

/// A node that may take containers, and what it has left.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHeadroom {
    pub node_id: NodeId,
    pub available: Resources,
}

/// One decision: put one container of `ask` on `node_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into the `asks` slice given to `place`.
    pub ask: usize,
    pub node_id: NodeId,
}

/// Decides where pending containers go. Implementations must be deterministic: the same input
/// gives the same placements, in the same order.
pub trait Scheduler: Send {
    /// `asks` are in service order (the caller sorts apps by priority, then submit time).
    fn place(&mut self, asks: &[PendingAsk], nodes: &[NodeHeadroom]) -> Vec<Placement>;
}

/// Serves asks in order; each container goes to the first node with room (preferred nodes
/// first). Nodes are scanned from where the last placement left off, so a burst of asks
/// spreads over the cluster instead of piling onto the first node.
#[derive(Debug, Default)]
pub struct FirstFit {
    cursor: usize,
}

impl Scheduler for FirstFit {
    fn place(&mut self, asks: &[PendingAsk], nodes: &[NodeHeadroom]) -> Vec<Placement> {
        let mut available: Vec<Resources> = nodes.iter().map(|node| node.available).collect();
        let mut placements = Vec::new();
        if nodes.is_empty() {
            return placements;
        }
        for (ask_index, ask) in asks.iter().enumerate() {
            for _ in 0..ask.count {
                let preferred = ask
                    .preferred_nodes
                    .iter()
                    .filter_map(|wanted| nodes.iter().position(|node| &node.node_id == wanted))
                    .find(|&index| available[index].fits(&ask.resources));
                let chosen = preferred.or_else(|| {
                    (0..nodes.len())
                        .map(|step| (self.cursor + step) % nodes.len())
                        .find(|&index| available[index].fits(&ask.resources))
                });
                // Nothing fits this ask now: later asks of other shapes may still fit.
                let Some(index) = chosen else { break };
                available[index] -= ask.resources;
                self.cursor = (index + 1) % nodes.len();
                placements.push(Placement {
                    ask: ask_index,
                    node_id: nodes[index].node_id.clone(),
                });
            }
        }
        placements
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(count: u32, vcores: u32, memory_mb: u64) -> PendingAsk {
        PendingAsk {
            app_id: AppId { cluster_ts: 1, seq: 1 },
            ask_index: Some(0),
            resources: Resources::new(vcores, memory_mb),
            count,
            preferred_nodes: vec![],
        }
    }

    fn node(name: &str, vcores: u32, memory_mb: u64) -> NodeHeadroom {
        NodeHeadroom {
            node_id: NodeId(name.into()),
            available: Resources::new(vcores, memory_mb),
        }
    }

    #[test]
    fn spreads_and_stops_when_full() {
        let placements = FirstFit::default().place(&[ask(5, 1, 100)], &[node("a", 2, 1000), node("b", 2, 1000)]);
        let on: Vec<&str> = placements.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(on, ["a", "b", "a", "b"]);
    }

    #[test]
    fn preferred_nodes_come_first() {
        let mut wanted = ask(1, 1, 100);
        wanted.preferred_nodes = vec![NodeId("b".into())];
        let placements = FirstFit::default().place(&[wanted], &[node("a", 2, 1000), node("b", 2, 1000)]);
        assert_eq!(placements[0].node_id.as_str(), "b");
    }

    #[test]
    fn a_big_ask_does_not_block_a_small_one() {
        let placements = FirstFit::default().place(&[ask(1, 8, 100), ask(1, 1, 100)], &[node("a", 2, 1000)]);
        assert_eq!(
            placements,
            vec![Placement {
                ask: 1,
                node_id: NodeId("a".into())
            }]
        );
    }

    proptest! {
        /// No node is ever given more than it has, and the same input gives the same output.
        #[test]
        fn never_overcommits_and_is_deterministic(
            asks in proptest::collection::vec((1u32..20, 1u32..4, 1u64..2048), 1..10),
            nodes in proptest::collection::vec((1u32..16, 256u64..8192), 1..8),
        ) {
            let asks: Vec<PendingAsk> = asks.into_iter().map(|(count, vcores, memory)| ask(count, vcores, memory)).collect();
            let nodes: Vec<NodeHeadroom> = nodes.into_iter().enumerate().map(|(i, (v, m))| node(&format!("n{i}"), v, m)).collect();
            let first = FirstFit::default().place(&asks, &nodes);
            prop_assert_eq!(&first, &FirstFit::default().place(&asks, &nodes));
            for node in &nodes {
                let mut used = Resources::ZERO;
                for placement in first.iter().filter(|p| p.node_id == node.node_id) {
                    used += asks[placement.ask].resources;
                }
                prop_assert!(node.available.fits(&used));
            }
        }
    }
}
