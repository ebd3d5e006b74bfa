//! The durable records of the RM: what the store keeps and what a restarted RM reloads.
//! In-memory state is rebuilt from these; anything not here is soft state that agents and AMs
//! report again after a restart (running containers, asks).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use spindle_protocol::{AppId, AppState, ContainerId, ContainerState, ExitReason, FinalStatus, JobSpec, NodeId, NodeState, Resources};

/// One application and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_id: AppId,
    /// Who submitted it (from the API token).
    pub user: String,
    /// The Unix account its containers run as, fixed at submission (the RM config's mapping
    /// then), so a later config change never moves a running app to another account.
    #[serde(default = "default_unix_user")]
    pub unix_user: String,
    pub spec: JobSpec,
    pub state: AppState,
    pub final_status: FinalStatus,
    pub diagnostics: String,
    pub progress: f32,
    /// Oldest first; the last one is current.
    pub attempts: Vec<AttemptRecord>,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// The client's `Idempotency-Key` of the submission, if it gave one: the same key from the
    /// same user names this app again instead of making another (a retried submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_key: Option<String>,
    /// Requests users made of the running app (a stream job's savepoints), by control key
    /// (`savepoints/3`): handed to its AM with the spec's controls in every allocate reply. The
    /// newest few are kept (`cluster::controls::MAX_APP_REQUESTS`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, serde_json::Value>,
    /// The id of the app's last request: ids count up from 1 and are never reused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_request: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One AM attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub am_container: Option<ContainerId>,
    pub node_id: Option<NodeId>,
    /// The AM has registered: the app is RUNNING.
    pub registered: bool,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub diagnostics: String,
    /// Whether this attempt's failure counts toward `max_attempts`: an AM lost with its node,
    /// preempted or never launched is not the app's fault, as in YARN.
    #[serde(default)]
    pub counts_as_failure: bool,
}

/// One container, from grant to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub container_id: ContainerId,
    pub node_id: NodeId,
    pub node_address: String,
    pub resources: Resources,
    pub state: ContainerState,
    pub is_am: bool,
    pub exit_code: Option<i32>,
    pub exit_reason: Option<ExitReason>,
    pub diagnostics: String,
    pub allocated_at_ms: u64,
    /// A container not RUNNING by then is reclaimed as EXPIRED.
    pub launch_deadline_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

/// One node agent as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub address: String,
    pub rack: String,
    pub labels: Vec<String>,
    pub capacity: Resources,
    pub state: NodeState,
    /// While DECOMMISSIONING: when running containers are killed.
    pub decommission_deadline_ms: Option<u64>,
    /// As the agent last reported it.
    #[serde(default)]
    pub isolation: spindle_protocol::NodeIsolation,
    /// When it last departed (became DECOMMISSIONED or LOST); `None` while it is part of the
    /// cluster. Starts the `departed_node_expiry` clock, which a restart must not reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed_at_ms: Option<u64>,
    /// Set when the RM forgot the departed node: the row stays in the store as history
    /// (`GET /v1/nodes/{id}`, `GET /v1/nodes?all=true`) but is not reloaded at a restart, and
    /// a registration with the same id starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten: Option<ForgottenNode>,
}

/// When and how a departed node left the RM's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenNode {
    /// When the RM forgot it: what retention (`retain_finished`) measures the history from.
    pub at_ms: u64,
    /// Its last heartbeat, which is soft state while the RM tracks the node: kept here so its
    /// history still says when the agent was last heard of.
    pub last_heartbeat_ms: u64,
}

/// The writes of one state change (or one scheduling round, or a group of changes), committed
/// in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    pub apps: Vec<AppRecord>,
    pub containers: Vec<ContainerRecord>,
    pub nodes: Vec<NodeRecord>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.containers.is_empty() && self.nodes.is_empty()
    }

    /// Records written in all.
    pub fn len(&self) -> usize {
        self.apps.len() + self.containers.len() + self.nodes.len()
    }

    /// The writes of several changes, in the order they were made, as one batch: a record
    /// written by more than one keeps its latest version (records are whole), at the place of
    /// its first write.
    pub fn merge(batches: impl IntoIterator<Item = WriteBatch>) -> WriteBatch {
        let mut merged = WriteBatch::default();
        let (mut apps, mut containers, mut nodes) = (HashMap::new(), HashMap::new(), HashMap::new());
        for batch in batches {
            upsert(&mut merged.apps, &mut apps, batch.apps, |record| record.app_id);
            upsert(&mut merged.containers, &mut containers, batch.containers, |record| {
                record.container_id
            });
            upsert(&mut merged.nodes, &mut nodes, batch.nodes, |record| record.node_id.clone());
        }
        merged
    }
}

/// Appends `later` to `into`, replacing records whose key is there already (`at` maps keys to
/// positions in `into`).
fn upsert<T, K: std::hash::Hash + Eq>(into: &mut Vec<T>, at: &mut HashMap<K, usize>, later: Vec<T>, key: impl Fn(&T) -> K) {
    for record in later {
        match at.entry(key(&record)) {
            std::collections::hash_map::Entry::Occupied(slot) => into[*slot.get()] = record,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(into.len());
                into.push(record);
            }
        }
    }
}

/// Everything a restarting RM reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub apps: Vec<AppRecord>,
    pub containers: Vec<ContainerRecord>,
    pub nodes: Vec<NodeRecord>,
    /// The newest app the store kept out of the snapshot (an ended app beyond
    /// `finished_apps_in_memory`): lists of apps are complete from memory only above it.
    pub newest_unloaded_app: Option<spindle_protocol::AppId>,
}

/// Apps stored before accounts were mapped ran as the agent's account; after an upgrade their
/// remaining containers run as the unprivileged default.
fn default_unix_user() -> String {
    crate::config::DEFAULT_UNIX_USER.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState) -> NodeRecord {
        NodeRecord {
            node_id: NodeId(id.to_owned()),
            address: id.to_owned(),
            rack: "/default".to_owned(),
            labels: Vec::new(),
            capacity: Resources::new(4, 4096),
            state,
            decommission_deadline_ms: None,
            isolation: Default::default(),
            departed_at_ms: None,
            forgotten: None,
        }
    }

    #[test]
    fn merged_batches_keep_each_records_latest_version_in_first_write_order() {
        let batch = |nodes: Vec<NodeRecord>| WriteBatch {
            nodes,
            ..WriteBatch::default()
        };
        let merged = WriteBatch::merge([
            batch(vec![node("a:1", NodeState::Running), node("b:1", NodeState::Running)]),
            WriteBatch::default(),
            batch(vec![node("a:1", NodeState::Decommissioning), node("c:1", NodeState::Running)]),
            batch(vec![node("a:1", NodeState::Lost)]),
        ]);
        let states: Vec<(&str, NodeState)> = merged.nodes.iter().map(|n| (n.node_id.as_str(), n.state)).collect();
        assert_eq!(
            states,
            [("a:1", NodeState::Lost), ("b:1", NodeState::Running), ("c:1", NodeState::Running)]
        );
        assert_eq!(merged.len(), 3);
        assert!(WriteBatch::merge([WriteBatch::default()]).is_empty());
    }
}
