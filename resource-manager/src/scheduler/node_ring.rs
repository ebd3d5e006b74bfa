//! First-fit node choice with a rotating cursor, made cheap at thousands of nodes: nodes that can
//! no longer take even the smallest pending container leave the ring, so a nearly full cluster is
//! not rescanned for every container, and sizes already known not to fit fail without a scan.
//!
//! Nodes are split into label classes (nodes with the same set of labels; usually one class, the
//! unlabelled nodes). Each class is its own circular list over shared arrays, with its own cursor
//! and misfit memo, so an ask searches only the classes it may use and "nothing of this size fits
//! in class c" never hides room in another class.

use spindle_protocol::Resources;

/// The schedulable nodes still worth trying, as one circular list per label class, in snapshot
/// order.
#[derive(Debug)]
pub(crate) struct NodeRing {
    /// Free resources per snapshot node index (nodes outside every class keep their slot, unused).
    free: Vec<Resources>,
    /// Next / previous live node of the same class; stale for unlinked nodes.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Class of each node, to find its list when it is taken from; `None` for unschedulable nodes.
    class_of: Vec<Option<usize>>,
    /// Whether the node is still in its class list: `take` on a node that left (a preferred node
    /// tried directly) must not unlink it twice.
    linked: Vec<bool>,
    classes: Vec<ClassRing>,
    /// Where the next round should start: just past the node of the latest placement.
    resume_at: usize,
    /// Component-wise minimum of every container size this round may still place; a node below
    /// it in any dimension can take nothing more and leaves the ring.
    smallest_container: Resources,
}

/// One label class's circular list.
#[derive(Debug, Default)]
struct ClassRing {
    /// Number of live nodes.
    live: usize,
    /// Where the next search starts: a live node, or anything when `live == 0`.
    cursor: usize,
    /// Sizes that fitted nowhere in this class: free space only shrinks within a round, so any
    /// size at least as large in both dimensions fails too, without a scan.
    known_misfits: Vec<Resources>,
}

impl NodeRing {
    /// Builds the rings from each node's free resources and label class (`None`: takes nothing),
    /// starting each class's search at its first node at or after `cursor`.
    pub(crate) fn new(
        nodes: impl Iterator<Item = (Resources, Option<usize>)>,
        class_count: usize,
        cursor: usize,
        smallest_container: Resources,
    ) -> NodeRing {
        let mut free = Vec::new();
        let mut class_of = Vec::new();
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); class_count];
        for (index, (available, class)) in nodes.enumerate() {
            free.push(available);
            class_of.push(class);
            if let Some(class) = class
                && available.fits(&smallest_container)
                && !available.is_zero()
            {
                members[class].push(index);
            }
        }
        let mut next = vec![0; free.len()];
        let mut prev = vec![0; free.len()];
        let mut linked = vec![false; free.len()];
        let classes = members
            .iter()
            .map(|members| {
                for (position, &index) in members.iter().enumerate() {
                    next[index] = members[(position + 1) % members.len()];
                    prev[index] = members[(position + members.len() - 1) % members.len()];
                    linked[index] = true;
                }
                // Start at the first live node at or after the remembered cursor, as FirstFit does.
                let start = members
                    .iter()
                    .copied()
                    .find(|&index| index >= cursor)
                    .or_else(|| members.first().copied())
                    .unwrap_or(0);
                ClassRing {
                    live: members.len(),
                    cursor: start,
                    known_misfits: Vec::new(),
                }
            })
            .collect();
        NodeRing {
            free,
            next,
            prev,
            class_of,
            linked,
            classes,
            resume_at: cursor,
            smallest_container,
        }
    }

    /// The snapshot index the next round should start at.
    pub(crate) fn cursor(&self) -> usize {
        self.resume_at
    }

    /// Some live node of `class` with `size` free now (first fit from the class cursor), without
    /// taking it.
    pub(crate) fn find(&mut self, class: usize, size: Resources) -> Option<usize> {
        let ring = &mut self.classes[class];
        if ring.live == 0 || ring.known_misfits.iter().any(|misfit| size.fits(misfit)) {
            return None;
        }
        let mut index = ring.cursor;
        for _ in 0..ring.live {
            if self.free[index].fits(&size) {
                return Some(index);
            }
            index = self.next[index];
        }
        ring.known_misfits.push(size);
        None
    }

    /// Whether node `index` has `size` free now; exact for every node, in a ring or not.
    pub(crate) fn fits(&self, index: usize, size: Resources) -> bool {
        self.free[index].fits(&size)
    }

    /// Takes `size` from node `index` (found by `find` or checked with `fits`) and moves its
    /// class's cursor past it.
    pub(crate) fn take(&mut self, index: usize, size: Resources) {
        debug_assert!(self.free[index].fits(&size), "node {index} over-committed");
        let class = self.class_of[index].expect("only nodes of a class take containers");
        self.free[index] -= size;
        if !self.linked[index] {
            return;
        }
        self.classes[class].cursor = self.next[index];
        if !self.free[index].fits(&self.smallest_container) || self.free[index].is_zero() {
            self.unlink(class, index);
        }
        self.resume_at = self.classes[class].cursor;
    }

    fn unlink(&mut self, class: usize, index: usize) {
        self.linked[index] = false;
        let ring = &mut self.classes[class];
        ring.live -= 1;
        if ring.live == 0 {
            return;
        }
        let (before, after) = (self.prev[index], self.next[index]);
        self.next[before] = after;
        self.prev[after] = before;
        if ring.cursor == index {
            ring.cursor = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_skips_full_nodes_and_remembers_misfits() {
        let nodes = [
            (Resources::new(2, 200), Some(0)),
            (Resources::new(1, 100), None),
            (Resources::new(1, 100), Some(0)),
        ];
        let mut ring = NodeRing::new(nodes.into_iter(), 1, 0, Resources::new(1, 100));
        let unit = Resources::new(1, 100);
        let mut order = Vec::new();
        while let Some(index) = ring.find(0, unit) {
            ring.take(index, unit);
            order.push(index);
        }
        assert_eq!(order, [0, 2, 0], "node 1 is not schedulable");
        assert_eq!(ring.find(0, Resources::new(1, 50)), None);
    }

    #[test]
    fn classes_rotate_independently_and_keep_their_own_misfits() {
        let unit = Resources::new(1, 100);
        let nodes = [
            (Resources::new(1, 100), Some(0)),
            (Resources::new(4, 400), Some(1)),
            (Resources::new(1, 100), Some(0)),
            (Resources::new(4, 400), Some(1)),
        ];
        let mut ring = NodeRing::new(nodes.into_iter(), 2, 1, unit);
        assert_eq!(ring.find(0, unit), Some(2), "class 0 starts at its first node at or after 1");
        assert_eq!(ring.find(0, Resources::new(2, 100)), None);
        assert_eq!(
            ring.find(1, Resources::new(2, 100)),
            Some(1),
            "a misfit of class 0 is not one of class 1"
        );
        ring.take(1, Resources::new(4, 400));
        assert_eq!(ring.cursor(), 3, "the next round resumes past the latest placement");
        assert!(!ring.fits(1, unit));
        ring.take(2, unit);
        ring.take(0, unit);
        assert_eq!(ring.find(0, unit), None);
        assert_eq!(ring.find(1, unit), Some(3));
    }
}
