//! The agent's `/metrics`, in the OpenMetrics text format: its containers by state, what is
//! granted on it against its capacity, launches and their latency, heartbeat round trips to
//! the RM, and requests by route.
//!
//! Served without a token, like a node exporter's: the figures are the node's totals and
//! name no app, user or container (a job on the node can read as much from `/proc`), and a
//! Prometheus scraping every node needs no credential of the cluster's.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use spindle_http_server::metrics::{HttpMetrics, seconds_histogram};
use spindle_protocol::{ContainerState, Resources};

const BYTES_PER_MB: u64 = 1024 * 1024;

/// How a launch request ended: `started`, or the error code it was refused with.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaunchOutcome {
    outcome: &'static str,
}

/// The agent's event metrics, recorded as they happen.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
    launches: Family<LaunchOutcome, Counter>,
    /// From a launch request's arrival to its container's process running (or the refusal).
    launch_seconds: Histogram,
    /// One heartbeat's round trip to the RM, answered or failed.
    heartbeat_seconds: Histogram,
    heartbeat_failures: Counter,
}

impl AgentMetrics {
    pub(crate) fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let metrics = AgentMetrics {
            http: HttpMetrics::register(&mut registry),
            launches: Family::default(),
            launch_seconds: seconds_histogram(),
            heartbeat_seconds: seconds_histogram(),
            heartbeat_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "spindle_agent_container_launches",
            "Launch requests, by outcome (`started` or the code they were refused with)",
            metrics.launches.clone(),
        );
        registry.register(
            "spindle_agent_launch_duration_seconds",
            "Time from a launch request to its container's process running (or the refusal)",
            metrics.launch_seconds.clone(),
        );
        registry.register(
            "spindle_agent_heartbeat_duration_seconds",
            "Round trip of one heartbeat to the RM",
            metrics.heartbeat_seconds.clone(),
        );
        registry.register(
            "spindle_agent_heartbeat_failures",
            "Heartbeats that got no answer from an RM",
            metrics.heartbeat_failures.clone(),
        );
        AgentMetrics { registry, ..metrics }
    }

    pub(crate) fn record_launch(&self, outcome: &'static str, seconds: f64) {
        self.launches.get_or_create(&LaunchOutcome { outcome }).inc();
        self.launch_seconds.observe(seconds);
    }

    pub(crate) fn record_heartbeat(&self, answered: bool, seconds: f64) {
        self.heartbeat_seconds.observe(seconds);
        if !answered {
            self.heartbeat_failures.inc();
        }
    }

    /// The whole scrape: the event metrics, then `census`, then `# EOF`.
    pub(crate) fn encode(&self, census: Census) -> String {
        spindle_http_server::metrics::encode_scrape(&self.registry, census)
    }
}

/// The node's containers at one scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Census {
    /// Every container state with how many containers the agent holds in it (zeros included).
    pub(crate) containers: Vec<(ContainerState, u64)>,
    /// Granted to the containers not yet complete.
    pub(crate) used: Resources,
    pub(crate) capacity: Resources,
}

impl Collector for Census {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "spindle_agent_containers",
            "Containers on this node, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in &self.containers {
            let name = spindle_protocol::wire_name(state);
            ConstGauge::new(*count).encode(family.encode_family(&[("state", name)])?)?;
        }
        let gauges = [
            (
                "spindle_agent_capacity_vcores",
                "Virtual cores this node offers",
                u64::from(self.capacity.vcores),
            ),
            (
                "spindle_agent_capacity_memory_bytes",
                "Memory this node offers",
                self.capacity.memory_mb.saturating_mul(BYTES_PER_MB),
            ),
            (
                "spindle_agent_used_vcores",
                "Virtual cores granted to live containers",
                u64::from(self.used.vcores),
            ),
            (
                "spindle_agent_used_memory_bytes",
                "Memory granted to live containers",
                self.used.memory_mb.saturating_mul(BYTES_PER_MB),
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}
