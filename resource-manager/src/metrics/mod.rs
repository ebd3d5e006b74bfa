//! The RM's `/metrics`, in the OpenMetrics text format (`prometheus-client`).
//!
//! Two kinds of figures:
//! * **Events**, recorded as they happen and kept for the RM process's life (across HA terms):
//!   counters, and histograms of scheduling rounds, allocation latency, store commits and HTTP
//!   requests. Rounds and grants happen inside the pure `Cluster`, which only notes them
//!   (`cluster::Observations`); the service records the notes after each change.
//! * **State**, read from the cluster at scrape time ([`ScrapeSnapshot`]): apps, containers and
//!   nodes by state (every state, zeros included), capacity and use, each queue's guarantee,
//!   maximum, use and pending demand, each node's heartbeat age, and what AMs export.
//!
//! Names end in their unit (`_seconds`, `_bytes`); counters get `_total` from the encoder.

mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spindle_http_server::metrics::{HttpMetrics, seconds_histogram};

use crate::cluster::Observations;

pub use snapshot::{NodeHeartbeat, ScrapeSnapshot, count_states};

/// The RM process's metrics: one per process, shared by its terms.
#[derive(Debug)]
pub struct RmMetrics {
    /// Every event metric below, registered once; encoded at each scrape.
    registry: Registry,
    /// Requests by route and status (the API router's layer records them).
    pub http: HttpMetrics,
    /// Transactions committed (changes that wrote nothing are not commits).
    pub store_commits: Counter,
    /// How long each commit took, retries included (its changes' callers wait meanwhile).
    store_commit_seconds: Histogram,
    /// Changes committed: several per transaction when they come faster than commits.
    store_changes: Counter,
    /// Wall time of each scheduling round that ran (rounds with no demand are skipped).
    scheduling_round_seconds: Histogram,
    /// From an app's demand to each grant that served it (see `cluster::Observations`).
    allocation_latency_seconds: Histogram,
    pub allocate_calls: Counter,
    pub heartbeats: Counter,
    pub apps_submitted: Counter,
}

impl RmMetrics {
    pub fn new() -> Arc<RmMetrics> {
        let mut registry = Registry::default();
        let metrics = RmMetrics {
            http: HttpMetrics::register(&mut registry),
            store_commits: Counter::default(),
            store_commit_seconds: seconds_histogram(),
            store_changes: Counter::default(),
            // Rounds take microseconds to milliseconds: 10 µs to ~0.3 s.
            scheduling_round_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            // Grants come within milliseconds when there is room, and minutes when queues are
            // full: 1 ms to ~9 min.
            allocation_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            allocate_calls: Counter::default(),
            heartbeats: Counter::default(),
            apps_submitted: Counter::default(),
            registry: Registry::default(),
        };
        // Metrics share their values with their clones: the registry encodes what the fields
        // record.
        registry.register(
            "spindle_store_commits",
            "Store transactions committed",
            metrics.store_commits.clone(),
        );
        registry.register(
            "spindle_store_commit_duration_seconds",
            "Time to commit one transaction (a group of changes) to the store, retries included",
            metrics.store_commit_seconds.clone(),
        );
        registry.register(
            "spindle_store_changes",
            "State changes committed (a transaction commits every change queued while the previous one ran)",
            metrics.store_changes.clone(),
        );
        registry.register(
            "spindle_scheduling_round_duration_seconds",
            "Wall time of one scheduling round",
            metrics.scheduling_round_seconds.clone(),
        );
        registry.register(
            "spindle_allocation_latency_seconds",
            "Time from an app's demand (an attempt waiting for its AM container, or asks of its AM) to each container granted for it",
            metrics.allocation_latency_seconds.clone(),
        );
        registry.register("spindle_allocate_calls", "AM allocate calls", metrics.allocate_calls.clone());
        registry.register("spindle_heartbeats", "Agent heartbeats", metrics.heartbeats.clone());
        registry.register("spindle_apps_submitted", "Applications submitted", metrics.apps_submitted.clone());
        Arc::new(RmMetrics { registry, ..metrics })
    }

    /// Records what a change observed (its scheduling rounds and grants).
    pub fn record(&self, observed: &Observations) {
        for round in &observed.scheduling_rounds {
            self.scheduling_round_seconds.observe(round.as_secs_f64());
        }
        for latency_ms in &observed.allocation_latencies_ms {
            self.allocation_latency_seconds.observe(*latency_ms as f64 / 1000.0);
        }
    }

    /// Records one commit that took `took`.
    pub fn record_commit(&self, took: Duration, changes: usize) {
        self.store_commits.inc();
        self.store_changes.inc_by(changes as u64);
        self.store_commit_seconds.observe(took.as_secs_f64());
    }

    /// The whole scrape: the event metrics, then the state of `snapshot`, then `# EOF`.
    pub fn encode(&self, snapshot: ScrapeSnapshot) -> String {
        spindle_http_server::metrics::encode_scrape(&self.registry, snapshot)
    }
}

pub use spindle_http_server::metrics::OPENMETRICS_CONTENT_TYPE;
