//! The stream AM's figures for the RM's `/metrics`: per instance and per app, derived from the
//! detail it reports. The RM adds the `app` label and renders them as sent.

use std::collections::BTreeMap;

use spindle_protocol::{InstanceStatus, MetricFamily, MetricSample, OperatorStatus, StreamDetail};

/// A per-instance gauge: its name, help, and the figure it reads (`None`: no sample).
type InstanceGauge = (&'static str, &'static str, fn(&InstanceStatus) -> Option<f64>);

const INSTANCE_GAUGES: [InstanceGauge; 6] = [
    (
        "spindle_stream_records_in_per_second",
        "Records an operator instance took in per second.",
        |instance| Some(instance.records_in_per_s),
    ),
    (
        "spindle_stream_records_out_per_second",
        "Records an operator instance emitted per second.",
        |instance| Some(instance.records_out_per_s),
    ),
    (
        "spindle_stream_busy_ratio",
        "Fraction of time an operator instance spent processing.",
        |instance| Some(instance.busy),
    ),
    (
        "spindle_stream_backpressured_ratio",
        "Fraction of time an operator instance waited for downstream credit.",
        |instance| Some(instance.backpressured),
    ),
    (
        "spindle_stream_state_bytes",
        "Keyed state an operator instance holds.",
        |instance| Some(instance.state_bytes as f64),
    ),
    (
        "spindle_stream_source_lag",
        "Records available to a source instance but not read yet.",
        |instance| instance.source_lag.map(|lag| lag as f64),
    ),
];

/// A per-operator counter: its name, help, and the total it reads.
type OperatorCounter = (&'static str, &'static str, fn(&OperatorStatus) -> u64);

/// Totals since the job started over every instance an operator had, kept in checkpoints: a
/// restore sets them back to the checkpoint's figures (a counter reset to Prometheus, which
/// `rate()` and `increase()` handle), after which the replayed records count again.
const OPERATOR_COUNTERS: [OperatorCounter; 6] = [
    (
        "spindle_stream_records_in_total",
        "Records an operator took in since the job started, over all its instances.",
        |operator| operator.records_in,
    ),
    (
        "spindle_stream_records_out_total",
        "Records an operator sent on since the job started, over all its instances.",
        |operator| operator.records_out,
    ),
    (
        "spindle_stream_in_bytes_total",
        "Bytes of the records an operator took in since the job started (batch format).",
        |operator| operator.bytes_in,
    ),
    (
        "spindle_stream_out_bytes_total",
        "Bytes of the records an operator sent on since the job started (batch format).",
        |operator| operator.bytes_out,
    ),
    (
        "spindle_stream_late_records_total",
        "Records an operator dropped because the watermark had passed their window.",
        |operator| operator.late_records,
    ),
    (
        "spindle_stream_bad_records_total",
        "Records an operator skipped because a field they need does not parse.",
        |operator| operator.bad_records,
    ),
];

/// A per-app figure: its name, help, type, and the figure it reads (`None`: no sample).
type AppMetric = (&'static str, &'static str, &'static str, fn(&StreamDetail) -> Option<f64>);

const APP_METRICS: [AppMetric; 4] = [
    (
        "spindle_stream_checkpoint_duration_seconds",
        "Duration of the latest complete checkpoint, from trigger to the last acknowledgement.",
        "gauge",
        |detail| {
            detail
                .last_checkpoint
                .as_ref()
                .map(|checkpoint| checkpoint.duration_ms as f64 / 1000.0)
        },
    ),
    (
        "spindle_stream_checkpoint_size_bytes",
        "Size of the latest complete checkpoint.",
        "gauge",
        |detail| detail.last_checkpoint.as_ref().map(|checkpoint| checkpoint.size_bytes as f64),
    ),
    (
        "spindle_stream_last_checkpoint_id",
        "Id of the latest complete checkpoint.",
        "gauge",
        |detail| detail.last_checkpoint.as_ref().map(|checkpoint| checkpoint.id as f64),
    ),
    (
        "spindle_stream_restarts_total",
        "Restarts of a streaming job from a checkpoint after failures.",
        "counter",
        |detail| Some(f64::from(detail.restarts)),
    ),
];

/// The families of one stream job's detail (families with no sample included; the RM leaves
/// them out).
pub fn exported_metrics(detail: &StreamDetail) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    for (name, help, read) in INSTANCE_GAUGES {
        let mut samples = Vec::new();
        for operator in &detail.operators {
            for instance in &operator.instances {
                if let Some(value) = read(instance) {
                    samples.push(MetricSample {
                        labels: BTreeMap::from([
                            ("operator".to_owned(), operator.name.clone()),
                            ("instance".to_owned(), instance.index.to_string()),
                        ]),
                        value,
                    });
                }
            }
        }
        families.push(family(name, help, "gauge", samples));
    }
    for (name, help, read) in OPERATOR_COUNTERS {
        let samples = detail
            .operators
            .iter()
            .map(|operator| MetricSample {
                labels: BTreeMap::from([("operator".to_owned(), operator.name.clone())]),
                value: read(operator) as f64,
            })
            .collect();
        families.push(family(name, help, "counter", samples));
    }
    for (name, help, kind, read) in APP_METRICS {
        let samples = read(detail)
            .map(|value| MetricSample {
                labels: BTreeMap::new(),
                value,
            })
            .into_iter()
            .collect();
        families.push(family(name, help, kind, samples));
    }
    families.retain(|family| !family.samples.is_empty());
    families
}

fn family(name: &str, help: &str, kind: &str, samples: Vec<MetricSample>) -> MetricFamily {
    MetricFamily {
        name: name.to_owned(),
        help: help.to_owned(),
        kind: kind.to_owned(),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{CheckpointStatus, OperatorStatus};

    use super::*;

    #[test]
    fn every_figure_is_exported_with_its_labels() {
        let instance = |index, source_lag| InstanceStatus {
            index,
            records_in_per_s: 1500.0,
            records_out_per_s: 20.5,
            busy: 0.25,
            backpressured: 0.5,
            state_bytes: 4096,
            source_lag,
            ..InstanceStatus::default()
        };
        let detail = StreamDetail {
            operators: vec![
                OperatorStatus {
                    name: "events".into(),
                    kind: "generator".into(),
                    parallelism: 1,
                    target_parallelism: 1,
                    instances: vec![instance(0, Some(12))],
                    ..OperatorStatus::default()
                },
                OperatorStatus {
                    name: "count".into(),
                    kind: "window".into(),
                    parallelism: 2,
                    target_parallelism: 2,
                    instances: vec![instance(0, None), instance(1, None)],
                    records_in: 40_000_000,
                    late_records: 3,
                    ..OperatorStatus::default()
                },
            ],
            last_checkpoint: Some(CheckpointStatus {
                id: 42,
                completed_at_ms: 5,
                duration_ms: 80,
                size_bytes: 1_000_000,
            }),
            restarts: 3,
            ..StreamDetail::default()
        };
        let families = exported_metrics(&detail);
        let find = |name: &str| {
            families
                .iter()
                .find(|family| family.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(find("spindle_stream_records_in_per_second").samples.len(), 3);
        assert_eq!(find("spindle_stream_source_lag").samples.len(), 1, "only sources have a lag");
        assert_eq!(find("spindle_stream_source_lag").samples[0].labels["operator"], "events");
        assert_eq!(find("spindle_stream_source_lag").samples[0].value, 12.0);
        assert_eq!(find("spindle_stream_state_bytes").samples[2].labels["instance"], "1");
        assert_eq!(find("spindle_stream_checkpoint_duration_seconds").samples[0].value, 0.08);
        assert_eq!(find("spindle_stream_last_checkpoint_id").samples[0].value, 42.0);
        assert_eq!(find("spindle_stream_restarts_total").kind, "counter");
        let records_in = find("spindle_stream_records_in_total");
        assert_eq!(records_in.kind, "counter");
        assert_eq!(records_in.samples[1].labels["operator"], "count");
        assert_eq!(
            records_in.samples[1].value, 40_000_000.0,
            "the operator's total, not a live instance's"
        );
        assert_eq!(find("spindle_stream_late_records_total").samples.len(), 2, "zeros included");
        assert!(families.iter().all(|family| family.name.starts_with("spindle_stream_")));

        let idle = exported_metrics(&StreamDetail::default());
        assert_eq!(idle.len(), 1, "only the restart count of a job with no operators yet: {idle:?}");
    }
}
