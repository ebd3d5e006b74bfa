//! What the cluster tells the RM's metrics: notes taken during a change (scheduling rounds,
//! grant latencies), carried out in the `Outbox`, and the state at a scrape.
//!
//! Allocation latency, as users feel it: a grant for an AM container counts from its attempt's
//! start; a grant for an ask counts from when the app's asks last went from all met to some
//! unmet (an AM that keeps asking while a backlog drains sees its grants' latency grow, as its
//! work waits). The RM cannot tell apart the containers of one absolute ask count, so this is
//! the wait of the oldest unmet demand.

use std::time::Duration;

use spindle_protocol::{AppState, ContainerState, NodeState};

use super::Cluster;
use crate::metrics::{NodeHeartbeat, ScrapeSnapshot, count_states};

/// Notes for the metrics, taken by the pure cluster and recorded by the service.
#[derive(Debug, Default)]
pub struct Observations {
    /// The wall time of each scheduling round that ran.
    pub scheduling_rounds: Vec<Duration>,
    /// Per container granted: milliseconds since the demand it serves began.
    pub allocation_latencies_ms: Vec<u64>,
}

impl Cluster {
    /// The state `/metrics` reports, as plain data (encoded once the state lock is released).
    pub fn scrape_snapshot(&self, now_ms: u64) -> ScrapeSnapshot {
        let mut capacity = spindle_protocol::Resources::ZERO;
        let mut used = spindle_protocol::Resources::ZERO;
        for node in self.nodes.values().filter(|node| node.record.state.is_active()) {
            capacity += node.record.capacity;
            used += node.used;
        }
        let heartbeats = self
            .nodes
            .values()
            .filter(|node| node.registered && !matches!(node.record.state, NodeState::Decommissioned | NodeState::Lost))
            .map(|node| NodeHeartbeat {
                node: node.record.node_id.0.clone(),
                age_seconds: now_ms.saturating_sub(node.last_heartbeat_ms) as f64 / 1000.0,
            })
            .collect();
        ScrapeSnapshot {
            epoch: self.epoch,
            apps: count_states(&AppState::ALL, self.apps.values().map(|app| app.record.state)),
            containers: count_states(&ContainerState::ALL, self.containers.values().map(|c| c.record.state)),
            nodes: count_states(&NodeState::ALL, self.nodes.values().map(|node| node.record.state)),
            capacity,
            used,
            queues: Some(self.queue_report()),
            heartbeats,
            app_metrics: self
                .app_metrics()
                .into_iter()
                .map(|(app_id, _, families)| (app_id, families))
                .collect(),
        }
    }
}
