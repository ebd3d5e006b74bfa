//! The state half of a scrape: what the cluster holds at that moment, taken under the state
//! lock as plain data (`Cluster::scrape_snapshot`) and encoded after the lock is released.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    CounterValueEncoder, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, GaugeValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use spindle_protocol::{AppId, AppState, ContainerState, MetricFamily, NodeState, QueueReport, Resources};

/// Bytes in a MB of the API's `memory_mb`.
const BYTES_PER_MB: u64 = 1024 * 1024;

/// A sample's value: whole numbers print as such (`3`, not `3.0`), as most figures here are
/// counts, cores and bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Whole(i64),
    Fraction(f64),
}

impl From<u64> for Number {
    fn from(value: u64) -> Number {
        i64::try_from(value).map_or(Number::Fraction(value as f64), Number::Whole)
    }
}

impl From<f64> for Number {
    fn from(value: f64) -> Number {
        // Within ±2^53 an f64 holds whole numbers exactly.
        if value.fract() == 0.0 && value.abs() <= 9_007_199_254_740_992.0 {
            Number::Whole(value as i64)
        } else {
            Number::Fraction(value)
        }
    }
}

impl EncodeGaugeValue for Number {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Number::Whole(value) => EncodeGaugeValue::encode(value, encoder),
            Number::Fraction(value) => EncodeGaugeValue::encode(value, encoder),
        }
    }
}

impl EncodeCounterValue for Number {
    fn encode(&self, encoder: &mut CounterValueEncoder) -> Result<(), std::fmt::Error> {
        match *self {
            Number::Whole(value) if value >= 0 => EncodeCounterValue::encode(&(value as u64), encoder),
            Number::Whole(value) => EncodeCounterValue::encode(&(value as f64), encoder),
            Number::Fraction(value) => EncodeCounterValue::encode(&value, encoder),
        }
    }
}

/// Memory of the API (MB) in bytes.
fn bytes(memory_mb: u64) -> Number {
    Number::from(memory_mb.saturating_mul(BYTES_PER_MB))
}

/// One node's heartbeat age, for `spindle_node_heartbeat_age_seconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHeartbeat {
    pub node: String,
    /// Seconds since its last heartbeat reached the RM.
    pub age_seconds: f64,
}

/// The cluster at one scrape.
#[derive(Debug, Clone, Default)]
pub struct ScrapeSnapshot {
    pub epoch: u64,
    /// Every app state, with how many apps the RM holds in it (zeros included).
    pub apps: Vec<(AppState, u64)>,
    /// Every container state, with how many containers the RM holds in it (finished ones stay
    /// until their app is forgotten).
    pub containers: Vec<(ContainerState, u64)>,
    /// Every node state, with how many nodes are in it.
    pub nodes: Vec<(NodeState, u64)>,
    /// What active nodes offer and what is granted on them.
    pub capacity: Resources,
    pub used: Resources,
    /// The queue tree's root.
    pub queues: Option<QueueReport>,
    /// Nodes that heartbeat (registered and not DECOMMISSIONED or LOST).
    pub heartbeats: Vec<NodeHeartbeat>,
    /// Each live app's families, as its AM last reported them.
    pub app_metrics: Vec<(AppId, Vec<MetricFamily>)>,
}

/// `ALL` of a state enum as counted pairs, zeros included, so a graph of a state that is empty
/// now still has a series.
pub fn count_states<S: Copy + PartialEq>(all: &[S], states: impl Iterator<Item = S>) -> Vec<(S, u64)> {
    let mut counts: Vec<(S, u64)> = all.iter().map(|state| (*state, 0)).collect();
    for state in states {
        if let Some(count) = counts.iter_mut().find(|(known, _)| *known == state) {
            count.1 += 1;
        }
    }
    counts
}

impl Collector for ScrapeSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn state_label(state: &impl serde::Serialize) -> Labels {
            vec![("state".to_owned(), spindle_protocol::wire_name(state))]
        }
        gauge_family(
            &mut encoder,
            "spindle_apps",
            "Applications by state",
            self.apps.iter().map(|(state, n)| (state_label(state), Number::from(*n))),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_containers",
            "Containers the RM holds, by state",
            self.containers.iter().map(|(state, n)| (state_label(state), Number::from(*n))),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_nodes",
            "Nodes by state",
            self.nodes.iter().map(|(state, n)| (state_label(state), Number::from(*n))),
        )?;
        let single = |value: Number| std::iter::once((Vec::new(), value));
        gauge_family(
            &mut encoder,
            "spindle_epoch",
            "The RM's epoch (it increases at every start and take-over)",
            single(self.epoch.into()),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_capacity_vcores",
            "Virtual cores of active nodes",
            single(u64::from(self.capacity.vcores).into()),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_capacity_memory_bytes",
            "Memory of active nodes",
            single(bytes(self.capacity.memory_mb)),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_used_vcores",
            "Virtual cores granted to live containers",
            single(u64::from(self.used.vcores).into()),
        )?;
        gauge_family(
            &mut encoder,
            "spindle_used_memory_bytes",
            "Memory granted to live containers",
            single(bytes(self.used.memory_mb)),
        )?;
        self.encode_queues(&mut encoder)?;
        gauge_family(
            &mut encoder,
            "spindle_node_heartbeat_age_seconds",
            "Seconds since each heartbeating node's last heartbeat reached the RM",
            self.heartbeats
                .iter()
                .map(|node| (vec![("node".to_owned(), escape(&node.node))], Number::from(node.age_seconds))),
        )?;
        encode_app_metrics(&mut encoder, &self.app_metrics)
    }
}

impl ScrapeSnapshot {
    /// Per queue (the whole tree, by dotted name): guarantee, maximum, use and pending demand in
    /// vcores and bytes, and apps not ended.
    fn encode_queues(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut queues = Vec::new();
        let mut stack: Vec<&QueueReport> = self.queues.iter().collect();
        while let Some(queue) = stack.pop() {
            queues.push(queue);
            stack.extend(queue.children.iter().rev());
        }
        let label = |queue: &QueueReport| vec![("queue".to_owned(), escape(&queue.name))];
        /// A queue figure: its name in the metric, what it means, and where the report has it.
        type Figure = (&'static str, &'static str, fn(&QueueReport) -> Resources);
        let figures: [Figure; 4] = [
            ("guaranteed", "guaranteed at the cluster's current size", |queue| queue.guaranteed),
            ("maximum", "it may use at most at the cluster's current size", |queue| queue.maximum),
            ("used", "its apps' live containers hold", |queue| queue.used),
            ("pending", "its apps ask for and have not got (AM containers included)", |queue| {
                queue.pending
            }),
        ];
        for (figure, meaning, of) in figures {
            gauge_family(
                encoder,
                &format!("spindle_queue_{figure}_vcores"),
                &format!("Virtual cores a queue {meaning}"),
                queues.iter().map(|queue| (label(queue), u64::from(of(queue).vcores).into())),
            )?;
            gauge_family(
                encoder,
                &format!("spindle_queue_{figure}_memory_bytes"),
                &format!("Memory a queue {meaning}"),
                queues.iter().map(|queue| (label(queue), bytes(of(queue).memory_mb))),
            )?;
        }
        gauge_family(
            encoder,
            "spindle_queue_apps",
            "Apps in a queue (and its children) that have not ended",
            queues.iter().map(|queue| (label(queue), u64::from(queue.apps_running).into())),
        )
    }
}

type Labels = Vec<(String, String)>;

/// One gauge family with a sample per label set (values already escaped).
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Labels, Number)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // A family's only sample, without labels (`encode_family` would write `{}`).
            return ConstGauge::new(value).encode(family);
        }
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The families of live apps' AMs, each with an `app` label the RM sets (the RM checked their
/// names, kinds and labels when they arrived: `cluster::controls::validate_detail`). One
/// descriptor per family name over all apps, the first app to report it naming its help and
/// kind; a family another app reports under the same name with another kind is left out, as
/// are families without samples. A counter's descriptor drops the `_total` its samples carry.
fn encode_app_metrics(encoder: &mut DescriptorEncoder, apps: &[(AppId, Vec<MetricFamily>)]) -> Result<(), std::fmt::Error> {
    struct Merged<'a> {
        help: &'a str,
        counter: bool,
        samples: Vec<(Labels, Number)>,
    }
    let mut families: BTreeMap<&str, Merged> = BTreeMap::new();
    for (app_id, reported) in apps {
        for family in reported {
            let counter = family.kind == "counter";
            let name = if counter {
                family.name.strip_suffix("_total").unwrap_or(&family.name)
            } else {
                &family.name
            };
            let merged = families.entry(name).or_insert_with(|| Merged {
                help: &family.help,
                counter,
                samples: Vec::new(),
            });
            if merged.counter != counter {
                continue;
            }
            for sample in &family.samples {
                let mut labels = vec![("app".to_owned(), app_id.to_string())];
                labels.extend(sample.labels.iter().map(|(name, value)| (name.clone(), escape(value))));
                merged.samples.push((labels, Number::from(sample.value)));
            }
        }
    }
    for (name, merged) in families.into_iter().filter(|(_, merged)| !merged.samples.is_empty()) {
        let kind = if merged.counter { MetricType::Counter } else { MetricType::Gauge };
        let mut family = encoder.encode_descriptor(name, &escape_help(merged.help), None, kind)?;
        for (labels, value) in &merged.samples {
            let sample = family.encode_family(labels)?;
            if merged.counter {
                ConstCounter::new(*value).encode(sample)?;
            } else {
                ConstGauge::new(*value).encode(sample)?;
            }
        }
    }
    Ok(())
}

/// A label value as the text format needs it: the encoder writes values as given, and some
/// come from AMs and node ids.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Help text as the text format needs it.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
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

    fn encode(snapshot: ScrapeSnapshot) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_state_has_a_series_even_when_empty() {
        let snapshot = ScrapeSnapshot {
            apps: count_states(&AppState::ALL, [AppState::Running, AppState::Running].into_iter()),
            containers: count_states(&ContainerState::ALL, std::iter::empty()),
            nodes: count_states(&NodeState::ALL, [NodeState::Lost].into_iter()),
            ..ScrapeSnapshot::default()
        };
        let text = encode(snapshot);
        for line in [
            r#"spindle_apps{state="RUNNING"} 2"#,
            r#"spindle_apps{state="KILLED"} 0"#,
            r#"spindle_containers{state="ALLOCATED"} 0"#,
            r#"spindle_containers{state="COMPLETE"} 0"#,
            r#"spindle_nodes{state="LOST"} 1"#,
            r#"spindle_nodes{state="DECOMMISSIONING"} 0"#,
        ] {
            assert!(text.lines().any(|written| written == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn memory_is_in_bytes_and_queues_are_flattened_by_name() {
        let leaf = |name: &str, used: Resources| QueueReport {
            name: name.to_owned(),
            guaranteed_percent: 50.0,
            maximum_percent: 100.0,
            guaranteed: Resources::new(2, 1024),
            maximum: Resources::new(4, 2048),
            used,
            pending: Resources::new(1, 512),
            apps_running: 1,
            users: Vec::new(),
            children: Vec::new(),
        };
        let mut root = leaf("root", Resources::new(3, 1536));
        root.children = vec![leaf("root.a", Resources::new(1, 512)), leaf("root.b", Resources::new(2, 1024))];
        let snapshot = ScrapeSnapshot {
            capacity: Resources::new(8, 4096),
            queues: Some(root),
            heartbeats: vec![NodeHeartbeat {
                node: "10.0.0.1:8042".to_owned(),
                age_seconds: 0.5,
            }],
            ..ScrapeSnapshot::default()
        };
        let text = encode(snapshot);
        for line in [
            "spindle_capacity_memory_bytes 4294967296",
            r#"spindle_queue_used_vcores{queue="root.b"} 2"#,
            r#"spindle_queue_used_memory_bytes{queue="root.a"} 536870912"#,
            r#"spindle_queue_pending_vcores{queue="root"} 1"#,
            r#"spindle_queue_guaranteed_memory_bytes{queue="root.a"} 1073741824"#,
            r#"spindle_node_heartbeat_age_seconds{node="10.0.0.1:8042"} 0.5"#,
        ] {
            assert!(text.lines().any(|written| written == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn families_of_several_apps_share_one_descriptor_and_labels_are_escaped() {
        let (a, b) = (AppId { cluster_ts: 1, seq: 7 }, AppId { cluster_ts: 1, seq: 8 });
        let apps = vec![
            (
                a,
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
                vec![
                    family(
                        "spindle_stream_busy_ratio",
                        "gauge",
                        vec![(vec![("operator", "count"), ("instance", "0")], 0.5)],
                    ),
                    // The same name with another kind: left out rather than a broken scrape.
                    family("spindle_stream_restarts", "gauge", vec![(vec![], 9.0)]),
                ],
            ),
        ];
        let text = encode(ScrapeSnapshot {
            app_metrics: apps,
            ..ScrapeSnapshot::default()
        });
        assert_eq!(text.matches("# TYPE spindle_stream_busy_ratio gauge").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE spindle_stream_restarts counter").count(), 1, "{text}");
        for line in [
            format!(r#"spindle_stream_busy_ratio{{app="{a}",instance="1",operator="co\"unt"}} 0.25"#),
            format!(r#"spindle_stream_busy_ratio{{app="{b}",instance="0",operator="count"}} 0.5"#),
            format!(r#"spindle_stream_restarts_total{{app="{a}"}} 3"#),
        ] {
            assert!(text.lines().any(|written| written == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains(" 9\n"), "the gauge of the same name is left out: {text}");
        assert!(!text.contains("source_lag"), "families without samples are left out: {text}");
    }
}
