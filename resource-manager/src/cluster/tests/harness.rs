//! The RM around the state machine, its fake store, and the checks every change goes through.

use super::*;

/// The RM service around the state machine, as `service/` drives it.
pub(super) struct Rm {
    pub(super) cluster: Cluster,
    /// Every batch committed so far, upserted by id: what a restarted RM reloads.
    pub(super) store: FakeStore,
    /// The batch the last change committed.
    pub(super) last_writes: WriteBatch,
    /// AM launches the RM owes, oldest first, until an agent or a test takes them.
    pub(super) launches: Vec<AmLaunch>,
    /// Apps whose long-polling AM was woken since a test last cleared this.
    pub(super) woken: BTreeSet<AppId>,
}

impl Rm {
    pub(super) fn new(cluster: Cluster) -> Rm {
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
    pub(super) fn mutate<T>(&mut self, change: impl FnOnce(&mut Cluster) -> T) -> T {
        let result = change(&mut self.cluster);
        self.last_writes = self.cluster.take_writes();
        self.store.commit(&self.last_writes);
        let outbox = self.cluster.take_outbox();
        self.launches.extend(outbox.am_launches);
        self.woken.extend(outbox.wake);
        check_invariants(&self.cluster);
        self.cluster.check_node_view();
        result
    }

    pub(super) fn submit(&mut self, spec: JobSpec, now: u64) -> Result<AppId, AppError> {
        self.mutate(|cluster| cluster.submit(&caller(), spec, now))
    }

    pub(super) fn kill(&mut self, by: &Caller, app_id: AppId, now: u64) -> Result<(), AppError> {
        self.mutate(|cluster| cluster.kill_app(by, app_id, now))
    }

    pub(super) fn tick(&mut self, now: u64) {
        self.mutate(|cluster| cluster.tick(now));
    }

    pub(super) fn decommission(&mut self, node: &str, timeout_s: u64, force: bool, now: u64) -> Result<(), NodeError> {
        self.mutate(|cluster| cluster.decommission(&node_id(node), timeout_s, force, now))
    }

    /// The RM restarts (with the same settings): a new state machine, one epoch later,
    /// recovered from the store. Side effects the old process still owed are gone with it.
    pub(super) fn restart(&mut self, now: u64) {
        let epoch = self.cluster.epoch() + 1;
        let settings = self.cluster.settings().clone();
        self.cluster = Cluster::recover(settings, epoch, now, self.store.snapshot());
        self.launches.clear();
        self.woken.clear();
        // The service commits and carries out what recovery decided before it serves anyone.
        self.mutate(|_| ());
    }

    pub(super) fn take_launches(&mut self) -> Vec<AmLaunch> {
        std::mem::take(&mut self.launches)
    }

    pub(super) fn app(&self, app_id: AppId) -> AppReport {
        self.cluster.app_report(app_id).expect("the app exists")
    }

    pub(super) fn containers(&self, app_id: AppId) -> Vec<ContainerReport> {
        self.cluster.container_reports(app_id).expect("the app exists")
    }

    pub(super) fn all_containers(&self) -> Vec<ContainerReport> {
        let apps = self.cluster.app_reports(&AppQuery {
            limit: usize::MAX,
            ..AppQuery::default()
        });
        apps.iter().flat_map(|app| self.containers(app.app_id)).collect()
    }

    pub(super) fn container(&self, container_id: ContainerId) -> ContainerReport {
        self.containers(container_id.app)
            .into_iter()
            .find(|c| c.container_id == container_id)
            .expect("the container exists")
    }

    pub(super) fn node(&self, address: &str) -> NodeReport {
        self.cluster.node_report(&node_id(address)).expect("the node exists")
    }

    pub(super) fn am_container(&self, app_id: AppId) -> ContainerId {
        self.app(app_id)
            .attempts
            .last()
            .and_then(|attempt| attempt.am_container)
            .expect("the current attempt has an AM container")
    }
}

/// The store as a restarted RM sees it: every committed record, upserted by id.
#[derive(Debug, Default)]
pub(super) struct FakeStore {
    apps: BTreeMap<AppId, AppRecord>,
    pub(super) containers: BTreeMap<ContainerId, ContainerRecord>,
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
            assert_eq!(
                node.departed_at_ms.is_some(),
                !node.state.is_active(),
                "{} is {:?} with departed_at_ms {:?}",
                node.node_id,
                node.state,
                node.departed_at_ms
            );
            if node.forgotten.is_some() {
                assert!(!node.state.is_active(), "{} forgotten while {:?}", node.node_id, node.state);
                let live_there: Vec<ContainerId> = self
                    .containers
                    .values()
                    .filter(|container| container.node_id == node.node_id && container.state.is_live())
                    .map(|container| container.container_id)
                    .collect();
                assert!(
                    live_there.is_empty(),
                    "{} forgotten with live containers {live_there:?}",
                    node.node_id
                );
            }
            self.nodes.insert(node.node_id.clone(), node.clone());
        }
    }

    /// What `Store::load` returns: forgotten nodes are history, not reloaded.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            apps: self.apps.values().cloned().collect(),
            containers: self.containers.values().cloned().collect(),
            nodes: self.nodes.values().filter(|node| node.forgotten.is_none()).cloned().collect(),
            newest_unloaded_app: None,
        }
    }

    /// The stored record of a node, forgotten or not.
    pub(super) fn node(&self, address: &str) -> Option<&NodeRecord> {
        self.nodes.get(&node_id(address))
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

    // Inside: a forgotten node is never referenced by a live container (departed nodes have none).
    for container in cluster.containers.values().filter(|container| container.record.state.is_live()) {
        assert!(
            cluster.nodes.contains_key(&container.record.node_id),
            "{} is live on {}, which the RM no longer tracks",
            container.record.container_id,
            container.record.node_id
        );
    }
    // A container is in its node's and its app's live sets exactly while it is live.
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
        // The clock of `departed_node_expiry` runs exactly while the node is departed.
        assert_eq!(
            node.record.departed_at_ms.is_some(),
            !node.record.state.is_active(),
            "{} is {:?} with departed_at_ms {:?}",
            node.record.node_id,
            node.record.state,
            node.record.departed_at_ms
        );
        assert!(
            node.record.forgotten.is_none(),
            "{} is tracked but marked forgotten",
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

#[test]
#[should_panic(expected = "which the RM no longer tracks")]
fn the_invariants_catch_a_live_container_on_a_forgotten_node() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    running_job(&mut rm, &mut n1, 1, 0);
    rm.cluster.nodes.remove(&node_id("n1:8042"));
    check_invariants(&rm.cluster);
}
