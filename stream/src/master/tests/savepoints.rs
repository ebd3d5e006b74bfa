//! Savepoints in the coordinator: taken as the next checkpoint at once, copied out before that
//! checkpoint's commits, a stop that stops the sources at its barrier and ends the job once the
//! savepoint is written, retries after restarts, refusals, and a job starting from one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use spindle_protocol::SavepointState;

use super::{Harness, ack, container};
use crate::checkpoints::{CheckpointMeta, SnapshotFile};
use crate::control::ToWorker;
use crate::location::Location;
use crate::master::coordinator::{Effect, Phase};
use crate::master::savepoints::SavepointAsk;
use crate::operator::Commit;

fn ask(id: u64, stop: bool) -> SavepointAsk {
    SavepointAsk {
        id,
        path: Location::Dir(PathBuf::from(format!("/sp/savepoint-app-{id}"))),
        stop,
        found: Ok(None),
    }
}

/// A deployed job whose first checkpoint is complete, with nothing in flight.
fn running() -> Harness {
    let mut h = Harness::new(2);
    h.tick();
    h.tick();
    let first = *h.coordinator.pending.keys().next().expect("a first checkpoint");
    h.ack_all(first);
    h.coordinator.take_effects();
    h
}

/// The checkpoints triggered since the last look, with their `stop` flags, one per source.
fn triggers(h: &mut Harness) -> Vec<(u64, bool)> {
    h.sent()
        .into_values()
        .flatten()
        .filter_map(|message| match message {
            ToWorker::Trigger { checkpoint, stop, .. } => Some((checkpoint, stop)),
            _ => None,
        })
        .collect()
}

/// Acks checkpoint `id` with a commit from every sink; returns the effects that follow.
fn ack_with_commits(h: &mut Harness, id: u64) -> Vec<Effect> {
    let expected = h.coordinator.pending[&id].expected.clone();
    for (instance, (stage, _, _)) in expected {
        let mut ack = ack(instance, id);
        if h.coordinator.graph.stages[stage].spec.name == "out" {
            ack.state_file = None;
            ack.commit = Some(Commit {
                renames: vec![(
                    format!("/tmp/out/.staging/{instance}").into(),
                    format!("/tmp/out/part-{id}-{instance}").into(),
                )],
                ..Commit::default()
            });
        }
        h.coordinator.on_ack(ack, h.now);
    }
    h.coordinator.take_effects()
}

fn status(h: &Harness, id: u64) -> spindle_protocol::SavepointStatus {
    h.coordinator
        .stream_detail()
        .savepoints
        .into_iter()
        .find(|status| status.id == id)
        .expect("reported")
}

#[test]
fn a_stop_with_savepoint_stops_the_sources_at_its_barrier_commits_and_ends_once_it_is_written() {
    let mut h = running();
    h.coordinator.on_savepoint_asks(vec![ask(1, true)], h.now);
    assert_eq!(status(&h, 1).state, SavepointState::InProgress);
    h.tick();
    let checkpoint = h.coordinator.next_checkpoint - 1;
    assert_eq!(
        triggers(&mut h),
        [(checkpoint, true), (checkpoint, true)],
        "both sources stop at it"
    );
    assert_eq!(status(&h, 1).checkpoint, Some(checkpoint));

    let effects = ack_with_commits(&mut h, checkpoint);
    let kinds: Vec<&str> = effects
        .iter()
        .map(|effect| match effect {
            Effect::WriteSavepoint { .. } => "savepoint",
            Effect::Commit(_) => "commit",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["savepoint", "commit"], "copied out before its commits (and prunes) run");
    let Effect::WriteSavepoint { id, dir, meta, copies } = &effects[0] else {
        unreachable!()
    };
    assert_eq!((*id, dir.to_string()), (1, "/sp/savepoint-app-1".to_owned()));
    assert_eq!((meta.checkpoint, meta.stopped, meta.commits.len()), (checkpoint, true, 2));
    assert_eq!(copies.len(), 4, "2 generators' offsets and 2 windows' groups");
    let Effect::Commit(commits) = &effects[1] else { unreachable!() };
    assert_eq!(commits.len(), 2, "the sinks commit everything before the barrier");

    // While it is written, nothing else starts: no checkpoint, no rescale.
    h.coordinator.parallelism[1] = 1;
    for _ in 0..5 {
        h.tick();
    }
    assert!(h.coordinator.pending.is_empty() && h.coordinator.rescale.is_none());
    assert!(triggers(&mut h).is_empty());

    h.coordinator.on_savepoint_written(1, Ok(()), h.now);
    assert_eq!(h.coordinator.phase, Phase::Finishing);
    let finish = h.coordinator.take_effects().into_iter().find_map(|effect| match effect {
        Effect::Finish { succeeded, diagnostics } => Some((succeeded, diagnostics)),
        _ => None,
    });
    let (succeeded, diagnostics) = finish.expect("the job ends");
    assert!(succeeded && diagnostics.contains("/sp/savepoint-app-1"), "{diagnostics}");
    let done = status(&h, 1);
    assert_eq!((done.state, done.checkpoint), (SavepointState::Completed, Some(checkpoint)));
}

#[test]
fn a_savepoint_without_stop_leaves_the_job_running_and_is_taken_once() {
    let mut h = running();
    h.coordinator.on_savepoint_asks(vec![ask(1, false)], h.now);
    h.tick();
    let checkpoint = h.coordinator.next_checkpoint - 1;
    assert_eq!(triggers(&mut h), [(checkpoint, false), (checkpoint, false)]);
    ack_with_commits(&mut h, checkpoint);
    h.coordinator.on_savepoint_written(1, Ok(()), h.now);
    assert_eq!(h.coordinator.phase, Phase::Running);
    assert_eq!(status(&h, 1).state, SavepointState::Completed);
    // The RM repeats the request in every reply: it is not taken again.
    h.coordinator.on_savepoint_asks(vec![ask(1, false)], h.now);
    h.tick();
    let next = *h.coordinator.pending.keys().next().expect("regular checkpoints go on");
    assert!(
        h.coordinator
            .take_effects()
            .iter()
            .all(|e| !matches!(e, Effect::WriteSavepoint { .. })),
        "{next}"
    );
    assert_eq!(h.coordinator.stream_detail().savepoints.len(), 1);
}

#[test]
fn a_restart_retakes_a_savepoint_in_flight_and_a_stop_whose_savepoint_fails_resumes_the_job() {
    let mut h = running();
    h.coordinator.on_savepoint_asks(vec![ask(2, true)], h.now);
    h.tick();
    let first = h.coordinator.next_checkpoint - 1;
    h.sent();
    h.coordinator.on_worker_lost(container(3), "gone", h.now);
    let epoch = h.coordinator.epoch;
    h.coordinator.on_reset_done(container(2), epoch, h.now);
    h.add_worker(7);
    h.tick(); // deploys again, sources running
    h.sent();
    h.tick(); // the savepoint is taken again, with a new checkpoint
    let again = h.coordinator.next_checkpoint - 1;
    assert!(again > first);
    assert_eq!(triggers(&mut h), [(again, true), (again, true)]);
    assert_eq!(status(&h, 2).checkpoint, Some(again));

    ack_with_commits(&mut h, again);
    let restarts = h.coordinator.restarts;
    h.coordinator.on_savepoint_written(2, Err("disk full".into()), h.now);
    let failed = status(&h, 2);
    assert_eq!((failed.state, failed.error.as_deref()), (SavepointState::Failed, Some("disk full")));
    assert_eq!(
        h.coordinator.restarts,
        restarts + 1,
        "the stopped sources start again from the checkpoint"
    );
    assert!(matches!(h.coordinator.phase, Phase::Resetting { .. }));
}

#[test]
fn unusable_directories_fail_at_once_an_earlier_attempts_savepoint_counts_and_ended_sources_fail_the_rest() {
    let mut h = running();
    let mut bad = ask(1, true);
    bad.found = Err("cannot create /sp: permission denied".into());
    h.coordinator.on_savepoint_asks(vec![bad], h.now);
    h.tick();
    assert!(triggers(&mut h).iter().all(|(_, stop)| !stop), "a failed request stops nothing");
    assert_eq!(status(&h, 1).state, SavepointState::Failed);
    let regular = *h.coordinator.pending.keys().next().unwrap();
    h.ack_all(regular);
    h.coordinator.take_effects();

    // A new attempt finds the stop's savepoint written: it only commits and ends.
    let (meta, _) = crate::savepoint::SavepointMeta::of_checkpoint(
        &h.coordinator.spec,
        h.coordinator.last_complete.as_ref().unwrap(),
        crate::savepoint::Taken {
            app_id: "app".into(),
            savepoint_id: 2,
            stopped: true,
            taken_at_ms: 5,
        },
    );
    let mut taken = ask(2, true);
    taken.found = Ok(Some(meta));
    h.coordinator.on_savepoint_asks(vec![taken], h.now);
    assert_eq!(status(&h, 2).state, SavepointState::Completed);
    assert_eq!(h.coordinator.phase, Phase::Finishing);

    let mut h = running();
    h.coordinator.sources_done = true;
    h.coordinator.on_savepoint_asks(vec![ask(3, false)], h.now);
    h.tick();
    let failed = status(&h, 3);
    assert!(failed.state == SavepointState::Failed && failed.error.unwrap().contains("sources ended"));
}

#[test]
fn a_job_from_a_savepoint_restores_its_files_replays_its_commits_and_numbers_after_it() {
    let mut h = Harness::new(2);
    let savepoint = PathBuf::from("/sp/savepoint-old-1");
    let files = |name: &str, ranges: &[(u32, u32)]| -> Vec<SnapshotFile> {
        ranges
            .iter()
            .enumerate()
            .map(|(index, range)| SnapshotFile {
                index: index as u32,
                range: *range,
                path: savepoint.join(format!("{name}-{index}.state")).display().to_string(),
                bytes: 0,
            })
            .collect()
    };
    let commits = vec![Commit {
        renames: vec![("/tmp/out/.staging/x".into(), "/tmp/out/part-out-0-00000040-0".into())],
        ..Commit::default()
    }];
    let point = CheckpointMeta {
        id: 40,
        completed_at_ms: 1,
        duration_ms: 0,
        size_bytes: 0,
        parallelism: BTreeMap::new(),
        stages: BTreeMap::from([
            ("events".to_owned(), files("events", &[(0, 128), (0, 128)])),
            ("count".to_owned(), files("count", &[(0, 32), (32, 64), (64, 96), (96, 128)])),
        ]),
        commits: commits.clone(),
        last: false,
        counters: BTreeMap::new(),
        epoch: (3 << 32) + 5,
    };
    h.coordinator.restore_from_savepoint(point);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    let effects = h.coordinator.take_effects();
    let replayed = effects.iter().find_map(|effect| match effect {
        Effect::Commit(commits) => Some(commits.clone()),
        _ => None,
    });
    assert_eq!(replayed, Some(commits), "the savepoint's commits run again first");
    let cleaned = effects.iter().find_map(|effect| match effect {
        Effect::CleanStaging { epoch, .. } => Some(*epoch),
        _ => None,
    });
    assert_eq!(
        cleaned,
        Some(4 << 32),
        "staged under a later epoch than the old job's, whose leftovers go"
    );
    let plans: Vec<_> = effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                message: ToWorker::Start { instances },
                ..
            } => Some(instances),
            _ => None,
        })
        .flatten()
        .collect();
    let count: Vec<_> = plans.iter().filter(|plan| plan.spec.name == "count").collect();
    assert_eq!(count.len(), 2, "the new job's parallelism");
    let second = count.iter().find(|plan| plan.index == 1).unwrap();
    assert_eq!(
        second.restore.iter().map(|file| file.range).collect::<Vec<_>>(),
        [(64, 96), (96, 128)],
        "4 old instances' groups re-split over 2"
    );
    let source = plans.iter().find(|plan| plan.spec.name == "events" && plan.index == 1).unwrap();
    assert_eq!(source.restore[0].path, savepoint.join("events-1.state").display().to_string());
    assert!(plans.iter().all(|plan| plan.last_checkpoint == 40));
    h.tick();
    assert_eq!(
        *h.coordinator.pending.keys().next().unwrap(),
        41,
        "its checkpoints come after the savepoint's"
    );
}
