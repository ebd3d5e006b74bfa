//! First-fit node choice with a rotating cursor, made cheap at thousands of nodes: nodes that can
//! no longer take even the smallest pending container leave the ring, so a nearly full cluster is
//! not rescanned for every container, and sizes already known not to fit fail without a scan.

use spindle_protocol::Resources;

/// The schedulable nodes still worth trying, as a circular list in snapshot order.
#[derive(Debug)]
pub(crate) struct NodeRing {
    /// Free resources per snapshot node index (non-schedulable nodes keep their slot, unused).
    free: Vec<Resources>,
    /// Next / previous live node index in the ring; stale for removed nodes.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Number of live nodes.
    live: usize,
    /// Where the next search starts: a live node, or anything when `live == 0`.
    cursor: usize,
    /// Component-wise minimum of every container size this round may still place; a node below
    /// it in any dimension can take nothing more and leaves the ring.
    smallest_container: Resources,
    /// Sizes that fitted nowhere: free space only shrinks within a round, so any size at least as
    /// large in both dimensions fails too, without a scan.
    known_misfits: Vec<Resources>,
}

impl NodeRing {
    /// Builds the ring from the nodes that are `schedulable`, starting the search at `cursor`.
    pub(crate) fn new(headroom: impl Iterator<Item = (Resources, bool)>, cursor: usize, smallest_container: Resources) -> NodeRing {
        let mut free = Vec::new();
        let mut members = Vec::new();
        for (index, (available, schedulable)) in headroom.enumerate() {
            free.push(available);
            if schedulable && available.fits(&smallest_container) && !available.is_zero() {
                members.push(index);
            }
        }
        let mut next = vec![0; free.len()];
        let mut prev = vec![0; free.len()];
        for (position, &index) in members.iter().enumerate() {
            next[index] = members[(position + 1) % members.len()];
            prev[index] = members[(position + members.len() - 1) % members.len()];
        }
        // Start at the first live node at or after the remembered cursor, as FirstFit does.
        let start = members
            .iter()
            .copied()
            .find(|&index| index >= cursor)
            .or_else(|| members.first().copied())
            .unwrap_or(0);
        NodeRing {
            free,
            next,
            prev,
            live: members.len(),
            cursor: start,
            smallest_container,
            known_misfits: Vec::new(),
        }
    }

    /// The snapshot index the next search will start at (to carry over to the next round).
    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    /// Whether some live node has `size` free now, without taking it.
    pub(crate) fn find(&mut self, size: Resources) -> Option<usize> {
        if self.live == 0 || self.known_misfits.iter().any(|misfit| size.fits(misfit)) {
            return None;
        }
        let mut index = self.cursor;
        for _ in 0..self.live {
            if self.free[index].fits(&size) {
                return Some(index);
            }
            index = self.next[index];
        }
        self.known_misfits.push(size);
        None
    }

    /// Takes `size` from node `index` (found by `find`) and moves the cursor past it.
    pub(crate) fn take(&mut self, index: usize, size: Resources) {
        debug_assert!(self.free[index].fits(&size), "node {index} over-committed");
        self.free[index] -= size;
        self.cursor = self.next[index];
        if !self.free[index].fits(&self.smallest_container) || self.free[index].is_zero() {
            self.remove(index);
        }
    }

    fn remove(&mut self, index: usize) {
        self.live -= 1;
        if self.live == 0 {
            return;
        }
        let (before, after) = (self.prev[index], self.next[index]);
        self.next[before] = after;
        self.prev[after] = before;
        if self.cursor == index {
            self.cursor = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_skips_full_nodes_and_remembers_misfits() {
        let nodes = [
            (Resources::new(2, 200), true),
            (Resources::new(1, 100), false),
            (Resources::new(1, 100), true),
        ];
        let mut ring = NodeRing::new(nodes.into_iter(), 0, Resources::new(1, 100));
        let unit = Resources::new(1, 100);
        let mut order = Vec::new();
        while let Some(index) = ring.find(unit) {
            ring.take(index, unit);
            order.push(index);
        }
        assert_eq!(order, [0, 2, 0], "node 1 is not schedulable");
        assert_eq!(ring.find(Resources::new(1, 50)), None);
    }
}
