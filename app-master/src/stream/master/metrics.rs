//! The instances' counters as the AM last heard them, turned into the `StreamDetail` of the
//! app report (rates over the last report interval).

use std::collections::BTreeMap;
use std::time::Instant;

use spindle_protocol::{CheckpointStatus, InstanceStatus, OperatorStatus, RescaleStatus, StreamDetail};

use super::super::checkpoints::CheckpointMeta;
use super::super::control::InstanceMetrics;
use super::super::plan::{Graph, Layout};
use super::super::wire::InstanceId;

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

    /// Forgets instances not in the layout any more.
    pub fn retain(&mut self, layout: &Layout) {
        let live: std::collections::BTreeSet<InstanceId> = layout.iter().flatten().map(|p| p.id).collect();
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

    /// The detail for the app report.
    pub fn detail(
        &self,
        graph: &Graph,
        layout: Option<&Layout>,
        parallelism: &[u32],
        slots: &[spindle_protocol::ContainerId],
        last_complete: Option<&CheckpointMeta>,
        restarts: u32,
    ) -> StreamDetail {
        let operators = graph
            .stages
            .iter()
            .enumerate()
            .map(|(stage, spec)| {
                let placed = layout.map(|layout| layout[stage].as_slice()).unwrap_or_default();
                let instances = placed
                    .iter()
                    .map(|p| InstanceStatus {
                        index: p.index,
                        container_id: slots.get(p.worker).copied(),
                        key_groups: spec.spec.is_keyed().then_some(p.range),
                        ..self.status(p.id)
                    })
                    .collect::<Vec<_>>();
                OperatorStatus {
                    name: spec.spec.name.clone(),
                    kind: spec.spec.kind().as_str().to_owned(),
                    parallelism: instances.len() as u32,
                    target_parallelism: parallelism[stage],
                    instances,
                }
            })
            .collect();
        StreamDetail {
            operators,
            last_checkpoint: last_complete.filter(|meta| !meta.last).map(|meta| CheckpointStatus {
                id: meta.id,
                completed_at_ms: meta.completed_at_ms,
                duration_ms: meta.duration_ms,
                size_bytes: meta.size_bytes,
            }),
            restarts,
            last_rescale: self.last_rescale.clone(),
        }
    }

    /// What each stage of the layout did over the last interval (for autoscaling).
    pub fn stage_rates(&self, layout: &Layout) -> Vec<super::autoscale::StageRates> {
        layout
            .iter()
            .map(|placed| {
                let mut rates = super::autoscale::StageRates::default();
                let mut backpressured = 0.0;
                for p in placed {
                    let status = self.status(p.id);
                    rates.records_in_per_s += status.records_in_per_s;
                    rates.records_out_per_s += status.records_out_per_s;
                    rates.busy += status.busy;
                    backpressured += status.backpressured;
                    if let Some((at, last, Some((then, before)))) = self.samples.get(&p.id)
                        && let (Some(now_lag), Some(then_lag)) = (last.lag, before.lag)
                    {
                        let seconds = at.duration_since(*then).as_secs_f64().max(1e-3);
                        rates.backlog_growth_per_s += (now_lag as f64 - then_lag as f64) / seconds;
                    }
                }
                rates.backpressured = if placed.is_empty() {
                    0.0
                } else {
                    backpressured / placed.len() as f64
                };
                rates
            })
            .collect()
    }

    /// Totals by operator name, for counters.
    pub fn totals(&self, graph: &Graph, layout: Option<&Layout>) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        let Some(layout) = layout else { return totals };
        for (stage, placed) in layout.iter().enumerate() {
            let name = &graph.stages[stage].spec.name;
            let (mut records_in, mut records_out, mut late) = (0, 0, 0);
            for p in placed {
                if let Some((_, last, _)) = self.samples.get(&p.id) {
                    records_in += last.records_in;
                    records_out += last.records_out;
                    late += last.late_records;
                }
            }
            totals.insert(format!("{name}.records_in"), records_in);
            totals.insert(format!("{name}.records_out"), records_out);
            if late > 0 {
                totals.insert(format!("{name}.late_records"), late);
            }
        }
        totals
    }
}
