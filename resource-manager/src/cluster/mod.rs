//! The cluster state machine: apps, attempts, containers and nodes, and every legal change to
//! them. It is pure: callers pass `now` in, and it performs no I/O. Each change marks the
//! records it touched; the service commits those (one transaction) before anyone is told, and
//! only then carries out the outbox (AM launches, waking long-polling AMs).

mod allocate;
mod apps;
mod containers;
mod controls;
mod history;
mod node_view;
mod nodes;
mod observations;
mod recovery;
mod reports;
mod scheduling;
#[cfg(test)]
mod tests;
mod transitions;
mod view_acl;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use spindle_protocol::{
    AllocateReply, AppId, ContainerId, ContainerStatus, ExitReason, LaunchRequest, NodeAuthority, NodeId, NodeUsage, ResourceAsk, Resources,
};

use crate::records::{AppRecord, ContainerRecord, NodeRecord, WriteBatch};
use crate::scheduler::capacity::{CapacityScheduler, LocalitySettings};
use crate::scheduler::preemption::NoticeBook;
use crate::scheduler::queues::QueueTree;

pub use apps::{AppError, Caller};
pub use history::merge_app_pages;
pub use nodes::NodeError;
pub use observations::Observations;
pub use reports::{AppQuery, forgotten_node_report};
pub use scheduling::ReloadRefused;
pub use view_acl::{ContainerLocation, ContainerPlace, HIDDEN};

/// Timing and identity settings the state machine needs.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Signs AM and container tokens (the cluster secret and the node keys derived from it).
    pub authority: NodeAuthority,
    pub node_expiry_ms: u64,
    /// A departed (DECOMMISSIONED or LOST) node is forgotten this long after it departed;
    /// `None` keeps departed nodes for ever.
    pub departed_node_expiry_ms: Option<u64>,
    pub heartbeat_interval_ms: u64,
    pub container_launch_expiry_ms: u64,
    /// The queue tree; replaced as a whole by a reload.
    pub queues: QueueTree,
    /// Grace period of a preemption notice; `None` turns preemption off.
    pub preemption_grace_ms: Option<u64>,
    pub locality: LocalitySettings,
    /// How many ended apps (with their containers) stay in memory; older ones are read from
    /// the store (`finished_apps_in_memory`).
    pub finished_apps_in_memory: usize,
}

/// The RM's whole in-memory state. One owner (the service) holds it behind one lock.
pub struct Cluster {
    settings: ClusterSettings,
    /// Increases at every RM start; part of container ids and the fence of every store write.
    epoch: u64,
    /// When this RM started: the `cluster_ts` of apps it accepts.
    started_at_ms: u64,
    next_app_seq: u32,
    /// (user, idempotency key) → the app that submission made: a retried submission (its
    /// answer lost in a crash or a failover) names the same app.
    submission_keys: HashMap<(String, String), AppId>,
    /// Ids handed out by YARN's `new-application` and not submitted yet, with the user who
    /// asked: soft state (an RM restart forgets them; the client asks again).
    reserved_app_ids: BTreeMap<AppId, String>,
    apps: BTreeMap<AppId, App>,
    /// Ordered by id, so an app's containers are one range (ids start with the app's).
    containers: BTreeMap<ContainerId, Container>,
    /// Ended apps in memory, in the order they ended: the oldest leave memory first once there
    /// are more than `finished_apps_in_memory` (see `history.rs`).
    ended: VecDeque<AppId>,
    /// The newest app that left memory (at eviction, or kept out by recovery): lists of apps
    /// are complete from memory only above it; below, the store has the rest.
    newest_evicted: Option<AppId>,
    nodes: BTreeMap<NodeId, Node>,
    scheduler: CapacityScheduler,
    /// Containers under a preemption notice and their deadlines.
    notices: NoticeBook,
    /// Something changed that a scheduling round could act on: new demand (a submit, an AM's
    /// asks, a new attempt) or freed room (a completion, a node that can take containers
    /// again). Heartbeats that change neither skip the round, which at thousands of nodes is
    /// most of them; `tick` runs one regardless.
    round_due: bool,
    /// Rounds wait for the owner to call `schedule` instead of running inside the change that
    /// made one due (`defer_rounds`).
    rounds_deferred: bool,
    /// Totals the allocate replies' headroom is worked out from, as of the last round.
    headroom_basis: allocate::HeadroomBasis,
    /// What the scheduler sees of the nodes, kept between rounds.
    node_view: node_view::NodeView,
    dirty: Dirty,
    outbox: Outbox,
}

/// An app and its soft state (asks and undelivered news live only in memory: AMs resend asks
/// with every allocate, and news is rebuilt at recovery).
struct App {
    record: AppRecord,
    /// The current attempt's latest asks, minus what was granted since.
    asks: Vec<ResourceAsk>,
    /// Granted containers the AM has not been told about yet.
    undelivered: Vec<ContainerId>,
    /// Completions the AM has not been told about yet.
    completions: Vec<ContainerStatus>,
    /// Containers not yet COMPLETE, the AM container included.
    live: BTreeSet<ContainerId>,
    allocated: Resources,
    next_container_seq: u64,
    /// The last allocate reply of the current attempt, kept to send again if it was lost.
    last_reply: Option<AllocateReply>,
    /// Why the last scheduling round left it waiting, shown as its diagnostics (not stored:
    /// every round works it out again).
    waiting: Option<String>,
    /// A preemption notice its AM has not heard of yet.
    preempt_news: bool,
    /// A stream app's operator parallelism changed since its AM last heard (every reply
    /// carries the parallelism; this only makes a waiting allocate return at once).
    controls_news: bool,
    /// The stages and counters its AM reported last (not stored: the AM resends them).
    detail: Option<spindle_protocol::JobDetail>,
    /// Since when its AM's asks have been waiting, unmet (the start of the allocation
    /// latency of its grants; soft state, like the asks).
    asks_since_ms: Option<u64>,
}

impl App {
    /// An app as the store knows it, with no soft state yet.
    fn new(record: AppRecord) -> App {
        App {
            record,
            asks: Vec::new(),
            undelivered: Vec::new(),
            completions: Vec::new(),
            live: BTreeSet::new(),
            allocated: Resources::ZERO,
            next_container_seq: 1,
            last_reply: None,
            waiting: None,
            preempt_news: false,
            controls_news: false,
            detail: None,
            asks_since_ms: None,
        }
    }
}

impl Node {
    /// A node as the store knows it, not registered with this RM yet; `now_ms` starts its
    /// `node_expiry` clock.
    fn new(record: NodeRecord, now_ms: u64) -> Node {
        Node {
            record,
            used: Resources::ZERO,
            live: BTreeSet::new(),
            last_heartbeat_ms: now_ms,
            usage: NodeUsage::default(),
            health_report: String::new(),
            registered: false,
            pending_kills: BTreeSet::new(),
            shuffle_apps: BTreeMap::new(),
        }
    }
}

struct Container {
    record: ContainerRecord,
    /// Set when the RM or the AM asked for the kill: the completion gets this reason.
    kill_reason: Option<(spindle_protocol::ExitReason, String)>,
}

struct Node {
    record: NodeRecord,
    used: Resources,
    live: BTreeSet<ContainerId>,
    last_heartbeat_ms: u64,
    usage: NodeUsage,
    health_report: String,
    /// Registered with this RM process (after a restart, recovered nodes must register again).
    registered: bool,
    /// Containers the agent must kill; sent in every heartbeat reply until they complete.
    pending_kills: BTreeSet<ContainerId>,
    /// Apps that ran containers on this node, so their shuffle data may be on its disk, each
    /// with how many heartbeat replies have told the agent to delete it (nodes.rs; soft state).
    shuffle_apps: BTreeMap<AppId, u32>,
}

#[derive(Default)]
struct Dirty {
    apps: BTreeSet<AppId>,
    containers: BTreeSet<ContainerId>,
    nodes: BTreeSet<NodeId>,
    /// The last records of nodes forgotten since the last `take_writes`: no longer in `nodes`,
    /// but still to be written (marked forgotten) as history.
    forgotten_nodes: BTreeMap<NodeId, NodeRecord>,
}

/// Side effects to carry out after the writes are committed.
#[derive(Debug, Default)]
pub struct Outbox {
    /// AM containers to start: the RM launches them itself.
    pub am_launches: Vec<AmLaunch>,
    /// Apps whose AM may be long-polling and has news.
    pub wake: BTreeSet<AppId>,
    /// Apps that have just ended: their logs are aggregated.
    pub ended: Vec<AppId>,
    /// Ended apps that have left memory (`finished_apps_in_memory`): forget their wakers.
    pub evicted: Vec<AppId>,
    /// What the change observed for the metrics (scheduling rounds, grant latencies).
    pub observed: Observations,
}

/// An AM container the RM must start on a node.
#[derive(Debug, Clone)]
pub struct AmLaunch {
    pub node_address: String,
    pub request: LaunchRequest,
}

impl Cluster {
    /// A cluster with no apps or nodes yet (a new database, or before recovery).
    pub fn new(settings: ClusterSettings, epoch: u64, now_ms: u64) -> Cluster {
        Cluster {
            scheduler: CapacityScheduler::with_locality(settings.locality),
            notices: NoticeBook::new(settings.preemption_grace_ms.unwrap_or(0)),
            round_due: false,
            rounds_deferred: false,
            headroom_basis: allocate::HeadroomBasis::default(),
            node_view: node_view::NodeView::default(),
            settings,
            epoch,
            started_at_ms: now_ms,
            next_app_seq: 1,
            submission_keys: HashMap::new(),
            reserved_app_ids: BTreeMap::new(),
            apps: BTreeMap::new(),
            containers: BTreeMap::new(),
            ended: VecDeque::new(),
            newest_evicted: None,
            nodes: BTreeMap::new(),
            dirty: Dirty::default(),
            outbox: Outbox::default(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Whether anything changed since the last `take_writes`.
    pub fn has_writes(&self) -> bool {
        !(self.dirty.apps.is_empty() && self.dirty.containers.is_empty() && self.dirty.nodes.is_empty())
    }

    /// The records changed since the last call, for one transaction.
    pub fn take_writes(&mut self) -> WriteBatch {
        let dirty = std::mem::take(&mut self.dirty);
        WriteBatch {
            apps: dirty
                .apps
                .iter()
                .filter_map(|id| self.apps.get(id))
                .map(|app| app.record.clone())
                .collect(),
            containers: dirty
                .containers
                .iter()
                .filter_map(|id| self.containers.get(id))
                .map(|c| c.record.clone())
                .collect(),
            // A node forgotten and registered again since the last batch is written as it is now.
            nodes: dirty
                .nodes
                .iter()
                .filter_map(|id| {
                    let tracked = self.nodes.get(id).map(|node| node.record.clone());
                    tracked.or_else(|| dirty.forgotten_nodes.get(id).cloned())
                })
                .collect(),
        }
    }

    /// Side effects to perform once the writes are durable.
    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.outbox)
    }

    fn mark_app(&mut self, app_id: AppId) {
        self.dirty.apps.insert(app_id);
    }

    fn mark_container(&mut self, container_id: ContainerId) {
        self.dirty.containers.insert(container_id);
    }

    fn mark_node(&mut self, node_id: &NodeId) {
        // What the scheduler sees of a node comes from its record.
        self.node_view.invalidate();
        self.dirty.nodes.insert(node_id.clone());
    }

    /// The largest container some schedulable node could hold if it were empty.
    pub fn max_container(&self) -> Resources {
        self.nodes
            .values()
            .filter(|node| node.record.state.is_active())
            .map(|node| node.record.capacity)
            .fold(Resources::ZERO, |best, capacity| {
                Resources::new(best.vcores.max(capacity.vcores), best.memory_mb.max(capacity.memory_mb))
            })
    }

    /// Periodic work: drop the oldest ended apps beyond `finished_apps_in_memory`, lose silent
    /// nodes, reclaim unlaunched grants, finish decommissions, forget long-departed nodes,
    /// preempt, place.
    pub fn tick(&mut self, now_ms: u64) {
        let evicted = self.evict_finished();
        self.outbox.evicted.extend(evicted);
        self.expire_nodes(now_ms);
        self.expire_unlaunched_containers(now_ms);
        self.advance_decommissions(now_ms);
        self.forget_departed_nodes(now_ms);
        self.preempt(now_ms);
        self.round_due = true;
        self.schedule(now_ms);
    }

    /// Drops from memory the apps that ended before `cutoff_ms`, after the store purged them
    /// (retention); returns how many.
    pub fn forget_finished_before(&mut self, cutoff_ms: u64) -> usize {
        let old: BTreeSet<AppId> = self
            .apps
            .values()
            .filter(|app| app.record.state.is_terminal() && app.live.is_empty())
            .filter(|app| app.record.finished_at_ms.is_some_and(|finished| finished < cutoff_ms))
            .map(|app| app.record.app_id)
            .collect();
        for app_id in &old {
            self.drop_app(*app_id);
        }
        self.ended.retain(|app_id| !old.contains(app_id));
        old.len()
    }
}

/// The reason and diagnostics a completion gets when nobody asked for the kill.
fn exit_reason_of(code: Option<i32>) -> ExitReason {
    if code == Some(0) { ExitReason::Success } else { ExitReason::Failed }
}
