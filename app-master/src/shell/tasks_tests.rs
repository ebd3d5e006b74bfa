//! Unit tests of the shell task table: every decision without a network.

use spindle_protocol::{
    Allocation, AppId, ContainerId, ContainerState, ContainerStatus, ContainerToken, ExitReason, FinalStatus, NodeId, Resources,
};

use super::tasks::{JobOutcome, MAX_UNCOUNTED_LAUNCH_FAILURES, ShellTasks, TaskState};
use crate::launch::{LaunchFailure, LaunchFailureKind};

const TASK: Resources = Resources { vcores: 1, memory_mb: 128 };

fn container(seq: u64) -> ContainerId {
    ContainerId {
        app: AppId {
            cluster_ts: 1_700_000_000_000,
            seq: 1,
        },
        attempt: 1,
        epoch: 1,
        seq,
    }
}

fn grant_of(seq: u64, resources: Resources) -> Allocation {
    let node_id = NodeId("node-1:8042".into());
    Allocation {
        container_id: container(seq),
        node_id: node_id.clone(),
        node_address: "127.0.0.1:8042".into(),
        resources,
        token: ContainerToken {
            container_id: container(seq),
            node_id,
            resources,
            expires_at_ms: u64::MAX,
            signature: "00".into(),
            user: "nobody".to_owned(),
            key_generation: 0,
            shuffle_token: String::new(),
        },
    }
}

fn grants(seqs: impl IntoIterator<Item = u64>) -> Vec<Allocation> {
    seqs.into_iter().map(|seq| grant_of(seq, TASK)).collect()
}

fn completed(seq: u64, reason: ExitReason, exit_code: i32) -> ContainerStatus {
    ContainerStatus {
        container_id: container(seq),
        state: ContainerState::Complete,
        exit_code: Some(exit_code),
        exit_reason: Some(reason),
        diagnostics: if exit_code == 0 { "" } else { "boom" }.into(),
        started_at_ms: None,
        finished_at_ms: None,
    }
}

fn ask_count(tasks: &ShellTasks) -> u32 {
    let asks = tasks.asks();
    assert_eq!(asks.len(), 1, "one shape, always sent");
    assert_eq!(asks[0].resources, TASK);
    asks[0].count
}

#[test]
fn asks_one_container_per_task_without_one() {
    let mut tasks = ShellTasks::new(4, 3, TASK);
    assert_eq!(ask_count(&tasks), 4);
    let launches = tasks.on_allocated(grants([1, 2, 3]));
    let indexes: Vec<u32> = launches.iter().map(|launch| launch.task_index).collect();
    assert_eq!(indexes, [0, 1, 2], "lowest task index first");
    assert_eq!(ask_count(&tasks), 1);
    assert_eq!(tasks.task_state(0), Some(TaskState::Launching(container(1))));
    tasks.on_launched(container(1));
    assert_eq!(tasks.task_state(0), Some(TaskState::Running(container(1))));
    assert!(tasks.take_releases().is_empty());
}

#[test]
fn excess_duplicate_and_undersized_grants_are_not_run() {
    let mut tasks = ShellTasks::new(2, 3, TASK);
    let launches = tasks.on_allocated(vec![
        grant_of(1, Resources::new(1, 64)),
        grant_of(2, TASK),
        grant_of(3, Resources::new(2, 256)),
        grant_of(4, TASK),
    ]);
    assert_eq!(launches.len(), 2);
    assert_eq!(launches[1].allocation.container_id, container(3), "bigger is fine");
    assert_eq!(tasks.take_releases(), [container(1), container(4)]);
    assert!(tasks.take_releases().is_empty(), "each release is sent once");
    assert!(tasks.on_allocated(grants([2])).is_empty(), "a grant seen before");
    assert!(tasks.take_releases().is_empty());
    assert_eq!(ask_count(&tasks), 0, "count 0 is still sent");
}

#[test]
fn all_tasks_succeeding_succeeds_the_job() {
    let mut tasks = ShellTasks::new(2, 3, TASK);
    tasks.on_allocated(grants([1, 2]));
    tasks.on_completed(&completed(1, ExitReason::Success, 0));
    assert_eq!(tasks.progress(), 0.5);
    assert_eq!(tasks.outcome(), None);
    tasks.on_completed(&completed(2, ExitReason::Success, 0));
    assert_eq!(tasks.progress(), 1.0);
    let outcome = tasks.outcome().unwrap();
    assert_eq!(outcome.final_status(), FinalStatus::Succeeded);
    assert_eq!(outcome.diagnostics(), "2 containers succeeded");
}

#[test]
fn failures_count_toward_retries_except_preemption() {
    let counted = [
        ExitReason::Failed,
        ExitReason::ExceededMemory,
        ExitReason::Expired,
        ExitReason::KilledByRm,
        ExitReason::NodeLost,
        ExitReason::KilledByApp,
    ];
    for reason in counted {
        let mut tasks = ShellTasks::new(1, 3, TASK);
        tasks.on_allocated(grants([1]));
        tasks.on_completed(&completed(1, reason, 137));
        assert_eq!(tasks.counts().failures, 1, "{reason:?} counts");
        assert_eq!(tasks.task_state(0), Some(TaskState::Pending), "{reason:?}");
        assert_eq!(ask_count(&tasks), 1, "{reason:?} runs again");
    }
    let mut tasks = ShellTasks::new(1, 0, TASK);
    tasks.on_allocated(grants([1]));
    tasks.on_completed(&completed(1, ExitReason::Preempted, 143));
    assert_eq!(tasks.counts().failures, 0, "preemption is not the task's fault");
    assert_eq!(tasks.outcome(), None, "even with max_retries = 0");
    assert_eq!(ask_count(&tasks), 1);
}

#[test]
fn a_task_past_max_retries_fails_the_job_and_releases_the_rest() {
    let mut tasks = ShellTasks::new(3, 2, TASK);
    tasks.on_allocated(grants([1, 2, 3]));
    tasks.on_completed(&completed(3, ExitReason::Success, 0));
    tasks.on_completed(&completed(1, ExitReason::Failed, 1));
    tasks.on_allocated(grants([4]));
    tasks.on_completed(&completed(4, ExitReason::NodeLost, 0));
    tasks.on_allocated(grants([5]));
    assert_eq!(tasks.outcome(), None, "two failures are within max_retries = 2");
    tasks.on_completed(&completed(5, ExitReason::Failed, 1));

    let Some(JobOutcome::Failed { diagnostics }) = tasks.outcome() else {
        panic!("the job fails: {:?}", tasks.outcome());
    };
    assert_eq!(
        diagnostics,
        &format!("task 0 failed 3 times; last: container {} exited with code 1: boom", container(5))
    );
    assert_eq!(tasks.take_releases(), [container(2)], "the live task container");
    assert_eq!(ask_count(&tasks), 0);
    assert!(tasks.on_allocated(grants([6])).is_empty());
    assert_eq!(tasks.take_releases(), [container(6)], "late grants go back");
}

#[test]
fn refused_launches_count_and_unreachable_agents_do_not() {
    let refused = LaunchFailure {
        kind: LaunchFailureKind::AgentRefused,
        message: "HTTP 403".into(),
    };
    let unreachable = LaunchFailure {
        kind: LaunchFailureKind::AgentUnreachable,
        message: "connection refused".into(),
    };
    let mut tasks = ShellTasks::new(1, 100, TASK);
    tasks.on_allocated(grants([1]));
    tasks.on_launch_failed(container(1), &refused);
    assert_eq!(tasks.counts().failures, 1);
    assert_eq!(tasks.take_releases(), [container(1)]);
    assert_eq!(ask_count(&tasks), 1);

    for seq in 0..u64::from(MAX_UNCOUNTED_LAUNCH_FAILURES) {
        tasks.on_allocated(grants([10 + seq]));
        tasks.on_launch_failed(container(10 + seq), &unreachable);
    }
    assert_eq!(tasks.counts().failures, 1, "unreachable agents are not the task's fault");
    tasks.on_allocated(grants([99]));
    tasks.on_launch_failed(container(99), &unreachable);
    assert_eq!(tasks.counts().failures, 2, "…until they keep happening");
}

#[test]
fn a_failed_launch_fails_the_job_past_max_retries_with_its_message() {
    let mut tasks = ShellTasks::new(1, 0, TASK);
    tasks.on_allocated(grants([1]));
    let failure = LaunchFailure {
        kind: LaunchFailureKind::AgentRefused,
        message: "no such program".into(),
    };
    tasks.on_launch_failed(container(1), &failure);
    let diagnostics = tasks.outcome().unwrap().diagnostics();
    assert!(diagnostics.starts_with("task 0 failed 1 times; last: container"));
    assert!(diagnostics.ends_with("could not be launched: no such program"));
}

#[test]
fn stale_and_repeated_events_change_nothing() {
    let mut tasks = ShellTasks::new(1, 3, TASK);
    tasks.on_allocated(grants([1]));
    // The RM reports the container lost before the agent's launch answer arrives.
    tasks.on_completed(&completed(1, ExitReason::NodeLost, 0));
    tasks.on_launched(container(1));
    tasks.on_launch_failed(
        container(1),
        &LaunchFailure {
            kind: LaunchFailureKind::AgentRefused,
            message: "late".into(),
        },
    );
    tasks.on_completed(&completed(1, ExitReason::NodeLost, 0));
    tasks.on_completed(&completed(77, ExitReason::Failed, 1));
    assert_eq!(tasks.counts().failures, 1);
    assert_eq!(tasks.task_state(0), Some(TaskState::Pending));
    assert!(tasks.take_releases().is_empty());

    tasks.on_allocated(grants([2]));
    tasks.on_completed(&completed(2, ExitReason::Success, 0));
    tasks.on_completed(&completed(2, ExitReason::Success, 0));
    assert_eq!(tasks.counts().succeeded, 1);
    assert!(tasks.on_allocated(grants([2])).is_empty(), "never run again");
}

#[test]
fn re_registering_after_an_rm_restart_keeps_the_task_table() {
    let own = container(1000);
    let mut tasks = ShellTasks::new(3, 3, TASK);
    tasks.on_allocated(grants([1, 2, 3]));
    tasks.on_launched(container(1));
    tasks.on_launched(container(2));
    tasks.on_completed(&completed(3, ExitReason::Success, 0));
    let before = tasks.counts();

    // The RM came back knowing the AM's own container, ours, and one grant whose reply was lost.
    tasks.on_registered(&[own, container(1), container(2), container(9)], Some(own));
    assert_eq!(tasks.take_releases(), [container(9)]);
    assert_eq!(tasks.counts(), before);
    assert_eq!(ask_count(&tasks), 0, "nothing is launched twice");
    assert!(tasks.on_allocated(grants([9])).is_empty(), "released, not run");

    // Container 2 ended while the RM was down: the RM reports it once its agent re-registers.
    tasks.on_completed(&completed(2, ExitReason::Success, 0));
    tasks.on_completed(&completed(1, ExitReason::Success, 0));
    assert_eq!(tasks.outcome().unwrap().diagnostics(), "3 containers succeeded");
}

#[test]
fn a_completion_without_a_reason_is_judged_by_its_exit_code() {
    let mut tasks = ShellTasks::new(2, 3, TASK);
    tasks.on_allocated(grants([1, 2]));
    let mut ok = completed(1, ExitReason::Success, 0);
    ok.exit_reason = None;
    let mut bad = completed(2, ExitReason::Failed, 2);
    bad.exit_reason = None;
    tasks.on_completed(&ok);
    tasks.on_completed(&bad);
    assert_eq!(tasks.counts().succeeded, 1);
    assert_eq!(tasks.counts().failures, 1);
}
