//! Delay scheduling: an ask that names preferred nodes or racks waits a bounded number of
//! scheduling opportunities for a node-local placement, then for a rack-local one, before it
//! takes any node.
//!
//! An opportunity is a round in which the ask could not get a node of the locality it currently
//! holds out for, but some other node it may use had room. The scheduler counts them per
//! (app, ask index) in [`LocalityMisses`] between rounds:
//!
//! ```text
//! misses:  0 .. node_delay-1 │ node_delay .. node_delay+rack_delay-1 │ node_delay+rack_delay
//! takes:   preferred nodes   │ preferred nodes, then preferred racks │ preferred, rack, any node
//! ```
//!
//! A phase with nothing to wait for is skipped: an ask whose preferred nodes are all unknown,
//! draining, of the wrong label or too small starts at its racks, and one with no usable node in
//! its racks either takes any node at once. A node-local placement resets the count (as in the
//! delay scheduling paper, the node is evidently freeing up); placing the whole ask, or the app
//! leaving the snapshot, drops it.

use std::collections::{BTreeMap, HashMap};

use spindle_protocol::{AppId, NodeId, Resources};

use super::LocalitySettings;
use crate::scheduler::node_ring::NodeRing;
use crate::scheduler::snapshot::{AppAsk, SnapshotApp, SnapshotNode};

/// One ask of one app: `(app, index in its ask table)`.
pub(super) type AskKey = (AppId, usize);

/// Whether `ask` names any node or rack; asks that do not skip delay scheduling entirely.
pub(super) fn has_preferences(ask: &AppAsk) -> bool {
    !ask.nodes.is_empty() || !ask.racks.is_empty()
}

/// Missed opportunities of the asks still waiting for locality, carried from round to round.
/// Holds only asks of the latest snapshot with a non-zero count, so it stays as small as the
/// pending asks with preferences.
#[derive(Debug, Default)]
pub(super) struct LocalityMisses {
    misses: BTreeMap<AskKey, u32>,
}

impl LocalityMisses {
    pub(super) fn get(&self, key: AskKey) -> u32 {
        self.misses.get(&key).copied().unwrap_or(0)
    }

    /// Counters for the next round, from this round's snapshot and what happened to the asks
    /// that reached the node search (`evaluated`); asks not reached keep their count.
    pub(super) fn advance(&mut self, apps: &[SnapshotApp], evaluated: &[AskLocality], settings: LocalitySettings) {
        if self.misses.is_empty() && evaluated.is_empty() {
            return;
        }
        let outcomes: HashMap<AskKey, &AskLocality> = evaluated.iter().map(|ask| (ask.key, ask)).collect();
        let most = settings.node_delay.saturating_add(settings.rack_delay);
        let mut next = BTreeMap::new();
        for app in apps {
            for (ask_index, ask) in app.asks.iter().enumerate() {
                if ask.count == 0 || !has_preferences(ask) {
                    continue;
                }
                let key = (app.app_id, ask_index);
                let previous = self.get(key);
                let misses = match outcomes.get(&key) {
                    None => previous,
                    Some(outcome) if outcome.node_local || outcome.placed >= ask.count => 0,
                    Some(outcome) if outcome.missed_opportunity => previous.saturating_add(1).min(most),
                    Some(_) => previous,
                };
                if misses > 0 {
                    next.insert(key, misses);
                }
            }
        }
        self.misses = next;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.misses.len()
    }
}

/// How far from its preferences an ask may go this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LocalityLevel {
    /// Only its preferred nodes.
    Node,
    /// Its preferred nodes, then nodes in its preferred racks.
    Rack,
    /// Preferred nodes, then preferred racks, then any node.
    Any,
}

/// Node ids and racks to snapshot node indices; built once per round, and only in rounds where
/// some ask has preferences.
pub(super) struct LocalityIndex<'s> {
    node_by_id: HashMap<&'s NodeId, usize>,
    /// Schedulable nodes only, in snapshot order.
    nodes_by_rack: HashMap<&'s str, Vec<usize>>,
}

impl<'s> LocalityIndex<'s> {
    pub(super) fn new(nodes: &'s [SnapshotNode]) -> LocalityIndex<'s> {
        let mut nodes_by_rack: HashMap<&'s str, Vec<usize>> = HashMap::new();
        for (index, node) in nodes.iter().enumerate().filter(|(_, node)| node.schedulable) {
            nodes_by_rack.entry(node.rack.as_str()).or_default().push(index);
        }
        LocalityIndex {
            node_by_id: nodes.iter().enumerate().map(|(index, node)| (&node.node_id, index)).collect(),
            nodes_by_rack,
        }
    }
}

/// One ask with preferences in this round: where it may go, and what happened to it.
pub(super) struct AskLocality {
    pub(super) key: AskKey,
    pub(super) level: LocalityLevel,
    /// Preferred nodes that could take one of its containers, in the ask's order.
    preferred_nodes: Vec<usize>,
    /// Nodes of its preferred racks (other than `preferred_nodes`) that could take one; filled
    /// only when the level allows them.
    rack_nodes: Vec<usize>,
    /// How far `preferred_nodes` / `rack_nodes` are known full for its size: free space only
    /// shrinks within a round, so a node that could not take it once is never tried again.
    next_preferred: usize,
    next_rack: usize,
    /// Containers placed this round, and whether one of them was node-local.
    pub(super) placed: u32,
    pub(super) node_local: bool,
    /// Whether it turned down a node with room this round, waiting for locality.
    pub(super) missed_opportunity: bool,
}

impl AskLocality {
    /// Works out the ask's candidates and level from its `misses` so far; `usable` says whether
    /// a node could ever take one of its containers (schedulable, right labels, large enough).
    pub(super) fn new(
        key: AskKey,
        ask: &AppAsk,
        misses: u32,
        settings: LocalitySettings,
        index: &LocalityIndex<'_>,
        nodes: &[SnapshotNode],
        usable: impl Fn(usize) -> bool,
    ) -> AskLocality {
        let mut preferred_nodes = Vec::new();
        for node_id in &ask.nodes {
            if let Some(&node) = index.node_by_id.get(node_id)
                && usable(node)
                && !preferred_nodes.contains(&node)
            {
                preferred_nodes.push(node);
            }
        }
        let mut locality = AskLocality {
            key,
            level: LocalityLevel::Node,
            preferred_nodes,
            rack_nodes: Vec::new(),
            next_preferred: 0,
            next_rack: 0,
            placed: 0,
            node_local: false,
            missed_opportunity: false,
        };
        let node_phase = if locality.preferred_nodes.is_empty() {
            0
        } else {
            settings.node_delay
        };
        if misses < node_phase {
            return locality;
        }
        // The racks of the preferred nodes count, even of nodes that cannot take it themselves.
        let mut racks: Vec<&str> = ask.racks.iter().map(String::as_str).collect();
        racks.extend(
            ask.nodes
                .iter()
                .filter_map(|node_id| Some(nodes[*index.node_by_id.get(node_id)?].rack.as_str())),
        );
        racks.sort_unstable();
        racks.dedup();
        for rack in racks {
            for &node in index.nodes_by_rack.get(rack).into_iter().flatten() {
                if usable(node) && !locality.preferred_nodes.contains(&node) {
                    locality.rack_nodes.push(node);
                }
            }
        }
        let rack_phase = if locality.rack_nodes.is_empty() { 0 } else { settings.rack_delay };
        locality.level = if misses < node_phase + rack_phase {
            LocalityLevel::Rack
        } else {
            LocalityLevel::Any
        };
        locality
    }

    /// The first preferred node, else (from rack level on) the first preferred-rack node, with
    /// `size` free; `None` leaves the rest of the cluster to the caller.
    pub(super) fn choose(&mut self, ring: &NodeRing, size: Resources) -> Option<usize> {
        if let Some(node) = first_with_room(&self.preferred_nodes, &mut self.next_preferred, ring, size) {
            return Some(node);
        }
        if self.level >= LocalityLevel::Rack {
            return first_with_room(&self.rack_nodes, &mut self.next_rack, ring, size);
        }
        None
    }

    /// Notes one container placed on `node`.
    pub(super) fn record_placement(&mut self, node: usize) {
        self.placed += 1;
        self.node_local |= self.preferred_nodes.contains(&node);
    }
}

fn first_with_room(candidates: &[usize], next: &mut usize, ring: &NodeRing, size: Resources) -> Option<usize> {
    while let Some(&node) = candidates.get(*next) {
        if ring.fits(node, size) {
            return Some(node);
        }
        *next += 1;
    }
    None
}
