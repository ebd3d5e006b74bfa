//! Container lifecycle: scheduling rounds that grant them, launches seen by agents, kills,
//! completions, and reclaiming grants nobody launched.

use spindle_protocol::{AppId, ContainerId, ContainerState, ContainerStatus, ExitReason, NodeId};

use super::transitions;
use super::{Cluster, Container, exit_reason_of};
use crate::records::ContainerRecord;

impl Cluster {
    /// Grants one container of an app's ask (or its AM container) on a node.
    pub(super) fn allocate_container(&mut self, app_id: AppId, ask_index: Option<usize>, node_id: &NodeId, now_ms: u64) {
        let epoch = self.epoch;
        let launch_expiry = self.settings.container_launch_expiry_ms;
        let Some(app) = self.apps.get_mut(&app_id) else { return };
        let Some(node) = self.nodes.get_mut(node_id) else { return };
        let attempt = app.record.attempts.last().expect("scheduled apps have an attempt").attempt;
        let container_id = ContainerId {
            app: app_id,
            attempt,
            epoch,
            seq: app.next_container_seq,
        };
        app.next_container_seq += 1;
        let (resources, demand_since_ms) = match ask_index {
            None => (
                app.record.spec.am,
                app.record.attempts.last().map_or(now_ms, |attempt| attempt.started_at_ms),
            ),
            Some(index) => {
                let ask = &mut app.asks[index];
                ask.count -= 1;
                let resources = ask.resources;
                let since = app.asks_since_ms.unwrap_or(now_ms);
                if app.asks.iter().all(|ask| ask.count == 0) {
                    app.asks_since_ms = None;
                }
                (resources, since)
            }
        };
        self.outbox
            .observed
            .allocation_latencies_ms
            .push(now_ms.saturating_sub(demand_since_ms));
        let record = ContainerRecord {
            container_id,
            node_id: node_id.clone(),
            node_address: node.record.address.clone(),
            resources,
            state: ContainerState::Allocated,
            is_am: ask_index.is_none(),
            exit_code: None,
            exit_reason: None,
            diagnostics: String::new(),
            allocated_at_ms: now_ms,
            launch_deadline_ms: now_ms + launch_expiry,
            started_at_ms: None,
            finished_at_ms: None,
        };
        debug_assert!(
            node.record.capacity.saturating_sub(&node.used).fits(&resources),
            "scheduler over-committed {node_id}"
        );
        node.used += resources;
        self.node_view
            .set_headroom(node_id, node.record.capacity.saturating_sub(&node.used));
        node.live.insert(container_id);
        app.live.insert(container_id);
        app.allocated += resources;
        let node_address = node.record.address.clone();
        let is_am = ask_index.is_none();
        if is_am {
            let attempt = app.record.attempts.last_mut().expect("checked above");
            attempt.am_container = Some(container_id);
            attempt.node_id = Some(node_id.clone());
            app.record.diagnostics = format!("application master container granted on {node_id}; launching");
        } else {
            app.undelivered.push(container_id);
        }
        self.containers.insert(container_id, Container { record, kill_reason: None });
        self.mark_container(container_id);
        if is_am {
            self.mark_app(app_id);
            if let Some(launch) = self.am_launch(app_id, container_id, node_address) {
                self.outbox.am_launches.push(launch);
            }
        } else {
            self.outbox.wake.insert(app_id);
        }
    }

    /// A container's agent says it runs.
    pub(super) fn container_running(&mut self, container_id: ContainerId, started_at_ms: Option<u64>, now_ms: u64) {
        let Some(container) = self.containers.get_mut(&container_id) else {
            return;
        };
        if !container.record.state.can_become(ContainerState::Running) {
            return;
        }
        transitions::transition(&container.record.container_id, &mut container.record.state, ContainerState::Running);
        container.record.started_at_ms = Some(started_at_ms.unwrap_or(now_ms));
        self.mark_container(container_id);
    }

    /// Stops a container: one never launched completes now (if its AM launches it anyway, the
    /// agent's report of an unknown-to-be-live container gets it killed); a running one is
    /// killed by its agent, and completes when the agent reports it.
    pub(super) fn kill_container(&mut self, container_id: ContainerId, reason: ExitReason, diagnostics: String, now_ms: u64) {
        let Some(container) = self.containers.get_mut(&container_id) else {
            return;
        };
        if !container.record.state.is_live() {
            return;
        }
        if container.record.state == ContainerState::Running {
            container.kill_reason.get_or_insert((reason, diagnostics));
            if let Some(node) = self.nodes.get_mut(&container.record.node_id) {
                node.pending_kills.insert(container_id);
            }
            return;
        }
        let status = synthetic_status(container_id, reason, diagnostics, now_ms);
        self.complete_container(status, now_ms);
    }

    /// A container ended (as its agent reports, or as the RM decides for lost and unlaunched
    /// ones). Frees its resources and tells its AM.
    pub(super) fn complete_container(&mut self, mut status: ContainerStatus, now_ms: u64) {
        let container_id = status.container_id;
        let Some(container) = self.containers.get_mut(&container_id) else {
            return;
        };
        if !container.record.state.is_live() {
            return;
        }
        // Its room is free again.
        self.round_due = true;
        // A kill the RM or AM asked for keeps its reason, unless the container beat it to the end.
        if let Some((reason, diagnostics)) = container.kill_reason.take()
            && !matches!(status.exit_reason, Some(ExitReason::Success | ExitReason::ExceededMemory))
        {
            status.exit_reason = Some(reason);
            status.diagnostics = diagnostics;
        }
        let exit_reason = status.exit_reason.unwrap_or_else(|| exit_reason_of(status.exit_code));
        status.exit_reason = Some(exit_reason);
        status.state = ContainerState::Complete;
        status.finished_at_ms.get_or_insert(now_ms);
        let record = &mut container.record;
        transitions::transition(&record.container_id, &mut record.state, ContainerState::Complete);
        record.exit_code = status.exit_code;
        record.exit_reason = Some(exit_reason);
        record.diagnostics = status.diagnostics.clone();
        record.finished_at_ms = status.finished_at_ms;
        if record.started_at_ms.is_none() {
            record.started_at_ms = status.started_at_ms;
        }
        let (resources, node_id, is_am) = (record.resources, record.node_id.clone(), record.is_am);
        self.mark_container(container_id);
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.used -= resources;
            self.node_view
                .set_headroom(&node_id, node.record.capacity.saturating_sub(&node.used));
            node.live.remove(&container_id);
            node.pending_kills.remove(&container_id);
        }
        let app_id = container_id.app;
        let Some(app) = self.apps.get_mut(&app_id) else { return };
        app.live.remove(&container_id);
        app.allocated -= resources;
        if is_am {
            self.am_container_ended(app_id, &status, now_ms);
            return;
        }
        let current_attempt = app.record.attempts.last().map(|attempt| attempt.attempt);
        if !app.record.state.is_terminal() && current_attempt == Some(container_id.attempt) {
            app.undelivered.retain(|id| *id != container_id);
            app.completions.push(status);
            self.outbox.wake.insert(app_id);
        }
    }

    /// The RM could not start an AM container: it completes as FAILED, and the attempt with it.
    pub fn launch_failed(&mut self, status: ContainerStatus, now_ms: u64) {
        self.complete_container(status, now_ms);
    }

    /// Grants not running by their deadline are reclaimed as EXPIRED.
    pub(super) fn expire_unlaunched_containers(&mut self, now_ms: u64) {
        let expired: Vec<ContainerId> = self
            .containers
            .values()
            .filter(|c| matches!(c.record.state, ContainerState::Allocated | ContainerState::Acquired))
            .filter(|c| c.record.launch_deadline_ms < now_ms)
            .map(|c| c.record.container_id)
            .collect();
        for container_id in expired {
            let after = self.settings.container_launch_expiry_ms / 1000;
            self.kill_container(
                container_id,
                ExitReason::Expired,
                format!("not launched within {after} s of its grant"),
                now_ms,
            );
        }
    }
}

/// A completion the RM decides on itself (no exit code: the process never ran or was lost).
pub(super) fn synthetic_status(container_id: ContainerId, reason: ExitReason, diagnostics: String, now_ms: u64) -> ContainerStatus {
    ContainerStatus {
        container_id,
        state: ContainerState::Complete,
        exit_code: None,
        exit_reason: Some(reason),
        diagnostics,
        started_at_ms: None,
        finished_at_ms: Some(now_ms),
    }
}
