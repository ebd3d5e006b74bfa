//! The AM driver on its own: a probe framework (N containers of one command, recording what it is
//! told) against the fake RM and agent of `support`. What every job kind relies on: news arrives
//! in order (controls, preemption notices, completions before grants), an RM outage ends with
//! the live containers again, a stop (by the RM or the process) reaches the framework, a job that
//! cannot start finishes FAILED, and the framework's own events and outcome drive the end.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_app_master::driver::{self, Framework, Outcome, Report, Started};
use spindle_app_master::{AgentLauncher, AmContext, AmError, AmExit, LaunchFailure};
use spindle_protocol::{Allocation, ContainerId, ContainerStatus, FinalStatus, JobDetail, JobSpec, LaunchSpec, ResourceAsk, Resources};
use support::{AM_TOKEN, APP, ATTEMPT, Behaviour, FakeCluster};
use tokio_util::sync::CancellationToken;

/// What the probe was told, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// Runs `tasks` containers (each once), then succeeds once its own event `"go"` arrived (when
/// `wait_for_event`).
struct Probe {
    log: Log,
    tasks: u32,
    launched: u32,
    done: BTreeSet<ContainerId>,
    wait_for_event: bool,
    went: bool,
}

impl Probe {
    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

impl Framework for Probe {
    type Event = &'static str;

    fn allocate_wait(&self) -> Duration {
        Duration::from_millis(200)
    }

    fn on_registered(&mut self, live: &[ContainerId], _now: Instant) {
        self.note(format!("registered {}", live.len()));
    }

    fn on_granted(&mut self, allocation: Allocation, _now: Instant) -> Option<LaunchSpec> {
        if self.launched == self.tasks {
            return None;
        }
        self.launched += 1;
        self.note(format!("granted {}", allocation.container_id.seq));
        Some(LaunchSpec {
            command: vec!["true".to_owned()],
            env: BTreeMap::from([("SPINDLE_TASK_INDEX".to_owned(), (self.launched - 1).to_string())]),
            files: BTreeMap::new(),
        })
    }

    fn on_launched(&mut self, container: ContainerId, result: Result<(), LaunchFailure>, _now: Instant) {
        self.note(format!("launched {} {}", container.seq, result.is_ok()));
    }

    fn on_completed(&mut self, status: &ContainerStatus, _now: Instant) {
        self.done.insert(status.container_id);
        self.note(format!("completed {}", status.container_id.seq));
    }

    fn on_preempt_notice(&mut self, containers: &[ContainerId], _now: Instant) {
        self.note(format!("preempt {:?}", containers.iter().map(|id| id.seq).collect::<Vec<_>>()));
    }

    fn on_controls(&mut self, controls: &BTreeMap<String, serde_json::Value>, _now: Instant) {
        if !controls.is_empty() {
            self.note(format!("controls {}", serde_json::to_string(controls).unwrap()));
        }
    }

    fn on_event(&mut self, event: &'static str, _now: Instant) {
        self.went |= event == "go";
        self.note(format!("event {event}"));
    }

    fn asks(&self) -> Vec<ResourceAsk> {
        vec![ResourceAsk {
            priority: 1,
            resources: Resources::new(1, 128),
            count: self.tasks - self.launched,
            nodes: Vec::new(),
            racks: Vec::new(),
            label: None,
        }]
    }

    fn take_releases(&mut self) -> Vec<ContainerId> {
        Vec::new()
    }

    fn report(&self) -> Report {
        Report {
            progress: self.done.len() as f32 / self.tasks as f32,
            detail: Some(JobDetail {
                counters: BTreeMap::from([("done".to_owned(), self.done.len() as u64)]),
                ..JobDetail::default()
            }),
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let over = self.done.len() as u32 == self.tasks && (self.went || !self.wait_for_event);
        over.then(|| Outcome::succeeded(format!("{} tasks done", self.tasks)))
    }

    fn stop(&mut self) {
        self.note("stop".to_owned());
    }
}

fn context(fake: &FakeCluster) -> AmContext {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "probe", "kind": "shell", "shell": { "command": ["true"], "containers": 1 }
    }))
    .unwrap();
    let mut context = AmContext::new(APP, ATTEMPT, vec![fake.url()], AM_TOKEN, spec);
    context.rm_retry.initial_backoff = Duration::from_millis(20);
    context
}

fn exits(code: Option<i32>) -> Behaviour {
    Arc::new(move |_, _| code)
}

/// Runs the probe on the driver; `on_start` runs when the framework is built.
async fn run_probe(
    fake: &FakeCluster,
    tasks: u32,
    wait_for_event: bool,
    shutdown: CancellationToken,
    on_start: impl FnOnce(&Started<&'static str>) + Send + 'static,
) -> (Result<AmExit, AmError>, Vec<String>) {
    let log: Log = Arc::default();
    let probe_log = Arc::clone(&log);
    let run = driver::run_default(context(fake), AgentLauncher::new(), shutdown, move |started| async move {
        on_start(&started);
        Ok(Probe {
            log: probe_log,
            tasks,
            launched: 0,
            done: BTreeSet::new(),
            wait_for_event,
            went: false,
        })
    });
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the driver ends in time");
    let lines = log.lock().unwrap().clone();
    (result, lines)
}

fn position(log: &[String], prefix: &str) -> usize {
    log.iter()
        .position(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in {log:#?}"))
}

#[tokio::test]
async fn the_framework_hears_controls_notices_completions_and_the_driver_finishes_once() {
    let fake = FakeCluster::start(exits(Some(0))).await;
    fake.with(|state| {
        state.controls = BTreeMap::from([("operators/count".to_owned(), serde_json::json!({"parallelism": 3}))]);
        state.preempt = vec![support::container(99)];
    });
    let (result, log) = run_probe(&fake, 2, false, CancellationToken::new(), |_| {}).await;
    assert_eq!(
        result.unwrap(),
        AmExit::Finished {
            final_status: FinalStatus::Succeeded,
            diagnostics: "2 tasks done".to_owned()
        }
    );
    assert_eq!(log[0], "registered 0");
    assert!(
        log.contains(&r#"controls {"operators/count":{"parallelism":3}}"#.to_owned()),
        "{log:#?}"
    );
    assert!(log.contains(&"preempt [99]".to_owned()), "{log:#?}");
    assert_eq!(log.iter().filter(|line| line.starts_with("completed")).count(), 2, "{log:#?}");
    assert!(position(&log, "granted") < position(&log, "completed"), "{log:#?}");
    assert_eq!(log.last().unwrap(), "stop", "stopped once, at the end: {log:#?}");
    assert_eq!(log.iter().filter(|line| *line == "stop").count(), 1);
    let (finish, detail, launches) = fake.with(|state| (state.finish.clone(), state.last_detail.clone(), state.launches.len()));
    let finish = finish.expect("finished");
    assert_eq!(
        (finish.final_status, finish.diagnostics.as_str()),
        (FinalStatus::Succeeded, "2 tasks done")
    );
    assert_eq!(detail.unwrap().counters["done"], 2, "the last allocate carries the final report");
    assert_eq!(launches, 2, "no grant runs twice");
}

#[tokio::test]
async fn after_an_rm_outage_the_framework_is_told_the_live_containers_again() {
    let fake = FakeCluster::start(exits(Some(0))).await;
    fake.with(|state| state.failing_allocates = 3);
    let (result, log) = run_probe(&fake, 1, false, CancellationToken::new(), |_| {}).await;
    assert!(matches!(result.unwrap(), AmExit::Finished { .. }));
    // One register at start, one before each retried allocate; the framework hears the last.
    assert_eq!(fake.with(|state| state.registers), 4, "registered again after the outage");
    assert_eq!(log.iter().filter(|line| line.starts_with("registered")).count(), 2, "{log:#?}");
}

#[tokio::test]
async fn a_stop_by_the_rm_reaches_the_framework_and_nothing_is_finished() {
    let fake = Arc::new(FakeCluster::start(exits(None)).await);
    let probe = {
        let fake = Arc::clone(&fake);
        tokio::spawn(async move { run_probe(&fake, 2, false, CancellationToken::new(), |_| {}).await })
    };
    // Both tasks run (they never end): the RM says stop.
    support_wait(&fake, |state| state.launches.len() == 2).await;
    fake.with(|state| state.shutdown = true);
    let (result, log) = probe.await.unwrap();
    assert_eq!(result.unwrap(), AmExit::ShutdownByRm);
    assert_eq!(log.last().unwrap(), "stop", "{log:#?}");
    assert!(fake.with(|state| state.finish.is_none()), "no finish after the RM said stop");
}

#[tokio::test]
async fn cancelling_stops_the_framework_without_finish() {
    let fake = Arc::new(FakeCluster::start(exits(None)).await);
    let shutdown = CancellationToken::new();
    let probe = {
        let (fake, shutdown) = (Arc::clone(&fake), shutdown.clone());
        tokio::spawn(async move { run_probe(&fake, 1, false, shutdown, |_| {}).await })
    };
    support_wait(&fake, |state| state.launches.len() == 1).await;
    shutdown.cancel();
    let (result, log) = probe.await.unwrap();
    assert_eq!(result.unwrap(), AmExit::Cancelled);
    assert_eq!(log.last().unwrap(), "stop", "{log:#?}");
    assert!(fake.with(|state| state.finish.is_none()));
}

#[tokio::test]
async fn a_framework_that_cannot_start_finishes_the_job_failed_at_once() {
    let fake = FakeCluster::start(exits(Some(0))).await;
    let run = driver::run_default(
        context(&fake),
        AgentLauncher::new(),
        CancellationToken::new(),
        |_: Started<()>| async { Err::<NeverBuilt, _>(Outcome::failed("the input is empty")) },
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert_eq!(
        exit,
        AmExit::Finished {
            final_status: FinalStatus::Failed,
            diagnostics: "the input is empty".to_owned()
        }
    );
    let (allocates, finish) = fake.with(|state| (state.allocates, state.finish.clone()));
    assert_eq!(allocates, 0, "nothing was asked for");
    assert_eq!(finish.unwrap().final_status, FinalStatus::Failed);
}

#[tokio::test]
async fn the_framework_events_drive_the_outcome() {
    let fake = FakeCluster::start(exits(Some(0))).await;
    let (result, log) = run_probe(&fake, 1, true, CancellationToken::new(), |started| {
        let events = started.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = events.send("go");
        });
    })
    .await;
    assert!(matches!(result.unwrap(), AmExit::Finished { .. }));
    assert!(
        position(&log, "completed") < position(&log, "event go"),
        "the job waited for its event: {log:#?}"
    );
}

/// Waits until the fake's state passes `check`.
async fn support_wait(fake: &FakeCluster, check: impl Fn(&support::FakeState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fake.with(|state| check(state)) {
        assert!(Instant::now() < deadline, "the fake never reached the expected state");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The framework of the start-failure test: never built.
struct NeverBuilt;

impl Framework for NeverBuilt {
    type Event = ();
    fn allocate_wait(&self) -> Duration {
        unreachable!()
    }
    fn on_registered(&mut self, _: &[ContainerId], _: Instant) {}
    fn on_granted(&mut self, _: Allocation, _: Instant) -> Option<LaunchSpec> {
        None
    }
    fn on_launched(&mut self, _: ContainerId, _: Result<(), LaunchFailure>, _: Instant) {}
    fn on_completed(&mut self, _: &ContainerStatus, _: Instant) {}
    fn on_event(&mut self, _: (), _: Instant) {}
    fn asks(&self) -> Vec<ResourceAsk> {
        Vec::new()
    }
    fn take_releases(&mut self) -> Vec<ContainerId> {
        Vec::new()
    }
    fn report(&self) -> Report {
        Report::default()
    }
    fn outcome(&mut self) -> Option<Outcome> {
        None
    }
}
