//! Which containers to take back so that queues below their guarantee get it: a pure function of
//! a [`ClusterSnapshot`]. The RM sends the chosen containers a notice, waits the grace period,
//! then kills those still chosen with reason `PREEMPTED`.
//!
//! One plan walks this pipeline:
//!
//! ```text
//! loads      per leaf: used (sum of its apps' `used`) and absolute guarantee
//! starved    leaves below their guarantee (dominant share) with pending containers; each
//!            needs min(guaranteed − used, pending) per resource — and only if that is non-zero
//!            in every resource its asks use
//! shortfall  total need − free space usable by the smallest pending container; a resource
//!            free in plenty while the other is short drops out; empty → done
//! donors     leaves above their guarantee (dominant share); only their containers are victims
//! choose     three passes, each taking one container at a time from the donor leaf furthest
//!            over its guarantee (dominant share / guaranteed fraction, re-evaluated after every
//!            take) until the shortfall is covered:
//!              1. containers already under notice (not AMs), so their grace period keeps running
//!              2. the other non-AM containers
//!              3. AM containers of apps whose every other container was already chosen
//! ```
//!
//! Choices, and why:
//!
//! - **Order inside a donor leaf**: the user with the highest dominant share first, then that
//!   user's apps by lowest priority, latest submit, highest id; inside an app the youngest
//!   container (largest `allocated_at_ms`, then highest id) first. A whole app goes before the next
//!   one, so preemption hurts as few apps as possible.
//! - **A donor never goes below its guarantee**: a container is taken only if the leaf's dominant
//!   share without it stays at or above its guaranteed share; there is no overshoot on the donor
//!   side, so a donor may stay above its guarantee by less than one container. The starved side
//!   may get up to one container more than it needs: containers are indivisible, and a starved
//!   leaf's guarantee matters more than a donor's borrowed surplus.
//! - **AMs last, and only with their whole app**: killing an AM ends the attempt and every
//!   container of the app, so an AM is chosen only when all its app's other containers are
//!   chosen too and more is still needed.
//! - **Containers under notice count once**: they are chosen first while still needed (a notice
//!   is never swapped for another container, which would restart the grace period and never kill
//!   anything) and then count towards the shortfall like any victim; those no longer needed are
//!   simply not returned, and the RM withdraws their notice. Resources an AM frees by itself
//!   during the grace period show up as free space or as the starved leaf's `used`, and shrink the
//!   shortfall on the next tick.
//! - **Free space** is counted in whole copies of the smallest pending container of any starved
//!   leaf (componentwise minimum), node by node: slivers too small for any pending container do
//!   not count, so fragmentation cannot starve a queue forever. It stays optimistic for leaves
//!   whose containers are larger than that minimum, and ignores node labels and locality; which
//!   node a victim frees is not considered either.
//! - **Leaf level only**: parent queues are not balanced against each other (a leaf may take back
//!   its guarantee from a cousin even when its parent is at its own guarantee). Maximums do not cap
//!   the need: a leaf's guarantee is within its own maximum, and within its ancestors' maximums
//!   as long as its siblings keep to their guarantees (when they do not, they are donors). Apps
//!   naming no leaf are neither starved nor donors.
//!
//! Cost: the common case (no starved leaf, or free space covers the need) only sums apps, asks and
//! nodes into per-queue totals. A plan sorts the donors' containers once and scans them at most
//! once per pass: O(containers · log containers).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::ops::Range;

use spindle_protocol::{ContainerId, Resources};

use super::queues::{QueueCapacity, QueueIndex, QueueTree};
use super::share::{Share, dominant_share};
use super::snapshot::{ClusterSnapshot, SnapshotContainer, SnapshotNode};

mod notices;
#[cfg(test)]
mod tests;

pub use notices::{NoticeBook, NoticeChanges, STARVATION_PATIENCE_MS};

/// The containers that should be under a preemption notice now, in the order they were chosen.
///
/// Containers already under notice (`preempting`) are chosen again first while they are still
/// needed, so their grace period keeps running; a notice the plan no longer includes is
/// withdrawn by the caller.
pub fn victims(snapshot: &ClusterSnapshot<'_>) -> Vec<ContainerId> {
    let loads = QueueLoads::measure(snapshot);
    let Some(shortfall) = loads.shortfall(&snapshot.nodes) else {
        return Vec::new();
    };
    let Some(mut plan) = Plan::new(snapshot, &loads, shortfall) else {
        return Vec::new();
    };
    plan.pass(|candidate, _| candidate.container.preempting && !candidate.container.is_am);
    plan.pass(|candidate, _| !candidate.container.is_am);
    plan.pass(|candidate, plan| candidate.container.is_am && plan.workers_left[candidate.app] == 0);
    plan.victims
}

/// Componentwise minimum.
fn smaller(a: Resources, b: Resources) -> Resources {
    Resources::new(a.vcores.min(b.vcores), a.memory_mb.min(b.memory_mb))
}

fn saturating_add(a: Resources, b: Resources) -> Resources {
    Resources::new(a.vcores.saturating_add(b.vcores), a.memory_mb.saturating_add(b.memory_mb))
}

/// What every queue holds and waits for, against the cluster of schedulable nodes.
struct QueueLoads<'s> {
    tree: &'s QueueTree,
    cluster: Resources,
    capacities: Vec<QueueCapacity>,
    /// Per queue, dominant share of its absolute guarantee: the line donors must not cross.
    guaranteed_share: Vec<f64>,
    /// Per leaf (parents stay zero: preemption works at leaf level): resources its apps hold.
    used: Vec<Resources>,
    /// Per leaf: resources its apps still wait for (pending AMs and asks), saturating.
    pending: Vec<Resources>,
    /// Per leaf: componentwise smallest pending container, to count usable free space.
    smallest_pending: Vec<Option<Resources>>,
    /// Leaf of each snapshot app (indexed like `snapshot.apps`); `None` for unknown queues.
    app_leaf: Vec<Option<QueueIndex>>,
}

impl<'s> QueueLoads<'s> {
    fn measure(snapshot: &ClusterSnapshot<'s>) -> QueueLoads<'s> {
        let tree = snapshot.queues;
        let mut cluster = Resources::ZERO;
        for node in snapshot.nodes.iter().filter(|node| node.schedulable) {
            cluster += node.capacity;
        }
        let capacities = tree.capacities(cluster);
        let guaranteed_share = capacities
            .iter()
            .map(|capacity| dominant_share(capacity.guaranteed, cluster))
            .collect();
        let queue_count = tree.queues.len();
        let mut used = vec![Resources::ZERO; queue_count];
        let mut pending = vec![Resources::ZERO; queue_count];
        let mut smallest_pending: Vec<Option<Resources>> = vec![None; queue_count];
        let mut app_leaf = Vec::with_capacity(snapshot.apps.len());
        for app in &snapshot.apps {
            let leaf = tree.leaf(&app.queue);
            app_leaf.push(leaf);
            let Some(leaf) = leaf else { continue };
            used[leaf] = saturating_add(used[leaf], app.used);
            let asks = app.asks.iter().filter(|ask| ask.count > 0).map(|ask| (ask.resources, ask.count));
            for (size, count) in app.pending_am.map(|size| (size, 1)).into_iter().chain(asks) {
                pending[leaf] = saturating_add(pending[leaf], size.times(count));
                let smallest = &mut smallest_pending[leaf];
                *smallest = Some(smallest.map_or(size, |smallest| smaller(smallest, size)));
            }
        }
        QueueLoads {
            tree,
            cluster,
            capacities,
            guaranteed_share,
            used,
            pending,
            smallest_pending,
            app_leaf,
        }
    }

    /// What `leaf` needs back, if it is starved: below its guarantee (dominant share), and with
    /// room under its guarantee in every resource its pending containers use — a leaf already at
    /// its memory guarantee gains nothing within it from reclaimed vcores.
    fn starved_need(&self, leaf: QueueIndex) -> Option<Resources> {
        let (used, pending) = (self.used[leaf], self.pending[leaf]);
        if pending.is_zero() || dominant_share(used, self.cluster) >= self.guaranteed_share[leaf] {
            return None;
        }
        let need = smaller(self.capacities[leaf].guaranteed.saturating_sub(&used), pending);
        let lacks = |pending: u64, need: u64| pending > 0 && need == 0;
        if lacks(u64::from(pending.vcores), u64::from(need.vcores)) || lacks(pending.memory_mb, need.memory_mb) {
            return None;
        }
        Some(need)
    }

    /// What preemption must free: the starved leaves' total need minus usable free space;
    /// `None` when that is nothing.
    fn shortfall(&self, nodes: &[SnapshotNode]) -> Option<Resources> {
        let mut need = Resources::ZERO;
        let mut smallest: Option<Resources> = None;
        for leaf in (0..self.tree.queues.len()).filter(|&index| self.tree.queues[index].is_leaf()) {
            if let Some(leaf_need) = self.starved_need(leaf) {
                need = saturating_add(need, leaf_need);
                let leaf_smallest = self.smallest_pending[leaf].unwrap_or(Resources::ZERO);
                smallest = Some(smallest.map_or(leaf_smallest, |smallest| smaller(smallest, leaf_smallest)));
            }
        }
        let smallest = smallest?;
        let mut shortfall = need.saturating_sub(&usable_free(nodes, smallest));
        // When one resource is short and the other is free in plenty (the usual case: vcores
        // run out long before memory), only the short one needs freeing; else taking back
        // 1-vcore tasks of 128 MB for a 256 MB container would cost two victims instead of one.
        // When both are "free" in total but in slivers no container fits, both stay needed.
        let free = nodes
            .iter()
            .filter(|node| node.schedulable)
            .fold(Resources::ZERO, |total, node| saturating_add(total, node.headroom));
        let (vcores_plenty, memory_plenty) = (free.vcores >= need.vcores, free.memory_mb >= need.memory_mb);
        if vcores_plenty && !memory_plenty {
            shortfall.vcores = 0;
        }
        if memory_plenty && !vcores_plenty {
            shortfall.memory_mb = 0;
        }
        (!shortfall.is_zero()).then_some(shortfall)
    }
}

/// Free space on schedulable nodes, counted in whole containers of `size` per node.
fn usable_free(nodes: &[SnapshotNode], size: Resources) -> Resources {
    let mut free = Resources::ZERO;
    for node in nodes.iter().filter(|node| node.schedulable) {
        let headroom = node.headroom;
        if size.is_zero() {
            free = saturating_add(free, headroom);
            continue;
        }
        let by_vcores = headroom.vcores.checked_div(size.vcores).map_or(u64::MAX, u64::from);
        let by_memory = headroom.memory_mb.checked_div(size.memory_mb).unwrap_or(u64::MAX);
        // At most `headroom.vcores` or `headroom.memory_mb / size.memory_mb` copies: no overflow.
        let copies = by_vcores.min(by_memory);
        let usable = Resources::new(size.vcores * copies as u32, size.memory_mb * copies);
        free = saturating_add(free, usable);
    }
    free
}

/// Max-heap key of a donor leaf: how far over its guarantee it is, then its share, then the
/// lower slot (leaf order) first.
type DonorKey = (Share, Share, Reverse<usize>);

/// One container a plan may choose.
struct Candidate<'s> {
    container: &'s SnapshotContainer,
    /// Index of its app in `snapshot.apps`.
    app: usize,
    /// Its app's leaf, a donor.
    leaf: QueueIndex,
}

/// The working state of one plan, built only when something must be freed.
struct Plan<'s> {
    cluster: Resources,
    /// Donor leaves' containers, grouped by leaf, in the order they should go.
    candidates: Vec<Candidate<'s>>,
    /// Per donor leaf: the leaf and its slice of `candidates`.
    donors: Vec<(QueueIndex, Range<usize>)>,
    /// Per queue: guaranteed fraction (orders donors) and share (the floor a donor keeps).
    guaranteed_fraction: Vec<f64>,
    guaranteed_share: Vec<f64>,
    /// Per queue: what it holds minus what this plan took so far.
    left: Vec<Resources>,
    /// What the victims chosen so far do not cover yet.
    still_needed: Resources,
    /// Per snapshot app: non-AM containers not chosen yet (an AM goes only when this is 0).
    workers_left: Vec<u32>,
    /// Ids chosen so far: later passes scan earlier passes' victims again, and a malformed
    /// snapshot might list one id twice.
    chosen: HashSet<ContainerId>,
    victims: Vec<ContainerId>,
}

impl<'s> Plan<'s> {
    /// Orders the donors' containers; `None` when no leaf is above its guarantee.
    fn new(snapshot: &'s ClusterSnapshot<'s>, loads: &QueueLoads<'s>, shortfall: Resources) -> Option<Plan<'s>> {
        let is_donor = |leaf: QueueIndex| dominant_share(loads.used[leaf], loads.cluster) > loads.guaranteed_share[leaf];
        let mut donor_apps: Vec<(usize, QueueIndex)> = (0..snapshot.apps.len())
            .filter_map(|app| Some((app, loads.app_leaf[app].filter(|&leaf| is_donor(leaf))?)))
            .collect();
        if donor_apps.is_empty() {
            return None;
        }
        let mut user_used: BTreeMap<(QueueIndex, &str), Resources> = BTreeMap::new();
        for &(app, leaf) in &donor_apps {
            let app = &snapshot.apps[app];
            let used = user_used.entry((leaf, app.user.as_str())).or_insert(Resources::ZERO);
            *used = saturating_add(*used, app.used);
        }
        donor_apps.sort_by_cached_key(|&(app, leaf)| {
            let app = &snapshot.apps[app];
            let user_share = dominant_share(user_used[&(leaf, app.user.as_str())], loads.cluster);
            (
                leaf,
                Reverse(Share(user_share)),
                app.user.as_str(),
                app.priority,
                Reverse(app.submitted_at_ms),
                Reverse(app.app_id),
            )
        });

        let mut candidates = Vec::new();
        let mut donors: Vec<(QueueIndex, Range<usize>)> = Vec::new();
        let mut workers_left = vec![0; snapshot.apps.len()];
        for &(app, leaf) in &donor_apps {
            let start = candidates.len();
            let containers = &snapshot.apps[app].containers;
            candidates.extend(containers.iter().map(|container| Candidate { container, app, leaf }));
            candidates[start..].sort_unstable_by_key(|candidate| {
                (
                    Reverse(candidate.container.allocated_at_ms),
                    Reverse(candidate.container.container_id),
                )
            });
            workers_left[app] = containers.iter().filter(|container| !container.is_am).count() as u32;
            match donors.last_mut() {
                Some((last, range)) if *last == leaf => range.end = candidates.len(),
                _ => donors.push((leaf, start..candidates.len())),
            }
        }
        Some(Plan {
            cluster: loads.cluster,
            candidates,
            donors,
            guaranteed_fraction: loads.tree.queues.iter().map(|queue| queue.guaranteed_fraction).collect(),
            guaranteed_share: loads.guaranteed_share.clone(),
            left: loads.used.clone(),
            still_needed: shortfall,
            workers_left,
            chosen: HashSet::new(),
            victims: Vec::new(),
        })
    }

    fn donor_key(&self, slot: usize) -> DonorKey {
        let leaf = self.donors[slot].0;
        let share = dominant_share(self.left[leaf], self.cluster);
        let guaranteed = self.guaranteed_fraction[leaf];
        let ratio = if guaranteed > 0.0 { share / guaranteed } else { f64::INFINITY };
        (Share(ratio), Share(share), Reverse(slot))
    }

    /// Takes containers `eligible` accepts, one at a time from the donor furthest over its
    /// guarantee, until nothing more is needed or no donor has an eligible container left.
    fn pass(&mut self, eligible: impl Fn(&Candidate<'s>, &Plan<'s>) -> bool) {
        let mut cursors: Vec<usize> = self.donors.iter().map(|(_, range)| range.start).collect();
        let mut heap: BinaryHeap<DonorKey> = (0..self.donors.len()).map(|slot| self.donor_key(slot)).collect();
        while !self.still_needed.is_zero() {
            let Some((_, _, Reverse(slot))) = heap.pop() else { break };
            // Whatever the cursor skips stays unusable: needs and donor budgets only shrink.
            let end = self.donors[slot].1.end;
            while cursors[slot] < end {
                let index = cursors[slot];
                cursors[slot] += 1;
                if eligible(&self.candidates[index], self) && self.can_take(index) {
                    self.take(index);
                    heap.push(self.donor_key(slot));
                    break;
                }
            }
        }
    }

    /// Not chosen yet, frees something still needed, and leaves its donor at its guarantee.
    fn can_take(&self, index: usize) -> bool {
        let candidate = &self.candidates[index];
        let container = candidate.container;
        let leaf = candidate.leaf;
        !smaller(container.resources, self.still_needed).is_zero()
            && !self.chosen.contains(&container.container_id)
            && dominant_share(self.left[leaf].saturating_sub(&container.resources), self.cluster) >= self.guaranteed_share[leaf]
    }

    fn take(&mut self, index: usize) {
        let candidate = &self.candidates[index];
        let container = candidate.container;
        let leaf = candidate.leaf;
        self.left[leaf] = self.left[leaf].saturating_sub(&container.resources);
        debug_assert!(dominant_share(self.left[leaf], self.cluster) >= self.guaranteed_share[leaf]);
        self.still_needed = self.still_needed.saturating_sub(&container.resources);
        if !container.is_am {
            self.workers_left[candidate.app] -= 1;
        }
        self.chosen.insert(container.container_id);
        self.victims.push(container.container_id);
    }
}
