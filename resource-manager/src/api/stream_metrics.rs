//! Streaming jobs' figures in `/metrics`: per instance, per app, from the detail AMs report.

use std::fmt::Write as _;

use spindle_protocol::{AppId, InstanceStatus, StreamDetail};

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

/// A per-app figure: its name, help, type, and the figure it reads (`None`: no sample).
type AppMetric = (&'static str, &'static str, &'static str, fn(&StreamDetail) -> Option<f64>);

const APP_METRICS: [AppMetric; 4] = [
    (
        "spindle_stream_checkpoint_duration_ms",
        "Duration of the latest complete checkpoint, from trigger to the last acknowledgement.",
        "gauge",
        |detail| detail.last_checkpoint.as_ref().map(|checkpoint| checkpoint.duration_ms as f64),
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

/// Appends the stream metrics of `details` (live apps' latest reports) to `out`. Families
/// with no sample are left out, so a cluster without streaming jobs shows none of them.
pub(super) fn write_stream_metrics(out: &mut String, details: &[(AppId, StreamDetail)]) {
    for (name, help, read) in INSTANCE_GAUGES {
        let mut samples = String::new();
        for (app_id, detail) in details {
            for operator in &detail.operators {
                for instance in &operator.instances {
                    if let Some(value) = read(instance) {
                        let _ = writeln!(
                            samples,
                            "{name}{{app=\"{app_id}\",operator=\"{}\",instance=\"{}\"}} {value}",
                            escape(&operator.name),
                            instance.index
                        );
                    }
                }
            }
        }
        family(out, name, help, "gauge", &samples);
    }
    for (name, help, kind, read) in APP_METRICS {
        let mut samples = String::new();
        for (app_id, detail) in details {
            if let Some(value) = read(detail) {
                let _ = writeln!(samples, "{name}{{app=\"{app_id}\"}} {value}");
            }
        }
        family(out, name, help, kind, &samples);
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &str) {
    if !samples.is_empty() {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}");
    }
}

/// A label value as the text format needs it (operator names come from AMs).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{CheckpointStatus, OperatorStatus};

    use super::*;

    #[test]
    fn every_figure_appears_with_its_labels() {
        let app_id = AppId { cluster_ts: 1, seq: 7 };
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
                },
                OperatorStatus {
                    name: "co\"unt".into(),
                    kind: "window".into(),
                    parallelism: 2,
                    target_parallelism: 2,
                    instances: vec![instance(0, None), instance(1, None)],
                },
            ],
            last_checkpoint: Some(CheckpointStatus {
                id: 42,
                completed_at_ms: 5,
                duration_ms: 80,
                size_bytes: 1_000_000,
            }),
            restarts: 3,
            last_rescale: None,
        };
        let mut out = String::new();
        write_stream_metrics(&mut out, &[(app_id, detail)]);
        let app = app_id.to_string();
        for line in [
            format!("spindle_stream_records_in_per_second{{app=\"{app}\",operator=\"events\",instance=\"0\"}} 1500"),
            format!("spindle_stream_records_out_per_second{{app=\"{app}\",operator=\"co\\\"unt\",instance=\"1\"}} 20.5"),
            format!("spindle_stream_busy_ratio{{app=\"{app}\",operator=\"events\",instance=\"0\"}} 0.25"),
            format!("spindle_stream_backpressured_ratio{{app=\"{app}\",operator=\"events\",instance=\"0\"}} 0.5"),
            format!("spindle_stream_state_bytes{{app=\"{app}\",operator=\"co\\\"unt\",instance=\"0\"}} 4096"),
            format!("spindle_stream_source_lag{{app=\"{app}\",operator=\"events\",instance=\"0\"}} 12"),
            format!("spindle_stream_checkpoint_duration_ms{{app=\"{app}\"}} 80"),
            format!("spindle_stream_checkpoint_size_bytes{{app=\"{app}\"}} 1000000"),
            format!("spindle_stream_last_checkpoint_id{{app=\"{app}\"}} 42"),
            format!("spindle_stream_restarts_total{{app=\"{app}\"}} 3"),
            "# TYPE spindle_stream_restarts_total counter".to_owned(),
        ] {
            assert!(out.lines().any(|written| written == line), "missing {line} in:\n{out}");
        }
        assert_eq!(out.matches("spindle_stream_source_lag{").count(), 1, "only sources have a lag");
        assert_eq!(out.matches("# TYPE spindle_stream_busy_ratio gauge").count(), 1);

        let mut empty = String::new();
        write_stream_metrics(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
