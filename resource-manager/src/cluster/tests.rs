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

// ---------------------------------------------------------------------------------------------
// Submitting
// ---------------------------------------------------------------------------------------------

#[test]
fn submit_accepts_the_app_and_launches_its_am_with_a_signed_token() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let spec = shell_spec(3);
    let app_id = rm.submit(spec.clone(), 100).unwrap();

    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Accepted, FinalStatus::Undefined));
    assert_eq!(app.user, "alice");
    assert_eq!(app.attempts.len(), 1);
    assert_eq!(app.attempts[0].attempt, 1);
    assert_eq!(app.attempts[0].node_id, Some(node_id("n1:8042")));
    let am_container = app.attempts[0].am_container.expect("the AM container is granted at once");
    assert_eq!((am_container.app, am_container.attempt, am_container.epoch), (app_id, 1, 1));
    let container = rm.container(am_container);
    assert_eq!(
        (container.state, container.is_am, container.resources),
        (ContainerState::Allocated, true, AM)
    );

    // The app and its AM container are in the change's batch, so they are durable before the launch.
    let written_apps: Vec<AppId> = rm.last_writes.apps.iter().map(|app| app.app_id).collect();
    let written_containers: Vec<ContainerId> = rm.last_writes.containers.iter().map(|c| c.container_id).collect();
    assert_eq!((written_apps, written_containers), (vec![app_id], vec![am_container]));
    assert_eq!(rm.last_writes.apps[0].state, AppState::Accepted);

    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    let launch = &launches[0];
    assert_eq!(launch.node_address, "n1:8042");
    let token = &launch.request.token;
    assert_eq!(
        (token.container_id, token.resources, token.expires_at_ms),
        (am_container, AM, 100 + LAUNCH_EXPIRY_MS)
    );
    secret().verify_container(token, &node_id("n1:8042"), 100).expect("signed for n1");
    assert!(secret().verify_container(token, &node_id("n2:8042"), 100).is_err(), "only for n1");
    assert!(
        ClusterSecret::new("another-secret")
            .verify_container(token, &node_id("n1:8042"), 100)
            .is_err()
    );
    let launch_env = &launch.request.launch.env;
    assert!(secret().verify_am_token(app_id, 1, &launch_env[env::AM_TOKEN]));
    assert!(
        !secret().verify_am_token(app_id, 2, &launch_env[env::AM_TOKEN]),
        "the AM token is for attempt 1 only"
    );
    let job: JobSpec = serde_json::from_str(&launch_env[env::JOB_SPEC]).unwrap();
    assert_eq!(job, spec);
    assert_eq!(launch.request.launch.command, ["spindle", "app-master"]);
}

#[test]
fn a_custom_job_launches_the_users_own_am_command() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.submit(custom_spec(AM), 0).unwrap();
    let launch = &rm.take_launches()[0];
    assert_eq!(launch.request.launch.command, ["./my-am"]);
    assert!(launch.request.launch.env.contains_key(env::AM_TOKEN));
}

#[test]
fn a_job_submitted_before_any_node_waits_for_one() {
    let mut rm = cluster();
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    let app = rm.app(app_id);
    assert_eq!(app.state, AppState::Accepted);
    assert_eq!(app.attempts[0].am_container, None);
    assert!(app.diagnostics.contains("waiting"), "{}", app.diagnostics);
    rm.tick(1_000);
    assert!(rm.take_launches().is_empty());

    register(&mut rm, "n1:8042", 4, 4096, 2_000);
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].node_address, "n1:8042");
    assert_eq!(
        rm.app(app_id).attempts[0].am_container,
        Some(launches[0].request.token.container_id)
    );
}

#[test]
fn a_container_bigger_than_every_node_is_refused_naming_the_field() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    register(&mut rm, "n2:8042", 2, 8192, 0);
    let refused_field = |rm: &mut Rm, spec: JobSpec| match rm.submit(spec, 10) {
        Err(AppError::InvalidSpec(error)) => {
            assert!(rm.last_writes.is_empty(), "a refused job writes nothing");
            assert!(rm.launches.is_empty() && rm.woken.is_empty(), "a refused job has no side effects");
            error.field
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    };

    let mut big_tasks = shell_spec(1);
    big_tasks.shell.as_mut().unwrap().memory_mb = 16_384;
    assert_eq!(refused_field(&mut rm, big_tasks), "shell.memory_mb");
    let mut big_am = shell_spec(1);
    big_am.am = Resources::new(8, 256);
    assert_eq!(refused_field(&mut rm, big_am), "am.vcores");
    assert_eq!(refused_field(&mut rm, custom_spec(Resources::new(1, 10_000))), "am.memory_mb");

    // Nothing was used up by the refusals: the first job accepted is the first app.
    assert_eq!(rm.submit(shell_spec(1), 20).unwrap().seq, 1);
}

#[test]
fn a_container_that_fits_no_single_node_is_refused() {
    let mut rm = cluster();
    register(&mut rm, "cpu:8042", 8, 1024, 0);
    register(&mut rm, "mem:8042", 1, 8192, 0);
    // Each resource alone fits some node, but no node has both: the job could never run.
    let mut spec = shell_spec(1);
    let shell = spec.shell.as_mut().unwrap();
    (shell.vcores, shell.memory_mb) = (4, 4096);
    match rm.submit(spec, 10) {
        Err(AppError::InvalidSpec(error)) => assert!(error.field.starts_with("shell"), "{error}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(rm.last_writes.is_empty());
}

#[test]
fn invalid_specs_are_refused_and_nothing_is_written() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut no_vcores = shell_spec(1);
    no_vcores.shell.as_mut().unwrap().vcores = 0;
    let mut no_am_vcores = shell_spec(1);
    no_am_vcores.am.vcores = 0;
    let mut no_attempts = shell_spec(1);
    no_attempts.max_attempts = 0;
    for (spec, field) in [
        (no_vcores, "shell.vcores"),
        (no_am_vcores, "am.vcores"),
        (no_attempts, "max_attempts"),
        (shell_spec(0), "shell.containers"),
    ] {
        match rm.submit(spec, 10) {
            Err(AppError::InvalidSpec(error)) => assert_eq!(error.field, field),
            other => panic!("expected InvalidSpec for {field}, got {other:?}"),
        }
        assert!(rm.last_writes.is_empty(), "a refused job writes nothing");
    }
    assert!(
        rm.cluster
            .app_reports(&AppQuery {
                limit: usize::MAX,
                ..AppQuery::default()
            })
            .is_empty()
    );
    assert!(rm.take_launches().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The AM protocol
// ---------------------------------------------------------------------------------------------

#[test]
fn a_registered_am_gets_exactly_what_it_asks_for() {
    let mut rm = cluster();
    // Room for many more than three tasks, so an over-grant would show.
    let mut n1 = register(&mut rm, "n1:8042", 16, 16_384, 0);
    let app_id = rm.submit(shell_spec(3), 0).unwrap();
    let am_container = n1.start_am(&mut rm, 10);
    let mut am = Am::of(&rm, app_id);

    let registered = am.register(&mut rm, 20).unwrap();
    assert_eq!(rm.app(app_id).state, AppState::Running);
    assert_eq!(rm.app(app_id).started_at_ms, Some(20));
    assert_eq!(registered.queue, "default");
    assert_eq!(registered.max_container, Resources::new(16, 16_384));
    assert_eq!(registered.live_containers, [am_container]);

    am.ask(&mut rm, 3, 30);
    assert!(rm.woken.contains(&app_id), "a long-polling AM is woken by its grants");
    // The AM has not heard of the grants yet and sends the same absolute ask again.
    am.ask(&mut rm, 3, 40);
    let news = am.collect_news(&mut rm).expect("grants are news");
    assert_eq!(news.allocated.len(), 3);
    assert!(!news.shutdown);
    for allocation in &news.allocated {
        assert_eq!(
            (allocation.node_id.as_str(), allocation.node_address.as_str()),
            ("n1:8042", "n1:8042")
        );
        assert_eq!(allocation.resources, TASK);
        assert_eq!((allocation.container_id.attempt, allocation.container_id.epoch), (1, 1));
        secret()
            .verify_container(&allocation.token, &n1.node_id, 40)
            .expect("a token n1 accepts");
        assert_eq!(rm.container(allocation.container_id).state, ContainerState::Acquired);
    }
    assert_eq!(news.headroom, Resources::new(16 - 4, 16_384 - 256 - 3 * 128));
    assert_eq!(rm.containers(app_id).len(), 4, "the AM container and three tasks, no more");

    // Told of its grants, the AM now wants none beyond them; nothing new happens.
    am.ask(&mut rm, 0, 50);
    assert!(am.collect_news(&mut rm).is_none());
    assert_eq!(rm.containers(app_id).len(), 4);
}

#[test]
fn an_ams_asks_wait_until_it_registers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    n1.start_am(&mut rm, 0);
    let mut am = Am::of(&rm, app_id);
    am.ask(&mut rm, 1, 10);
    assert!(am.collect_news(&mut rm).is_none());
    am.register(&mut rm, 20).unwrap();
    am.ask(&mut rm, 1, 30);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated.len(), 1);
}

#[test]
fn an_ams_asks_are_served_lower_priority_number_first() {
    let mut rm = cluster();
    // After the AM, room for one more container.
    let mut n1 = register(&mut rm, "n1:8042", 2, 2048, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(1), 0);
    let urgent = ResourceAsk {
        priority: 1,
        resources: Resources::new(1, 512),
        ..task_ask(1)
    };
    let later = ResourceAsk {
        priority: 5,
        ..task_ask(1)
    };
    am.update_asks(&mut rm, &am.request(vec![later, urgent], Vec::new()), 10).unwrap();
    let news = am.collect_news(&mut rm).unwrap();
    let sizes: Vec<Resources> = news.allocated.iter().map(|allocation| allocation.resources).collect();
    assert_eq!(sizes, [Resources::new(1, 512)], "the priority-1 ask is served first");
}

#[test]
fn completions_reach_the_am_and_free_the_node() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 100);
    assert_eq!(rm.node("n1:8042").used, Resources::new(4, 256 + 3 * 128));
    for id in &tasks {
        let task = rm.container(*id);
        assert_eq!((task.state, task.started_at_ms), (ContainerState::Running, Some(100)));
    }

    n1.exit(tasks[0], 0, 200);
    let reply = n1.heartbeat(&mut rm, 200);
    assert_eq!(reply.acked, [tasks[0]]);
    assert!(reply.kill.is_empty() && !reply.drain && !reply.shutdown && !reply.resync);
    assert!(rm.woken.contains(&am.app_id));
    let news = am.collect_news(&mut rm).expect("a completion is news");
    assert_eq!(reasons(&news.completed), [(tasks[0], ExitReason::Success)]);
    assert_eq!(news.completed[0].exit_code, Some(0));

    n1.exit(tasks[1], 0, 300);
    n1.exit(tasks[2], 2, 300);
    assert_eq!(sorted(n1.heartbeat(&mut rm, 300).acked), tasks[1..]);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        [(tasks[1], ExitReason::Success), (tasks[2], ExitReason::Failed)]
    );
    let failed = rm.container(tasks[2]);
    assert_eq!(
        (failed.state, failed.exit_code, failed.finished_at_ms),
        (ContainerState::Complete, Some(2), Some(300))
    );

    assert_eq!(rm.node("n1:8042").used, AM, "only the AM is left");
    assert_eq!(rm.app(am.app_id).allocated, AM);
    assert_eq!(n1.running(), [rm.am_container(am.app_id)], "the agent forgot what the RM acked");
    assert!(am.collect_news(&mut rm).is_none(), "every completion is told once");
}

#[test]
fn finishing_the_app_kills_its_other_containers_but_not_the_am() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let am_container = rm.am_container(am.app_id);
    n1.exit(tasks[0], 0, 100);
    n1.heartbeat(&mut rm, 100);

    am.finish(&mut rm, FinalStatus::Succeeded, 200).unwrap();
    let app = rm.app(am.app_id);
    assert_eq!((app.state, app.final_status), (AppState::Finished, FinalStatus::Succeeded));
    assert_eq!((app.progress, app.finished_at_ms), (1.0, Some(200)));

    let reply = n1.heartbeat(&mut rm, 300);
    assert_eq!(sorted(reply.kill.clone()), tasks[1..]);
    assert!(!reply.kill.contains(&am_container), "an AM that finished its app exits by itself");
    n1.heartbeat(&mut rm, 400);
    for id in &tasks[1..] {
        let task = rm.container(*id);
        assert_eq!(
            (task.state, task.exit_reason),
            (ContainerState::Complete, Some(ExitReason::KilledByRm))
        );
    }
    assert_eq!(rm.container(am_container).state, ContainerState::Running);
    assert!(am.collect_news(&mut rm).unwrap().shutdown, "the ended app's AM is told to stop");
    assert!(am.finish(&mut rm, FinalStatus::Succeeded, 450).is_err(), "it finishes once");

    n1.exit(am_container, 0, 500);
    n1.heartbeat(&mut rm, 500);
    assert_eq!(rm.container(am_container).exit_reason, Some(ExitReason::Success));
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
    assert_eq!(rm.app(am.app_id).state, AppState::Finished);
}

#[test]
fn an_am_may_finish_without_registering() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    n1.start_am(&mut rm, 0);
    Am::of(&rm, app_id).finish(&mut rm, FinalStatus::Succeeded, 10).unwrap();
    assert_eq!(rm.app(app_id).state, AppState::Finished);
}

// ---------------------------------------------------------------------------------------------
// AM attempts
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_am_starts_a_clean_new_attempt() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let app_id = am.app_id;
    let first_am = rm.am_container(app_id);

    n1.exit(first_am, 1, 100);
    let reply = n1.heartbeat(&mut rm, 100);
    let app = rm.app(app_id);
    assert_eq!(app.state, AppState::Accepted);
    assert_eq!(app.attempts.len(), 2);
    assert_eq!(app.attempts[0].finished_at_ms, Some(100));
    assert!(
        app.attempts[0].diagnostics.contains("with code 1"),
        "{}",
        app.attempts[0].diagnostics
    );
    assert!(app.diagnostics.contains("starting attempt 2"), "{}", app.diagnostics);
    assert_eq!(sorted(reply.kill.clone()), tasks, "the old attempt's containers go");

    // The next AM is placed at once, with ids and tokens of attempt 2.
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    let second_am = launches[0].request.token.container_id;
    assert_eq!(second_am.attempt, 2);
    assert!(secret().verify_am_token(app_id, 2, &launches[0].request.launch.env[env::AM_TOKEN]));
    rm.launches = launches;

    // The old AM is told to stop and may not register again.
    assert!(am.collect_news(&mut rm).unwrap().shutdown);
    assert!(matches!(am.register(&mut rm, 150), Err(AppError::Conflict(_))));

    // The old tasks end as the agent kills them; the new attempt does not hear of them.
    n1.heartbeat(&mut rm, 200);
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::KilledByRm)));
    assert_eq!(n1.start_am(&mut rm, 300), second_am);
    let mut am2 = Am::of(&rm, app_id);
    assert_eq!(am2.attempt, 2);
    assert_eq!(am2.register(&mut rm, 300).unwrap().live_containers, [second_am]);
    assert_eq!(rm.app(app_id).state, AppState::Running);
    assert!(am2.collect_news(&mut rm).is_none());
}

#[test]
fn the_app_fails_after_max_attempts_failed_attempts() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    for (attempt, now) in [(1, 100), (2, 200)] {
        let am_container = n1.start_am(&mut rm, now);
        assert_eq!(am_container.attempt, attempt);
        n1.exit(am_container, 1, now + 50);
        n1.heartbeat(&mut rm, now + 50);
    }
    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Failed, FinalStatus::Failed));
    assert_eq!(app.attempts.len(), 2);
    assert!(app.diagnostics.contains("max_attempts = 2"), "{}", app.diagnostics);
    assert!(rm.take_launches().is_empty(), "no third attempt");
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
}

#[test]
fn an_am_lost_with_its_node_does_not_count_toward_max_attempts() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    assert_eq!(rm.app(app_id).attempts[0].node_id, Some(node_id("n1:8042")));
    n1.start_am(&mut rm, 0);

    // n1 goes silent; n2 keeps beating.
    n2.heartbeat(&mut rm, 9_000);
    rm.tick(10_001);
    let app = rm.app(app_id);
    assert!(app.attempts[0].diagnostics.contains("NodeLost"), "{}", app.attempts[0].diagnostics);
    assert_eq!((app.state, app.attempts.len()), (AppState::Accepted, 2));

    // Two failures that count, on n2: attempt 3 is allowed, then the app fails.
    for now in [11_000, 12_000] {
        let am_container = n2.start_am(&mut rm, now);
        n2.exit(am_container, 1, now + 10);
        n2.heartbeat(&mut rm, now + 10);
    }
    let app = rm.app(app_id);
    assert_eq!((app.state, app.attempts.len()), (AppState::Failed, 3));
    assert!(app.diagnostics.contains("3 time(s) (max_attempts = 2)"), "{}", app.diagnostics);
}

// ---------------------------------------------------------------------------------------------
// Nodes: loss, launch expiry, release, kill, health, decommissioning
// ---------------------------------------------------------------------------------------------

#[test]
fn a_silent_node_is_lost_and_comes_back_when_it_registers_again() {
    let mut rm = cluster();
    // n1 has room for the AM only, so the tasks go to n2.
    let mut n1 = register(&mut rm, "n1:8042", 1, 256, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    let tasks = grant_and_launch(&mut rm, &mut am, &mut n2, 2, 1_000);

    n1.heartbeat(&mut rm, 5_000);
    n1.heartbeat(&mut rm, 10_000);
    rm.tick(11_000);
    assert_eq!(
        rm.node("n2:8042").state,
        NodeState::Running,
        "exactly node_expiry of silence is not yet too long"
    );
    rm.tick(11_001);
    let lost = rm.node("n2:8042");
    assert_eq!((lost.state, lost.used, lost.containers), (NodeState::Lost, Resources::ZERO, 0));
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::NodeLost)));
    let news = am.collect_news(&mut rm).expect("the AM hears of the loss");
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::NodeLost)).collect::<Vec<_>>()
    );
    assert_eq!(rm.app(am.app_id).state, AppState::Running, "the AM was elsewhere");

    let reply = n2.heartbeat(&mut rm, 12_000);
    assert!(reply.resync && reply.kill.is_empty(), "a lost node is told to register again");

    // It comes back still running the tasks the RM gave up on: it must kill them.
    let reply = n2.register(&mut rm, 13_000);
    assert_eq!(rm.node("n2:8042").state, NodeState::Running);
    assert_eq!(sorted(reply.kill), tasks);
    let reply = n2.heartbeat(&mut rm, 14_000);
    assert_eq!(sorted(reply.acked), tasks, "their ends are acked");
    assert!(
        tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::NodeLost)),
        "and change nothing"
    );
    assert!(
        n2.heartbeat(&mut rm, 15_000).kill.is_empty(),
        "killed and acked: no more kills to send"
    );

    // The node takes containers again.
    am.ask(&mut rm, 1, 16_000);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].node_id, n2.node_id);
}

#[test]
fn an_unknown_node_is_told_to_register() {
    let mut rm = cluster();
    let mut stranger = Agent {
        node_id: node_id("x:8042"),
        capacity: Resources::new(1, 1),
        healthy: true,
        containers: BTreeMap::new(),
    };
    assert!(stranger.heartbeat(&mut rm, 0).resync);
    assert!(rm.last_writes.is_empty());
}

#[test]
fn a_grant_not_launched_by_its_deadline_expires() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    am.ask(&mut rm, 2, 1_000);
    let news = am.collect_news(&mut rm).unwrap();
    let (launched, forgotten) = (news.allocated[0].container_id, news.allocated[1].container_id);
    n1.launch(launched, 2_000);
    n1.heartbeat(&mut rm, 2_000);

    let deadline = 1_000 + LAUNCH_EXPIRY_MS;
    n1.heartbeat(&mut rm, deadline);
    rm.tick(deadline);
    assert_eq!(
        rm.container(forgotten).state,
        ContainerState::Acquired,
        "still launchable at the deadline"
    );
    rm.tick(deadline + 1);
    let expired = rm.container(forgotten);
    assert_eq!(
        (expired.state, expired.exit_reason),
        (ContainerState::Complete, Some(ExitReason::Expired))
    );
    assert!(expired.diagnostics.contains("60 s"), "{}", expired.diagnostics);
    assert!(
        secret()
            .verify_container(&news.allocated[1].token, &n1.node_id, deadline + 1)
            .is_err(),
        "its token has expired too"
    );
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        [(forgotten, ExitReason::Expired)]
    );
    assert_eq!(rm.container(launched).state, ContainerState::Running);
    assert_eq!(rm.node("n1:8042").used, Resources::new(2, 256 + 128));
}

#[test]
fn a_released_container_is_killed_and_completes_as_killed_by_app() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 2, 0);

    am.release(&mut rm, &tasks, 100);
    assert_eq!(
        rm.container(tasks[0]).state,
        ContainerState::Running,
        "running until its agent says it ended"
    );
    let reply = n1.heartbeat(&mut rm, 200);
    assert_eq!(sorted(reply.kill), tasks);
    // Whatever the agent says of the end (here: killed by the RM, and one that died of the signal), it was the AM's doing.
    n1.containers.get_mut(&tasks[1]).unwrap().exit_reason = Some(ExitReason::Failed);
    n1.heartbeat(&mut rm, 300);
    for id in &tasks {
        let task = rm.container(*id);
        assert_eq!(task.exit_reason, Some(ExitReason::KilledByApp), "{id}");
        assert!(task.diagnostics.contains("released"), "{}", task.diagnostics);
    }
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::KilledByApp)).collect::<Vec<_>>()
    );
    assert_eq!(rm.node("n1:8042").used, AM);
}

#[test]
fn a_released_container_that_had_already_succeeded_keeps_its_success() {
    // The rule `complete_container` states: a container that beat the kill to its end keeps
    // its own SUCCESS (or EXCEEDED_MEMORY), so an AM never redoes work that was done.
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 1, 0);
    am.release(&mut rm, &tasks, 100);
    n1.exit(tasks[0], 0, 150);
    n1.heartbeat(&mut rm, 200);
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        [(tasks[0], ExitReason::Success)]
    );
}

#[test]
fn an_am_may_release_only_its_own_containers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (_am, tasks) = running_job(&mut rm, &mut n1, 1, 0);
    let (other, _) = running_job(&mut rm, &mut n1, 1, 0);
    let request = other.request(Vec::new(), tasks.clone());
    assert!(matches!(other.update_asks(&mut rm, &request, 10), Err(AppError::Forbidden(_))));
    assert_eq!(rm.container(tasks[0]).state, ContainerState::Running);
}

#[test]
fn only_the_owner_or_an_admin_may_kill_an_app_and_only_once() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 2, 0);
    let app_id = am.app_id;
    let am_container = rm.am_container(app_id);

    let bob = Caller {
        user: "bob".to_owned(),
        admin: false,
    };
    assert!(matches!(rm.kill(&bob, app_id, 10), Err(AppError::Forbidden(message)) if message.contains("alice")));
    assert!(rm.last_writes.is_empty());
    assert_eq!(rm.app(app_id).state, AppState::Running);

    rm.kill(&caller(), app_id, 20).unwrap();
    let app = rm.app(app_id);
    assert_eq!((app.state, app.final_status), (AppState::Killed, FinalStatus::Killed));
    assert!(app.diagnostics.contains("killed by user alice"), "{}", app.diagnostics);
    assert!(am.collect_news(&mut rm).unwrap().shutdown);
    let reply = n1.heartbeat(&mut rm, 30);
    assert_eq!(
        sorted(reply.kill),
        sorted([tasks.clone(), vec![am_container]].concat()),
        "the AM goes too"
    );
    n1.heartbeat(&mut rm, 40);
    assert!(rm.containers(app_id).iter().all(|c| c.exit_reason == Some(ExitReason::KilledByRm)));
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
    assert!(matches!(rm.kill(&caller(), app_id, 50), Err(AppError::Conflict(_))));
    assert!(matches!(
        rm.kill(&caller(), AppId { cluster_ts: 0, seq: 99 }, 50),
        Err(AppError::NotFound(_))
    ));

    let (other, _) = running_job(&mut rm, &mut n1, 1, 60);
    let root = Caller {
        user: "root".to_owned(),
        admin: true,
    };
    rm.kill(&root, other.app_id, 70).unwrap();
    assert_eq!(rm.app(other.app_id).state, AppState::Killed);
}

#[test]
fn an_unhealthy_node_gets_no_new_containers() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    n1.healthy = false;
    n1.heartbeat(&mut rm, 100);
    let report = rm.node("n1:8042");
    assert_eq!((report.state, report.health_report.as_str()), (NodeState::Unhealthy, "disk full"));
    let app_id = rm.submit(shell_spec(1), 200).unwrap();
    assert_eq!(rm.app(app_id).attempts[0].am_container, None);
    n1.healthy = true;
    n1.heartbeat(&mut rm, 300);
    assert_eq!(rm.node("n1:8042").state, NodeState::Running);
    assert_eq!(n1.start_ams(&mut rm, 300).len(), 1, "placed once the node is healthy again");
}

/// n1 holds only the AM; n2 runs two tasks. Returns the RM, both agents, the AM and the tasks.
fn job_with_tasks_on_n2() -> (Rm, Agent, Agent, Am, Vec<ContainerId>) {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 1, 256, 0);
    let mut n2 = register(&mut rm, "n2:8042", 4, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    let tasks = grant_and_launch(&mut rm, &mut am, &mut n2, 2, 0);
    am.collect_news(&mut rm);
    (rm, n1, n2, am, tasks)
}

#[test]
fn a_decommissioning_node_drains_then_is_decommissioned() {
    let (mut rm, _n1, mut n2, mut am, tasks) = job_with_tasks_on_n2();
    rm.decommission("n2:8042", 300, false, 1_000).unwrap();
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioning);
    let reply = n2.heartbeat(&mut rm, 1_100);
    assert!(reply.drain && !reply.shutdown && reply.kill.is_empty(), "{reply:?}");

    am.ask(&mut rm, 1, 1_200);
    assert!(am.collect_news(&mut rm).is_none(), "a draining node takes no new containers");

    n2.exit(tasks[0], 0, 2_000);
    assert!(n2.heartbeat(&mut rm, 2_000).drain);
    n2.exit(tasks[1], 0, 3_000);
    let reply = n2.heartbeat(&mut rm, 3_000);
    assert!(reply.shutdown && !reply.drain, "{reply:?}");
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioned);
    assert!(n2.heartbeat(&mut rm, 4_000).shutdown);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(
        reasons(&news.completed),
        tasks.iter().map(|id| (*id, ExitReason::Success)).collect::<Vec<_>>()
    );
    assert_eq!(
        rm.cluster.cluster_report(String::new()).capacity,
        Resources::new(1, 256),
        "a decommissioned node is out"
    );

    // The pending ask goes to a node that joins.
    register(&mut rm, "n3:8042", 4, 4096, 5_000);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].node_id, node_id("n3:8042"));

    assert!(matches!(
        rm.decommission("n2:8042", 0, false, 6_000),
        Err(NodeError::Conflict { .. })
    ));
    assert!(matches!(rm.decommission("n9:8042", 0, false, 6_000), Err(NodeError::NotFound(_))));
    assert!(matches!(
        rm.decommission("n3:8042", 8 * 24 * 3600, false, 6_000),
        Err(NodeError::Invalid { field: "timeout_s", .. })
    ));
}

#[test]
fn a_forced_decommission_kills_at_once() {
    let (mut rm, _n1, mut n2, mut am, tasks) = job_with_tasks_on_n2();
    // A third task is granted on n2 but not launched yet: it ends at once.
    am.ask(&mut rm, 1, 500);
    let unlaunched = am.collect_news(&mut rm).unwrap().allocated[0].container_id;

    rm.decommission("n2:8042", 300, true, 1_000).unwrap();
    assert_eq!(rm.container(unlaunched).exit_reason, Some(ExitReason::KilledByRm));
    let reply = n2.heartbeat(&mut rm, 1_100);
    assert_eq!(sorted(reply.kill), tasks);
    let reply = n2.heartbeat(&mut rm, 1_200);
    assert!(reply.shutdown);
    assert_eq!(rm.node("n2:8042").state, NodeState::Decommissioned);
    let completed = reasons(&am.collect_news(&mut rm).unwrap().completed);
    assert_eq!(
        completed,
        [
            (unlaunched, ExitReason::KilledByRm),
            (tasks[0], ExitReason::KilledByRm),
            (tasks[1], ExitReason::KilledByRm)
        ]
    );
}

#[test]
fn a_decommission_timeout_kills_what_is_left_at_the_deadline() {
    let (mut rm, mut n1, mut n2, _am, tasks) = job_with_tasks_on_n2();
    rm.decommission("n2:8042", 30, false, 1_000).unwrap();
    for now in [10_000, 20_000, 30_000] {
        n1.heartbeat(&mut rm, now);
        n2.heartbeat(&mut rm, now);
    }
    rm.tick(30_999);
    assert!(n2.heartbeat(&mut rm, 30_999).kill.is_empty(), "not before the deadline");
    rm.tick(31_000);
    assert_eq!(sorted(n2.heartbeat(&mut rm, 31_000).kill), tasks);
    assert!(n2.heartbeat(&mut rm, 31_100).shutdown);
    assert!(tasks.iter().all(|id| rm.container(*id).exit_reason == Some(ExitReason::KilledByRm)));
}

#[test]
fn decommissioning_an_idle_node_ends_at_once() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    rm.decommission("n1:8042", 300, false, 10).unwrap();
    assert_eq!(rm.node("n1:8042").state, NodeState::Decommissioned);
    assert!(n1.heartbeat(&mut rm, 20).shutdown);
    // A decommissioned agent that starts again is welcome back.
    n1.register(&mut rm, 30);
    assert_eq!(rm.node("n1:8042").state, NodeState::Running);
}

// ---------------------------------------------------------------------------------------------
// Recovery after an RM restart
// ---------------------------------------------------------------------------------------------

#[test]
fn a_restarted_rm_recovers_the_cluster_and_running_work_carries_on() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 8, 8192, 0);
    let (mut am, tasks) = running_job(&mut rm, &mut n1, 3, 0);
    let app_id = am.app_id;
    n1.exit(tasks[0], 0, 1_000);
    n1.heartbeat(&mut rm, 1_000);
    am.collect_news(&mut rm).expect("the AM heard of the end before the restart");
    // A grant the AM never hears of before the RM dies.
    am.ask(&mut rm, 1, 1_100);
    let unheard = rm.containers(app_id).last().unwrap().container_id;
    assert_eq!(rm.container(unheard).state, ContainerState::Allocated);
    let (app_before, containers_before, node_before) = (rm.app(app_id), rm.containers(app_id), rm.node("n1:8042"));

    rm.restart(50_000);
    assert_eq!(rm.cluster.epoch(), 2);
    assert_eq!(rm.app(app_id), app_before);
    assert_eq!(rm.containers(app_id), containers_before);
    let node = rm.node("n1:8042");
    assert_eq!(
        (node.state, node.used, node.containers),
        (node_before.state, node_before.used, node_before.containers)
    );
    assert!(rm.take_launches().is_empty(), "the AM runs: nothing to relaunch");

    // The agent is told to register again, and keeps its containers when it does.
    assert!(n1.heartbeat(&mut rm, 50_100).resync);
    let reply = n1.register(&mut rm, 50_200);
    assert_eq!(reply.epoch, 2);
    assert!(reply.kill.is_empty());
    for id in [rm.am_container(app_id), tasks[1], tasks[2]] {
        assert_eq!(rm.container(id).state, ContainerState::Running, "{id}");
    }
    assert!(!n1.heartbeat(&mut rm, 50_300).resync);

    // The AM reconnects: completions of its attempt are told again (at least once), the unheard grant too.
    let registered = am.register(&mut rm, 50_400).unwrap();
    assert_eq!(registered.live_containers, [rm.am_container(app_id), tasks[1], tasks[2], unheard]);
    let news = am.collect_news(&mut rm).unwrap();
    assert_eq!(reasons(&news.completed), [(tasks[0], ExitReason::Success)]);
    assert_eq!(news.allocated.iter().map(|a| a.container_id).collect::<Vec<_>>(), [unheard]);

    // What is new carries the new epoch and start time.
    am.ask(&mut rm, 1, 50_500);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated[0].container_id.epoch, 2);
    let new_app = rm.submit(shell_spec(1), 50_600).unwrap();
    assert_eq!((new_app.cluster_ts, new_app.seq), (50_000, 1));
    assert!(new_app > app_id);
}

#[test]
fn a_restarted_rm_relaunches_an_am_that_may_never_have_started() {
    let mut rm = cluster();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    let am_container = rm.am_container(app_id);
    rm.restart(1_000);
    let launches = rm.take_launches();
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].request.token.container_id, am_container);
}

#[test]
fn after_a_restart_a_node_that_never_registers_again_is_lost() {
    let (mut rm, mut n1, _n2, mut am, tasks) = job_with_tasks_on_n2();
    rm.restart(50_000);
    n1.register(&mut rm, 50_100);
    am.register(&mut rm, 50_100).unwrap();
    assert!(am.collect_news(&mut rm).is_none());

    n1.heartbeat(&mut rm, 59_000);
    rm.tick(60_000);
    assert_eq!(
        rm.node("n2:8042").state,
        NodeState::Running,
        "a full node_expiry from the restart to come back"
    );
    n1.heartbeat(&mut rm, 60_001);
    rm.tick(60_001);
    assert_eq!(rm.node("n2:8042").state, NodeState::Lost);
    assert_eq!(
        reasons(&am.collect_news(&mut rm).unwrap().completed),
        tasks.iter().map(|id| (*id, ExitReason::NodeLost)).collect::<Vec<_>>()
    );
    assert_eq!(rm.app(am.app_id).state, AppState::Running);
}

#[test]
fn a_restarted_rm_still_kills_the_containers_of_a_killed_app() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    let (am, tasks) = running_job(&mut rm, &mut n1, 2, 0);
    rm.kill(&caller(), am.app_id, 100).unwrap();
    // The RM dies before the agent's next heartbeat could carry the kills.
    rm.restart(1_000);
    n1.register(&mut rm, 1_100);
    let reply = n1.heartbeat(&mut rm, 1_200);
    assert_eq!(
        sorted(reply.kill),
        sorted([tasks.clone(), vec![rm.am_container(am.app_id)]].concat())
    );
    n1.heartbeat(&mut rm, 1_300);
    assert!(
        rm.containers(am.app_id)
            .iter()
            .all(|c| c.exit_reason == Some(ExitReason::KilledByRm))
    );
    assert_eq!(rm.node("n1:8042").used, Resources::ZERO);
}

#[test]
fn a_restarted_rm_still_kills_the_containers_of_a_failed_attempt() {
    let (mut rm, mut n1, mut n2, am, tasks) = job_with_tasks_on_n2();
    let first_am = rm.am_container(am.app_id);
    n1.exit(first_am, 1, 100);
    n1.heartbeat(&mut rm, 100);
    assert_eq!(rm.app(am.app_id).attempts.len(), 2);
    // n2 has not heard that attempt 1's tasks must go when the RM dies.
    rm.restart(1_000);
    n2.register(&mut rm, 1_100);
    assert_eq!(sorted(n2.heartbeat(&mut rm, 1_200).kill), tasks);
}

// ---------------------------------------------------------------------------------------------
// Random operations
// ---------------------------------------------------------------------------------------------

/// Three agents of different sizes; each task and AM container fits every one of them.
const AGENTS: [(&str, u32, u64); 3] = [("a:8042", 4, 4096), ("b:8042", 2, 1024), ("c:8042", 8, 8192)];

/// One thing that may happen to the cluster.
#[derive(Debug, Clone)]
enum Op {
    Submit {
        tasks: u32,
    },
    Register {
        agent: usize,
    },
    /// The agent launches the grants it may launch (AM containers, and tasks their AM acquired),
    /// some of its containers end, and it reports; told to, it registers again.
    Heartbeat {
        agent: usize,
        launch: bool,
        exits: Vec<(usize, i32)>,
    },
    RegisterAm {
        app: usize,
    },
    Ask {
        app: usize,
        count: u32,
    },
    Release {
        app: usize,
        choice: usize,
    },
    Collect {
        app: usize,
    },
    FinishAm {
        app: usize,
        status: FinalStatus,
    },
    Kill {
        app: usize,
    },
    Decommission {
        agent: usize,
        timeout_s: u64,
        force: bool,
    },
    Tick {
        advance_ms: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    let app = 0..4usize;
    let exit_code = prop_oneof![Just(0), Just(1), Just(137)];
    let status = prop_oneof![Just(FinalStatus::Succeeded), Just(FinalStatus::Failed), Just(FinalStatus::Killed)];
    prop_oneof![
        2 => (1u32..5).prop_map(|tasks| Op::Submit { tasks }),
        2 => agent.clone().prop_map(|agent| Op::Register { agent }),
        8 => (agent.clone(), any::<bool>(), proptest::collection::vec((any::<usize>(), exit_code), 0..3))
            .prop_map(|(agent, launch, exits)| Op::Heartbeat { agent, launch, exits }),
        3 => app.clone().prop_map(|app| Op::RegisterAm { app }),
        3 => (app.clone(), 0u32..6).prop_map(|(app, count)| Op::Ask { app, count }),
        1 => (app.clone(), any::<usize>()).prop_map(|(app, choice)| Op::Release { app, choice }),
        3 => app.clone().prop_map(|app| Op::Collect { app }),
        1 => (app.clone(), status).prop_map(|(app, status)| Op::FinishAm { app, status }),
        1 => app.prop_map(|app| Op::Kill { app }),
        1 => (agent, 0u64..20, any::<bool>()).prop_map(|(agent, timeout_s, force)| Op::Decommission { agent, timeout_s, force }),
        3 => (0u64..15_000).prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => Just(Op::Restart),
    ]
}

/// The `index`-th app, wrapping around; none before the first submit.
fn pick(apps: &[AppId], index: usize) -> Option<AppId> {
    (!apps.is_empty()).then(|| apps[index % apps.len()])
}

/// The cluster, its agents and AMs, driven by random operations.
struct Sim {
    rm: Rm,
    agents: Vec<Agent>,
    /// Apps in submission order.
    apps: Vec<AppId>,
    /// The latest AM of each app that has registered.
    ams: BTreeMap<AppId, Am>,
    now: u64,
}

impl Sim {
    fn new() -> Sim {
        let agents = AGENTS
            .iter()
            .map(|(address, vcores, memory_mb)| Agent {
                node_id: node_id(address),
                capacity: Resources::new(*vcores, *memory_mb),
                healthy: true,
                containers: BTreeMap::new(),
            })
            .collect();
        Sim {
            rm: cluster(),
            agents,
            apps: Vec::new(),
            ams: BTreeMap::new(),
            now: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        let rm = &mut self.rm;
        match *op {
            Op::Submit { tasks } => self
                .apps
                .push(rm.submit(shell_spec(tasks), now).expect("every node holds these containers")),
            Op::Register { agent } => {
                self.agents[agent].register(rm, now);
            }
            Op::Heartbeat { agent, launch, ref exits } => {
                let agent = &mut self.agents[agent];
                if rm.cluster.node_report(&agent.node_id).is_none() {
                    return;
                }
                if launch {
                    let launchable: Vec<ContainerId> = rm
                        .all_containers()
                        .into_iter()
                        .filter(|c| c.node_id == agent.node_id && !agent.containers.contains_key(&c.container_id))
                        .filter(|c| c.state == ContainerState::Acquired || (c.is_am && c.state == ContainerState::Allocated))
                        .filter(|c| rm.store.containers[&c.container_id].launch_deadline_ms >= now)
                        .map(|c| c.container_id)
                        .collect();
                    for container_id in launchable {
                        agent.launch(container_id, now);
                    }
                }
                for &(choice, code) in exits {
                    let running = agent.running();
                    if !running.is_empty() {
                        agent.exit(running[choice % running.len()], code, now);
                    }
                }
                if agent.heartbeat(rm, now).resync {
                    agent.register(rm, now);
                }
            }
            Op::RegisterAm { app } => {
                let Some(app_id) = pick(&self.apps, app) else { return };
                let report = rm.app(app_id);
                let am_running = report
                    .attempts
                    .last()
                    .and_then(|attempt| attempt.am_container)
                    .is_some_and(|id| rm.container(id).state == ContainerState::Running);
                if !report.state.is_terminal() && am_running {
                    let am = Am::of(rm, app_id);
                    am.register(rm, now).expect("the current attempt registers");
                    self.ams.insert(app_id, am);
                }
            }
            Op::Ask { app, count } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get(&app_id)) else {
                    return;
                };
                am.ask(rm, count, now);
            }
            Op::Release { app, choice } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get(&app_id)) else {
                    return;
                };
                let granted: Vec<ContainerId> = am.granted.keys().copied().collect();
                if !granted.is_empty() {
                    am.release(rm, &[granted[choice % granted.len()]], now);
                }
            }
            Op::Collect { app } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get_mut(&app_id)) else {
                    return;
                };
                am.collect_news(rm);
            }
            Op::FinishAm { app, status } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get(&app_id)) else {
                    return;
                };
                if let Err(error) = am.finish(rm, status, now) {
                    assert!(matches!(error, AppError::Conflict(_)), "{error}");
                }
            }
            Op::Kill { app } => {
                let Some(app_id) = pick(&self.apps, app) else { return };
                if let Err(error) = rm.kill(&caller(), app_id, now) {
                    assert!(matches!(error, AppError::Conflict(_)), "{error}");
                }
            }
            Op::Decommission { agent, timeout_s, force } => {
                if let Err(error) = rm.decommission(AGENTS[agent].0, timeout_s, force, now) {
                    assert!(matches!(error, NodeError::Conflict { .. } | NodeError::NotFound(_)), "{error}");
                }
            }
            Op::Tick { advance_ms } => {
                self.now += advance_ms;
                rm.tick(self.now);
            }
            Op::Restart => {
                let running = rm.all_containers().iter().filter(|c| c.state == ContainerState::Running).count();
                let ended = rm.cluster.app_reports(&AppQuery { limit: usize::MAX, ..AppQuery::default() }).iter().filter(|a| a.state.is_terminal()).count();
                eprintln!("STAT restart running={running} ended_apps={ended}");
                rm.restart(now)
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5917_d1e),
        ..ProptestConfig::default()
    })]

    /// Whatever happens, in whatever order, the invariants and transition tables hold after
    /// every step (`Rm::mutate` checks them).
    #[test]
    fn random_operations_keep_the_cluster_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.apply(op);
        }
    }
}
