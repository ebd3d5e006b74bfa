//! Property test: whatever order grants, reports, completions, launch failures, lost nodes
//! and time come in, the job's tables stay consistent, never exceed `max_containers`, and a
//! cluster that then lets every task succeed brings the job to an end.

use proptest::prelude::*;
use spindle_protocol::{ExitReason, NodeId};

use super::tests::{Harness, plan, settings};
use super::*;
use crate::task_protocol::TaskOutcome;
use spindle_app_master::{LaunchFailure, LaunchFailureKind};

const NODES: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];

#[derive(Debug, Clone)]
enum Event {
    Grant { node: usize },
    Report { pick: usize, outcome: u8, progress: f32 },
    Complete { pick: usize, reason: u8 },
    LaunchFailed { pick: usize, refused: bool },
    Tick { advance_ms: u64 },
    NodeLost { node: usize },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..NODES.len()).prop_map(|node| Event::Grant { node }),
        3 => (any::<usize>(), 0u8..6, 0.0f32..=1.0).prop_map(|(pick, outcome, progress)| Event::Report { pick, outcome, progress }),
        3 => (any::<usize>(), 0u8..6).prop_map(|(pick, reason)| Event::Complete { pick, reason }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, refused)| Event::LaunchFailed { pick, refused }),
        2 => (0u64..8_000).prop_map(|advance_ms| Event::Tick { advance_ms }),
        1 => (0..NODES.len()).prop_map(|node| Event::NodeLost { node }),
    ]
}

fn live_attempt(harness: &Harness, pick: usize) -> Option<TaskAttemptId> {
    let live: Vec<TaskAttemptId> = harness.job.attempts.keys().copied().collect();
    (!live.is_empty()).then(|| live[pick % live.len()])
}

fn apply(harness: &mut Harness, event: &Event) {
    match *event {
        Event::Grant { node } => {
            harness.grant(NODES[node]);
        }
        Event::Report { pick, outcome, progress } => {
            let Some(attempt) = live_attempt(harness, pick) else { return };
            let outcome = match outcome {
                0 | 1 => None,
                2 | 3 => Some(TaskOutcome::Succeeded),
                4 => Some(TaskOutcome::Failed { error: "boom".to_owned() }),
                _ => Some(TaskOutcome::FetchFailed {
                    maps: vec![(pick % 3) as u32],
                    error: "fetch".to_owned(),
                }),
            };
            harness.report(attempt, progress, outcome);
        }
        Event::Complete { pick, reason } => {
            let Some(attempt) = live_attempt(harness, pick) else { return };
            let (reason, code) = match reason {
                0 | 1 => (ExitReason::Success, Some(0)),
                2 => (ExitReason::Failed, Some(1)),
                3 => (ExitReason::Preempted, None),
                4 => (ExitReason::NodeLost, None),
                _ => (ExitReason::KilledByRm, None),
            };
            harness.complete(attempt, reason, code);
        }
        Event::LaunchFailed { pick, refused } => {
            let Some(attempt) = live_attempt(harness, pick) else { return };
            let kind = if refused {
                LaunchFailureKind::AgentRefused
            } else {
                LaunchFailureKind::AgentUnreachable
            };
            let failure = LaunchFailure {
                kind,
                message: "launch failed".to_owned(),
            };
            let container_id = harness.launched[&attempt];
            harness.job.on_launch_failed(container_id, &failure);
        }
        Event::Tick { advance_ms } => {
            harness.now_ms += advance_ms;
            harness.job.tick(harness.now_ms);
        }
        Event::NodeLost { node } => harness.job.on_node_lost(&NodeId(NODES[node].to_owned())),
    }
}

fn check_invariants(job: &MapReduceJob) -> Result<(), TestCaseError> {
    let asked: u32 = job.asks().iter().map(|ask| ask.count).sum();
    if let Some(max_containers) = job.settings.max_containers {
        prop_assert!(
            job.held_containers() + asked <= max_containers,
            "held {} + asked {asked}",
            job.held_containers()
        );
    }
    for (container_id, id) in &job.containers {
        prop_assert_eq!(job.attempts.get(id).map(|attempt| attempt.container_id), Some(*container_id));
    }
    for (id, attempt) in &job.attempts {
        prop_assert_eq!(attempt.id, *id);
        let task = &job.stage(id.kind)[id.task as usize];
        prop_assert!(task.live_attempts.contains(&id.attempt), "{} is live but not in its task", id);
    }
    for task in job.maps.iter().chain(&job.reduces) {
        prop_assert!(task.live_attempts.len() <= 2, "{} has {:?}", task.name(), task.live_attempts);
        for &attempt in &task.live_attempts {
            let id = TaskAttemptId {
                kind: task.kind,
                task: task.index,
                attempt,
            };
            prop_assert!(job.attempts.contains_key(&id), "{} lists {} which is not live", task.name(), id);
        }
        match task.state {
            TaskState::Pending => prop_assert!(task.live_attempts.is_empty()),
            TaskState::Running => prop_assert!(!task.live_attempts.is_empty()),
            TaskState::Succeeded => {
                prop_assert!(task.live_attempts.is_empty());
                prop_assert!(task.kind == TaskKind::Reduce || task.output.is_some());
            }
        }
        // A task may reach the limit while its speculative sibling runs on, and that one may
        // still win; once it has succeeded, losing its output re-runs it whatever its count.
        if job.outcome.is_none() && task.state == TaskState::Pending && task.success_duration_ms.is_none() {
            prop_assert!(
                task.counted_failures < job.settings.max_task_attempts,
                "{} should have failed the job",
                task.name()
            );
        }
    }
    if job.outcome.is_some() {
        prop_assert!(job.attempts.is_empty() && job.containers.is_empty() && asked == 0);
    }
    let progress = job.progress();
    prop_assert!((0.0..=1.0).contains(&progress.progress));
    Ok(())
}

/// A cluster that grants what is asked (round robin over the nodes) and lets every task succeed.
fn drain(harness: &mut Harness) {
    let mut next_node = 0;
    for _ in 0..500 {
        if harness.job.outcome().is_some() {
            return;
        }
        harness.now_ms += 1_000;
        harness.job.tick(harness.now_ms);
        let asked: u32 = harness.job.asks().iter().map(|ask| ask.count).sum();
        for _ in 0..asked.max(1) {
            harness.grant(NODES[next_node % NODES.len()]);
            next_node += 1;
        }
        let live: Vec<TaskAttemptId> = harness.job.attempts.keys().copied().collect();
        for attempt in live {
            if harness.job.attempts.contains_key(&attempt) {
                harness.report(attempt, 1.0, Some(TaskOutcome::Succeeded));
            }
            if harness.job.attempt_container(attempt).is_some() {
                harness.complete(attempt, ExitReason::Success, Some(0));
            }
        }
    }
}

fn job_plan(maps: u32, reducers: u32, locality: bool) -> JobPlan {
    let preferred = match locality {
        true => (0..maps as usize)
            .map(|index| vec![NodeId(NODES[index % NODES.len()].to_owned())])
            .collect(),
        false => Vec::new(),
    };
    plan(maps, reducers, preferred)
}

fn job_settings(max_containers: Option<u32>, speculation: bool) -> JobSettings {
    let mut settings = settings();
    settings.max_task_attempts = 3;
    settings.max_containers = max_containers;
    settings.speculation = speculation.then(SpeculationSettings::default);
    settings
}

/// Everything the driver sees of the job after one event.
fn observable(
    harness: &mut Harness,
) -> (
    Vec<spindle_protocol::ResourceAsk>,
    Vec<spindle_protocol::ContainerId>,
    JobProgress,
    Option<JobOutcome>,
) {
    let job = &mut harness.job;
    (job.asks(), job.take_releases(), job.progress(), job.outcome().cloned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_event_order_keeps_the_tables_consistent_and_the_job_ends(
        events in proptest::collection::vec(event(), 0..120),
        maps in 1u32..6,
        reducers in 1u32..4,
        max_containers in proptest::option::of(1u32..5),
        speculation in any::<bool>(),
        locality in any::<bool>(),
    ) {
        let mut harness = Harness::new(job_plan(maps, reducers, locality), job_settings(max_containers, speculation));
        for event in &events {
            apply(&mut harness, event);
            check_invariants(&harness.job)?;
        }
        drain(&mut harness);
        check_invariants(&harness.job)?;
        match harness.job.outcome() {
            Some(JobOutcome::ReadyToCommit) => {
                prop_assert_eq!(harness.job.winning_reduce_attempts().len(), reducers as usize);
                // (A map may be pending again: its output was lost after every reduce had it.)
                prop_assert!(harness.job.reduces.iter().all(|task| task.state == TaskState::Succeeded));
            }
            Some(JobOutcome::Failed { diagnostics }) => {
                prop_assert!(diagnostics.contains("(max_task_attempts = 3)"), "{}", diagnostics);
            }
            other => prop_assert!(false, "the job did not end: {:?}", other),
        }
    }

    #[test]
    fn the_same_events_give_the_same_decisions(
        events in proptest::collection::vec(event(), 0..80),
        max_containers in proptest::option::of(1u32..5),
        speculation in any::<bool>(),
    ) {
        let mut first = Harness::new(job_plan(4, 2, true), job_settings(max_containers, speculation));
        let mut second = Harness::new(job_plan(4, 2, true), job_settings(max_containers, speculation));
        for event in &events {
            apply(&mut first, event);
            apply(&mut second, event);
            prop_assert_eq!(observable(&mut first), observable(&mut second));
        }
    }
}
