//! The instances' samples as the AM last heard them, turned into the `StreamDetail` of the
//! app report (rates over the last report interval); the operators' totals come from the
//! counter ledger (`counters.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use spindle_protocol::{CheckpointStatus, InstanceStatus, OperatorStatus, RescaleStatus, StreamDetail};

use super::coordinator::Coordinator;
use crate::control::InstanceMetrics;
use crate::wire::InstanceId;

/// One report of an instance's counters and when it came.
type Sample = (Instant, InstanceMetrics);

#[derive(Default)]
pub struct Metrics {
    /// Latest and previous sample of each instance.
    samples: BTreeMap<InstanceId, (Instant, InstanceMetrics, Option<Sample>)>,
    pub last_rescale: Option<RescaleStatus>,
}

impl Metrics {
    pub fn record(&mut self, now: Instant, metrics: Vec<InstanceMetrics>) {
        for sample in metrics {
            let previous = self.samples.remove(&sample.id).map(|(at, last, _)| (at, last));
            self.samples.insert(sample.id, (now, sample, previous));
        }
    }

    /// Forgets the samples of instances that are gone (only live ones are reported).
    pub fn forget_departed(&mut self, live: &BTreeSet<InstanceId>) {
        self.samples.retain(|id, _| live.contains(id));
    }

    fn status(&self, id: InstanceId) -> InstanceStatus {
        let Some((at, last, previous)) = self.samples.get(&id) else {
            return InstanceStatus::default();
        };
        let (records_in_per_s, records_out_per_s, busy, backpressured) = match previous {
            Some((then, before)) => {
                let seconds = at.duration_since(*then).as_secs_f64().max(1e-3);
                let nanos = seconds * 1e9;
                (
                    (last.records_in.saturating_sub(before.records_in)) as f64 / seconds,
                    (last.records_out.saturating_sub(before.records_out)) as f64 / seconds,
                    ((last.busy_ns.saturating_sub(before.busy_ns)) as f64 / nanos).min(1.0),
                    ((last.backpressured_ns.saturating_sub(before.backpressured_ns)) as f64 / nanos).min(1.0),
                )
            }
            None => (0.0, 0.0, 0.0, 0.0),
        };
        InstanceStatus {
            records_in: last.records_in,
            records_out: last.records_out,
            records_in_per_s,
            records_out_per_s,
            busy,
            backpressured,
            state_bytes: last.state_bytes,
            source_lag: last.lag,
            ..InstanceStatus::default()
        }
    }
}

impl Coordinator {
    /// The stream section of the app report: every operator with its instances and its totals
    /// since the job started, the latest checkpoint, restarts and the last rescale.
    pub fn stream_detail(&self) -> StreamDetail {
        let totals = self.counters.totals();
        let operators = self
            .graph
            .stages
            .iter()
            .enumerate()
            .map(|(stage, spec)| {
                let placed = self.layout.as_ref().map(|layout| layout[stage].as_slice()).unwrap_or_default();
                let instances = placed
                    .iter()
                    .map(|p| InstanceStatus {
                        index: p.index,
                        container_id: self.slots.get(p.worker).copied(),
                        key_groups: spec.spec.is_keyed().then_some(p.range),
                        ..self.metrics.status(p.id)
                    })
                    .collect::<Vec<_>>();
                let total = totals.get(&spec.spec.name).copied().unwrap_or_default();
                OperatorStatus {
                    name: spec.spec.name.clone(),
                    kind: spec.spec.kind().as_str().to_owned(),
                    parallelism: instances.len() as u32,
                    target_parallelism: self.parallelism[stage],
                    instances,
                    records_in: total.records_in,
                    records_out: total.records_out,
                    bytes_in: total.bytes_in,
                    bytes_out: total.bytes_out,
                    late_records: total.late_records,
                    bad_records: total.bad_records,
                }
            })
            .collect();
        StreamDetail {
            operators,
            last_checkpoint: self.last_complete.as_ref().filter(|meta| !meta.last).map(|meta| CheckpointStatus {
                id: meta.id,
                completed_at_ms: meta.completed_at_ms,
                duration_ms: meta.duration_ms,
                size_bytes: meta.size_bytes,
            }),
            restarts: self.restarts,
            last_rescale: self.metrics.last_rescale.clone(),
            last_restart: self.last_restart.clone(),
            savepoints: self.savepoints.statuses(),
        }
    }
}
