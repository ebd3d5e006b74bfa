//! The coordinator without processes or clocks: the tests play the workers' part (acks,
//! prepared, loaded), move time by hand and read the messages it sends as effects.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, ContainerId, StreamSpec};

use super::coordinator::{Coordinator, Effect, Phase, Worker};
use crate::control::{Ack, InstanceChange, ToWorker};
use crate::location::Location;

mod counters;
mod regions;
mod savepoints;

/// The plan tests' pipeline, checkpointing on every tick, into 2 file sinks.
fn spec() -> StreamSpec {
    let mut spec = crate::graph::window_count_spec(2);
    spec.checkpoint_interval_ms = 0;
    let out = spec.operators.last_mut().expect("a sink");
    out.kind = Some(spindle_protocol::OperatorKind::FileSink);
    out.parallelism = 2;
    out.path = Some("/tmp/out".into());
    spec
}

struct Harness {
    coordinator: Coordinator,
    /// The time the tests give the coordinator; it moves only when they say.
    now: Instant,
    workers: BTreeSet<ContainerId>,
    _dir: tempfile::TempDir,
}

fn container(n: u64) -> ContainerId {
    ContainerId {
        app: AppId { cluster_ts: 1, seq: 1 },
        attempt: 1,
        epoch: 1,
        seq: n,
    }
}

impl Harness {
    fn new(workers: u64) -> Harness {
        Harness::with_spec(spec(), workers)
    }

    fn with_spec(spec: StreamSpec, workers: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut harness = Harness {
            coordinator: Coordinator::new(spec, "app".into(), 1, &Location::Dir(dir.path().to_owned()), now),
            now,
            workers: BTreeSet::new(),
            _dir: dir,
        };
        for n in 2..2 + workers {
            harness.add_worker(n);
        }
        harness
    }

    fn add_worker(&mut self, n: u64) {
        self.coordinator.workers.insert(
            container(n),
            Worker {
                data_address: Some(format!("127.0.0.1:{}", 9000 + n)),
            },
        );
        self.workers.insert(container(n));
    }

    /// One millisecond passes and the coordinator's timers run.
    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        self.coordinator.tick(self.now);
    }

    /// Every message sent to each worker since the last call (other effects are dropped).
    fn sent(&mut self) -> BTreeMap<ContainerId, Vec<ToWorker>> {
        let mut sent: BTreeMap<ContainerId, Vec<ToWorker>> = self.workers.iter().map(|id| (*id, Vec::new())).collect();
        for effect in self.coordinator.take_effects() {
            if let Effect::Send { worker, message } = effect {
                sent.entry(worker).or_default().push(message);
            }
        }
        sent
    }

    /// Acks checkpoint `id` for every instance it expects (snapshot paths are made up).
    fn ack_all(&mut self, id: u64) {
        let expected: Vec<u64> = self.coordinator.pending[&id].expected.keys().copied().collect();
        for instance in expected {
            self.coordinator.on_ack(ack(instance, id), self.now);
        }
    }
}

fn ack(instance: u64, checkpoint: u64) -> Ack {
    Ack {
        instance,
        checkpoint,
        state_file: Some(format!("/chk-{checkpoint}/{instance}.state")),
        state_bytes: 10,
        commit: None,
        duration_ms: 1,
        counts: Default::default(),
    }
}

#[test]
fn deploys_one_instance_of_each_stage_per_worker_and_completes_checkpoints_on_every_ack() {
    let mut h = Harness::new(2);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    for (_, messages) in h.sent() {
        let [ToWorker::Start { instances }] = &messages[..] else {
            panic!("{messages:?}")
        };
        let names: Vec<&str> = instances.iter().map(|plan| plan.spec.name.as_str()).collect();
        assert_eq!(names, ["events", "count", "out"]);
        assert_eq!(
            instances[1].outputs[0].targets.len(),
            1,
            "count feeds its own sink: a forward edge, both run 2 instances"
        );
        assert_eq!(instances[2].inputs.len(), 1);
        assert!(instances[0].outputs[0].keyed, "the key_by is fused into the generator's edge");
    }
    h.tick();
    let checkpoint = *h.coordinator.pending.keys().next().expect("a checkpoint was triggered");
    let triggers: usize = h
        .sent()
        .values()
        .flatten()
        .filter(|message| matches!(message, ToWorker::Trigger { instances, .. } if instances.len() == 1))
        .count();
    assert_eq!(triggers, 2, "each worker's one source gets the barrier");
    h.ack_all(checkpoint);
    assert!(h.coordinator.pending.is_empty());
    assert_eq!(h.coordinator.last_complete.as_ref().unwrap().id, checkpoint);
    assert_eq!(h.coordinator.storage.complete_checkpoints().len(), 1);
    assert!(matches!(h.coordinator.effects.last(), Some(Effect::Commit(_))));
}

#[test]
fn a_rescale_starts_new_instances_switches_upstream_at_a_barrier_and_hands_state_over() {
    let mut h = Harness::new(2);
    h.tick();
    h.sent();
    h.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), 2)]), h.now);
    h.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), 4)]), h.now);
    h.tick();
    assert!(h.coordinator.rescale.is_none(), "two more workers are needed first");
    assert_eq!(h.coordinator.workers_wanted(), 4);
    // A checkpoint went out meanwhile; a rescale waits for it to complete.
    let running = *h.coordinator.pending.keys().next().unwrap();
    h.ack_all(running);
    h.add_worker(4);
    h.add_worker(5);
    h.tick();
    let rescale = h.coordinator.rescale.as_ref().expect("the rescale started");
    let checkpoint = rescale.checkpoint;
    let sent = h.sent();
    let starts: usize = sent.values().flatten().filter(|m| matches!(m, ToWorker::Start { .. })).count();
    assert_eq!(starts, 2, "one new count instance on each new worker");
    let changes: Vec<&InstanceChange> = sent
        .values()
        .flatten()
        .filter_map(|m| match m {
            ToWorker::Rescale { changes, .. } => Some(changes),
            _ => None,
        })
        .flatten()
        .collect();
    let retargets = changes
        .iter()
        .filter(|c| matches!(c, InstanceChange::Retarget { targets, .. } if targets.len() == 4))
        .count();
    let regroups = changes
        .iter()
        .filter(|c| {
            matches!(
                c,
                InstanceChange::Regroup {
                    range: Some(_),
                    gains: false,
                    ..
                }
            )
        })
        .count();
    // count → out was forward (2 and 2); with 4 counts it goes round-robin: the two counts that
    // stay now feed both sinks too (the new connection carries data after the barrier only),
    // and each sink hears from three more senders.
    let widened = changes
        .iter()
        .filter(|c| {
            matches!(c, InstanceChange::Retarget { targets, .. }
                if targets.len() == 2 && targets.iter().filter(|t| t.starts_after == Some(checkpoint)).count() == 1)
        })
        .count();
    let added = changes
        .iter()
        .filter(|c| {
            matches!(c, InstanceChange::AddInputs { inputs, .. }
                if inputs.len() == 3 && inputs.iter().all(|i| i.starts_after == Some(checkpoint)))
        })
        .count();
    assert_eq!((retargets, regroups, widened, added), (2, 2, 2, 2), "{changes:?}");

    // Only once every worker has the changes queued does the barrier go out.
    let workers: Vec<ContainerId> = sent
        .iter()
        .filter(|(_, m)| m.iter().any(|m| matches!(m, ToWorker::Rescale { .. })))
        .map(|(id, _)| *id)
        .collect();
    for worker in &workers {
        assert!(h.coordinator.pending.is_empty());
        h.coordinator.on_prepared(*worker, checkpoint, h.now);
    }
    assert!(h.coordinator.pending.contains_key(&checkpoint));
    h.ack_all(checkpoint);
    let loads: Vec<(u64, usize)> = h
        .sent()
        .values()
        .flatten()
        .filter_map(|m| match m {
            ToWorker::Load { instance, files, .. } => Some((*instance, files.len())),
            _ => None,
        })
        .collect();
    assert_eq!(loads.len(), 2, "each new instance loads its groups");
    assert!(
        loads.iter().all(|(_, files)| *files == 1),
        "from the one old owner of its range: {loads:?}"
    );
    for (instance, _) in loads {
        h.coordinator.on_loaded(instance, checkpoint, 5, h.now);
    }
    assert!(h.coordinator.rescale.is_none(), "the rescale is over");
    let layout = h.coordinator.layout.as_ref().unwrap();
    assert_eq!(
        layout[1].iter().map(|p| p.range).collect::<Vec<_>>(),
        vec![(0, 32), (32, 64), (64, 96), (96, 128)]
    );
    assert_eq!(h.coordinator.last_complete.as_ref().unwrap().parallelism["count"], 4);
}

#[test]
fn a_lost_worker_resets_the_others_and_redeploys_from_the_latest_checkpoint() {
    let mut h = Harness::new(2);
    h.tick();
    h.tick();
    let checkpoint = *h.coordinator.pending.keys().next().unwrap();
    h.ack_all(checkpoint);
    h.sent();
    h.coordinator.on_worker_lost(container(3), "gone", h.now);
    assert_eq!(h.coordinator.restarts, 1);
    let sent = h.sent();
    assert!(matches!(sent[&container(2)][..], [ToWorker::Reset { .. }]));
    let epoch = h.coordinator.epoch;
    h.coordinator.on_reset_done(container(2), epoch, h.now);
    assert_eq!(h.coordinator.phase, Phase::Deploying);
    h.add_worker(6);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    let starts = h.sent();
    let plans: Vec<_> = starts
        .values()
        .flatten()
        .filter_map(|m| match m {
            ToWorker::Start { instances } => Some(instances),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(plans.len(), 6);
    let count = plans.iter().find(|plan| plan.spec.name == "count" && plan.index == 0).unwrap();
    assert_eq!(count.last_checkpoint, checkpoint);
    assert_eq!(count.restore.len(), 1, "its range was one old instance's: {:?}", count.restore);
}

#[test]
fn a_preempted_worker_that_hosts_no_source_is_emptied_by_a_scale_down() {
    let mut h = Harness::new(2);
    h.tick();
    // Grow count to 3 so that a worker hosts only a count instance.
    h.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), 2)]), h.now);
    h.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), 3)]), h.now);
    h.add_worker(4);
    h.tick();
    let checkpoint = h.coordinator.rescale.as_ref().unwrap().checkpoint;
    for worker in [container(2), container(3), container(4)] {
        h.coordinator.on_prepared(worker, checkpoint, h.now);
    }
    h.ack_all(checkpoint);
    let new: Vec<u64> = h.coordinator.rescale.as_ref().unwrap().gaining.keys().copied().collect();
    for instance in new {
        h.coordinator.on_loaded(instance, checkpoint, 1, h.now);
    }
    assert!(h.coordinator.rescale.is_none());
    h.sent();

    h.coordinator.on_preempt(&[container(4)], h.now);
    assert_eq!(
        h.coordinator.parallelism[1], 2,
        "count shrinks by the instance on the preempted worker"
    );
    h.tick();
    let sent = h.sent();
    let retired: Vec<&InstanceChange> = sent
        .values()
        .flatten()
        .filter_map(|m| match m {
            ToWorker::Rescale { changes, .. } => Some(changes),
            _ => None,
        })
        .flatten()
        .filter(|c| matches!(c, InstanceChange::Regroup { range: None, .. }))
        .collect();
    assert_eq!(retired.len(), 1);
    assert!(
        sent[&container(4)].iter().any(|m| matches!(m, ToWorker::Rescale { .. })),
        "the retired one is on worker 4"
    );

    // A worker with a source cannot be emptied: nothing changes until it goes.
    h.coordinator.on_preempt(&[container(2)], h.now);
    assert_eq!(h.coordinator.parallelism, vec![2, 2, 2]);
}

#[test]
fn autoscaling_grows_a_saturated_keyed_operator_within_its_bounds() {
    use crate::control::InstanceMetrics;

    let mut h = Harness::new(2);
    h.coordinator.spec.autoscale = Some(spindle_protocol::AutoscaleSpec {
        min: 1,
        max: 4,
        cooldown_ms: 0,
        target_utilization: 0.7,
    });
    // Unthrottled generators: what they could emit is what they emit per unblocked second.
    h.coordinator.graph.stages[0].spec.rate = None;
    h.tick();
    let layout = h.coordinator.layout.clone().unwrap();
    // Every second: each generator emitted 500,000 records while blocked half the time; each
    // window instance took 500,000 in, busy all the time.
    let sample = |scale: u64| -> Vec<InstanceMetrics> {
        let mut samples = Vec::new();
        for placed in &layout[0] {
            samples.push(InstanceMetrics {
                id: placed.id,
                records_out: 500_000 * scale,
                backpressured_ns: 500_000_000 * scale,
                busy_ns: 500_000_000 * scale,
                ..Default::default()
            });
        }
        for placed in &layout[1] {
            samples.push(InstanceMetrics {
                id: placed.id,
                records_in: 500_000 * scale,
                records_out: 1_000 * scale,
                busy_ns: 1_000_000_000 * scale,
                ..Default::default()
            });
        }
        for placed in &layout[2] {
            samples.push(InstanceMetrics {
                id: placed.id,
                records_in: 1_000 * scale,
                busy_ns: 1_000_000 * scale,
                ..Default::default()
            });
        }
        samples
    };
    // The first tick of the deployment starts the warm-up (3 s), then a window of 2 s (the
    // shortest) is measured: nothing is decided before.
    h.tick();
    for second in 1..=4 {
        h.now += Duration::from_secs(1);
        h.coordinator.on_metrics(sample(second), h.now);
        h.tick();
        assert_eq!(h.coordinator.parallelism[1], 2, "after {second} s");
    }
    for second in 5..=6 {
        h.now += Duration::from_secs(1);
        h.coordinator.on_metrics(sample(second), h.now);
        h.tick();
    }
    // Generators could do 2 M/s; a window instance does 0.5 M/s per busy second at 70%:
    // 2e6 / 3.5e5 = 6 instances, capped at the maximum of 4.
    assert_eq!(
        h.coordinator.parallelism[..2],
        [2, 4],
        "sources keep theirs; one operator at a time"
    );
}
