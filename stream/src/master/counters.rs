//! Per-operator totals that survive instance retirement, rescales, restarts and AM attempts,
//! kept consistent with the checkpoints (as Flink keeps its figures).
//!
//! Every instance counts from 0 when it starts. Its acknowledgement of checkpoint N carries
//! what it had counted at N's barrier; when N completes, what each instance counted since the
//! last complete checkpoint is added to its operator's totals, and N's metadata records them.
//! A deployment from N (a restart, a new AM attempt) starts from N's totals with instances that
//! count from 0: the records after N are replayed and counted again, and the counts of them
//! made before the restore were never folded, so nothing is counted twice. A live rescale
//! restarts nothing: instances that stay keep counting, retired ones count up to the barrier
//! they leave at, new ones count only what comes after it.
//!
//! Between checkpoints the totals shown add what each instance counted since the last complete
//! checkpoint (from the workers' samples, which lag a little): exact at every checkpoint and at
//! the end of a bounded job, and never smaller than what was shown before, except after a
//! restore, which goes back to the checkpoint's totals (the replayed records are then counted
//! again as they are processed).

use std::collections::{BTreeMap, BTreeSet};

use spindle_protocol::StreamDetail;

use crate::counts::RecordCounts;
use crate::wire::InstanceId;

/// Totals by operator name.
pub type OperatorTotals = BTreeMap<String, RecordCounts>;

/// The coordinator's account of every operator's counts.
#[derive(Debug, Clone, Default)]
pub struct CounterLedger {
    /// Totals at the latest complete checkpoint, or at the one the job was restored from.
    committed: OperatorTotals,
    /// Instances of the current deployment (retired ones until their last counts are folded).
    instances: BTreeMap<InstanceId, Tracked>,
}

#[derive(Debug, Clone)]
struct Tracked {
    /// The operator it counts for.
    operator: String,
    /// Its counts at the latest complete checkpoint it acknowledged (0 before any): they are
    /// in `committed` already.
    folded: RecordCounts,
    /// The most it was heard to have counted: samples, acknowledgements, its last counts.
    seen: RecordCounts,
}

impl CounterLedger {
    /// A ledger that starts from a checkpoint's totals (empty: a job that starts afresh).
    pub fn starting_from(totals: OperatorTotals) -> CounterLedger {
        CounterLedger {
            committed: totals,
            instances: BTreeMap::new(),
        }
    }

    /// The pipeline is deployed again from a checkpoint with these totals: what instances
    /// counted since is dropped (they are gone; the records will be replayed).
    pub fn restore(&mut self, totals: OperatorTotals) {
        *self = CounterLedger::starting_from(totals);
    }

    /// These instances go back to the latest complete checkpoint (a regional restart): what
    /// they counted since it is dropped, their replacements count the replayed records again;
    /// the other instances' counts stand.
    pub fn go_back(&mut self, instances: &BTreeSet<InstanceId>) {
        self.instances.retain(|id, _| !instances.contains(id));
    }

    /// A new instance of `operator`, counting from 0.
    pub fn track(&mut self, instance: InstanceId, operator: &str) {
        self.instances.entry(instance).or_insert_with(|| Tracked {
            operator: operator.to_owned(),
            folded: RecordCounts::default(),
            seen: RecordCounts::default(),
        });
    }

    /// What an instance said it counted so far (samples of instances of an earlier deployment
    /// are ignored).
    pub fn observe(&mut self, instance: InstanceId, counts: RecordCounts) {
        if let Some(tracked) = self.instances.get_mut(&instance) {
            tracked.seen = tracked.seen.newest(counts);
        }
    }

    /// The ledger once a checkpoint with these acknowledgements completes (the caller keeps it
    /// only if the checkpoint's metadata was written).
    pub fn checkpointed(&self, acks: impl IntoIterator<Item = (InstanceId, RecordCounts)>) -> CounterLedger {
        let mut next = self.clone();
        for (instance, at_barrier) in acks {
            let Some(tracked) = next.instances.get_mut(&instance) else {
                debug_assert!(false, "instance {instance} acknowledged a checkpoint without being tracked");
                continue;
            };
            let since = at_barrier.since(tracked.folded);
            let total = next.committed.entry(tracked.operator.clone()).or_default();
            *total = total.plus(since);
            tracked.folded = tracked.folded.newest(at_barrier);
            tracked.seen = tracked.seen.newest(at_barrier);
        }
        next
    }

    /// Forgets instances that left the deployment once all they counted is folded in.
    pub fn forget_departed(&mut self, live: &BTreeSet<InstanceId>) {
        self.instances
            .retain(|id, tracked| live.contains(id) || tracked.seen != tracked.folded);
    }

    /// Totals at the latest complete checkpoint.
    pub fn committed(&self) -> &OperatorTotals {
        &self.committed
    }

    /// Totals now: the latest complete checkpoint's plus what instances counted since.
    pub fn totals(&self) -> OperatorTotals {
        let mut totals = self.committed.clone();
        for tracked in self.instances.values() {
            let total = totals.entry(tracked.operator.clone()).or_default();
            *total = total.plus(tracked.seen.since(tracked.folded));
        }
        totals
    }
}

/// The report's named counters, from the detail's totals (so the two always agree): records
/// in and out of every operator, and late and bad records of those that had some (the RM
/// bounds how many counters a report may carry).
pub fn job_counters(detail: &StreamDetail) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for operator in &detail.operators {
        let name = &operator.name;
        counters.insert(format!("{name}.records_in"), operator.records_in);
        counters.insert(format!("{name}.records_out"), operator.records_out);
        if operator.late_records > 0 {
            counters.insert(format!("{name}.late_records"), operator.late_records);
        }
        if operator.bad_records > 0 {
            counters.insert(format!("{name}.bad_records"), operator.bad_records);
        }
    }
    // The RM refuses a report with more counters than this (the stream detail has them all).
    while counters.len() > spindle_protocol::MAX_DETAIL_ENTRIES {
        counters.pop_last();
    }
    counters
}

#[cfg(test)]
mod tests {
    use spindle_protocol::OperatorStatus;

    use super::*;

    fn counts(records_in: u64, records_out: u64) -> RecordCounts {
        RecordCounts {
            records_in,
            records_out,
            ..RecordCounts::default()
        }
    }

    #[test]
    fn a_checkpoint_folds_what_each_instance_counted_since_the_last_one() {
        let mut ledger = CounterLedger::starting_from(BTreeMap::from([("count".to_owned(), counts(100, 10))]));
        ledger.track(1, "count");
        ledger.track(2, "count");
        ledger.observe(1, counts(30, 3));
        assert_eq!(ledger.totals()["count"], counts(130, 13));
        let ledger = ledger.checkpointed([(1, counts(20, 2)), (2, counts(5, 0))]);
        assert_eq!(
            ledger.committed()["count"],
            counts(125, 12),
            "the barrier's counts, not the sample's"
        );
        assert_eq!(
            ledger.totals()["count"],
            counts(135, 13),
            "the sample ahead of the barrier still shows, once"
        );
        let ledger = ledger.checkpointed([(1, counts(40, 4)), (2, counts(15, 1))]);
        assert_eq!(ledger.committed()["count"], counts(155, 15));
    }

    #[test]
    fn totals_never_go_down_when_a_checkpoint_overtakes_the_samples() {
        let mut ledger = CounterLedger::default();
        ledger.track(1, "count");
        ledger.observe(1, counts(50, 5));
        let before = ledger.totals()["count"];
        // The acknowledgement carries more than the last sample; a late, older sample follows.
        let mut ledger = ledger.checkpointed([(1, counts(70, 7))]);
        ledger.observe(1, counts(60, 6));
        assert!(ledger.totals()["count"].records_in >= before.records_in);
        assert_eq!(ledger.totals()["count"], counts(70, 7));
    }

    #[test]
    fn retired_instances_are_forgotten_only_once_their_counts_are_folded() {
        let mut ledger = CounterLedger::default();
        ledger.track(1, "count");
        ledger.track(2, "count");
        ledger.observe(2, counts(9, 0));
        let live = BTreeSet::from([1]);
        ledger.forget_departed(&live);
        assert_eq!(ledger.totals()["count"].records_in, 9, "2 counted more than was folded");
        let mut ledger = ledger.checkpointed([(1, counts(1, 0)), (2, counts(9, 0))]);
        ledger.forget_departed(&live);
        ledger.observe(2, counts(50, 0));
        assert_eq!(ledger.totals()["count"].records_in, 10, "a stray sample of a departed instance");
    }

    #[test]
    fn a_restore_drops_what_was_counted_after_the_checkpoint() {
        let mut ledger = CounterLedger::default();
        ledger.track(1, "events");
        let at_checkpoint = ledger.checkpointed([(1, counts(0, 1_000))]);
        let mut ledger = at_checkpoint.clone();
        ledger.observe(1, counts(0, 1_600));
        assert_eq!(ledger.totals()["events"].records_out, 1_600);
        ledger.restore(at_checkpoint.committed().clone());
        ledger.observe(1, counts(0, 5_000));
        assert_eq!(
            ledger.totals()["events"].records_out,
            1_000,
            "instances of the failed deployment are gone"
        );
        ledger.track(7, "events");
        ledger.observe(7, counts(0, 600));
        assert_eq!(ledger.totals()["events"].records_out, 1_600, "the replay counts again");
    }

    #[test]
    fn job_counters_name_late_and_bad_records_only_when_there_are_some() {
        let operator = |name: &str, records_in, records_out, late_records, bad_records| OperatorStatus {
            name: name.to_owned(),
            records_in,
            records_out,
            late_records,
            bad_records,
            ..OperatorStatus::default()
        };
        let detail = StreamDetail {
            operators: vec![
                operator("events", 0, 10, 0, 2),
                operator("count", 10, 3, 1, 0),
                operator("out", 0, 0, 0, 0),
            ],
            ..StreamDetail::default()
        };
        let counters = job_counters(&detail);
        assert_eq!(counters["events.bad_records"], 2);
        assert_eq!(counters["count.late_records"], 1);
        assert!(!counters.contains_key("count.bad_records") && !counters.contains_key("out.late_records"));
        assert_eq!(counters["count.records_in"], 10);
        assert_eq!(counters["out.records_in"], 0, "every operator has its records, zero included");
    }
}
