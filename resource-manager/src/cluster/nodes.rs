//! Node lifecycle: registration, heartbeats and the container statuses they carry, loss by
//! silence, graceful decommissioning, and forgetting nodes long departed.

use std::collections::BTreeSet;

use spindle_protocol::{
    AppId, ContainerId, ContainerState, ContainerStatus, ExitReason, NodeHeartbeatReply, NodeHeartbeatRequest, NodeId, NodeState,
    RegisterNodeReply, RegisterNodeRequest,
};

use super::containers::synthetic_status;
use super::transitions;
use super::{Cluster, Node};
use crate::records::{ForgottenNode, NodeRecord};

/// How many heartbeat replies tell an agent to delete an ended app's shuffle data. Deleting is
/// idempotent and the agent acts on the first reply it gets, so repeating the order a few times
/// makes it survive a lost reply without the agent having to confirm it.
pub(super) const SHUFFLE_CLEANUP_REPLIES: u32 = 3;

/// Why a node operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} not found")]
    NotFound(NodeId),
    #[error("node {node} is {state:?}: {what}")]
    Conflict { node: NodeId, state: NodeState, what: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Cluster {
    /// An agent joins (or re-joins after an RM restart or after being LOST).
    pub fn register_node(&mut self, request: RegisterNodeRequest, now_ms: u64) -> Result<RegisterNodeReply, NodeError> {
        if request.capacity.vcores == 0 || request.capacity.memory_mb == 0 {
            return Err(NodeError::Invalid {
                field: "capacity",
                reason: format!("{} has a zero resource", request.capacity),
            });
        }
        let node_id = request.node_id.clone();
        let node = self.nodes.entry(node_id.clone()).or_insert_with(|| {
            let record = NodeRecord {
                node_id: node_id.clone(),
                address: request.address.clone(),
                rack: request.rack.clone(),
                labels: request.labels.clone(),
                capacity: request.capacity,
                state: NodeState::New,
                decommission_deadline_ms: None,
                isolation: request.isolation.clone(),
                departed_at_ms: None,
                forgotten: None,
            };
            Node::new(record, now_ms)
        });
        node.record.address = request.address.clone();
        node.record.isolation = request.isolation.clone();
        node.record.rack = request.rack.clone();
        node.record.labels = request.labels.clone();
        node.record.capacity = request.capacity;
        if node.record.state.can_become(NodeState::Running) {
            node.change_state(NodeState::Running, now_ms);
            node.record.decommission_deadline_ms = None;
        }
        node.registered = true;
        node.last_heartbeat_ms = now_ms;
        self.mark_node(&node_id);

        let reported: BTreeSet<ContainerId> = request.containers.iter().map(|status| status.container_id).collect();
        let (kill, acked) = self.apply_container_statuses(&node_id, request.containers, now_ms);
        // Containers the RM believed running there that the agent no longer has are gone.
        let vanished: Vec<ContainerId> = self.nodes[&node_id]
            .live
            .iter()
            .filter(|id| !reported.contains(id))
            .filter(|id| self.containers.get(id).is_some_and(|c| c.record.state == ContainerState::Running))
            .copied()
            .collect();
        for container_id in vanished {
            let diagnostics = format!("node {node_id} registered again without this container");
            self.complete_container(synthetic_status(container_id, ExitReason::NodeLost, diagnostics, now_ms), now_ms);
        }
        // A node that (re)registers brings room.
        self.round_due = true;
        self.schedule_soon(now_ms);
        Ok(RegisterNodeReply {
            epoch: self.epoch,
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
            kill,
            acked,
            credential: self.settings.authority.credential(&node_id, now_ms),
        })
    }

    /// A periodic (or immediate) heartbeat: usage, health and container statuses. The reply
    /// names this RM's epoch, so agents can tell a replaced leader's replies.
    pub fn node_heartbeat(&mut self, request: NodeHeartbeatRequest, now_ms: u64) -> NodeHeartbeatReply {
        NodeHeartbeatReply {
            epoch: self.epoch,
            ..self.apply_heartbeat(request, now_ms)
        }
    }

    fn apply_heartbeat(&mut self, request: NodeHeartbeatRequest, now_ms: u64) -> NodeHeartbeatReply {
        let node_id = request.node_id.clone();
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return NodeHeartbeatReply {
                resync: true,
                ..NodeHeartbeatReply::default()
            };
        };
        match node.record.state {
            NodeState::Decommissioned => {
                // Still heard: it is kept (and told to shut down) until it falls silent.
                node.last_heartbeat_ms = now_ms;
                return NodeHeartbeatReply {
                    shutdown: true,
                    ..NodeHeartbeatReply::default()
                };
            }
            NodeState::Lost => {
                return NodeHeartbeatReply {
                    resync: true,
                    ..NodeHeartbeatReply::default()
                };
            }
            _ if !node.registered => {
                return NodeHeartbeatReply {
                    resync: true,
                    ..NodeHeartbeatReply::default()
                };
            }
            _ => {}
        }
        node.last_heartbeat_ms = now_ms;
        node.usage = request.usage;
        node.health_report = request.health_report.clone();
        let next_state = match (node.record.state, request.healthy) {
            (NodeState::Running, false) => Some(NodeState::Unhealthy),
            (NodeState::Unhealthy, true) => Some(NodeState::Running),
            _ => None,
        };
        if let Some(next) = next_state {
            node.change_state(next, now_ms);
            self.mark_node(&node_id);
            self.round_due |= next == NodeState::Running;
        }
        let (_, acked) = self.apply_container_statuses(&node_id, request.containers, now_ms);
        // Only this node's containers changed: its own drain may be over (the others' deadlines
        // are the tick's). Not a walk over every node: heartbeats come N per second.
        if self.nodes[&node_id].record.state == NodeState::Decommissioning {
            self.advance_decommission(&node_id, now_ms);
        }
        self.schedule_soon(now_ms);
        let cleanup_apps = self.shuffle_cleanup(&node_id);
        let node = &self.nodes[&node_id];
        NodeHeartbeatReply {
            epoch: self.epoch,
            kill: node.pending_kills.iter().copied().collect(),
            acked,
            drain: node.record.state == NodeState::Decommissioning,
            shutdown: node.record.state == NodeState::Decommissioned,
            resync: false,
            cleanup_apps,
            credential: None,
        }
    }

    /// The apps whose shuffle data the node should delete now: they ran containers there, have
    /// ended (or were purged) and have no live container left there. Each is listed in
    /// `SHUFFLE_CLEANUP_REPLIES` replies, then forgotten (a new report of one of its containers
    /// lists it again).
    fn shuffle_cleanup(&mut self, node_id: &NodeId) -> Vec<AppId> {
        let Some(node) = self.nodes.get(node_id) else {
            return Vec::new();
        };
        let mut ended: Vec<AppId> = node
            .shuffle_apps
            .keys()
            .filter(|app_id| self.apps.get(app_id).is_none_or(|app| app.record.state.is_terminal()))
            .copied()
            .collect();
        if ended.is_empty() {
            // Most heartbeats: every app that ran here still runs.
            return ended;
        }
        let live_apps: BTreeSet<AppId> = node.live.iter().map(|container_id| container_id.app).collect();
        ended.retain(|app_id| !live_apps.contains(app_id));
        let node = self.nodes.get_mut(node_id).expect("looked up above");
        for app_id in &ended {
            let replies = node.shuffle_apps.get_mut(app_id).expect("listed from the map");
            *replies += 1;
            if *replies >= SHUFFLE_CLEANUP_REPLIES {
                node.shuffle_apps.remove(app_id);
            }
        }
        ended
    }

    /// Applies what an agent says of its containers. Returns (to kill, completed to ack).
    fn apply_container_statuses(
        &mut self,
        node_id: &NodeId,
        statuses: Vec<ContainerStatus>,
        now_ms: u64,
    ) -> (Vec<ContainerId>, Vec<ContainerId>) {
        let mut kill = Vec::new();
        let mut acked = Vec::new();
        // Every container the agent started made its app a shuffle dir there: remember the app
        // until that dir is cleaned up (a new report starts the clean-up count again).
        if let Some(node) = self.nodes.get_mut(node_id) {
            for status in &statuses {
                node.shuffle_apps.insert(status.container_id.app, 0);
            }
        }
        for status in statuses {
            let container_id = status.container_id;
            let known_here = self
                .containers
                .get(&container_id)
                .filter(|c| &c.record.node_id == node_id)
                .map(|c| c.record.state);
            match (status.state, known_here) {
                (ContainerState::Complete, Some(state)) if state.is_live() => {
                    self.complete_container(status, now_ms);
                    acked.push(container_id);
                }
                (ContainerState::Complete, _) => {
                    // Its end is known (an orphan killed on request, say): stop asking for the kill.
                    if let Some(node) = self.nodes.get_mut(node_id) {
                        node.pending_kills.remove(&container_id);
                    }
                    acked.push(container_id);
                }
                // Unknown, or already given up on (lost, expired, killed): it must not run.
                (_, None | Some(ContainerState::Complete)) => {
                    kill.push(container_id);
                    if let Some(node) = self.nodes.get_mut(node_id) {
                        node.pending_kills.insert(container_id);
                    }
                }
                (_, Some(_)) => self.container_running(container_id, status.started_at_ms, now_ms),
            }
        }
        (kill, acked)
    }

    /// Nodes silent for `node_expiry` are LOST; their containers complete as NODE_LOST.
    pub(super) fn expire_nodes(&mut self, now_ms: u64) {
        let expiry = self.settings.node_expiry_ms;
        let silent: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.record.state.is_active() && node.last_heartbeat_ms + expiry < now_ms)
            .map(|node| node.record.node_id.clone())
            .collect();
        for node_id in silent {
            let node = self.nodes.get_mut(&node_id).expect("listed above");
            node.change_state(NodeState::Lost, now_ms);
            node.registered = false;
            node.pending_kills.clear();
            let live: Vec<ContainerId> = node.live.iter().copied().collect();
            self.mark_node(&node_id);
            tracing::warn!(node = %node_id, containers = live.len(), "node lost: no heartbeat for {} ms", expiry);
            for container_id in live {
                let diagnostics = format!("node {node_id} was lost: no heartbeat for {} s", expiry / 1000);
                self.complete_container(synthetic_status(container_id, ExitReason::NodeLost, diagnostics, now_ms), now_ms);
            }
        }
    }

    /// Starts draining a node: no new containers; running ones may finish until the timeout.
    pub fn decommission(&mut self, node_id: &NodeId, timeout_s: u64, force: bool, now_ms: u64) -> Result<(), NodeError> {
        let node = self.nodes.get_mut(node_id).ok_or_else(|| NodeError::NotFound(node_id.clone()))?;
        if !node.record.state.is_active() {
            return Err(NodeError::Conflict {
                node: node_id.clone(),
                state: node.record.state,
                what: "only a NEW, RUNNING or UNHEALTHY node can be decommissioned".to_owned(),
            });
        }
        if timeout_s > 7 * 24 * 3600 {
            return Err(NodeError::Invalid {
                field: "timeout_s",
                reason: format!("{timeout_s} is more than a week"),
            });
        }
        node.change_state(NodeState::Decommissioning, now_ms);
        let deadline = if force { now_ms } else { now_ms.saturating_add(timeout_s * 1000) };
        // A second request may shorten the drain, never lengthen it.
        node.record.decommission_deadline_ms = Some(node.record.decommission_deadline_ms.map_or(deadline, |old| old.min(deadline)));
        self.mark_node(node_id);
        self.advance_decommissions(now_ms);
        Ok(())
    }

    /// Calls a drain off: a DECOMMISSIONING node is RUNNING again and takes new containers (its
    /// running ones were never stopped). Anything else is a conflict naming its state.
    pub fn recommission(&mut self, node_id: &NodeId) -> Result<(), NodeError> {
        let node = self.nodes.get_mut(node_id).ok_or_else(|| NodeError::NotFound(node_id.clone()))?;
        if node.record.state != NodeState::Decommissioning {
            return Err(NodeError::Conflict {
                node: node_id.clone(),
                state: node.record.state,
                what: "only a DECOMMISSIONING node can be recommissioned (a DECOMMISSIONED one comes back when its agent registers again)"
                    .to_owned(),
            });
        }
        transitions::transition(&node.record.node_id, &mut node.record.state, NodeState::Running);
        node.record.decommission_deadline_ms = None;
        self.mark_node(node_id);
        self.round_due = true;
        tracing::info!(node = %node_id, "node recommissioned");
        Ok(())
    }

    /// Kills what outlived a drain's deadline; a drained node becomes DECOMMISSIONED.
    pub(super) fn advance_decommissions(&mut self, now_ms: u64) {
        let draining: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.record.state == NodeState::Decommissioning)
            .map(|node| node.record.node_id.clone())
            .collect();
        for node_id in draining {
            self.advance_decommission(&node_id, now_ms);
        }
    }

    /// `advance_decommissions` for one DECOMMISSIONING node.
    fn advance_decommission(&mut self, node_id: &NodeId, now_ms: u64) {
        let node = &self.nodes[node_id];
        if node.record.decommission_deadline_ms.is_some_and(|deadline| deadline <= now_ms) {
            let overdue: Vec<ContainerId> = node.live.iter().filter(|id| !node.pending_kills.contains(id)).copied().collect();
            for container_id in overdue {
                self.kill_container(
                    container_id,
                    ExitReason::KilledByRm,
                    format!("node {node_id} was decommissioned"),
                    now_ms,
                );
            }
        }
        let node = self.nodes.get_mut(node_id).expect("a tracked node");
        if node.live.is_empty() {
            node.change_state(NodeState::Decommissioned, now_ms);
            node.record.decommission_deadline_ms = None;
            self.mark_node(node_id);
            tracing::info!(node = %node_id, "node decommissioned");
        }
    }

    /// Departed nodes (DECOMMISSIONED or LOST) are forgotten once they have been departed for
    /// longer than `departed_node_expiry` and silent for longer than `node_expiry`: dropped
    /// from memory, their record written one last time, marked forgotten, as history. The
    /// silence matters for a DECOMMISSIONED agent that still heartbeats: while the RM knows the
    /// node it tells the agent to shut down; once forgotten it would tell it to register again.
    pub(super) fn forget_departed_nodes(&mut self, now_ms: u64) {
        let Some(expiry) = self.settings.departed_node_expiry_ms else {
            return;
        };
        let silence = self.settings.node_expiry_ms;
        let due: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| {
                node.record
                    .departed_at_ms
                    .is_some_and(|departed| departed.saturating_add(expiry) < now_ms)
            })
            .filter(|node| node.last_heartbeat_ms.saturating_add(silence) < now_ms)
            .map(|node| node.record.node_id.clone())
            .collect();
        for node_id in due {
            let node = &self.nodes[&node_id];
            // A departed node's containers all completed when it departed: none can still
            // point at a node the RM no longer knows.
            if !node.live.is_empty() || node.record.state.is_active() {
                tracing::error!(node = %node_id, state = ?node.record.state, live = node.live.len(), "not forgetting a node that is active or has live containers");
                debug_assert!(
                    false,
                    "{node_id} is due to be forgotten but is {:?} with {} live containers",
                    node.record.state,
                    node.live.len()
                );
                continue;
            }
            let node = self.nodes.remove(&node_id).expect("looked up above");
            let mut record = node.record;
            record.forgotten = Some(ForgottenNode {
                at_ms: now_ms,
                last_heartbeat_ms: node.last_heartbeat_ms,
            });
            tracing::info!(node = %node_id, state = ?record.state, departed_at_ms = record.departed_at_ms, "departed node forgotten; its last state stays in the store");
            self.dirty.forgotten_nodes.insert(node_id.clone(), record);
            self.mark_node(&node_id);
        }
    }
}

impl Node {
    /// Moves the node to `next` through the transition table, keeping `departed_at_ms` in
    /// step: set when the node departs (DECOMMISSIONED, LOST), cleared when it is back.
    fn change_state(&mut self, next: NodeState, now_ms: u64) {
        let was_active = self.record.state.is_active();
        if !transitions::transition(&self.record.node_id, &mut self.record.state, next) {
            return;
        }
        if next.is_active() {
            self.record.departed_at_ms = None;
        } else if was_active {
            self.record.departed_at_ms = Some(now_ms);
        }
    }
}
