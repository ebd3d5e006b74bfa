//! Unit tests of the job state machine, driven through a small harness that plays the RM,
//! the agents and the tasks.

use std::collections::BTreeMap;

use spindle_protocol::{Allocation, AppId, ContainerId, ContainerState, ContainerStatus, ContainerToken, ExitReason, NodeId, Resources};

use super::*;
use crate::task_protocol::{JobFunctions, TaskOutcome, TaskReport, TaskWork};
use crate::{Partitioner, Split, TaskCounters};
use spindle_app_master::{LaunchFailure, LaunchFailureKind};

pub(super) fn node(name: &str) -> NodeId {
    NodeId(name.to_owned())
}

pub(super) fn map(task: u32, attempt: u32) -> TaskAttemptId {
    TaskAttemptId {
        kind: TaskKind::Map,
        task,
        attempt,
    }
}

pub(super) fn reduce(task: u32, attempt: u32) -> TaskAttemptId {
    TaskAttemptId {
        kind: TaskKind::Reduce,
        task,
        attempt,
    }
}

pub(super) fn plan(maps: u32, reducers: u32, preferred: Vec<Vec<NodeId>>) -> JobPlan {
    JobPlan {
        splits: (0..maps)
            .map(|index| Split {
                path: "/data/in.txt".into(),
                start: u64::from(index) * 100,
                length: 100,
            })
            .collect(),
        preferred_nodes: preferred,
        partitioner: Partitioner::Hash { reducers },
        functions: JobFunctions {
            mapper: "wordcount".to_owned(),
            combiner: Some("sum".to_owned()),
            reducer: "sum".to_owned(),
            sort_buffer_bytes: 1 << 20,
            env: BTreeMap::new(),
        },
        output_temp_dir: "/data/.out.spindle-app".into(),
        am_url: "http://am:9000".to_owned(),
    }
}

pub(super) fn settings() -> JobSettings {
    JobSettings {
        map_resources: Resources::new(1, 512),
        reduce_resources: Resources::new(1, 1024),
        max_task_attempts: 4,
        max_containers: None,
        node_failure_threshold: 2,
        label: None,
        speculation: None,
    }
}

/// Plays the RM (grants, completions) and the tasks (reports) around one job.
pub(super) struct Harness {
    pub job: MapReduceJob,
    next_container: u64,
    pub now_ms: u64,
    /// The attempt each launched container runs, to address it by attempt.
    pub launched: BTreeMap<TaskAttemptId, ContainerId>,
}

impl Harness {
    pub fn new(plan: JobPlan, settings: JobSettings) -> Self {
        Harness {
            job: MapReduceJob::new(plan, settings),
            next_container: 1,
            now_ms: 0,
            launched: BTreeMap::new(),
        }
    }

    pub fn allocation(&mut self, node_name: &str) -> Allocation {
        let container_id = ContainerId {
            app: AppId { cluster_ts: 1, seq: 1 },
            attempt: 1,
            epoch: 0,
            seq: self.next_container,
        };
        self.next_container += 1;
        let resources = Resources::new(1, 1024);
        Allocation {
            container_id,
            node_id: node(node_name),
            node_address: format!("{node_name}:8042"),
            resources,
            token: ContainerToken {
                container_id,
                node_id: node(node_name),
                resources,
                expires_at_ms: u64::MAX,
                signature: String::new(),
                user: "nobody".to_owned(),
                key_generation: 0,
                shuffle_token: String::new(),
            },
        }
    }

    pub fn grant(&mut self, node_name: &str) -> GrantDecision {
        let allocation = self.allocation(node_name);
        let decision = self.job.on_granted(allocation, self.now_ms);
        if let GrantDecision::Launch(launch) = &decision {
            self.launched.insert(launch.assignment.attempt, launch.allocation.container_id);
        }
        decision
    }

    /// Grants a container on `node_name` and expects a launch.
    pub fn launch(&mut self, node_name: &str) -> TaskLaunch {
        match self.grant(node_name) {
            GrantDecision::Launch(launch) => *launch,
            other => panic!("expected a launch on {node_name}, got {other:?}"),
        }
    }

    pub fn report(&mut self, attempt: TaskAttemptId, progress: f32, outcome: Option<TaskOutcome>) {
        let counters = TaskCounters {
            map_input_records: u64::from(attempt.kind == TaskKind::Map) * 10,
            reduce_output_records: u64::from(attempt.kind == TaskKind::Reduce) * 3,
            ..TaskCounters::default()
        };
        let report = TaskReport {
            attempt,
            progress,
            counters,
            outcome,
        };
        self.job.on_task_report(&report, self.now_ms);
    }

    pub fn complete(&mut self, attempt: TaskAttemptId, reason: ExitReason, exit_code: Option<i32>) {
        let container_id = self.launched[&attempt];
        let status = ContainerStatus {
            container_id,
            state: ContainerState::Complete,
            exit_code,
            exit_reason: Some(reason),
            diagnostics: String::new(),
            started_at_ms: None,
            finished_at_ms: None,
        };
        self.job.on_container_completed(&status, self.now_ms);
    }

    /// The task reports success, then its container exits 0 (the usual order).
    pub fn succeed(&mut self, attempt: TaskAttemptId) {
        self.report(attempt, 1.0, Some(TaskOutcome::Succeeded));
        self.complete(attempt, ExitReason::Success, Some(0));
    }

    /// The task reports a failure of its own, and its container exits 1.
    pub fn fail(&mut self, attempt: TaskAttemptId, error: &str) {
        self.report(attempt, 0.5, Some(TaskOutcome::Failed { error: error.to_owned() }));
        self.complete(attempt, ExitReason::Failed, Some(1));
    }

    pub fn ask_total(&self) -> u32 {
        self.job.asks().iter().map(|ask| ask.count).sum()
    }
}

pub(super) fn launched_attempt(launch: &TaskLaunch) -> TaskAttemptId {
    launch.assignment.attempt
}

#[test]
fn happy_path_runs_every_map_then_every_reduce_and_becomes_ready_to_commit() {
    let mut harness = Harness::new(plan(3, 2, Vec::new()), settings());
    let asks = harness.job.asks();
    assert_eq!(asks.len(), 1, "one map ask, no reduce ask before the maps are done: {asks:?}");
    assert_eq!(
        (asks[0].priority, asks[0].count, asks[0].resources),
        (MAP_PRIORITY, 3, Resources::new(1, 512))
    );

    let nodes = ["a", "b", "c"];
    for (index, node_name) in nodes.iter().enumerate() {
        let launch = harness.launch(node_name);
        assert_eq!(launched_attempt(&launch), map(index as u32, 0));
        let TaskWork::Map { split, .. } = &launch.assignment.work else {
            panic!("a map")
        };
        assert_eq!(split.start, index as u64 * 100);
        assert_eq!(launch.assignment.am_url, "http://am:9000");
    }
    assert!(harness.job.asks().is_empty(), "every map runs");
    assert!(matches!(
        harness.grant("d"),
        GrantDecision::Release {
            reason: ReleaseReason::NothingToRun,
            ..
        }
    ));

    for index in 0..3 {
        harness.succeed(map(index, 0));
    }
    let asks = harness.job.asks();
    assert_eq!(asks.len(), 1);
    assert_eq!(
        (asks[0].priority, asks[0].count, asks[0].resources),
        (REDUCE_PRIORITY, 2, Resources::new(1, 1024))
    );

    let launch = harness.launch("c");
    assert_eq!(launched_attempt(&launch), reduce(0, 0));
    let TaskWork::Reduce {
        partition,
        maps,
        output_dir,
    } = &launch.assignment.work
    else {
        panic!("a reduce")
    };
    assert_eq!(*partition, 0);
    assert_eq!(output_dir, "/data/.out.spindle-app/r_000000_0");
    let locations: Vec<(u32, &str, &str)> = maps
        .iter()
        .map(|location| (location.map, location.node_address.as_str(), location.output_name.as_str()))
        .collect();
    assert_eq!(
        locations,
        [
            (0, "a:8042", "m_000000_0"),
            (1, "b:8042", "m_000001_0"),
            (2, "c:8042", "m_000002_0")
        ]
    );
    assert_eq!(launched_attempt(&harness.launch("a")), reduce(1, 0));

    harness.succeed(reduce(0, 0));
    assert_eq!(harness.job.outcome(), None);
    // The other order: the container exits 0 before the task's report arrives.
    harness.complete(reduce(1, 0), ExitReason::Success, Some(0));
    assert_eq!(harness.job.outcome(), None, "an exit 0 alone is not success");
    harness.report(reduce(1, 0), 1.0, Some(TaskOutcome::Succeeded));
    assert_eq!(harness.job.outcome(), Some(&JobOutcome::ReadyToCommit));
    assert_eq!(harness.job.winning_reduce_attempts(), [reduce(0, 0), reduce(1, 0)]);
    assert!(harness.job.asks().is_empty());

    let progress = harness.job.progress();
    assert_eq!(progress.progress, 1.0);
    assert_eq!((progress.maps.succeeded, progress.reduces.succeeded), (3, 2));
    assert_eq!(progress.counters.map_input_records, 30);
    assert_eq!(progress.counters.reduce_output_records, 6);
    assert_eq!((progress.failed_attempts, progress.killed_attempts), (0, 0));
    let json = serde_json::to_string(&progress).unwrap();
    assert_eq!(serde_json::from_str::<JobProgress>(&json).unwrap(), progress);

    harness.job.commit_done();
    assert!(matches!(harness.job.outcome(), Some(JobOutcome::Succeeded { .. })));
}

#[test]
fn progress_counts_half_for_maps_and_half_for_reduces() {
    let mut harness = Harness::new(plan(2, 1, Vec::new()), settings());
    harness.launch("a");
    harness.launch("b");
    harness.succeed(map(0, 0));
    harness.report(map(1, 0), 0.5, None);
    let progress = harness.job.progress();
    assert_eq!((progress.maps.running, progress.maps.succeeded, progress.maps.pending), (1, 1, 0));
    assert!((progress.maps.progress - 0.75).abs() < 1e-6);
    assert!((progress.progress - 0.375).abs() < 1e-6);
    assert_eq!(progress.reduces.pending, 1);
}

#[test]
fn a_progress_report_arriving_after_the_final_one_changes_nothing() {
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings());
    harness.launch("a");
    harness.report(map(0, 0), 1.0, Some(TaskOutcome::Succeeded));
    // A progress report sent before the end, delivered after it: no counters, lower progress.
    let late = TaskReport {
        attempt: map(0, 0),
        progress: 0.4,
        counters: TaskCounters::default(),
        outcome: None,
    };
    harness.job.on_task_report(&late, harness.now_ms);
    harness.complete(map(0, 0), ExitReason::Success, Some(0));
    let progress = harness.job.progress();
    assert_eq!(progress.maps.succeeded, 1);
    assert_eq!(progress.counters.map_input_records, 10, "the final report's counters stay");
}

#[test]
fn a_grant_on_a_node_runs_the_map_that_prefers_that_node() {
    let preferred = vec![vec![node("a")], vec![node("b"), node("a")], vec![]];
    let mut harness = Harness::new(plan(3, 1, preferred), settings());
    let asks: Vec<(Vec<NodeId>, u32)> = harness.job.asks().into_iter().map(|ask| (ask.nodes, ask.count)).collect();
    assert_eq!(
        asks,
        [(vec![], 1), (vec![node("a")], 1), (vec![node("a"), node("b")], 1)],
        "one ask per locality group"
    );

    assert_eq!(launched_attempt(&harness.launch("b")), map(1, 0), "node-local first");
    assert_eq!(launched_attempt(&harness.launch("c")), map(2, 0), "then a map without preference");
    assert_eq!(launched_attempt(&harness.launch("c")), map(0, 0), "then any map");
}

#[test]
fn max_containers_caps_held_plus_asked_for_containers() {
    let mut settings = settings();
    settings.max_containers = Some(2);
    let mut harness = Harness::new(plan(5, 1, Vec::new()), settings);
    assert_eq!(harness.ask_total(), 2);
    harness.launch("a");
    assert_eq!(harness.ask_total(), 1);
    harness.launch("b");
    assert_eq!(harness.ask_total(), 0);
    assert!(matches!(
        harness.grant("c"),
        GrantDecision::Release {
            reason: ReleaseReason::AtMaxContainers,
            ..
        }
    ));
    harness.succeed(map(0, 0));
    assert_eq!(harness.ask_total(), 1, "a finished container frees room");
}

#[test]
fn an_exit_0_without_a_report_fails_after_the_grace_period() {
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings());
    harness.launch("a");
    harness.complete(map(0, 0), ExitReason::Success, Some(0));
    harness.now_ms = REPORT_GRACE_MS - 1;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Running));
    harness.now_ms = REPORT_GRACE_MS;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Pending));
    assert_eq!(harness.job.progress().failed_attempts, 1);
    assert!(harness.job.take_releases().is_empty(), "the exited container is not released");
}

#[test]
fn launch_failures_count_when_refused_and_not_when_the_agent_is_unreachable() {
    let mut settings = settings();
    settings.max_task_attempts = 1;
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings);
    let launch = harness.launch("a");
    let unreachable = LaunchFailure {
        kind: LaunchFailureKind::AgentUnreachable,
        message: "connection refused".to_owned(),
    };
    harness.job.on_launch_failed(launch.allocation.container_id, &unreachable);
    assert_eq!(harness.job.outcome(), None);
    assert_eq!(harness.job.take_releases(), [launch.allocation.container_id]);
    let launch = harness.launch("b");
    let refused = LaunchFailure {
        kind: LaunchFailureKind::AgentRefused,
        message: "bad token".to_owned(),
    };
    harness.job.on_launch_failed(launch.allocation.container_id, &refused);
    let Some(JobOutcome::Failed { diagnostics }) = harness.job.outcome() else {
        panic!("fails")
    };
    assert!(diagnostics.contains("bad token"), "{diagnostics}");
}

#[test]
fn a_grant_delivered_twice_is_ignored_and_unknown_live_containers_are_released() {
    let mut harness = Harness::new(plan(2, 1, Vec::new()), settings());
    let allocation = harness.allocation("a");
    assert!(matches!(harness.job.on_granted(allocation.clone(), 0), GrantDecision::Launch(_)));
    assert!(matches!(
        harness.job.on_granted(allocation.clone(), 0),
        GrantDecision::AlreadySeen { .. }
    ));
    assert_eq!(harness.job.held_containers(), 1);
    let stranger = harness.allocation("b").container_id;
    harness.job.on_registered(&[allocation.container_id, stranger], None);
    assert_eq!(harness.job.take_releases(), [stranger]);
}

#[test]
fn a_grant_too_small_for_a_reduce_is_released() {
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings());
    harness.launch("a");
    harness.succeed(map(0, 0));
    let mut allocation = harness.allocation("a");
    allocation.resources = Resources::new(1, 512);
    assert!(matches!(
        harness.job.on_granted(allocation, 0),
        GrantDecision::Release {
            reason: ReleaseReason::NothingToRun,
            ..
        }
    ));
}

#[test]
fn task_state_transitions_follow_the_table() {
    use TaskState::*;
    let legal = [
        (Pending, Running),
        (Running, Running),
        (Running, Pending),
        (Running, Succeeded),
        (Succeeded, Pending),
    ];
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
        }
    }
}

#[test]
fn straggler_estimates_follow_the_progress_rate() {
    use super::speculation::{estimated_remaining_ms, max_running_speculations, median_ms, straggler_remaining_ms};
    assert_eq!(median_ms(vec![]), None);
    assert_eq!(median_ms(vec![9, 1, 5]), Some(5));
    assert_eq!(median_ms(vec![4, 1, 9, 5]), Some(4), "the lower middle");
    assert_eq!(estimated_remaining_ms(10_000, 0.25), 30_000.0);
    assert!(estimated_remaining_ms(10_000, 0.0).is_infinite());

    let settings = SpeculationSettings::default();
    assert_eq!(
        straggler_remaining_ms(&settings, 2_000, 4_000, 0.0),
        None,
        "younger than min_runtime_ms"
    );
    assert_eq!(
        straggler_remaining_ms(&settings, 2_000, 6_000, 0.5),
        Some(6_000.0),
        "12 s total against a 2 s median"
    );
    assert_eq!(
        straggler_remaining_ms(&settings, 2_000, 6_000, 0.9),
        None,
        "almost done: a fresh attempt would not win"
    );
    assert_eq!(straggler_remaining_ms(&settings, 10_000, 6_000, 0.5), None, "as fast as the stage");
    assert_eq!(max_running_speculations(&settings, 5), 1);
    assert_eq!(max_running_speculations(&settings, 250), 25);
}

#[test]
fn settings_come_from_the_spec() {
    let spec: spindle_protocol::MapReduceSpec = serde_json::from_value(serde_json::json!({
        "input": ["/data/books"], "output": "/data/out", "mapper": "wordcount",
        "max_task_attempts": 2, "speculation": false, "max_containers": 8,
        "map": {"vcores": 1, "memory_mb": 256}, "reduce": {"vcores": 2, "memory_mb": 2048},
    }))
    .unwrap();
    let settings = JobSettings::from_spec(&spec);
    assert_eq!(settings.map_resources, Resources::new(1, 256));
    assert_eq!(settings.reduce_resources, Resources::new(2, 2048));
    assert_eq!((settings.max_task_attempts, settings.max_containers), (2, Some(8)));
    assert_eq!(settings.speculation, None);
    assert_eq!(settings.node_failure_threshold, DEFAULT_NODE_FAILURE_THRESHOLD);
}
