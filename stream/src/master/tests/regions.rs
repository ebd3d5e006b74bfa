//! Regional recovery: a failure restarts only the failed instances' failover region from the
//! latest checkpoint while the other regions run on, and what those staged for checkpoints
//! the restart abandoned is committed with the next one. And the forward edges that make
//! regions follow rescales.

use std::collections::BTreeSet;

use spindle_protocol::StreamSpec;

use super::{Harness, ack, container};
use crate::control::{InstancePlan, ToWorker};
use crate::master::coordinator::{Effect, Phase};
use crate::operator::Commit;
use crate::wire::InstanceId;

/// examples/stream-parallel-etl.toml (every edge forward: three regions, one per worker, as
/// instance `i` of each operator runs on worker `i`), checkpointing on every tick.
fn three_pipelines() -> StreamSpec {
    let mut spec = crate::graph::parallel_etl_spec();
    spec.checkpoint_interval_ms = 0;
    spec.operators.last_mut().expect("a sink").path = Some("/tmp/out".into());
    spec
}

/// Instance `index` of stage `stage`.
fn id(h: &Harness, stage: usize, index: usize) -> InstanceId {
    h.coordinator.layout.as_ref().unwrap()[stage][index].id
}

fn commit(name: &str) -> Commit {
    Commit {
        renames: vec![(format!("/tmp/out/.staging/{name}").into(), format!("/tmp/out/{name}").into())],
        ..Commit::default()
    }
}

/// Deployed, checkpoint 1 complete, checkpoint 2 acknowledged by regions 0 and 2 only (their
/// sinks with a commit each).
fn running_with_a_checkpoint_half_acknowledged() -> Harness {
    let mut h = Harness::with_spec(three_pipelines(), 3);
    h.tick();
    h.tick();
    h.ack_all(1);
    h.tick();
    assert!(h.coordinator.pending.contains_key(&2));
    for region in [0, 2] {
        h.coordinator.on_ack(ack(id(&h, 0, region), 2), h.now);
        let mut sink = ack(id(&h, 1, region), 2);
        sink.commit = Some(commit(&format!("region-{region}")));
        h.coordinator.on_ack(sink, h.now);
    }
    h.sent();
    h.coordinator.take_effects();
    h
}

fn starts(sent: &[ToWorker]) -> Vec<&InstancePlan> {
    sent.iter()
        .filter_map(|m| match m {
            ToWorker::Start { instances } => Some(instances),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_failed_instance_restarts_its_region_alone_and_the_others_commit_what_they_staged() {
    let mut h = running_with_a_checkpoint_half_acknowledged();
    let survivors: Vec<InstanceId> = [0, 2].iter().flat_map(|&i| [id(&h, 0, i), id(&h, 1, i)]).collect();
    let (source, sink) = (id(&h, 0, 1), id(&h, 1, 1));
    h.coordinator.on_instance_failed(sink, "disk full", h.now);

    assert_eq!(h.coordinator.restarts, 1);
    let last = h.coordinator.last_restart.clone().unwrap();
    assert_eq!((last.instances, last.of_instances, last.checkpoint), (2, 6, Some(1)));
    assert!(h.coordinator.pending.is_empty(), "checkpoint 2 is abandoned");
    let sent = h.sent();
    let epoch = h.coordinator.epoch;
    assert!(
        matches!(&sent[&container(3)][..], [ToWorker::Cancel { instances, epoch: e }]
            if *instances == vec![source, sink] && *e == epoch),
        "only the failed region's worker stops anything: {sent:?}"
    );
    assert!(sent[&container(2)].is_empty() && sent[&container(4)].is_empty(), "{sent:?}");
    // Its other instances' errors (their peer went) change nothing.
    h.coordinator.on_instance_failed(source, "input broke", h.now);
    assert_eq!(h.coordinator.restarts, 1);

    h.tick();
    assert!(matches!(h.coordinator.phase, Phase::Recovering(_)), "until the worker stopped them");
    h.coordinator.on_cancelled(container(3), epoch, h.now);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    let effects = h.coordinator.take_effects();
    assert!(
        effects.iter().any(|e| matches!(e, Effect::CleanStaging { prefixes, epoch: e, .. }
            if *prefixes == vec!["out-1-e".to_owned()] && *e == epoch)),
        "only the restarted sink's staged files go: {effects:?}"
    );
    let restarted: Vec<&InstancePlan> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                worker,
                message: ToWorker::Start { instances },
            } if *worker == container(3) => Some(instances),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(restarted.len(), 2, "{effects:?}");
    assert!(
        effects
            .iter()
            .all(|e| !matches!(e, Effect::Send { worker, .. } if *worker != container(3)))
    );
    let generator = restarted.iter().find(|plan| plan.spec.name == "events").unwrap();
    assert_eq!(generator.last_checkpoint, 1);
    assert_eq!(generator.restore.len(), 1, "its offsets at checkpoint 1: {:?}", generator.restore);
    assert_eq!(generator.outputs[0].targets.len(), 1);
    assert!(![source, sink].contains(&generator.id), "new ids");
    let now: Vec<InstanceId> = [0, 2].iter().flat_map(|&i| [id(&h, 0, i), id(&h, 1, i)]).collect();
    assert_eq!(now, survivors, "the other regions' instances run on");

    // The next checkpoint commits what the survivors staged for the abandoned one, then theirs.
    h.tick();
    assert!(h.coordinator.pending.contains_key(&3));
    h.ack_all(3);
    let commits: Vec<Commit> = h
        .coordinator
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Commit(commits) => Some(commits),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(commits, vec![commit("region-0"), commit("region-2")]);
    assert_eq!(h.coordinator.last_complete.as_ref().unwrap().commits.len(), 2);
    assert!(h.coordinator.carried.is_empty());
}

#[test]
fn a_lost_worker_restarts_its_region_on_a_replacement() {
    let mut h = running_with_a_checkpoint_half_acknowledged();
    h.coordinator.on_worker_lost(container(3), "node lost", h.now);
    assert!(matches!(h.coordinator.phase, Phase::Recovering(_)));
    let sent = h.sent();
    assert!(sent[&container(2)].is_empty() && sent[&container(4)].is_empty(), "{sent:?}");
    h.tick();
    assert!(matches!(h.coordinator.phase, Phase::Recovering(_)), "no worker to put it on yet");
    h.add_worker(9);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    assert_eq!(h.coordinator.slots[1], container(9));
    let sent = h.sent();
    assert_eq!(starts(&sent[&container(9)]).len(), 2);
    assert!(starts(&sent[&container(2)]).is_empty());
}

#[test]
fn a_second_region_failing_meanwhile_restarts_the_whole_job_and_drops_carried_commits() {
    let mut h = running_with_a_checkpoint_half_acknowledged();
    h.coordinator.on_instance_failed(id(&h, 1, 1), "disk full", h.now);
    assert_eq!(h.coordinator.carried.len(), 2);
    h.coordinator.on_instance_failed(id(&h, 1, 0), "disk full", h.now);
    assert_eq!(h.coordinator.restarts, 2);
    assert!(matches!(h.coordinator.phase, Phase::Resetting { .. }));
    assert!(h.coordinator.carried.is_empty(), "every region replays from checkpoint 1");
    let resets = h.sent().values().flatten().filter(|m| matches!(m, ToWorker::Reset { .. })).count();
    assert_eq!(resets, 3);
    let last = h.coordinator.last_restart.clone().unwrap();
    assert_eq!((last.instances, last.of_instances), (6, 6));
}

#[test]
fn a_region_that_fails_again_drops_what_it_carried() {
    let mut h = running_with_a_checkpoint_half_acknowledged();
    h.coordinator.on_instance_failed(id(&h, 1, 1), "disk full", h.now);
    let epoch = h.coordinator.epoch;
    h.coordinator.on_cancelled(container(3), epoch, h.now);
    h.tick();
    // Region 0 fails before a checkpoint completes: its carried commit would publish output
    // it now replays.
    h.coordinator.on_instance_failed(id(&h, 0, 0), "bug", h.now);
    let carried: BTreeSet<InstanceId> = h.coordinator.carried.iter().map(|(id, _)| *id).collect();
    assert_eq!(carried, BTreeSet::from([id(&h, 1, 2)]));
}

/// count 4 → 2 with 2 sinks: the count → out edge, round-robin while the two differ, is forward
/// again after the rescale's barrier. The counts that stay keep only their own sink (the other
/// hears `End` from them after the barrier); no sink gains a sender.
#[test]
fn a_rescale_that_evens_the_parallelisms_makes_an_edge_forward_again() {
    let mut spec = super::spec();
    spec.set_parallelism("count", 4).unwrap();
    let mut h = Harness::with_spec(spec, 4);
    h.tick();
    h.tick();
    h.ack_all(1);
    h.sent();
    h.coordinator
        .set_desired(&std::collections::BTreeMap::from([("count".to_owned(), 2)]), h.now);
    h.tick();
    assert!(h.coordinator.rescale.is_some(), "a scale-down needs no new worker");
    let changes: Vec<crate::control::InstanceChange> = h
        .sent()
        .into_values()
        .flatten()
        .filter_map(|m| match m {
            ToWorker::Rescale { changes, .. } => Some(changes),
            _ => None,
        })
        .flatten()
        .collect();
    let sinks: BTreeSet<InstanceId> = (0..2).map(|i| id(&h, 2, i)).collect();
    let to_sinks: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            crate::control::InstanceChange::Retarget { targets, .. } if sinks.contains(&targets[0].id) => Some(targets),
            _ => None,
        })
        .collect();
    assert_eq!(to_sinks.len(), 2, "{changes:?}");
    assert!(
        to_sinks
            .iter()
            .all(|targets| targets.len() == 1 && targets[0].starts_after.is_none())
    );
    assert!(
        !changes
            .iter()
            .any(|c| matches!(c, crate::control::InstanceChange::AddInputs { .. })),
        "{changes:?}"
    );
}

#[test]
fn failover_full_restarts_every_region() {
    let mut spec = three_pipelines();
    spec.failover = spindle_protocol::FailoverStrategy::Full;
    let mut h = Harness::with_spec(spec, 3);
    h.tick();
    h.tick();
    h.ack_all(1);
    h.sent();
    h.coordinator.on_instance_failed(id(&h, 1, 1), "disk full", h.now);
    assert!(matches!(h.coordinator.phase, Phase::Resetting { .. }));
    assert_eq!(h.coordinator.last_restart.clone().unwrap().instances, 6);
}

/// A staged multipart upload of a sink on an object store (see `commit`).
fn upload(name: &str) -> crate::operator::UploadCommit {
    crate::operator::UploadCommit {
        url: format!("s3://bucket/out/{name}"),
        upload_id: format!("upload-{name}"),
        parts: vec!["part-1".into()],
    }
}

fn aborted(h: &mut Harness) -> BTreeSet<String> {
    h.coordinator
        .take_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::AbortUploads(uploads) => Some(uploads),
            _ => None,
        })
        .flatten()
        .map(|upload| upload.upload_id)
        .collect()
}

/// Uploads staged for a checkpoint that will never complete are aborted: the failed region's
/// at once (the others' are carried to the next checkpoint), everything a full restart drops.
#[test]
fn uploads_that_will_never_be_completed_are_aborted() {
    let mut h = running_with_a_checkpoint_half_acknowledged();
    let (source, sink) = (id(&h, 0, 1), id(&h, 1, 1));
    h.coordinator.on_ack(ack(source, 2), h.now);
    let mut staged = ack(sink, 2);
    staged.commit = Some(Commit {
        uploads: vec![upload("region-1")],
        ..Commit::default()
    });
    h.coordinator.on_ack(staged, h.now);
    // Checkpoint 2 completed meanwhile (every region acknowledged): nothing to abort.
    assert!(aborted(&mut h).is_empty());

    let mut h = running_with_a_checkpoint_half_acknowledged();
    for region in [0, 2] {
        let sink = id(&h, 1, region);
        h.coordinator.pending.get_mut(&2).unwrap().acks.get_mut(&sink).unwrap().commit = Some(Commit {
            uploads: vec![upload(&format!("region-{region}"))],
            ..Commit::default()
        });
    }
    h.coordinator.on_instance_failed(id(&h, 1, 0), "disk full", h.now);
    assert_eq!(
        aborted(&mut h),
        BTreeSet::from(["upload-region-0".to_owned()]),
        "region 2's is carried"
    );
    h.coordinator.on_instance_failed(id(&h, 1, 2), "disk full", h.now);
    assert_eq!(
        aborted(&mut h),
        BTreeSet::from(["upload-region-2".to_owned()]),
        "a full restart drops the carried"
    );
}
