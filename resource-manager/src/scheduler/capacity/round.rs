//! The working state of one `solve`: queues, users and apps in service order, the limit checks,
//! and the bookkeeping of each placement. Node choice lives in `node_choice.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use spindle_protocol::{AppId, Resources};

use super::LocalitySettings;
use super::locality::{AskLocality, LocalityMisses, has_preferences};
use super::node_choice::{Blocked, NodeChoice};
use crate::scheduler::queues::{QueueCapacity, QueueIndex, QueueTree, scale};
use crate::scheduler::share::{self, Share};
use crate::scheduler::snapshot::{ClusterSnapshot, ContainerKind, ContainerPlacement, Decisions, SnapshotApp, SnapshotNode, WaitReason};

/// Min-heap key of a leaf queue: ratio to its guarantee, then share of the cluster, then index.
type QueueKey = Reverse<(Share, Share, QueueIndex)>;
/// Min-heap key of a user inside a leaf: dominant share, then name, then user index.
type UserKey<'s> = Reverse<(Share, &'s str, usize)>;

/// One user inside one leaf queue (the user limit is per queue).
struct UserState<'s> {
    name: &'s str,
    leaf: QueueIndex,
    used: Resources,
    /// Indices into `Round::apps`, in service order.
    apps: Vec<usize>,
    /// First app in `apps` that may still have something to place.
    next_app: usize,
}

/// Where an app stands in this round.
struct AppState<'s> {
    app: &'s SnapshotApp,
    leaf: QueueIndex,
    user: usize,
    /// The AM, while it is pending and neither placed nor set aside this round.
    pending_am: Option<Resources>,
    /// Set when the app came in with a pending AM: its asks wait until the AM runs.
    asks_wait_for_am: bool,
    /// Current ask and how many of its containers are left.
    ask_index: usize,
    remaining: u32,
    /// The first reason it had to stop, if it did.
    wait_reason: Option<WaitReason>,
    /// The node search's locality state of its current ask, if that ask has preferences.
    locality_slot: Option<usize>,
}

impl AppState<'_> {
    /// The next container this app wants, if any.
    fn current(&self) -> Option<(ContainerKind, Resources)> {
        if let Some(size) = self.pending_am {
            return Some((ContainerKind::Am, size));
        }
        if self.asks_wait_for_am || self.ask_index >= self.app.asks.len() {
            return None;
        }
        Some((ContainerKind::Ask(self.ask_index), self.app.asks[self.ask_index].resources))
    }

    /// Moves past the current container: the AM, or one container of the current ask.
    fn advance(&mut self, kind: ContainerKind, whole_ask: bool) {
        match kind {
            ContainerKind::Am => self.pending_am = None,
            ContainerKind::Ask(_) => {
                self.remaining = if whole_ask { 0 } else { self.remaining - 1 };
                if self.remaining == 0 {
                    self.skip_to_ask(self.ask_index + 1);
                }
            }
        }
    }

    fn skip_to_ask(&mut self, from: usize) {
        self.ask_index = from;
        while let Some(ask) = self.app.asks.get(self.ask_index) {
            if ask.count > 0 {
                self.remaining = ask.count;
                return;
            }
            self.ask_index += 1;
        }
        self.remaining = 0;
    }
}

/// The working state of one `solve`.
pub(super) struct Round<'s> {
    tree: &'s QueueTree,
    nodes: &'s [SnapshotNode],
    cluster: Resources,
    capacities: Vec<QueueCapacity>,
    /// Per queue (leaves and parents): resources held, updated on every placement.
    queue_used: Vec<Resources>,
    /// Per leaf: resources held by AM containers, and the most they may hold.
    am_used: Vec<Resources>,
    am_limit: Vec<Resources>,
    /// Per leaf: the most one user may hold.
    user_limit: Vec<Resources>,
    users: Vec<UserState<'s>>,
    apps: Vec<AppState<'s>>,
    /// Apps whose queue is not a leaf: they wait, nothing else happens to them.
    unknown_queue: Vec<(AppId, WaitReason)>,
    user_heaps: Vec<BinaryHeap<UserKey<'s>>>,
    queue_heap: BinaryHeap<QueueKey>,
    node_choice: NodeChoice<'s>,
    placements: Vec<ContainerPlacement>,
}

impl<'s> Round<'s> {
    pub(super) fn new(
        snapshot: &'s ClusterSnapshot<'s>,
        node_cursor: usize,
        locality: LocalitySettings,
        locality_misses: &'s LocalityMisses,
    ) -> Round<'s> {
        let tree = snapshot.queues;
        let mut cluster = Resources::ZERO;
        for node in snapshot.nodes.iter().filter(|node| node.schedulable) {
            cluster += node.capacity;
        }
        let capacities = tree.capacities(cluster);
        let am_limit = tree
            .queues
            .iter()
            .zip(&capacities)
            .map(|(queue, capacity)| scale(capacity.maximum, f64::from(queue.am_share_percent) / 100.0))
            .collect();
        let user_limit = tree
            .queues
            .iter()
            .zip(&capacities)
            .map(|(queue, capacity)| scale(capacity.maximum, f64::from(queue.user_limit_percent) / 100.0))
            .collect();

        let mut queue_used = vec![Resources::ZERO; tree.queues.len()];
        let mut am_used = vec![Resources::ZERO; tree.queues.len()];
        let mut users: Vec<UserState<'s>> = Vec::new();
        let mut user_index: BTreeMap<(QueueIndex, &'s str), usize> = BTreeMap::new();
        let mut apps = Vec::with_capacity(snapshot.apps.len());
        let mut unknown_queue = Vec::new();
        let mut smallest_container: Option<Resources> = None;
        for app in &snapshot.apps {
            let Some(leaf) = tree.leaf(&app.queue) else {
                let wants_something = app.pending_am.is_some() || app.asks.iter().any(|ask| ask.count > 0);
                if wants_something {
                    unknown_queue.push((app.app_id, WaitReason::UnknownQueue { queue: app.queue.clone() }));
                }
                continue;
            };
            let mut queue = Some(leaf);
            while let Some(index) = queue {
                queue_used[index] += app.used;
                queue = tree.queues[index].parent;
            }
            am_used[leaf] += app.am_used;
            let user = *user_index.entry((leaf, app.user.as_str())).or_insert_with(|| {
                users.push(UserState {
                    name: &app.user,
                    leaf,
                    used: Resources::ZERO,
                    apps: Vec::new(),
                    next_app: 0,
                });
                users.len() - 1
            });
            users[user].used += app.used;
            users[user].apps.push(apps.len());
            let sizes = app.pending_am.into_iter().chain(
                app.asks
                    .iter()
                    .filter(|ask| ask.count > 0 && app.pending_am.is_none())
                    .map(|ask| ask.resources),
            );
            for size in sizes {
                smallest_container = Some(match smallest_container {
                    None => size,
                    Some(smallest) => Resources::new(smallest.vcores.min(size.vcores), smallest.memory_mb.min(size.memory_mb)),
                });
            }
            let mut state = AppState {
                app,
                leaf,
                user,
                pending_am: app.pending_am,
                asks_wait_for_am: app.pending_am.is_some(),
                ask_index: 0,
                remaining: 0,
                wait_reason: None,
                locality_slot: None,
            };
            state.skip_to_ask(0);
            apps.push(state);
        }
        for user in &mut users {
            user.apps.sort_by_key(|&index| {
                let app = apps[index].app;
                (Reverse(app.priority), app.submitted_at_ms, app.app_id)
            });
        }

        let node_choice = NodeChoice::new(
            tree,
            &snapshot.nodes,
            node_cursor,
            smallest_container.unwrap_or(Resources::ZERO),
            locality,
            locality_misses,
        );
        let mut round = Round {
            tree,
            nodes: &snapshot.nodes,
            cluster,
            capacities,
            queue_used,
            am_used,
            am_limit,
            user_limit,
            users,
            apps,
            unknown_queue,
            user_heaps: (0..tree.queues.len()).map(|_| BinaryHeap::new()).collect(),
            queue_heap: BinaryHeap::new(),
            node_choice,
            placements: Vec::new(),
        };
        for user in 0..round.users.len() {
            let key = round.user_key(user);
            round.user_heaps[round.users[user].leaf].push(key);
        }
        for leaf in 0..tree.queues.len() {
            if !round.user_heaps[leaf].is_empty() {
                round.queue_heap.push(round.queue_key(leaf));
            }
        }
        round
    }

    /// Dominant share of `used` in the whole cluster.
    fn dominant_share(&self, used: Resources) -> f64 {
        share::dominant_share(used, self.cluster)
    }

    fn queue_key(&self, leaf: QueueIndex) -> QueueKey {
        let share = self.dominant_share(self.queue_used[leaf]);
        let guaranteed = self.tree.queues[leaf].guaranteed_fraction;
        let ratio = if guaranteed > 0.0 { share / guaranteed } else { f64::INFINITY };
        Reverse((Share(ratio), Share(share), leaf))
    }

    fn user_key(&self, user: usize) -> UserKey<'s> {
        let state = &self.users[user];
        Reverse((Share(self.dominant_share(state.used)), state.name, user))
    }

    /// Places containers one at a time until every ask is placed or set aside.
    pub(super) fn run(&mut self) {
        while let Some(Reverse((_, _, leaf))) = self.queue_heap.pop() {
            // The leaf keeps its place while its users fail: only a placement changes its share.
            while let Some(Reverse((_, _, user))) = self.user_heaps[leaf].pop() {
                if self.place_one_for_user(user) {
                    let key = self.user_key(user);
                    self.user_heaps[leaf].push(key);
                    self.queue_heap.push(self.queue_key(leaf));
                    break;
                }
            }
        }
    }

    /// Places the next container of `user`'s first app that can take one; false when none can.
    fn place_one_for_user(&mut self, user: usize) -> bool {
        while let Some(&app) = self.users[user].apps.get(self.users[user].next_app) {
            while let Some((kind, size)) = self.apps[app].current() {
                match self.check(app, kind, size) {
                    Ok(node) => {
                        self.commit(app, kind, size, node);
                        return true;
                    }
                    Err(blocked) => {
                        let state = &mut self.apps[app];
                        if let Blocked::Wait(reason) = blocked {
                            state.wait_reason.get_or_insert(reason);
                        }
                        // Waiting for locality sets only this ask aside: the app's other asks
                        // and other apps go on.
                        state.advance(kind, true);
                    }
                }
            }
            self.users[user].next_app += 1;
        }
        false
    }

    /// The pipeline of feasibility checks; the cheap limits come before the node search.
    fn check(&mut self, app: usize, kind: ContainerKind, size: Resources) -> Result<usize, Blocked> {
        let state = &self.apps[app];
        let ask = match kind {
            ContainerKind::Am => None,
            ContainerKind::Ask(index) => Some(&state.app.asks[index]),
        };
        // A label the queue may not use or no node carries comes first: it is the reason to show
        // whatever else holds, since only a config or ask change fixes it. The AM is unlabelled.
        let eligibility = self
            .node_choice
            .eligibility(state.leaf, ask.and_then(|ask| ask.label.as_deref()))
            .map_err(Blocked::Wait)?;
        self.check_limits(app, kind, size).map_err(Blocked::Wait)?;
        match (kind, ask) {
            (ContainerKind::Ask(ask_index), Some(ask)) if has_preferences(ask) => {
                let key = (self.apps[app].app.app_id, ask_index);
                let slot = self.node_choice.locality_slot(key, ask, eligibility, self.apps[app].locality_slot);
                self.apps[app].locality_slot = Some(slot);
                self.node_choice.choose_local(slot, eligibility, size)
            }
            _ => {
                self.apps[app].locality_slot = None;
                self.node_choice.choose_any(eligibility, size).map_err(Blocked::Wait)
            }
        }
    }

    /// Queue maximums, the user limit and the AM share, in that order.
    fn check_limits(&self, app: usize, kind: ContainerKind, size: Resources) -> Result<(), WaitReason> {
        let state = &self.apps[app];
        let leaf = state.leaf;
        // Queue maximums first: a queue at its maximum is the reason, whatever else holds.
        let mut queue = Some(leaf);
        while let Some(index) = queue {
            let parent = self.tree.queues[index].parent;
            // A maximum of the whole cluster (the root's, or 100% all the way down) is reached
            // only when the cluster is full: the node search reports that better.
            if self.tree.queues[index].maximum_fraction < 1.0 && !self.capacities[index].maximum.fits(&(self.queue_used[index] + size)) {
                return Err(WaitReason::QueueAtMaximum {
                    queue: self.tree.queues[index].path.clone(),
                    used: self.queue_used[index],
                    maximum: self.capacities[index].maximum,
                });
            }
            queue = parent;
        }
        let user = &self.users[state.user];
        // At 100% the user limit is the queue's maximum, checked above (or the cluster, below).
        if self.tree.queues[leaf].user_limit_percent < 100 && !self.user_limit[leaf].fits(&(user.used + size)) {
            return Err(WaitReason::UserLimit {
                queue: self.tree.queues[leaf].path.clone(),
                user: user.name.to_owned(),
                user_used: user.used,
                user_limit: self.user_limit[leaf],
            });
        }
        // An empty queue may always start one AM, or a small queue could never start any.
        if kind == ContainerKind::Am && !self.am_used[leaf].is_zero() && !self.am_limit[leaf].fits(&(self.am_used[leaf] + size)) {
            return Err(WaitReason::AmShareLimit {
                queue: self.tree.queues[leaf].path.clone(),
                am_used: self.am_used[leaf],
                am_limit: self.am_limit[leaf],
                am_size: size,
            });
        }
        Ok(())
    }

    fn commit(&mut self, app: usize, kind: ContainerKind, size: Resources, node: usize) {
        // `check` just set the slot for this very container: `Some` only for an ask with
        // preferences.
        self.node_choice.take(node, size, self.apps[app].locality_slot);
        let state = &mut self.apps[app];
        let (leaf, user) = (state.leaf, state.user);
        state.advance(kind, false);
        let mut queue = Some(leaf);
        while let Some(index) = queue {
            self.queue_used[index] += size;
            debug_assert!(
                self.tree.queues[index].maximum_fraction >= 1.0 || self.capacities[index].maximum.fits(&self.queue_used[index]),
                "queue {} above its maximum",
                self.tree.queues[index].path
            );
            queue = self.tree.queues[index].parent;
        }
        self.users[user].used += size;
        if kind == ContainerKind::Am {
            self.am_used[leaf] += size;
        }
        self.placements.push(ContainerPlacement {
            app_id: self.apps[app].app.app_id,
            container: kind,
            node_id: self.nodes[node].node_id.clone(),
        });
    }

    /// The decisions, where the next round starts its node search, and what happened to the
    /// asks with preferences (for the locality counters).
    pub(super) fn finish(self) -> (Decisions, usize, Vec<AskLocality>) {
        let mut waiting: Vec<_> = self
            .apps
            .into_iter()
            .filter_map(|state| Some((state.app.app_id, state.wait_reason?)))
            .collect();
        waiting.extend(self.unknown_queue);
        waiting.sort_by_key(|(app_id, _)| *app_id);
        let (node_cursor, evaluated_asks) = self.node_choice.finish();
        let decisions = Decisions {
            placements: self.placements,
            waiting,
        };
        (decisions, node_cursor, evaluated_asks)
    }
}
