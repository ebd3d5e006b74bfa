//! The simulation loop: replays a [`Workload`] in simulated time against the real scheduler.
//!
//! Every round (`round_interval_ms` of simulated time) does, in this order:
//!
//! ```text
//! events due      app submits, task ends, streaming rescales, node losses / returns / joins
//! preemption      every preemption_interval_ms: victims(snapshot) → notices, withdrawals, kills
//! solve           CapacityScheduler::solve(snapshot), timed → containers start, task ends queued
//! sample          every sample_interval_ms: queue shares and user fairness
//! ```
//!
//! The snapshot's node and app vectors are the simulation's own state, updated in place as
//! containers start and end and moved into a `ClusterSnapshot` for each call, so a round never
//! copies the cluster.

mod lifecycle;
mod notices;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use spindle_protocol::{AppId, NodeId, Resources};

use super::containers::ContainerTable;
use super::metrics::{LeafInfo, Recorder, RunFacts, SimReport};
use super::rng::SplitMix64;
use super::workload::{AppKind, AppSpec, NodeChange, NodeEvent, Workload};
use crate::scheduler::capacity::CapacityScheduler;
use crate::scheduler::preemption::NoticeBook;
use crate::scheduler::queues::{QueueConfigError, QueueTree};
use crate::scheduler::share::dominant_share;
use crate::scheduler::snapshot::{ClusterSnapshot, SnapshotApp, SnapshotNode};

/// How the simulated RM runs; the defaults are the RM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Simulated time between two scheduling rounds (the RM's periodic round).
    pub round_interval_ms: u64,
    /// Simulated time between two preemption plans.
    pub preemption_interval_ms: u64,
    /// How long a container under a preemption notice runs before it is killed.
    pub grace_ms: u64,
    /// Simulated time between two samples of queue shares.
    pub sample_interval_ms: u64,
    /// The simulation stops here even if batch apps are still running.
    pub horizon_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            round_interval_ms: 250,
            preemption_interval_ms: 1_000,
            grace_ms: 15_000,
            sample_interval_ms: 10_000,
            horizon_ms: 600_000,
        }
    }
}

/// Where an app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppPhase {
    NotSubmitted,
    Running,
    Finished,
}

/// The simulation's side of one app (the scheduler's side is its `SnapshotApp`).
#[derive(Debug)]
struct AppRun {
    spec: AppSpec,
    app_id: AppId,
    /// Index of its user in the recorder, `None` if its queue is not a leaf.
    user: Option<usize>,
    phase: AppPhase,
    /// Index of its `SnapshotApp` in `Simulation::apps` while it runs.
    position: Option<usize>,
    /// Batch: tasks of each group not yet finished (pending or running).
    unfinished_tasks: Vec<u32>,
    /// Streaming: containers it wants now, and containers it runs (AM not counted).
    target: u32,
    running: u32,
}

/// Why a container ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    Completed,
    Preempted,
    NodeLost,
    /// Given back by its app: a streaming scale-down, an app that finished, a lost AM's attempt.
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at_ms: u64,
    /// Insertion order: ties in time are replayed in the order they were scheduled.
    order: u64,
    kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Submit(usize),
    /// The task in `slot` ends, if the container there still has id `seq`.
    TaskEnds {
        slot: usize,
        seq: u64,
    },
    Rescale {
        app: usize,
        target: u32,
    },
    StreamingEnds(usize),
    /// Index into the workload's node events.
    Node(usize),
}

/// A running simulation. Build with [`Simulation::new`], then [`run`](Simulation::run) it to the
/// end, or step it with [`run_until`](Simulation::run_until) and look at [`leaf_shares`](Simulation::leaf_shares).
#[derive(Debug)]
pub struct Simulation {
    config: SimConfig,
    seed: u64,
    tree: QueueTree,
    scheduler: CapacityScheduler,
    /// Draws task durations as tasks start, so they follow the (deterministic) decisions.
    rng: SplitMix64,
    /// Time of the next round.
    now_ms: u64,
    /// The snapshot's nodes, kept in id order (ids are zero-padded, joins append).
    nodes: Vec<SnapshotNode>,
    node_lost: Vec<bool>,
    node_by_id: HashMap<NodeId, usize>,
    initial_nodes: usize,
    /// The snapshot's apps: those running, in submit order.
    apps: Vec<SnapshotApp>,
    runs: Vec<AppRun>,
    containers: ContainerTable,
    /// Future events by the number of the round that replays them; a round sorts its own few
    /// by (time, order), which costs far less than a heap of every running task.
    events: BTreeMap<u64, Vec<Event>>,
    events_scheduled: u64,
    node_events: Vec<NodeEvent>,
    /// Containers under a preemption notice after the last plan (some may have ended since).
    notices: NoticeBook,
    batch_apps: usize,
    batch_apps_finished: usize,
    recorder: Recorder,
}

impl Simulation {
    /// Sets up the cluster and schedules the workload; `seed` drives task durations.
    pub fn new(config: SimConfig, workload: Workload, seed: u64) -> Result<Simulation, QueueConfigError> {
        assert!(
            config.round_interval_ms > 0 && config.preemption_interval_ms > 0 && config.sample_interval_ms > 0,
            "simulation intervals must be positive: {config:?}"
        );
        let tree = QueueTree::from_config(&workload.queues)?;
        let leaves: Vec<usize> = (0..tree.queues.len()).filter(|&index| tree.queues[index].is_leaf()).collect();
        let leaf_infos = leaves
            .iter()
            .map(|&index| LeafInfo {
                name: tree.queues[index].name.clone(),
                guaranteed_fraction: tree.queues[index].guaranteed_fraction,
                maximum_fraction: tree.queues[index].maximum_fraction,
            })
            .collect();
        let mut user_index: HashMap<(usize, &str), usize> = HashMap::new();
        let mut user_leaf = Vec::new();
        let mut runs = Vec::with_capacity(workload.apps.len());
        for (index, spec) in workload.apps.iter().enumerate() {
            let leaf = tree
                .leaf(&spec.queue)
                .and_then(|queue| leaves.iter().position(|&leaf| leaf == queue));
            let user = leaf.map(|leaf| {
                *user_index.entry((leaf, spec.user.as_str())).or_insert_with(|| {
                    user_leaf.push(leaf);
                    user_leaf.len() - 1
                })
            });
            let unfinished_tasks = match &spec.kind {
                AppKind::Batch { task_groups } => task_groups.iter().map(|group| group.count).collect(),
                AppKind::Streaming { .. } => Vec::new(),
            };
            runs.push(AppRun {
                spec: spec.clone(),
                app_id: AppId {
                    cluster_ts: 1,
                    seq: index as u32 + 1,
                },
                user,
                phase: AppPhase::NotSubmitted,
                position: None,
                unfinished_tasks,
                target: 0,
                running: 0,
            });
        }
        let mut simulation = Simulation {
            config,
            seed,
            scheduler: CapacityScheduler::new(),
            rng: SplitMix64::new(seed ^ 0x005E_ED0F_7A5C),
            now_ms: 0,
            nodes: Vec::with_capacity(workload.nodes.len()),
            node_lost: Vec::new(),
            node_by_id: HashMap::new(),
            initial_nodes: workload.nodes.len(),
            apps: Vec::new(),
            containers: ContainerTable::default(),
            events: BTreeMap::new(),
            events_scheduled: 0,
            node_events: workload.node_events,
            notices: NoticeBook::new(config.grace_ms),
            batch_apps: runs.iter().filter(|run| matches!(run.spec.kind, AppKind::Batch { .. })).count(),
            batch_apps_finished: 0,
            recorder: Recorder::new(leaf_infos, user_leaf),
            runs,
            tree,
        };
        for spec in workload.nodes {
            simulation.add_node(spec);
        }
        for app in 0..simulation.runs.len() {
            simulation.schedule(simulation.runs[app].spec.submit_at_ms, EventKind::Submit(app));
            if let AppKind::Streaming {
                parallelism, ends_at_ms, ..
            } = &simulation.runs[app].spec.kind
            {
                let steps: Vec<_> = parallelism.clone();
                let ends_at_ms = *ends_at_ms;
                for step in steps {
                    simulation.schedule(step.at_ms, EventKind::Rescale { app, target: step.target });
                }
                if let Some(at_ms) = ends_at_ms {
                    simulation.schedule(at_ms, EventKind::StreamingEnds(app));
                }
            }
        }
        for index in 0..simulation.node_events.len() {
            simulation.schedule(simulation.node_events[index].at_ms, EventKind::Node(index));
        }
        Ok(simulation)
    }

    /// Runs rounds until every batch app has finished (or, without batch apps, to the
    /// horizon), then reports.
    pub fn run(mut self) -> SimReport {
        while self.now_ms <= self.config.horizon_ms && !(self.batch_apps > 0 && self.batch_apps_finished == self.batch_apps) {
            self.round();
        }
        self.report()
    }

    /// Runs every round due at or before `at_ms` (the horizon does not apply).
    pub fn run_until(&mut self, at_ms: u64) {
        while self.now_ms <= at_ms {
            self.round();
        }
    }

    /// Each leaf queue's dominant share of the schedulable cluster now, by name.
    pub fn leaf_shares(&self) -> Vec<(String, f64)> {
        let (cluster, leaf_used, _, _) = self.usage();
        self.tree
            .queues
            .iter()
            .filter(|queue| queue.is_leaf())
            .zip(leaf_used)
            .map(|(queue, used)| (queue.name.clone(), dominant_share(used, cluster)))
            .collect()
    }

    /// Simulated time of the next round.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The report so far.
    pub fn report(self) -> SimReport {
        let facts = RunFacts {
            nodes: self.initial_nodes,
            apps: self.runs.len(),
            batch_apps: self.batch_apps,
            batch_apps_finished: self.batch_apps_finished,
            seed: self.seed,
            simulated_ms: self.now_ms.saturating_sub(self.config.round_interval_ms),
            sample_interval_ms: self.config.sample_interval_ms,
        };
        self.recorder.report(facts)
    }

    fn round(&mut self) {
        let this_round = self.now_ms / self.config.round_interval_ms;
        while let Some(entry) = self.events.first_entry()
            && *entry.key() <= this_round
        {
            let mut due = entry.remove();
            due.sort_unstable();
            for event in due {
                self.handle(event.kind);
            }
        }
        if self.now_ms.is_multiple_of(self.config.preemption_interval_ms) {
            self.plan_preemption();
        }
        self.solve();
        if self.now_ms.is_multiple_of(self.config.sample_interval_ms) {
            self.sample();
        }
        self.now_ms += self.config.round_interval_ms;
    }

    fn schedule(&mut self, at_ms: u64, kind: EventKind) {
        self.events_scheduled += 1;
        // The first round at or after `at_ms` replays it.
        let round = at_ms.div_ceil(self.config.round_interval_ms);
        self.events.entry(round).or_default().push(Event {
            at_ms,
            order: self.events_scheduled,
            kind,
        });
    }

    /// Runs `decide` on a snapshot of the current state without copying it.
    fn with_snapshot<T>(&mut self, decide: impl FnOnce(&mut CapacityScheduler, &ClusterSnapshot<'_>) -> T) -> T {
        let snapshot = ClusterSnapshot {
            queues: &self.tree,
            nodes: std::borrow::Cow::Owned(std::mem::take(&mut self.nodes)),
            apps: std::mem::take(&mut self.apps),
            now_ms: self.now_ms,
        };
        let outcome = decide(&mut self.scheduler, &snapshot);
        self.nodes = snapshot.nodes.into_owned();
        self.apps = snapshot.apps;
        outcome
    }

    fn solve(&mut self) {
        let (decisions, wall) = self.with_snapshot(|scheduler, snapshot| {
            let started = Instant::now();
            let decisions = scheduler.solve(snapshot);
            (decisions, started.elapsed())
        });
        self.recorder.record_round(wall, decisions.placements.len());
        for placement in decisions.placements {
            self.start_container(placement);
        }
        self.recorder.peak_live_containers = self.recorder.peak_live_containers.max(self.containers.live());
    }

    fn handle(&mut self, event: EventKind) {
        match event {
            EventKind::Submit(app) => self.submit(app),
            EventKind::TaskEnds { slot, seq } => {
                if self.containers.get(slot).is_some_and(|container| container.id.seq == seq) {
                    self.end_container(slot, EndReason::Completed);
                }
            }
            EventKind::Rescale { app, target } => {
                self.runs[app].target = target;
                if self.runs[app].phase == AppPhase::Running {
                    self.rescale(app);
                }
            }
            EventKind::StreamingEnds(app) => {
                if self.runs[app].phase == AppPhase::Running {
                    self.finish_app(app);
                }
            }
            EventKind::Node(index) => match self.node_events[index].change.clone() {
                NodeChange::Lost(node) => self.lose_node(node),
                NodeChange::Returns(node) => {
                    if self.node_lost.get(node).copied().unwrap_or(false) {
                        self.node_lost[node] = false;
                        self.nodes[node].schedulable = true;
                        self.nodes[node].headroom = self.nodes[node].capacity;
                    }
                }
                NodeChange::Joins(spec) => self.add_node(spec),
            },
        }
    }

    /// Cluster capacity, per-leaf usage, per-user usage and demand, from the running apps.
    fn usage(&self) -> (Resources, Vec<Resources>, Vec<Resources>, Vec<Resources>) {
        let mut cluster = Resources::ZERO;
        for node in self.nodes.iter().filter(|node| node.schedulable) {
            cluster += node.capacity;
        }
        let leaves = self.tree.queues.iter().filter(|queue| queue.is_leaf()).count();
        let users = self.runs.iter().filter_map(|run| run.user).max().map_or(0, |most| most + 1);
        let mut leaf_used = vec![Resources::ZERO; leaves];
        let mut user_used = vec![Resources::ZERO; users];
        let mut user_demand = vec![Resources::ZERO; users];
        for app in &self.apps {
            let Some(user) = self.runs[app.app_id.seq as usize - 1].user else {
                continue;
            };
            let leaf = self.recorder.user_leaf(user);
            leaf_used[leaf] += app.used;
            user_used[user] += app.used;
            let mut demand = app.used + app.pending_am.unwrap_or(Resources::ZERO);
            for ask in &app.asks {
                demand += Resources::new(
                    ask.resources.vcores.saturating_mul(ask.count),
                    ask.resources.memory_mb.saturating_mul(u64::from(ask.count)),
                );
            }
            user_demand[user] += demand;
        }
        (cluster, leaf_used, user_used, user_demand)
    }

    fn sample(&mut self) {
        let (cluster, leaf_used, user_used, user_demand) = self.usage();
        self.recorder.sample(self.now_ms, cluster, &leaf_used, &user_used, &user_demand);
    }
}

#[cfg(test)]
impl Simulation {
    /// Checks that the snapshot the scheduler sees agrees with the containers the simulation runs,
    /// and that every container keeps to the node-label rules.
    pub(crate) fn assert_consistent(&self) {
        let mut node_used = vec![Resources::ZERO; self.nodes.len()];
        for (position, app) in self.apps.iter().enumerate() {
            let run = &self.runs[app.app_id.seq as usize - 1];
            assert_eq!(run.position, Some(position), "app {} is out of place", app.app_id);
            let mut used = Resources::ZERO;
            for (index, snapshot_container) in app.containers.iter().enumerate() {
                let slot = self
                    .containers
                    .slot_of(&snapshot_container.container_id)
                    .expect("snapshot container is live");
                let container = self.containers.get(slot).expect("live");
                assert_eq!(container.position, index);
                assert_eq!(snapshot_container.preempting, container.notice_deadline_ms.is_some());
                used += container.resources;
                node_used[container.node] += container.resources;
                self.assert_label_rules_hold(run, container);
            }
            assert_eq!(app.used, used, "app {} used", app.app_id);
        }
        for (node, used) in self.nodes.iter().zip(node_used) {
            if node.schedulable {
                assert_eq!(node.headroom + used, node.capacity, "node {}", node.node_id);
            } else {
                assert!(used.is_zero(), "lost node {} still runs containers", node.node_id);
            }
        }
    }

    /// A container of an ask requiring a label runs on a node carrying it, and no container runs
    /// on a node with a label its queue may not use.
    fn assert_label_rules_hold(&self, run: &AppRun, container: &super::containers::LiveContainer) {
        let node = &self.nodes[container.node];
        if let (AppKind::Batch { task_groups }, Some(group)) = (&run.spec.kind, container.ask)
            && let Some(label) = &task_groups[group].label
        {
            assert!(node.labels.contains(label), "an ask requiring {label} runs on {}", node.node_id);
        }
        let queue = &self.tree.queues[self.tree.leaf(&run.spec.queue).expect("apps of placed containers have a leaf")];
        assert!(
            node.labels.iter().all(|label| queue.may_use_label(label)),
            "queue {} runs a container on {} labelled {:?}",
            queue.name,
            node.node_id,
            node.labels
        );
    }
}
