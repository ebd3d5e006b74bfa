//! The last stage of the pipeline: which node takes a container that passed the queue and user
//! checks. Labels narrow the nodes to the classes the ask may use; locality, for asks that name
//! nodes or racks, tries those first and may hold out for them; the rest is first fit on the
//! class rings.

use spindle_protocol::Resources;

use super::LocalitySettings;
use super::labels::{EligibilityId, LabelClasses};
use super::locality::{AskKey, AskLocality, LocalityIndex, LocalityLevel, LocalityMisses};
use crate::scheduler::node_ring::NodeRing;
use crate::scheduler::queues::{QueueIndex, QueueTree};
use crate::scheduler::snapshot::{AppAsk, SnapshotNode, WaitReason};

/// Why a container was not placed this round.
#[derive(Debug)]
pub(super) enum Blocked {
    /// A reason the app's diagnostics show.
    Wait(WaitReason),
    /// The ask turned down a node with room to wait for a preferred node or rack. Not shown:
    /// it resolves by itself within the locality delay.
    ForLocality,
}

/// Node choice for one round.
pub(super) struct NodeChoice<'s> {
    nodes: &'s [SnapshotNode],
    labels: LabelClasses<'s>,
    /// Free space, one ring per label class.
    ring: NodeRing,
    settings: LocalitySettings,
    /// Counters from earlier rounds; read only here, the scheduler advances them after the round.
    misses: &'s LocalityMisses,
    /// Built on the first ask with preferences, so rounds without any pay nothing for it.
    locality_index: Option<LocalityIndex<'s>>,
    /// Every ask with preferences that reached the node search this round.
    asks: Vec<AskLocality>,
    /// Sizes known to fit some node's total capacity among an eligibility's nodes (to tell a
    /// full cluster from a too-large container without rescanning nodes).
    sizes_some_node_can_hold: Vec<(EligibilityId, Resources)>,
}

impl<'s> NodeChoice<'s> {
    pub(super) fn new(
        tree: &'s QueueTree,
        nodes: &'s [SnapshotNode],
        node_cursor: usize,
        smallest_container: Resources,
        settings: LocalitySettings,
        misses: &'s LocalityMisses,
    ) -> NodeChoice<'s> {
        let labels = LabelClasses::new(tree, nodes);
        let ring = NodeRing::new(
            nodes
                .iter()
                .enumerate()
                .map(|(index, node)| (node.headroom, labels.class_of(index))),
            labels.class_count(),
            node_cursor,
            smallest_container,
        );
        NodeChoice {
            nodes,
            labels,
            ring,
            settings,
            misses,
            locality_index: None,
            asks: Vec::new(),
            sizes_some_node_can_hold: Vec::new(),
        }
    }

    /// Which nodes a container of leaf `leaf` requiring `label` may use, or why none.
    pub(super) fn eligibility(&mut self, leaf: QueueIndex, label: Option<&'s str>) -> Result<EligibilityId, WaitReason> {
        self.labels.eligibility(leaf, label)
    }

    /// First fit among the eligible nodes; for the AM and asks without preferences.
    pub(super) fn choose_any(&mut self, eligibility: EligibilityId, size: Resources) -> Result<usize, WaitReason> {
        self.find_in_classes(eligibility, size)
            .ok_or_else(|| self.why_no_node(eligibility, size))
    }

    /// The slot of `key`'s locality state this round, created on its first container.
    /// `known_slot` is the caller's cached slot for this app, if it still points at `key`.
    pub(super) fn locality_slot(&mut self, key: AskKey, ask: &AppAsk, eligibility: EligibilityId, known_slot: Option<usize>) -> usize {
        if let Some(slot) = known_slot.filter(|&slot| self.asks[slot].key == key) {
            return slot;
        }
        let index = self.locality_index.get_or_insert_with(|| LocalityIndex::new(self.nodes));
        let (labels, nodes, size) = (&self.labels, self.nodes, ask.resources);
        let usable = |node: usize| labels.node_is_eligible(eligibility, node) && nodes[node].capacity.fits(&size);
        let locality = AskLocality::new(key, ask, self.misses.get(key), self.settings, index, nodes, usable);
        self.asks.push(locality);
        self.asks.len() - 1
    }

    /// Best locality the ask's level allows: preferred node, preferred rack, then (at level
    /// `Any`) any eligible node. Below `Any`, turning down a node with room is a missed
    /// opportunity, counted once per round.
    pub(super) fn choose_local(&mut self, slot: usize, eligibility: EligibilityId, size: Resources) -> Result<usize, Blocked> {
        if let Some(node) = self.asks[slot].choose(&self.ring, size) {
            return Ok(node);
        }
        let Some(elsewhere) = self.find_in_classes(eligibility, size) else {
            return Err(Blocked::Wait(self.why_no_node(eligibility, size)));
        };
        if self.asks[slot].level == LocalityLevel::Any {
            return Ok(elsewhere);
        }
        self.asks[slot].missed_opportunity = true;
        Err(Blocked::ForLocality)
    }

    /// Takes `size` from `node`; `locality_slot` is the ask's slot if it has preferences.
    pub(super) fn take(&mut self, node: usize, size: Resources, locality_slot: Option<usize>) {
        self.ring.take(node, size);
        if let Some(slot) = locality_slot {
            self.asks[slot].record_placement(node);
        }
    }

    /// Where the next round starts its node search, and what happened to asks with preferences.
    pub(super) fn finish(self) -> (usize, Vec<AskLocality>) {
        (self.ring.cursor(), self.asks)
    }

    fn find_in_classes(&mut self, eligibility: EligibilityId, size: Resources) -> Option<usize> {
        // Nearly always one class: the unlabelled nodes.
        self.labels
            .classes(eligibility)
            .iter()
            .find_map(|&class| self.ring.find(class, size))
    }

    fn why_no_node(&mut self, eligibility: EligibilityId, size: Resources) -> WaitReason {
        let known = |&(known_for, known): &(EligibilityId, Resources)| known_for == eligibility && known.fits(&size);
        if self.sizes_some_node_can_hold.iter().any(known) {
            return WaitReason::ClusterFull { size };
        }
        let labels = &self.labels;
        let eligible = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(index, _)| labels.node_is_eligible(eligibility, index))
            .map(|(_, node)| node);
        if eligible.clone().any(|node| node.capacity.fits(&size)) {
            self.sizes_some_node_can_hold.push((eligibility, size));
            return WaitReason::ClusterFull { size };
        }
        let largest_node = eligible.fold(Resources::ZERO, |largest, node| {
            Resources::new(
                largest.vcores.max(node.capacity.vcores),
                largest.memory_mb.max(node.capacity.memory_mb),
            )
        });
        WaitReason::NoNodeLargeEnough { size, largest_node }
    }
}
