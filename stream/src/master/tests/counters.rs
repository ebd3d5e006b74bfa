//! Operator totals across rescales 2 → 4 → 1, a lost worker, a new AM attempt and the end of a
//! bounded job: the tests move records through the layout by hand, keep the truth of what the
//! pipeline processed, and compare the totals the coordinator shows and records with it.

use std::collections::BTreeMap;

use super::{Harness, ack, container, spec};
use crate::control::{InstanceMetrics, ToWorker};
use crate::counts::RecordCounts;
use crate::master::coordinator::{Coordinator, Phase};
use crate::master::counters::{OperatorTotals, job_counters};
use crate::wire::InstanceId;

const OPERATORS: [&str; 3] = ["events", "count", "out"];

/// Records moved through the pipeline by hand.
#[derive(Default)]
struct Flow {
    /// What each instance counted since it started.
    counts: BTreeMap<InstanceId, RecordCounts>,
    /// What the pipeline processed, by operator: what the totals must say.
    truth: OperatorTotals,
    /// `truth` at each complete checkpoint (what a restore from it goes back to).
    at_checkpoint: BTreeMap<u64, OperatorTotals>,
}

impl Flow {
    /// Each generator instance emits `per_source` records (one of them bad); the window
    /// instances share them, drop 1 in 100 as late and emit one result per 10; the sinks share
    /// the results. Then every live instance reports a sample, as workers do every second.
    fn run(&mut self, h: &mut Harness, per_source: u64) {
        let layout = h.coordinator.layout.clone().expect("deployed");
        let emitted = per_source * layout[0].len() as u64;
        for placed in &layout[0] {
            self.add(placed.id, "events", |c| {
                c.records_out += per_source;
                c.bytes_out += per_source * 16;
                c.bad_records += 1;
            });
        }
        let windows = layout[1].len() as u64;
        let mut results = 0;
        for (i, placed) in layout[1].iter().enumerate() {
            let share = emitted / windows + if i == 0 { emitted % windows } else { 0 };
            results += share / 10;
            self.add(placed.id, "count", |c| {
                c.records_in += share;
                c.bytes_in += share * 16;
                c.late_records += share / 100;
                c.records_out += share / 10;
                c.bytes_out += share / 10 * 24;
            });
        }
        let sinks = layout[2].len() as u64;
        for (i, placed) in layout[2].iter().enumerate() {
            let share = results / sinks + if i == 0 { results % sinks } else { 0 };
            self.add(placed.id, "out", |c| {
                c.records_in += share;
                c.bytes_in += share * 24;
            });
        }
        let samples = layout
            .iter()
            .flatten()
            .map(|placed| {
                let c = self.counts[&placed.id];
                InstanceMetrics {
                    id: placed.id,
                    records_in: c.records_in,
                    records_out: c.records_out,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    late_records: c.late_records,
                    bad_records: c.bad_records,
                    ..InstanceMetrics::default()
                }
            })
            .collect();
        h.coordinator.on_metrics(samples, h.now);
    }

    fn add(&mut self, instance: InstanceId, operator: &str, count: impl Fn(&mut RecordCounts)) {
        count(self.counts.entry(instance).or_default());
        count(self.truth.entry(operator.to_owned()).or_default());
    }

    /// Acknowledges checkpoint `id` for every instance it expects, with what each counted and
    /// the snapshot file it wrote (a real one, of the size acknowledged: a new attempt recovers
    /// only from a checkpoint whose every file is there).
    fn ack_all(&mut self, h: &mut Harness, id: u64) {
        let expected: Vec<InstanceId> = h.coordinator.pending[&id].expected.keys().copied().collect();
        for instance in expected {
            let mut ack = ack(instance, id);
            ack.counts = self.counts.get(&instance).copied().unwrap_or_default();
            let file = h._dir.path().join(format!("app/chk-{id}/{instance}.state"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, vec![0; ack.state_bytes as usize]).unwrap();
            ack.state_file = Some(file.display().to_string());
            h.coordinator.on_ack(ack, h.now);
        }
        assert!(!h.coordinator.pending.contains_key(&id), "checkpoint {id} completed");
        self.at_checkpoint.insert(id, self.truth.clone());
    }

    /// Triggers the next checkpoint and completes it; its metadata holds the truth.
    fn checkpoint(&mut self, h: &mut Harness) -> u64 {
        h.tick();
        let id = *h.coordinator.pending.keys().next().expect("a checkpoint was triggered");
        self.ack_all(h, id);
        let recorded = &h.coordinator.last_complete.as_ref().expect("complete").counters;
        assert_eq!(by_operator(recorded), by_operator(&self.truth), "checkpoint {id}'s metadata");
        id
    }

    /// A restore from checkpoint `id`: what came after it is replayed, so it is as if it never was.
    fn restore(&mut self, id: u64) {
        self.truth = self.at_checkpoint[&id].clone();
    }

    /// The totals the coordinator shows are the truth, and the job's counters agree.
    fn check_shown(&self, h: &Harness, when: &str) {
        let detail = h.coordinator.stream_detail();
        let shown: OperatorTotals = detail
            .operators
            .iter()
            .map(|operator| {
                let counts = RecordCounts {
                    records_in: operator.records_in,
                    records_out: operator.records_out,
                    bytes_in: operator.bytes_in,
                    bytes_out: operator.bytes_out,
                    late_records: operator.late_records,
                    bad_records: operator.bad_records,
                };
                (operator.name.clone(), counts)
            })
            .collect();
        assert_eq!(by_operator(&shown), by_operator(&self.truth), "{when}");
        let counters = job_counters(&detail);
        assert_eq!(counters["count.records_in"], self.truth["count"].records_in, "{when}");
    }
}

/// Totals of the three operators, zero where absent.
fn by_operator(totals: &OperatorTotals) -> Vec<RecordCounts> {
    OPERATORS
        .iter()
        .map(|name| totals.get(*name).copied().unwrap_or_default())
        .collect()
}

impl Harness {
    /// Runs a rescale of `count` to `to` to its end: records flow to the old instances until
    /// the barrier, which every instance acknowledges with its counts; the gaining ones load.
    fn rescale_count(&mut self, flow: &mut Flow, to: u32, before_barrier: u64) {
        self.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), to)]), self.now);
        self.tick();
        let checkpoint = self.coordinator.rescale.as_ref().expect("the rescale started").checkpoint;
        flow.run(self, before_barrier);
        let preparing: Vec<_> = self
            .sent()
            .into_iter()
            .filter(|(_, messages)| messages.iter().any(|m| matches!(m, ToWorker::Rescale { .. })))
            .map(|(worker, _)| worker)
            .collect();
        for worker in preparing {
            self.coordinator.on_prepared(worker, checkpoint, self.now);
        }
        flow.ack_all(self, checkpoint);
        let gaining: Vec<InstanceId> = self
            .coordinator
            .rescale
            .as_ref()
            .map_or_else(Vec::new, |rescale| rescale.gaining.keys().copied().collect());
        for instance in gaining {
            self.coordinator.on_loaded(instance, checkpoint, 1, self.now);
        }
        assert!(self.coordinator.rescale.is_none(), "the rescale to {to} is over");
        assert_eq!(self.coordinator.layout.as_ref().unwrap()[1].len(), to as usize);
    }
}

#[test]
fn totals_survive_rescales_a_lost_worker_and_a_new_attempt_and_end_exact() {
    let mut h = Harness::new(2);
    let mut flow = Flow::default();
    h.coordinator.set_desired(&BTreeMap::from([("count".to_owned(), 2)]), h.now);
    h.tick();
    flow.run(&mut h, 1_000);
    flow.check_shown(&h, "before any checkpoint: the live samples");
    flow.checkpoint(&mut h);

    // 2 → 4: the old instances keep running and counting; two new ones count from 0.
    h.add_worker(4);
    h.add_worker(5);
    h.rescale_count(&mut flow, 4, 500);
    flow.check_shown(&h, "after the rescale to 4");
    flow.run(&mut h, 2_000);
    flow.check_shown(&h, "4 instances counting");
    flow.checkpoint(&mut h);

    // 4 → 1: three instances retire at the barrier; their counts stay in the totals.
    h.rescale_count(&mut flow, 1, 300);
    flow.run(&mut h, 700);
    flow.check_shown(&h, "after the rescale to 1, the retired instances' counts included");
    let last = flow.checkpoint(&mut h);

    // A lost worker: records after the checkpoint are replayed, so the totals go back to it.
    flow.run(&mut h, 900);
    flow.check_shown(&h, "ahead of the checkpoint");
    h.coordinator.on_worker_lost(container(3), "gone", h.now);
    flow.restore(last);
    flow.check_shown(&h, "restarting from the checkpoint");
    let epoch = h.coordinator.epoch;
    for worker in [2, 4, 5] {
        h.coordinator.on_reset_done(container(worker), epoch, h.now);
    }
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    flow.run(&mut h, 400);
    flow.check_shown(&h, "redeployed from the checkpoint");
    let last = flow.checkpoint(&mut h);

    // A new AM attempt starts from the latest checkpoint's totals.
    flow.run(&mut h, 600);
    let dir = crate::location::Location::Dir(h._dir.path().to_owned());
    h.coordinator = Coordinator::new(spec(), "app".into(), 2, &dir, h.now);
    flow.restore(last);
    flow.check_shown(&h, "a new attempt before it deploys");
    h.add_worker(7);
    h.add_worker(8);
    h.tick();
    assert_eq!(h.coordinator.phase, Phase::Running);
    flow.run(&mut h, 800);
    flow.checkpoint(&mut h);

    // The end: every instance reports its last counts; the sinks' come before the window's.
    flow.run(&mut h, 250);
    let layout = h.coordinator.layout.clone().unwrap();
    let finish = |h: &mut Harness, flow: &Flow, stage: usize| {
        for placed in &layout[stage] {
            h.coordinator.on_finished(placed.id, None, flow.counts[&placed.id], h.now);
        }
    };
    finish(&mut h, &flow, 0);
    finish(&mut h, &flow, 2);
    assert_eq!(
        h.coordinator.phase,
        Phase::Running,
        "the window's last counts are still on their way"
    );
    finish(&mut h, &flow, 1);
    assert_eq!(h.coordinator.phase, Phase::Finishing);
    let final_meta = h.coordinator.storage.complete_checkpoints().pop().unwrap();
    assert!(final_meta.last);
    assert_eq!(by_operator(&final_meta.counters), by_operator(&flow.truth));
    flow.check_shown(&h, "the end");
    assert_eq!(
        flow.truth["events"].records_out,
        2 * (1_000 + 500 + 2_000 + 300 + 700 + 400 + 800 + 250),
        "the test's own bookkeeping: every committed event once"
    );
}

#[test]
fn samples_of_a_failed_deployment_do_not_count_after_the_restart() {
    let mut h = Harness::new(2);
    let mut flow = Flow::default();
    h.tick();
    flow.run(&mut h, 1_000);
    let id = flow.checkpoint(&mut h);
    let old: Vec<InstanceId> = h.coordinator.layout.as_ref().unwrap().iter().flatten().map(|p| p.id).collect();
    h.coordinator.on_worker_lost(container(3), "gone", h.now);
    flow.restore(id);
    // A worker of the failed deployment still reports before its reset lands.
    let late = old
        .iter()
        .map(|&id| InstanceMetrics {
            id,
            records_in: 1_000_000,
            records_out: 1_000_000,
            ..InstanceMetrics::default()
        })
        .collect();
    h.coordinator.on_metrics(late, h.now);
    flow.check_shown(&h, "stale samples are ignored");
}
