//! The figures AMs expose, in `/metrics`: each live app's latest reported metric families, with
//! an `app` label the RM sets. The RM checked their names and labels when they arrived
//! (`cluster::controls::validate_detail`) and gives them no meaning of its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use spindle_protocol::{AppId, JobKind, MetricFamily};

/// Appends the families of `apps` to `out`, one `# HELP`/`# TYPE` per family name over all apps
/// (the first app to report a family names its help and type). Families with no sample are left
/// out, so a cluster without such jobs shows none of them.
pub(super) fn write_app_metrics(out: &mut String, apps: &[(AppId, JobKind, Vec<MetricFamily>)]) {
    // Family name → (help, kind, sample lines), in name order for a stable scrape.
    let mut families: BTreeMap<&str, (&str, &str, String)> = BTreeMap::new();
    for (app_id, _, reported) in apps {
        for family in reported {
            let (_, _, lines) = families
                .entry(family.name.as_str())
                .or_insert_with(|| (family.help.as_str(), family.kind.as_str(), String::new()));
            for sample in &family.samples {
                let mut labels = format!("app=\"{app_id}\"");
                for (name, value) in &sample.labels {
                    let _ = write!(labels, ",{name}=\"{}\"", escape(value));
                }
                let _ = writeln!(lines, "{}{{{labels}}} {}", family.name, sample.value);
            }
        }
    }
    for (name, (help, kind, lines)) in families {
        if !lines.is_empty() {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{lines}");
        }
    }
}

/// A label value as the text format needs it (label values come from AMs).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use spindle_protocol::MetricSample;

    use super::*;

    fn family(name: &str, kind: &str, samples: Vec<(Vec<(&str, &str)>, f64)>) -> MetricFamily {
        MetricFamily {
            name: name.to_owned(),
            help: format!("help of {name}"),
            kind: kind.to_owned(),
            samples: samples
                .into_iter()
                .map(|(labels, value)| MetricSample {
                    labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                    value,
                })
                .collect(),
        }
    }

    #[test]
    fn families_of_several_apps_share_one_header_and_labels_are_escaped() {
        let (a, b) = (AppId { cluster_ts: 1, seq: 7 }, AppId { cluster_ts: 1, seq: 8 });
        let apps = vec![
            (
                a,
                JobKind::Stream,
                vec![
                    family(
                        "spindle_stream_busy_ratio",
                        "gauge",
                        vec![(vec![("operator", "co\"unt"), ("instance", "1")], 0.25)],
                    ),
                    family("spindle_stream_restarts_total", "counter", vec![(vec![], 3.0)]),
                    family("spindle_stream_source_lag", "gauge", vec![]),
                ],
            ),
            (
                b,
                JobKind::Stream,
                vec![family("spindle_stream_busy_ratio", "gauge", vec![(vec![("instance", "0")], 1.0)])],
            ),
        ];
        let mut out = String::new();
        write_app_metrics(&mut out, &apps);
        for line in [
            format!("spindle_stream_busy_ratio{{app=\"{a}\",instance=\"1\",operator=\"co\\\"unt\"}} 0.25"),
            format!("spindle_stream_busy_ratio{{app=\"{b}\",instance=\"0\"}} 1"),
            format!("spindle_stream_restarts_total{{app=\"{a}\"}} 3"),
            "# TYPE spindle_stream_restarts_total counter".to_owned(),
        ] {
            assert!(out.lines().any(|written| written == line), "missing {line} in:\n{out}");
        }
        assert_eq!(out.matches("# TYPE spindle_stream_busy_ratio gauge").count(), 1);
        assert!(!out.contains("source_lag"), "a family without samples is left out:\n{out}");

        let mut empty = String::new();
        write_app_metrics(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
