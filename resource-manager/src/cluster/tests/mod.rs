//! Unit tests of the cluster state machine, driven the way the RM service drives it.
//!
//! `Rm` plays the service: every change goes through `Rm::mutate`, which takes the change's
//! write batch, checks each record in it against the transition tables, upserts it into a fake
//! store (what a restarted RM recovers from), keeps the outbox, and checks the cluster's
//! invariants, so every test checks those too. `Agent` plays a node agent, `Am` an application
//! master. Times are milliseconds from 0, when the first RM started.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use spindle_protocol::{
    AllocateReply, AllocateRequest, Allocation, AppId, AppReport, AppState, ClusterSecret, ContainerId, ContainerReport, ContainerState,
    ContainerStatus, CustomSpec, ExitReason, FinalStatus, FinishAmRequest, JobKind, JobSpec, NodeHeartbeatReply, NodeHeartbeatRequest,
    NodeId, NodeReport, NodeState, NodeUsage, RegisterAmReply, RegisterAmRequest, RegisterNodeReply, RegisterNodeRequest, ResourceAsk,
    Resources, ShellSpec, env,
};

use super::{AmLaunch, AppError, AppQuery, Caller, Cluster, ClusterSettings, NodeError};
use crate::records::{AppRecord, ContainerRecord, NodeRecord, Snapshot, WriteBatch};

const SECRET: &str = "test-secret-0123456789";
const NODE_EXPIRY_MS: u64 = 10_000;
const LAUNCH_EXPIRY_MS: u64 = 60_000;
/// The AM container of every job here (the job spec's default).
const AM: Resources = Resources { vcores: 1, memory_mb: 256 };
/// Each task container of `shell_spec`.
const TASK: Resources = Resources { vcores: 1, memory_mb: 128 };

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn settings() -> ClusterSettings {
    ClusterSettings {
        secret: ClusterSecret::new(SECRET),
        node_expiry_ms: NODE_EXPIRY_MS,
        heartbeat_interval_ms: 1000,
        container_launch_expiry_ms: LAUNCH_EXPIRY_MS,
    }
}

fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET)
}

/// A new RM (epoch 1, started at 0) on an empty store.
fn cluster() -> Rm {
    Rm::new(Cluster::new(settings(), 1, 0))
}

/// The user who submits every job here.
fn caller() -> Caller {
    Caller {
        user: "alice".to_owned(),
        admin: false,
    }
}

/// A shell job of `containers` task containers of `TASK` size, with a default AM.
fn shell_spec(containers: u32) -> JobSpec {
    JobSpec {
        name: "test".to_owned(),
        queue: "default".to_owned(),
        kind: JobKind::Shell,
        max_attempts: 2,
        priority: 0,
        am: AM,
        shell: Some(ShellSpec {
            command: vec!["true".to_owned()],
            containers,
            vcores: TASK.vcores,
            memory_mb: TASK.memory_mb,
            env: BTreeMap::new(),
            max_retries: 3,
        }),
        custom: None,
    }
}

fn custom_spec(am: Resources) -> JobSpec {
    JobSpec {
        kind: JobKind::Custom,
        am,
        shell: None,
        custom: Some(CustomSpec {
            command: vec!["./my-am".to_owned()],
            env: BTreeMap::new(),
        }),
        ..shell_spec(1)
    }
}

fn node_id(address: &str) -> NodeId {
    NodeId(address.to_owned())
}

fn task_ask(count: u32) -> ResourceAsk {
    ResourceAsk {
        priority: 0,
        resources: TASK,
        count,
        nodes: Vec::new(),
        racks: Vec::new(),
    }
}

fn sorted(mut ids: Vec<ContainerId>) -> Vec<ContainerId> {
    ids.sort();
    ids
}

fn reasons(statuses: &[ContainerStatus]) -> Vec<(ContainerId, ExitReason)> {
    statuses
        .iter()
        .map(|status| (status.container_id, status.exit_reason.expect("completions have a reason")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The RM around the state machine, its fake store, and the checks every change goes through
// ---------------------------------------------------------------------------------------------

/// The RM service around the state machine, as `service.rs` drives it.
struct Rm {
    cluster: Cluster,
    /// Every batch committed so far, upserted by id: what a restarted RM reloads.
    store: FakeStore,
    /// The batch the last change committed.
    last_writes: WriteBatch,
    /// AM launches the RM owes, oldest first, until an agent or a test takes them.
    launches: Vec<AmLaunch>,
    /// Apps whose long-polling AM was woken since a test last cleared this.
    woken: BTreeSet<AppId>,
}

impl Rm {
    fn new(cluster: Cluster) -> Rm {
        Rm {
            cluster,
            store: FakeStore::default(),
            last_writes: WriteBatch::default(),
            launches: Vec::new(),
            woken: BTreeSet::new(),
        }
    }

    /// Applies one change as the service does: commits its writes (checked against the
    /// transition tables), keeps its side effects, then checks the invariants.
    fn mutate<T>(&mut self, change: impl FnOnce(&mut Cluster) -> T) -> T {
        let result = change(&mut self.cluster);
        self.last_writes = self.cluster.take_writes();
        self.store.commit(&self.last_writes);
        let outbox = self.cluster.take_outbox();
        self.launches.extend(outbox.am_launches);
        self.woken.extend(outbox.wake);
        check_invariants(&self.cluster);
        result
    }

    fn submit(&mut self, spec: JobSpec, now: u64) -> Result<AppId, AppError> {
        self.mutate(|cluster| cluster.submit(&caller(), spec, now))
    }

    fn kill(&mut self, by: &Caller, app_id: AppId, now: u64) -> Result<(), AppError> {
        self.mutate(|cluster| cluster.kill_app(by, app_id, now))
    }

    fn tick(&mut self, now: u64) {
        self.mutate(|cluster| cluster.tick(now));
    }

    fn decommission(&mut self, node: &str, timeout_s: u64, force: bool, now: u64) -> Result<(), NodeError> {
        self.mutate(|cluster| cluster.decommission(&node_id(node), timeout_s, force, now))
    }

    /// The RM restarts: a new state machine, one epoch later, recovered from the store. Side
    /// effects the old process still owed are gone with it.
    fn restart(&mut self, now: u64) {
        let epoch = self.cluster.epoch() + 1;
        self.cluster = Cluster::recover(settings(), epoch, now, self.store.snapshot());
        self.launches.clear();
        self.woken.clear();
        // The service commits and carries out what recovery decided before it serves anyone.
        self.mutate(|_| ());
    }

    fn take_launches(&mut self) -> Vec<AmLaunch> {
        std::mem::take(&mut self.launches)
    }

    fn app(&self, app_id: AppId) -> AppReport {
        self.cluster.app_report(app_id).expect("the app exists")
    }

    fn containers(&self, app_id: AppId) -> Vec<ContainerReport> {
        self.cluster.container_reports(app_id).expect("the app exists")
    }

    fn all_containers(&self) -> Vec<ContainerReport> {
        let apps = self.cluster.app_reports(&AppQuery {
            limit: usize::MAX,
            ..AppQuery::default()
        });
        apps.iter().flat_map(|app| self.containers(app.app_id)).collect()
    }

    fn container(&self, container_id: ContainerId) -> ContainerReport {
        self.containers(container_id.app)
            .into_iter()
            .find(|c| c.container_id == container_id)
            .expect("the container exists")
    }

    fn node(&self, address: &str) -> NodeReport {
        self.cluster.node_report(&node_id(address)).expect("the node exists")
    }

    fn am_container(&self, app_id: AppId) -> ContainerId {
        self.app(app_id)
            .attempts
            .last()
            .and_then(|attempt| attempt.am_container)
            .expect("the current attempt has an AM container")
    }
}

/// The store as a restarted RM sees it: every committed record, upserted by id.
#[derive(Debug, Default)]
struct FakeStore {
    apps: BTreeMap<AppId, AppRecord>,
    containers: BTreeMap<ContainerId, ContainerRecord>,
    nodes: BTreeMap<NodeId, NodeRecord>,
}

/// Pairs of steps one call makes at once, so one batch carries both and the state between them
/// is never written: (from, via, to). Each step must still be legal on its own.
/// `finish_am` by an AM that never registered passes through RUNNING.
const APP_STEPS_IN_ONE_CHANGE: &[(AppState, AppState, AppState)] = &[(AppState::Accepted, AppState::Running, AppState::Finished)];
/// Decommissioning a node with nothing left to drain ends at once.
const NODE_STEPS_IN_ONE_CHANGE: &[(NodeState, NodeState, NodeState)] = &[
    (NodeState::Running, NodeState::Decommissioning, NodeState::Decommissioned),
    (NodeState::Unhealthy, NodeState::Decommissioning, NodeState::Decommissioned),
];

impl FakeStore {
    /// Upserts a batch, first checking each record's change since the last batch that held it.
    fn commit(&mut self, batch: &WriteBatch) {
        for app in &batch.apps {
            let previous = self.apps.get(&app.app_id);
            // `submit` goes NEW → SUBMITTED → ACCEPTED before anything is written.
            check_transition(
                &app.app_id,
                previous.map(|old| old.state),
                app.state,
                &[AppState::Accepted],
                APP_STEPS_IN_ONE_CHANGE,
            );
            if let Some(previous) = previous {
                assert!(previous.attempts.len() <= app.attempts.len(), "{}: attempts were lost", app.app_id);
                assert!(
                    !previous.state.is_terminal() || previous == app,
                    "{}: an ended app was changed",
                    app.app_id
                );
            }
            self.apps.insert(app.app_id, app.clone());
        }
        for container in &batch.containers {
            let id = container.container_id;
            let previous = self.containers.get(&id);
            // The service hands new grants to the AM in the change that made them (ACQUIRED).
            check_transition(
                &id,
                previous.map(|old| old.state),
                container.state,
                &[ContainerState::Allocated, ContainerState::Acquired],
                &[],
            );
            if let Some(previous) = previous {
                assert_eq!(
                    (&previous.node_id, previous.resources),
                    (&container.node_id, container.resources),
                    "{id} moved or resized"
                );
            }
            assert!(self.apps.contains_key(&id.app), "{id} written before its app");
            self.containers.insert(id, container.clone());
        }
        for node in &batch.nodes {
            let previous = self.nodes.get(&node.node_id).map(|old| old.state);
            check_transition(&node.node_id, previous, node.state, &[NodeState::Running], NODE_STEPS_IN_ONE_CHANGE);
            self.nodes.insert(node.node_id.clone(), node.clone());
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            apps: self.apps.values().cloned().collect(),
            containers: self.containers.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
        }
    }
}

/// The three lifecycles, so one check serves them all.
trait Lifecycle: Copy + PartialEq + std::fmt::Debug {
    fn can_become(self, next: Self) -> bool;
}

impl Lifecycle for AppState {
    fn can_become(self, next: Self) -> bool {
        AppState::can_become(self, next)
    }
}

impl Lifecycle for ContainerState {
    fn can_become(self, next: Self) -> bool {
        ContainerState::can_become(self, next)
    }
}

impl Lifecycle for NodeState {
    fn can_become(self, next: Self) -> bool {
        NodeState::can_become(self, next)
    }
}

/// A record's state in a batch is its previous one, a legal next one, or one of the listed
/// two-step changes; a record written for the first time is in one of `first` states.
fn check_transition<S: Lifecycle>(what: &dyn std::fmt::Display, previous: Option<S>, next: S, first: &[S], two_steps: &[(S, S, S)]) {
    let Some(previous) = previous else {
        assert!(first.contains(&next), "{what} first written as {next:?}, expected one of {first:?}");
        return;
    };
    let two_step = two_steps
        .iter()
        .any(|&(from, via, to)| (from, to) == (previous, next) && from.can_become(via) && via.can_become(to));
    assert!(
        previous == next || previous.can_become(next) || two_step,
        "{what}: illegal transition {previous:?} -> {next:?}"
    );
}

fn total(containers: &[&ContainerReport]) -> Resources {
    containers.iter().fold(Resources::ZERO, |sum, container| sum + container.resources)
}

/// What must hold after every change, whatever happened before.
fn check_invariants(cluster: &Cluster) {
    // As users see it, through the reports.
    let apps = cluster.app_reports(&AppQuery {
        limit: usize::MAX,
        ..AppQuery::default()
    });
    let containers: Vec<ContainerReport> = apps
        .iter()
        .flat_map(|app| cluster.container_reports(app.app_id).unwrap_or_default())
        .collect();
    for container in &containers {
        // Live or complete, never both: only a completed container has an exit reason and an end.
        let id = container.container_id;
        assert_eq!(container.state.is_live(), container.exit_reason.is_none(), "{id}: {container:?}");
        assert_eq!(container.state.is_live(), container.finished_at_ms.is_none(), "{id}: {container:?}");
    }
    for node in cluster.node_reports() {
        let live: Vec<&ContainerReport> = containers
            .iter()
            .filter(|c| c.node_id == node.node_id && c.state.is_live())
            .collect();
        assert_eq!(
            node.used,
            total(&live),
            "{}: used is not the sum of its live containers",
            node.node_id
        );
        assert_eq!(node.containers as usize, live.len(), "{}: container count", node.node_id);
        assert!(
            node.capacity.fits(&node.used),
            "{} is over capacity: {} used of {}",
            node.node_id,
            node.used,
            node.capacity
        );
        assert!(
            node.state.is_active() || live.is_empty(),
            "{} is {:?} with live containers",
            node.node_id,
            node.state
        );
    }
    for app in &apps {
        let live: Vec<&ContainerReport> = containers
            .iter()
            .filter(|c| c.container_id.app == app.app_id && c.state.is_live())
            .collect();
        assert_eq!(
            app.allocated,
            total(&live),
            "{}: allocated is not the sum of its live containers",
            app.app_id
        );
        let running = live.iter().filter(|c| c.state == ContainerState::Running).count();
        assert_eq!(app.running_containers as usize, running, "{}: running containers", app.app_id);
        let live_ams: Vec<ContainerId> = live.iter().filter(|c| c.is_am).map(|c| c.container_id).collect();
        assert!(live_ams.len() <= 1, "{} has several live AM containers: {live_ams:?}", app.app_id);
    }

    // Inside: a container is in its node's and its app's live sets exactly while it is live.
    for (id, container) in &cluster.containers {
        let live = container.record.state.is_live();
        let on_node = cluster
            .nodes
            .get(&container.record.node_id)
            .is_some_and(|node| node.live.contains(id));
        let in_app = cluster.apps.get(&id.app).is_some_and(|app| app.live.contains(id));
        assert_eq!(
            (on_node, in_app),
            (live, live),
            "{id} is {:?}; in its node's live set: {on_node}, app's: {in_app}",
            container.record.state
        );
    }
    for node in cluster.nodes.values() {
        assert!(
            node.live.iter().all(|id| cluster.containers.contains_key(id)),
            "{} lists unknown containers",
            node.record.node_id
        );
    }
    // What must not run on (an ended app's containers but the AM container that ended it, a
    // superseded attempt's) is RUNNING with its agent told to kill it: unlaunched ones end at once.
    for app in cluster.apps.values() {
        let current = app.record.attempts.last();
        for id in &app.live {
            let is_current_am = current.and_then(|attempt| attempt.am_container) == Some(*id);
            let must_stop = if app.record.state.is_terminal() {
                !is_current_am
            } else {
                current.map(|attempt| attempt.attempt) != Some(id.attempt)
            };
            if !must_stop {
                continue;
            }
            let container = &cluster.containers[id];
            assert_eq!(
                container.record.state,
                ContainerState::Running,
                "{id} must not run on and should have ended at once"
            );
            assert!(container.kill_reason.is_some(), "{id} must not run on but has no kill reason");
            let node = &cluster.nodes[&container.record.node_id];
            assert!(
                node.pending_kills.contains(id),
                "{id} must not run on, but {} is not told to kill it",
                node.record.node_id
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A node agent and an application master
// ---------------------------------------------------------------------------------------------

/// Plays a node agent: it runs what it is given, reports every container in each heartbeat
/// (ended ones until the RM acks them), and kills what a reply tells it to kill, reporting that
/// in its next heartbeat.
struct Agent {
    node_id: NodeId,
    capacity: Resources,
    healthy: bool,
    containers: BTreeMap<ContainerId, ContainerStatus>,
}

/// A new agent at `address` that registers with the RM.
fn register(rm: &mut Rm, address: &str, vcores: u32, memory_mb: u64, now: u64) -> Agent {
    let mut agent = Agent {
        node_id: node_id(address),
        capacity: Resources::new(vcores, memory_mb),
        healthy: true,
        containers: BTreeMap::new(),
    };
    agent.register(rm, now);
    agent
}

impl Agent {
    fn register(&mut self, rm: &mut Rm, now: u64) -> RegisterNodeReply {
        let request = RegisterNodeRequest {
            node_id: self.node_id.clone(),
            address: self.node_id.0.clone(),
            capacity: self.capacity,
            rack: "/default".to_owned(),
            labels: Vec::new(),
            containers: self.containers.values().cloned().collect(),
        };
        let reply = rm
            .mutate(|cluster| cluster.register_node(request, now))
            .expect("the RM takes the registration");
        self.obey(&reply.kill, &reply.acked, now);
        reply
    }

    fn heartbeat(&mut self, rm: &mut Rm, now: u64) -> NodeHeartbeatReply {
        let request = NodeHeartbeatRequest {
            node_id: self.node_id.clone(),
            usage: NodeUsage::default(),
            healthy: self.healthy,
            health_report: if self.healthy { String::new() } else { "disk full".to_owned() },
            containers: self.containers.values().cloned().collect(),
        };
        let reply = rm.mutate(|cluster| cluster.node_heartbeat(request, now));
        self.obey(&reply.kill, &reply.acked, now);
        reply
    }

    /// Forgets acked completions, and kills (as KILLED_BY_RM) what the RM says must not run.
    fn obey(&mut self, kill: &[ContainerId], acked: &[ContainerId], now: u64) {
        for id in acked {
            if self
                .containers
                .get(id)
                .is_some_and(|status| status.state == ContainerState::Complete)
            {
                self.containers.remove(id);
            }
        }
        for id in kill {
            if self
                .containers
                .get(id)
                .is_some_and(|status| status.state == ContainerState::Running)
            {
                self.end(*id, Some(143), ExitReason::KilledByRm, "killed by the resource manager", now);
            }
        }
    }

    /// Starts a container it was given (the token is checked by whoever calls this).
    fn launch(&mut self, container_id: ContainerId, now: u64) {
        let status = ContainerStatus {
            container_id,
            state: ContainerState::Running,
            exit_code: None,
            exit_reason: None,
            diagnostics: String::new(),
            started_at_ms: Some(now),
            finished_at_ms: None,
        };
        assert!(
            self.containers.insert(container_id, status).is_none(),
            "{container_id} launched twice"
        );
    }

    /// A container's process exits by itself with `code`.
    fn exit(&mut self, container_id: ContainerId, code: i32, now: u64) {
        let reason = if code == 0 { ExitReason::Success } else { ExitReason::Failed };
        self.end(container_id, Some(code), reason, "", now);
    }

    fn end(&mut self, container_id: ContainerId, code: Option<i32>, reason: ExitReason, diagnostics: &str, now: u64) {
        let status = self.containers.get_mut(&container_id).expect("the agent runs it");
        assert_eq!(status.state, ContainerState::Running, "{container_id} ends once");
        status.state = ContainerState::Complete;
        status.exit_code = code;
        status.exit_reason = Some(reason);
        status.diagnostics = diagnostics.to_owned();
        status.finished_at_ms = Some(now);
    }

    fn running(&self) -> Vec<ContainerId> {
        self.containers
            .values()
            .filter(|status| status.state == ContainerState::Running)
            .map(|status| status.container_id)
            .collect()
    }

    /// Starts the AM containers the RM launches on this node, checking their tokens as the
    /// real agent does.
    fn start_ams(&mut self, rm: &mut Rm, now: u64) -> Vec<ContainerId> {
        let (mine, others): (Vec<AmLaunch>, Vec<AmLaunch>) = rm
            .take_launches()
            .into_iter()
            .partition(|launch| launch.request.token.node_id == self.node_id);
        rm.launches = others;
        let mut started = Vec::new();
        for launch in mine {
            secret()
                .verify_container(&launch.request.token, &self.node_id, now)
                .expect("the RM signs AM launches");
            self.launch(launch.request.token.container_id, now);
            started.push(launch.request.token.container_id);
        }
        started
    }

    /// Starts the one AM container the RM launches here.
    fn start_am(&mut self, rm: &mut Rm, now: u64) -> ContainerId {
        let started = self.start_ams(rm, now);
        assert_eq!(started.len(), 1, "one AM launch on {}", self.node_id);
        started[0]
    }
}

/// Plays one attempt of an application master.
struct Am {
    app_id: AppId,
    attempt: u32,
    /// Containers granted to it.
    granted: BTreeMap<ContainerId, Allocation>,
    /// Completions it heard of, in order.
    completed: Vec<ContainerStatus>,
}

impl Am {
    /// The AM of the app's current attempt.
    fn of(rm: &Rm, app_id: AppId) -> Am {
        let attempt = rm.app(app_id).attempts.last().expect("an app has an attempt").attempt;
        Am {
            app_id,
            attempt,
            granted: BTreeMap::new(),
            completed: Vec::new(),
        }
    }

    fn register(&self, rm: &mut Rm, now: u64) -> Result<RegisterAmReply, AppError> {
        let request = RegisterAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
        };
        rm.mutate(|cluster| cluster.register_am(&request, now))
    }

    fn request(&self, asks: Vec<ResourceAsk>, releases: Vec<ContainerId>) -> AllocateRequest {
        AllocateRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            asks,
            releases,
            progress: 0.5,
            wait_ms: 0,
        }
    }

    fn update_asks(&self, rm: &mut Rm, request: &AllocateRequest, now: u64) -> Result<(), AppError> {
        rm.mutate(|cluster| cluster.update_asks(request, now))
    }

    /// Asks for `count` more task containers (an absolute count, as the protocol has it).
    fn ask(&self, rm: &mut Rm, count: u32, now: u64) {
        self.update_asks(rm, &self.request(vec![task_ask(count)], Vec::new()), now)
            .expect("asks are taken");
    }

    fn release(&self, rm: &mut Rm, container_ids: &[ContainerId], now: u64) {
        self.update_asks(rm, &self.request(Vec::new(), container_ids.to_vec()), now)
            .expect("releases are taken");
    }

    /// What an allocate call answers at once, remembered.
    fn collect_news(&mut self, rm: &mut Rm) -> Option<AllocateReply> {
        let reply = rm.mutate(|cluster| cluster.collect_news(self.app_id, self.attempt))?;
        for allocation in &reply.allocated {
            self.granted.insert(allocation.container_id, allocation.clone());
        }
        self.completed.extend(reply.completed.iter().cloned());
        Some(reply)
    }

    fn finish(&self, rm: &mut Rm, final_status: FinalStatus, now: u64) -> Result<(), AppError> {
        let request = FinishAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            final_status,
            diagnostics: "done".to_owned(),
        };
        rm.mutate(|cluster| cluster.finish_am(&request, now))
    }
}

/// Submits a shell job and starts its AM on `agent`; the AM registers.
fn start_job(rm: &mut Rm, agent: &mut Agent, spec: JobSpec, now: u64) -> Am {
    let app_id = rm.submit(spec, now).expect("the job is accepted");
    agent.start_am(rm, now);
    let am = Am::of(rm, app_id);
    am.register(rm, now).expect("the AM registers");
    am
}

/// The AM asks for `count` tasks; all are granted on `agent`, which launches them.
fn grant_and_launch(rm: &mut Rm, am: &mut Am, agent: &mut Agent, count: u32, now: u64) -> Vec<ContainerId> {
    am.ask(rm, count, now);
    let news = am.collect_news(rm).expect("grants are news");
    assert_eq!(news.allocated.len(), count as usize, "room for every task");
    for allocation in &news.allocated {
        assert_eq!(allocation.node_id, agent.node_id, "the tasks go to {}", agent.node_id);
        agent.launch(allocation.container_id, now);
    }
    agent.heartbeat(rm, now);
    news.allocated.iter().map(|allocation| allocation.container_id).collect()
}

/// A shell job of `tasks` containers whose AM and tasks all run on `agent`: where most tests start.
fn running_job(rm: &mut Rm, agent: &mut Agent, tasks: u32, now: u64) -> (Am, Vec<ContainerId>) {
    let mut am = start_job(rm, agent, shell_spec(tasks), now);
    let ids = grant_and_launch(rm, &mut am, agent, tasks, now);
    (am, ids)
}

// ---------------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "illegal transition Complete -> Running")]
fn the_store_check_catches_an_illegal_transition() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (_am, tasks) = running_job(&mut rm, &mut n1, 1, 0);
    n1.exit(tasks[0], 0, 10);
    n1.heartbeat(&mut rm, 10);
    let mut resurrected = rm.store.containers[&tasks[0]].clone();
    resurrected.state = ContainerState::Running;
    rm.store.commit(&WriteBatch {
        containers: vec![resurrected],
        ..WriteBatch::default()
    });
}

mod am_protocol;
mod attempts;
mod nodes;
mod random_operations;
mod recovery;
mod submit;
