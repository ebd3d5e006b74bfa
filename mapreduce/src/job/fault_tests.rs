//! Fault handling of the job state machine: retries and the failure limit, uncounted ends,
//! fetch failures and lost nodes, speculation, and node avoidance.

use spindle_protocol::ExitReason;

use super::tests::{Harness, launched_attempt, map, node, plan, reduce, settings};
use super::*;
use crate::task_protocol::{TaskOutcome, TaskWork};

#[test]
fn a_task_failing_max_task_attempts_times_fails_the_job_naming_it_and_its_last_error() {
    let mut settings = settings();
    settings.max_task_attempts = 2;
    let mut harness = Harness::new(plan(2, 1, Vec::new()), settings);
    harness.launch("a");
    let other = harness.launch("b");
    harness.fail(map(0, 0), "first error");
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Pending));
    assert_eq!(harness.job.outcome(), None);
    assert_eq!(launched_attempt(&harness.launch("c")), map(0, 1));
    harness.report(
        map(0, 1),
        0.1,
        Some(TaskOutcome::Failed {
            error: "bad input line 7".to_owned(),
        }),
    );

    let Some(JobOutcome::Failed { diagnostics }) = harness.job.outcome() else {
        panic!("the job fails: {:?}", harness.job.outcome())
    };
    assert!(diagnostics.contains("map 0 failed 2 times"), "{diagnostics}");
    assert!(
        diagnostics.contains("m_000000_1") && diagnostics.contains("bad input line 7"),
        "{diagnostics}"
    );
    let releases = harness.job.take_releases();
    assert!(
        releases.contains(&other.allocation.container_id),
        "the job's other containers go back: {releases:?}"
    );
    assert!(harness.job.asks().is_empty());
    assert_eq!(harness.job.progress().failed_attempts, 2);
    assert!(matches!(
        harness.grant("d"),
        GrantDecision::Release {
            reason: ReleaseReason::JobOver,
            ..
        }
    ));
}

#[test]
fn a_failing_container_counts_like_a_failed_report() {
    let mut settings = settings();
    settings.max_task_attempts = 1;
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings);
    harness.launch("a");
    harness.complete(map(0, 0), ExitReason::ExceededMemory, Some(137));
    let Some(JobOutcome::Failed { diagnostics }) = harness.job.outcome() else {
        panic!("fails")
    };
    assert!(diagnostics.contains("exceeded its memory limit"), "{diagnostics}");
}

#[test]
fn preempted_lost_and_killed_attempts_run_again_without_counting() {
    let mut settings = settings();
    settings.max_task_attempts = 1;
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings);
    let reasons = [
        ExitReason::Preempted,
        ExitReason::NodeLost,
        ExitReason::KilledByRm,
        ExitReason::Expired,
    ];
    for (attempt, reason) in reasons.into_iter().enumerate() {
        assert_eq!(launched_attempt(&harness.launch("a")), map(0, attempt as u32));
        harness.complete(map(0, attempt as u32), reason, None);
        assert_eq!(harness.job.outcome(), None, "{reason:?} does not count");
        assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Pending));
        assert_eq!(harness.ask_total(), 1);
    }
    assert_eq!(harness.job.progress().killed_attempts, 4);
    harness.launch("b");
    harness.succeed(map(0, 4));
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Succeeded));
}

#[test]
fn a_fetch_failure_reruns_the_lost_maps_without_counting_against_the_reduce() {
    let mut settings = settings();
    settings.max_task_attempts = 1;
    let mut harness = Harness::new(plan(2, 1, Vec::new()), settings);
    harness.launch("a");
    harness.launch("b");
    harness.succeed(map(0, 0));
    harness.succeed(map(1, 0));
    harness.launch("c");
    harness.report(
        reduce(0, 0),
        0.2,
        Some(TaskOutcome::FetchFailed {
            maps: vec![1],
            error: "connection refused".to_owned(),
        }),
    );

    assert_eq!(harness.job.outcome(), None, "a fetch failure does not fail the reduce");
    assert_eq!(harness.job.task_state(TaskKind::Map, 1), Some(TaskState::Pending));
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Succeeded));
    assert_eq!(harness.job.task_state(TaskKind::Reduce, 0), Some(TaskState::Pending));
    let asks = harness.job.asks();
    assert_eq!(asks.len(), 1, "the map again, no reduce until it is done: {asks:?}");
    assert_eq!((asks[0].priority, asks[0].count), (MAP_PRIORITY, 1));
    assert!(harness.job.take_releases().contains(&harness.launched[&reduce(0, 0)]));

    assert_eq!(launched_attempt(&harness.launch("d")), map(1, 1));
    harness.succeed(map(1, 1));
    let launch = harness.launch("d");
    assert_eq!(launched_attempt(&launch), reduce(0, 1));
    let TaskWork::Reduce { maps, .. } = &launch.assignment.work else {
        panic!("a reduce")
    };
    assert_eq!(maps[1].output_name, "m_000001_1");
    assert_eq!(maps[1].node_address, "d:8042");
    harness.succeed(reduce(0, 1));
    assert_eq!(harness.job.outcome(), Some(&JobOutcome::ReadyToCommit));
    let progress = harness.job.progress();
    assert_eq!(
        (progress.fetch_failures, progress.lost_map_outputs, progress.failed_attempts),
        (1, 1, 0)
    );
}

#[test]
fn a_fetch_failure_about_an_output_since_replaced_is_ignored() {
    let mut harness = Harness::new(plan(1, 2, Vec::new()), settings());
    harness.launch("a");
    harness.succeed(map(0, 0));
    harness.launch("b"); // r0, reading m_000000_0
    harness.job.on_node_lost(&node("a"));
    harness.launch("c"); // m0 again
    harness.succeed(map(0, 1));
    harness.report(
        reduce(0, 0),
        0.1,
        Some(TaskOutcome::FetchFailed {
            maps: vec![0],
            error: "gone".to_owned(),
        }),
    );
    assert_eq!(
        harness.job.task_state(TaskKind::Map, 0),
        Some(TaskState::Succeeded),
        "m_000000_1 is fine"
    );
    assert_eq!(harness.job.task_state(TaskKind::Reduce, 0), Some(TaskState::Pending));
}

#[test]
fn a_node_lost_after_the_maps_are_done_reruns_the_maps_whose_output_lived_there() {
    let mut harness = Harness::new(plan(3, 2, Vec::new()), settings());
    harness.launch("a");
    harness.launch("b");
    harness.launch("a");
    for index in 0..3 {
        harness.succeed(map(index, 0));
    }
    harness.launch("c"); // r0
    harness.launch("a"); // r1
    harness.complete(reduce(1, 0), ExitReason::NodeLost, None);

    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Pending));
    assert_eq!(
        harness.job.task_state(TaskKind::Map, 1),
        Some(TaskState::Succeeded),
        "its output is on b"
    );
    assert_eq!(harness.job.task_state(TaskKind::Map, 2), Some(TaskState::Pending));
    assert_eq!(
        harness.job.task_state(TaskKind::Reduce, 0),
        Some(TaskState::Running),
        "r0 carries on"
    );
    assert_eq!(harness.job.task_state(TaskKind::Reduce, 1), Some(TaskState::Pending));
    assert_eq!(harness.ask_total(), 2, "two maps, and no reduce until they are done");
    assert_eq!(harness.job.progress().failed_attempts, 0);

    harness.launch("b");
    harness.launch("c");
    harness.succeed(map(0, 1));
    harness.succeed(map(2, 1));
    assert_eq!(launched_attempt(&harness.launch("b")), reduce(1, 1));
    harness.succeed(reduce(0, 0));
    harness.succeed(reduce(1, 1));
    assert_eq!(harness.job.outcome(), Some(&JobOutcome::ReadyToCommit));
}

#[test]
fn a_lost_node_after_every_reduce_succeeded_reruns_nothing() {
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings());
    harness.launch("a");
    harness.succeed(map(0, 0));
    harness.launch("b");
    harness.succeed(reduce(0, 0));
    harness.job.on_node_lost(&node("a"));
    assert_eq!(harness.job.outcome(), Some(&JobOutcome::ReadyToCommit));
    assert_eq!(harness.job.task_state(TaskKind::Map, 0), Some(TaskState::Succeeded));
}

fn speculating_settings() -> JobSettings {
    JobSettings {
        speculation: Some(SpeculationSettings::default()),
        ..settings()
    }
}

#[test]
fn a_straggler_gets_a_speculative_attempt_and_the_loser_is_released() {
    let mut harness = Harness::new(plan(4, 1, Vec::new()), speculating_settings());
    for node_name in ["a", "b", "c", "d"] {
        harness.launch(node_name);
    }
    harness.now_ms = 1_000;
    for index in 0..3 {
        harness.succeed(map(index, 0));
    }
    harness.report(map(3, 0), 0.05, None);
    harness.now_ms = 3_000;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.ask_total(), 0, "too young to judge");

    harness.now_ms = 6_000;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.ask_total(), 1, "one more container for the straggler");
    assert!(
        matches!(
            harness.grant("d"),
            GrantDecision::Release {
                reason: ReleaseReason::NothingToRun,
                ..
            }
        ),
        "not next to the slow attempt"
    );
    let launch = harness.launch("e");
    assert_eq!(launched_attempt(&launch), map(3, 1));
    assert!(launch.speculative);
    assert_eq!(harness.job.live_attempts(TaskKind::Map, 3), [map(3, 0), map(3, 1)]);
    assert_eq!(harness.ask_total(), 0);
    harness.now_ms = 8_000;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.ask_total(), 0, "at most one speculative attempt per task");

    harness.job.take_releases();
    harness.succeed(map(3, 1));
    assert_eq!(harness.job.task_state(TaskKind::Map, 3), Some(TaskState::Succeeded));
    assert_eq!(
        harness.job.take_releases(),
        [harness.launched[&map(3, 0)]],
        "the slow attempt is killed"
    );
    // Its completion (killed by the app) changes nothing.
    harness.complete(map(3, 0), ExitReason::KilledByApp, None);
    let launch = harness.launch("a");
    let TaskWork::Reduce { maps, .. } = &launch.assignment.work else {
        panic!("a reduce")
    };
    assert_eq!(maps[3].output_name, "m_000003_1");
    let progress = harness.job.progress();
    assert_eq!((progress.speculative_attempts, progress.killed_attempts), (1, 1));
}

#[test]
fn speculation_waits_for_the_stage_to_have_no_pending_task_and_respects_its_cap() {
    let mut harness = Harness::new(plan(3, 1, Vec::new()), speculating_settings());
    harness.launch("a");
    harness.launch("b");
    harness.now_ms = 1_000;
    harness.succeed(map(0, 0));
    harness.now_ms = 60_000;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.ask_total(), 1, "only the pending map: m1 waits until no map is pending");
    harness.launch("c");
    harness.job.tick(harness.now_ms);
    // m1 (59 s, no progress) and m2 (just started) : only m1 is a straggler; the cap is 1 anyway.
    assert_eq!(harness.ask_total(), 1);
    assert!(harness.job.maps[1].wants_speculative && !harness.job.maps[2].wants_speculative);
}

#[test]
fn speculation_is_off_unless_configured() {
    let mut harness = Harness::new(plan(2, 1, Vec::new()), settings());
    harness.launch("a");
    harness.launch("b");
    harness.now_ms = 1_000;
    harness.succeed(map(0, 0));
    harness.now_ms = 100_000;
    harness.job.tick(harness.now_ms);
    assert_eq!(harness.ask_total(), 0);
}

#[test]
fn a_node_where_tasks_keep_failing_is_avoided() {
    let preferred = vec![vec![node("a")]; 3];
    let mut harness = Harness::new(plan(3, 1, preferred), settings());
    harness.launch("a");
    harness.launch("b");
    harness.launch("c");
    harness.fail(map(0, 0), "disk full");
    assert!(harness.job.avoided_nodes().is_empty(), "one failure is not a pattern");
    assert_eq!(launched_attempt(&harness.launch("a")), map(0, 1));
    harness.fail(map(0, 1), "disk full");
    assert_eq!(harness.job.avoided_nodes(), [node("a")], "threshold 2 reached");
    assert!(matches!(
        harness.grant("a"),
        GrantDecision::Release {
            reason: ReleaseReason::AvoidedNode,
            ..
        }
    ));
    let asks = harness.job.asks();
    assert!(
        asks.iter().all(|ask| ask.nodes.is_empty()),
        "an avoided node is not asked for: {asks:?}"
    );
    assert_eq!(launched_attempt(&harness.launch("b")), map(0, 2));
}

#[test]
fn avoidance_never_takes_more_than_a_third_of_the_nodes() {
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings());
    for attempt in 0..3 {
        harness.launch(["a", "b", "a"][attempt as usize]);
        harness.fail(map(0, attempt), "broken");
    }
    assert!(
        harness.job.avoided_nodes().is_empty(),
        "two nodes seen: avoiding one would leave too few"
    );
    assert_eq!(launched_attempt(&harness.launch("a")), map(0, 3));
}

/// A reduce whose container ends with the fetch-failure exit code before (or without) its
/// report — an agent that held map output was restarting — is not counted against the task:
/// with `max_task_attempts = 1` the job goes on and the reduce runs again.
#[test]
fn a_reduce_exiting_with_the_fetch_failure_code_is_not_counted() {
    let mut settings = settings();
    settings.max_task_attempts = 1;
    let mut harness = Harness::new(plan(1, 1, Vec::new()), settings);
    harness.launch("a");
    harness.succeed(map(0, 0));
    harness.launch("b");
    let fetch_failed = i32::from(crate::task_main::exit_code::FETCH_FAILED);
    harness.complete(reduce(0, 0), ExitReason::Failed, Some(fetch_failed));
    assert_eq!(harness.job.outcome(), None, "the job goes on");
    assert_eq!(harness.job.task_state(TaskKind::Reduce, 0), Some(TaskState::Pending));
    assert_eq!(launched_attempt(&harness.launch("b")), reduce(0, 1));
    harness.succeed(reduce(0, 1));
    assert_eq!(harness.job.outcome(), Some(&JobOutcome::ReadyToCommit));
    let progress = harness.job.progress();
    assert_eq!((progress.fetch_failures, progress.failed_attempts), (1, 0));
}
