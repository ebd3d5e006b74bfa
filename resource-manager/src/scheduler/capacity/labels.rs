//! Node labels: which nodes an ask may use.
//!
//! Nodes with the same set of labels form a label class; class 0 is the unlabelled nodes, and in
//! the common case (no labelled node) it is the only class. Which nodes an ask may use depends
//! only on its leaf queue and the label it requires, so the answer — a set of classes (an
//! "eligibility"), or the reason there is none — is worked out once per (queue, label) and round;
//! the node search then walks only those classes' rings (see `NodeRing`).
//!
//! The rules, from `SnapshotNode::labels`: a node takes only asks whose queue may use every label
//! it carries (so unlabelled nodes take everyone), and an ask requiring label `l` takes only
//! nodes carrying `l`.

use std::collections::{BTreeMap, HashMap};

use crate::scheduler::queues::{QueueIndex, QueueTree};
use crate::scheduler::snapshot::{SnapshotNode, WaitReason};

/// Index of a set of label classes in [`LabelClasses`]; 0 is "unlabelled nodes only".
pub(super) type EligibilityId = usize;

/// The round's label classes and what each (queue, label) may use.
pub(super) struct LabelClasses<'s> {
    tree: &'s QueueTree,
    /// Label set of each class; class 0 is the empty set even when every node carries labels.
    class_labels: Vec<&'s [String]>,
    /// Class of each snapshot node; `None` for unschedulable nodes, which take nothing.
    class_of_node: Vec<Option<usize>>,
    /// Distinct class sets asks may use, interned so caches can key on a small id.
    eligibilities: Vec<Vec<usize>>,
    /// Per queue: what its unlabelled asks and its AMs may use (always at least class 0).
    unlabelled: Vec<EligibilityId>,
    /// What asks requiring a label may use, per (leaf, label); worked out on first use.
    labelled: HashMap<(QueueIndex, &'s str), Result<EligibilityId, WaitReason>>,
}

impl<'s> LabelClasses<'s> {
    pub(super) fn new(tree: &'s QueueTree, nodes: &'s [SnapshotNode]) -> LabelClasses<'s> {
        let no_labels: &'s [String] = &[];
        let mut classes = LabelClasses {
            tree,
            class_labels: vec![no_labels],
            class_of_node: Vec::with_capacity(nodes.len()),
            eligibilities: vec![vec![0]],
            unlabelled: vec![0; tree.queues.len()],
            labelled: HashMap::new(),
        };
        if !nodes.iter().any(|node| node.schedulable && !node.labels.is_empty()) {
            // The common case: one class, every queue may use all of it.
            classes.class_of_node.extend(nodes.iter().map(|node| node.schedulable.then_some(0)));
            return classes;
        }
        let mut class_by_labels: BTreeMap<&'s [String], usize> = BTreeMap::from([(no_labels, 0)]);
        for node in nodes {
            let class = node.schedulable.then(|| {
                *class_by_labels.entry(node.labels.as_slice()).or_insert_with(|| {
                    classes.class_labels.push(&node.labels);
                    classes.class_labels.len() - 1
                })
            });
            classes.class_of_node.push(class);
        }
        for queue in 0..tree.queues.len() {
            let usable = (0..classes.class_labels.len())
                .filter(|&class| classes.queue_may_use_class(queue, class))
                .collect();
            classes.unlabelled[queue] = classes.intern(usable);
        }
        classes
    }

    /// How many classes there are (for building one ring per class).
    pub(super) fn class_count(&self) -> usize {
        self.class_labels.len()
    }

    /// The class of snapshot node `node`; `None` if it takes nothing.
    pub(super) fn class_of(&self, node: usize) -> Option<usize> {
        self.class_of_node[node]
    }

    /// The classes of an eligibility, in class order.
    pub(super) fn classes(&self, eligibility: EligibilityId) -> &[usize] {
        &self.eligibilities[eligibility]
    }

    /// Whether an ask of `eligibility` may run on snapshot node `node`.
    pub(super) fn node_is_eligible(&self, eligibility: EligibilityId, node: usize) -> bool {
        self.class_of_node[node].is_some_and(|class| self.eligibilities[eligibility].contains(&class))
    }

    /// What an ask of leaf `leaf` requiring `label` (or none) may use, or why it may use nothing.
    pub(super) fn eligibility(&mut self, leaf: QueueIndex, label: Option<&'s str>) -> Result<EligibilityId, WaitReason> {
        let Some(label) = label else {
            return Ok(self.unlabelled[leaf]);
        };
        if let Some(known) = self.labelled.get(&(leaf, label)) {
            return known.clone();
        }
        let answer = self.labelled_eligibility(leaf, label);
        self.labelled.insert((leaf, label), answer.clone());
        answer
    }

    fn labelled_eligibility(&mut self, leaf: QueueIndex, label: &str) -> Result<EligibilityId, WaitReason> {
        let tree = self.tree;
        let queue = &tree.queues[leaf];
        let not_accessible = |label: &str| WaitReason::LabelNotAccessible {
            queue: queue.path.clone(),
            label: label.to_owned(),
        };
        if !queue.may_use_label(label) {
            return Err(not_accessible(label));
        }
        let carrying: Vec<usize> = (0..self.class_labels.len())
            .filter(|&class| self.class_labels[class].iter().any(|carried| carried == label))
            .collect();
        if carrying.is_empty() {
            return Err(WaitReason::LabelNotPresent { label: label.to_owned() });
        }
        let usable: Vec<usize> = carrying
            .iter()
            .copied()
            .filter(|&class| self.queue_may_use_class(leaf, class))
            .collect();
        if usable.is_empty() {
            // Every node with the label also carries one the queue may not use: name that one.
            let other = self.class_labels[carrying[0]].iter().find(|carried| !queue.may_use_label(carried));
            return Err(not_accessible(other.map_or(label, String::as_str)));
        }
        Ok(self.intern(usable))
    }

    fn queue_may_use_class(&self, queue: QueueIndex, class: usize) -> bool {
        self.class_labels[class]
            .iter()
            .all(|label| self.tree.queues[queue].may_use_label(label))
    }

    fn intern(&mut self, classes: Vec<usize>) -> EligibilityId {
        if let Some(known) = self.eligibilities.iter().position(|existing| *existing == classes) {
            return known;
        }
        self.eligibilities.push(classes);
        self.eligibilities.len() - 1
    }
}
