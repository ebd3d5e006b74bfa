//! The instances' counters as the AM last heard them, turned into the `StreamDetail` of the
//! app report (rates over the last report interval).

use std::collections::BTreeMap;
use std::time::Instant;

use spindle_protocol::{CheckpointStatus, InstanceStatus, OperatorStatus, RescaleStatus, StreamDetail};

use crate::checkpoints::CheckpointMeta;
use crate::control::InstanceMetrics;
use crate::graph::{Graph, Layout};
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
            let (mut records_in, mut records_out, mut late, mut bad) = (0, 0, 0, 0);
            for p in placed {
                if let Some((_, last, _)) = self.samples.get(&p.id) {
                    records_in += last.records_in;
                    records_out += last.records_out;
                    late += last.late_records;
                    bad += last.bad_records;
                }
            }
            totals.insert(format!("{name}.records_in"), records_in);
            totals.insert(format!("{name}.records_out"), records_out);
            // Only when there are some: the report's counters are bounded.
            if late > 0 {
                totals.insert(format!("{name}.late_records"), late);
            }
            if bad > 0 {
                totals.insert(format!("{name}.bad_records"), bad);
            }
        }
        // The RM refuses a report with more counters than this (per-instance figures are in
        // the stream detail anyway).
        while totals.len() > spindle_protocol::MAX_DETAIL_ENTRIES {
            totals.pop_last();
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Placed, window_count_spec};

    #[test]
    fn totals_name_late_and_bad_records_only_when_there_are_some() {
        let graph = Graph::build(&window_count_spec(1));
        let placed = |id| {
            vec![Placed {
                id,
                index: 0,
                range: (0, 128),
                worker: 0,
            }]
        };
        let layout: Layout = vec![placed(1), placed(2), placed(3)];
        let mut metrics = Metrics::default();
        metrics.record(
            Instant::now(),
            vec![
                InstanceMetrics {
                    id: 1,
                    records_out: 10,
                    bad_records: 2,
                    ..Default::default()
                },
                InstanceMetrics {
                    id: 2,
                    records_in: 10,
                    late_records: 1,
                    ..Default::default()
                },
            ],
        );
        let totals = metrics.totals(&graph, Some(&layout));
        assert_eq!(totals["events.bad_records"], 2);
        assert_eq!(totals["count.late_records"], 1);
        assert!(!totals.contains_key("count.bad_records") && !totals.contains_key("out.late_records"));
        assert_eq!(totals["count.records_in"], 10);
    }
}
