//! The shell AM end to end over real HTTP, against a fake RM and a fake node agent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use spindle_app_master::{
    AgentLauncher, AmContext, AmError, AmExit, ContainerLauncher, LaunchFailure, LaunchFailureKind, RetryPolicy, ShellMaster,
};
use spindle_protocol::{Allocation, FinalStatus, JobSpec, LaunchSpec};
use support::{AM_TOKEN, APP, ATTEMPT, Behaviour, FakeCluster, container};
use tokio_util::sync::CancellationToken;

fn shell_spec(containers: u32, max_retries: u32) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "hello",
        "kind": "shell",
        "shell": {
            "command": ["sh", "-c", "echo hello"],
            "containers": containers,
            "max_retries": max_retries,
            "env": {"GREETING": "hi"},
        }
    }))
    .unwrap()
}

fn context(fake: &FakeCluster, spec: JobSpec) -> AmContext {
    let mut context = AmContext::new(APP, ATTEMPT, vec![fake.url()], AM_TOKEN, spec);
    context.rm_retry = RetryPolicy {
        outage_budget: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    context
}

fn behaviour(decide: impl Fn(u32, u32) -> Option<i32> + Send + Sync + 'static) -> Behaviour {
    Arc::new(decide)
}

async fn run(fake: &FakeCluster, spec: JobSpec) -> Result<AmExit, AmError> {
    run_with(context(fake, spec), CancellationToken::new()).await
}

async fn run_with(context: AmContext, shutdown: CancellationToken) -> Result<AmExit, AmError> {
    let master = ShellMaster::new(context).unwrap();
    tokio::time::timeout(Duration::from_secs(8), master.run(shutdown))
        .await
        .expect("the AM ends in time")
}

fn finished(final_status: FinalStatus, diagnostics: &str) -> AmExit {
    AmExit::Finished {
        final_status,
        diagnostics: diagnostics.to_owned(),
    }
}

#[tokio::test]
async fn four_containers_succeed() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    let exit = run(&fake, shell_spec(4, 3)).await.unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "4 containers succeeded"));

    fake.with(|state| {
        let finish = state.finish.as_ref().expect("finish was called");
        assert_eq!(finish.final_status, FinalStatus::Succeeded);
        assert_eq!(finish.diagnostics, "4 containers succeeded");
        let mut indexes: Vec<u32> = state.launches.iter().map(|l| l.task_index).collect();
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2, 3]);
        let launch = &state.launches[0].request.launch;
        assert_eq!(launch.command, ["sh", "-c", "echo hello"]);
        assert_eq!(launch.env["GREETING"], "hi");
        assert_eq!(state.registers, 1);
        assert!(state.releases.is_empty());
        // Each allocate names the last reply the AM got, so the RM can send a lost one again.
        let expected: Vec<Option<u64>> = (0..state.response_ids_seen.len() as u64).map(Some).collect();
        assert_eq!(state.response_ids_seen, expected);
    });
}

#[tokio::test]
async fn a_task_that_fails_twice_then_succeeds() {
    let fake = FakeCluster::start(behaviour(|task, launch| Some(if task == 1 && launch <= 2 { 1 } else { 0 }))).await;
    let exit = run(&fake, shell_spec(3, 3)).await.unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "3 containers succeeded"));
    fake.with(|state| {
        let task_one = state.launches.iter().filter(|l| l.task_index == 1).count();
        assert_eq!(task_one, 3, "two failures and a success");
        assert_eq!(state.launches.len(), 5);
    });
}

#[tokio::test]
async fn a_task_that_always_fails_fails_the_job_after_max_retries() {
    let fake = FakeCluster::start(behaviour(|task, _| Some(if task == 0 { 1 } else { 0 }))).await;
    let exit = run(&fake, shell_spec(2, 2)).await.unwrap();
    let AmExit::Finished {
        final_status: FinalStatus::Failed,
        diagnostics,
    } = &exit
    else {
        panic!("the job fails: {exit:?}");
    };
    assert!(
        diagnostics.starts_with("task 0 failed 3 times; last: container container_e01_"),
        "{diagnostics}"
    );
    assert!(diagnostics.ends_with("exited with code 1: task said no"), "{diagnostics}");
    fake.with(|state| {
        let task_zero = state.launches.iter().filter(|l| l.task_index == 0).count();
        assert_eq!(task_zero, 3, "max_retries + 1 attempts");
        let finish = state.finish.as_ref().unwrap();
        assert_eq!(finish.final_status, FinalStatus::Failed);
        assert_eq!(&finish.diagnostics, diagnostics);
    });
}

#[tokio::test]
async fn shutdown_from_the_rm_stops_without_finish() {
    let fake = FakeCluster::start(behaviour(|_, _| None)).await;
    let master = tokio::spawn(run_with(context(&fake, shell_spec(2, 3)), CancellationToken::new()));
    while fake.with(|state| state.launches.len()) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.with(|state| state.shutdown = true);
    assert_eq!(master.await.unwrap().unwrap(), AmExit::ShutdownByRm);
    assert!(fake.with(|state| state.finish.is_none()));
}

#[tokio::test]
async fn the_am_rides_through_an_rm_answering_503() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    fake.with(|state| state.failing_allocates = 6);
    let exit = run(&fake, shell_spec(4, 0)).await.unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "4 containers succeeded"));
    fake.with(|state| {
        assert!(state.registers >= 2, "registers again after the outage");
        assert_eq!(state.launches.len(), 4, "no task ran twice");
    });
}

#[tokio::test]
async fn the_am_waits_for_an_rm_that_is_not_up_yet() {
    // A free port with nothing on it yet: connections are refused until the RM starts.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let spec = shell_spec(2, 0);
    let mut context = AmContext::new(APP, ATTEMPT, vec![address.clone()], AM_TOKEN, spec);
    context.rm_retry.initial_backoff = Duration::from_millis(20);
    context.rm_retry.max_backoff = Duration::from_millis(50);
    let master = tokio::spawn(run_with(context, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fake = FakeCluster::start_at(&address, behaviour(|_, _| Some(0))).await;
    let exit = master.await.unwrap().unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "2 containers succeeded"));
    assert_eq!(fake.with(|state| state.registers), 1);
}

#[tokio::test]
async fn an_rm_outage_past_the_budget_is_an_error() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    fake.with(|state| state.failing_allocates = u32::MAX);
    let mut context = context(&fake, shell_spec(1, 0));
    context.rm_retry.outage_budget = Duration::from_millis(300);
    let error = run_with(context, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, AmError::RmUnreachable { call: "allocate", .. }), "{error}");
}

#[tokio::test]
async fn a_refused_attempt_is_an_error() {
    let fake = FakeCluster::start(behaviour(|_, _| None)).await;
    fake.with(|state| state.reject_allocates = Some(409));
    let error = run(&fake, shell_spec(1, 0)).await.unwrap_err();
    assert!(matches!(error, AmError::AttemptInvalid { call: "allocate", .. }), "{error}");
    assert!(fake.with(|state| state.finish.is_none()));
}

#[tokio::test]
async fn excess_grants_and_unknown_live_containers_are_released() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    fake.with(|state| {
        state.extra_grants = 2;
        state.live_on_register = vec![container(1)];
    });
    let exit = run(&fake, shell_spec(3, 0)).await.unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "3 containers succeeded"));
    fake.with(|state| {
        assert_eq!(state.launches.len(), 3);
        assert_eq!(state.releases.len(), 3, "{:?}", state.releases);
        assert!(state.releases.contains(&container(1)));
    });
}

#[tokio::test]
async fn a_refused_launch_is_released_and_run_elsewhere() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    fake.with(|state| state.refused_launches = 1);
    let exit = run(&fake, shell_spec(2, 1)).await.unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "2 containers succeeded"));
    fake.with(|state| {
        let refused: Vec<_> = state.launches.iter().filter(|l| l.refused).collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(state.releases, [refused[0].container_id]);
        assert_eq!(state.launches.len(), 3);
    });
}

/// Loses the first launch as if its agent were unreachable, then launches for real.
struct FirstLaunchUnreachable {
    lost: std::sync::atomic::AtomicBool,
    agents: AgentLauncher,
}

impl ContainerLauncher for FirstLaunchUnreachable {
    async fn launch(&self, allocation: &Allocation, spec: LaunchSpec) -> Result<(), LaunchFailure> {
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(LaunchFailure {
                kind: LaunchFailureKind::AgentUnreachable,
                message: "connection refused".into(),
            });
        }
        self.agents.launch(allocation, spec).await
    }
}

#[tokio::test]
async fn an_unreachable_agent_does_not_count_as_a_task_failure() {
    let fake = FakeCluster::start(behaviour(|_, _| Some(0))).await;
    let launcher = FirstLaunchUnreachable {
        lost: false.into(),
        agents: AgentLauncher::new(),
    };
    let master = ShellMaster::with_launcher(context(&fake, shell_spec(1, 0)), launcher).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(8), master.run(CancellationToken::new()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, finished(FinalStatus::Succeeded, "1 containers succeeded"));
    fake.with(|state| {
        assert_eq!(state.launches.len(), 1, "the lost launch never reached the agent");
        assert_eq!(state.releases.len(), 1, "its container went back");
    });
}

#[tokio::test]
async fn cancelling_stops_without_finish() {
    let fake = FakeCluster::start(behaviour(|_, _| None)).await;
    let shutdown = CancellationToken::new();
    let master = tokio::spawn(run_with(context(&fake, shell_spec(1, 0)), shutdown.clone()));
    while fake.with(|state| state.launches.len()) < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    assert_eq!(master.await.unwrap().unwrap(), AmExit::Cancelled);
    assert!(fake.with(|state| state.finish.is_none()));
}
