//! Read-only views of the state for the REST API.

use std::collections::BTreeMap;

use spindle_protocol::{
    AppId, AppReport, AppState, AttemptReport, ClusterReport, ContainerId, ContainerReport, ContainerState, NodeId, NodeReport, NodeUsage,
    QueueReport, QueueUserReport, Resources,
};

use super::view_acl::{redact_app_report, redact_container_report};
use super::{App, Caller, Cluster, Container, Node};
use crate::records::NodeRecord;

/// Filters of `GET /v1/apps`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppQuery {
    pub state: Option<AppState>,
    pub queue: Option<String>,
    pub user: Option<String>,
    pub limit: usize,
    /// Only apps older (by id) than this one: the next page after a page that ended with it.
    pub before: Option<AppId>,
}

impl Cluster {
    /// One app's report as `caller` may see it: whole for its viewers, redacted for others
    /// (see `view_acl`). What the API answers.
    pub fn app_report_for(&self, caller: &Caller, app_id: AppId) -> Option<AppReport> {
        let mut report = self.app_report(app_id)?;
        if !self.may_view_app(caller, app_id) {
            redact_app_report(&mut report);
        }
        Some(report)
    }

    /// Newest first, each as `caller` may see it.
    pub fn app_reports_for(&self, caller: &Caller, query: &AppQuery) -> Vec<AppReport> {
        let mut reports = self.app_reports(query);
        for report in reports.iter_mut().filter(|report| !self.may_view_app(caller, report.app_id)) {
            redact_app_report(report);
        }
        reports
    }

    /// An app's containers as `caller` may see them.
    pub fn container_reports_for(&self, caller: &Caller, app_id: AppId) -> Option<Vec<ContainerReport>> {
        let mut reports = self.container_reports(app_id)?;
        if !self.may_view_app(caller, app_id) {
            reports.iter_mut().for_each(redact_container_report);
        }
        Some(reports)
    }

    /// One app's whole report, diagnostics and counters included: for the RM itself and tests;
    /// users get `app_report_for`.
    pub(crate) fn app_report(&self, app_id: AppId) -> Option<AppReport> {
        self.apps.get(&app_id).map(|app| app_report(app, &self.containers))
    }

    /// Whole reports, newest first (see `app_report`).
    pub(crate) fn app_reports(&self, query: &AppQuery) -> Vec<AppReport> {
        let newer = match query.before {
            Some(before) => self.apps.range(..before),
            None => self.apps.range(..),
        };
        newer
            .rev()
            .map(|(_, app)| app)
            .filter(|app| query.state.is_none_or(|state| app.record.state == state))
            .filter(|app| query.queue.as_ref().is_none_or(|queue| &app.record.spec.queue == queue))
            .filter(|app| query.user.as_ref().is_none_or(|user| &app.record.user == user))
            .take(query.limit)
            .map(|app| app_report(app, &self.containers))
            .collect()
    }

    /// Whole container reports, stderr tails included (see `app_report`).
    pub(crate) fn container_reports(&self, app_id: AppId) -> Option<Vec<ContainerReport>> {
        self.apps.get(&app_id)?;
        Some(self.containers_of(app_id).map(container_report).collect())
    }

    pub fn node_reports(&self) -> Vec<NodeReport> {
        self.nodes.values().map(node_report).collect()
    }

    pub fn node_report(&self, node_id: &NodeId) -> Option<NodeReport> {
        self.nodes.get(node_id).map(node_report)
    }

    /// The queue tree with each queue's guarantee, maximum, use, pending demand and (leaves)
    /// users. Resources of apps in a queue the tree no longer has count nowhere.
    pub fn queue_report(&self) -> QueueReport {
        let tree = &self.settings.queues;
        let capacities = tree.capacities(self.schedulable_capacity());
        let mut used = vec![Resources::ZERO; tree.queues.len()];
        let mut pending = vec![Resources::ZERO; tree.queues.len()];
        let mut apps_running = vec![0u32; tree.queues.len()];
        let mut users: Vec<BTreeMap<&str, QueueUserReport>> = vec![BTreeMap::new(); tree.queues.len()];
        for app in self.apps.values().filter(|app| !app.record.state.is_terminal()) {
            let Some(leaf) = tree.leaf(&app.record.spec.queue) else { continue };
            let app_pending = pending_of(app);
            let user = users[leaf].entry(app.record.user.as_str()).or_insert_with(|| QueueUserReport {
                user: app.record.user.clone(),
                used: Resources::ZERO,
                pending: Resources::ZERO,
                apps_running: 0,
            });
            user.used += app.allocated;
            user.pending += app_pending;
            user.apps_running += 1;
            let mut queue = Some(leaf);
            while let Some(index) = queue {
                used[index] += app.allocated;
                pending[index] += app_pending;
                apps_running[index] += 1;
                queue = tree.queues[index].parent;
            }
        }
        // Children come after their parent in `queues`: build the reports bottom-up.
        let mut reports: Vec<Option<QueueReport>> = vec![None; tree.queues.len()];
        for index in (0..tree.queues.len()).rev() {
            let queue = &tree.queues[index];
            let children = queue
                .children
                .iter()
                .map(|&child| reports[child].take().expect("built before its parent"))
                .collect();
            reports[index] = Some(QueueReport {
                name: queue.path.clone(),
                guaranteed_percent: queue.guaranteed_percent as f32,
                maximum_percent: queue.maximum_percent as f32,
                guaranteed: capacities[index].guaranteed,
                maximum: capacities[index].maximum,
                used: used[index],
                pending: pending[index],
                apps_running: apps_running[index],
                users: std::mem::take(&mut users[index]).into_values().collect(),
                children,
            });
        }
        reports[0].take().expect("the tree has a root")
    }

    /// What schedulable nodes offer in total: the base of queue shares.
    fn schedulable_capacity(&self) -> Resources {
        self.nodes
            .values()
            .filter(|node| node.record.state.is_schedulable() && node.registered)
            .fold(Resources::ZERO, |total, node| total + node.record.capacity)
    }

    pub fn cluster_report(&self, store: String) -> ClusterReport {
        let mut nodes = BTreeMap::new();
        let mut capacity = Resources::ZERO;
        let mut used = Resources::ZERO;
        for node in self.nodes.values() {
            *nodes.entry(spindle_protocol::wire_name(&node.record.state)).or_insert(0) += 1;
            if node.record.state.is_active() {
                capacity += node.record.capacity;
                used += node.used;
            }
        }
        let mut apps = BTreeMap::new();
        for app in self.apps.values() {
            *apps.entry(app.record.state.as_str().to_owned()).or_insert(0) += 1;
        }
        let containers_running = self
            .containers
            .values()
            .filter(|c| c.record.state == ContainerState::Running)
            .count() as u32;
        ClusterReport {
            epoch: self.epoch,
            started_at_ms: self.started_at_ms,
            store,
            capacity,
            used,
            available: capacity.saturating_sub(&used),
            nodes,
            apps,
            containers_running,
        }
    }
}

/// The stored diagnostics, or why the scheduler keeps the app waiting: an app must never be
/// silently stuck in ACCEPTED.
fn diagnostics(app: &App) -> String {
    match (&app.waiting, app.record.state) {
        (Some(reason), AppState::Accepted) => format!("waiting for its application master container: {reason}"),
        (Some(reason), AppState::Running) => format!("running; more containers wait: {reason}"),
        _ => app.record.diagnostics.clone(),
    }
}

/// What an app asks for and has not got: its AM container until granted, then its asks.
fn pending_of(app: &App) -> Resources {
    let Some(attempt) = app.record.attempts.last() else {
        return Resources::ZERO;
    };
    if attempt.am_container.is_none() {
        return app.record.spec.am;
    }
    app.asks
        .iter()
        .fold(Resources::ZERO, |total, ask| total + ask.resources.times(ask.count))
}

pub(super) fn app_report(app: &App, containers: &BTreeMap<ContainerId, Container>) -> AppReport {
    let record = &app.record;
    let running_containers = app
        .live
        .iter()
        .filter(|id| containers.get(id).is_some_and(|c| c.record.state == ContainerState::Running))
        .count() as u32;
    AppReport {
        app_id: record.app_id,
        name: record.spec.name.clone(),
        queue: record.spec.queue.clone(),
        user: record.user.clone(),
        kind: record.spec.kind,
        priority: record.spec.priority,
        state: record.state,
        final_status: record.final_status,
        diagnostics: diagnostics(app),
        progress: record.progress,
        max_attempts: record.spec.max_attempts,
        attempts: record
            .attempts
            .iter()
            .map(|attempt| AttemptReport {
                attempt: attempt.attempt,
                am_container: attempt.am_container,
                node_id: attempt.node_id.clone(),
                started_at_ms: attempt.started_at_ms,
                finished_at_ms: attempt.finished_at_ms,
                diagnostics: attempt.diagnostics.clone(),
            })
            .collect(),
        allocated: app.allocated,
        running_containers,
        submitted_at_ms: record.submitted_at_ms,
        started_at_ms: record.started_at_ms,
        finished_at_ms: record.finished_at_ms,
        detail: app.detail.clone(),
    }
}

pub(super) fn container_report(container: &Container) -> ContainerReport {
    let record = &container.record;
    ContainerReport {
        container_id: record.container_id,
        node_id: record.node_id.clone(),
        node_address: record.node_address.clone(),
        resources: record.resources,
        state: record.state,
        is_am: record.is_am,
        exit_code: record.exit_code,
        exit_reason: record.exit_reason,
        diagnostics: record.diagnostics.clone(),
        allocated_at_ms: record.allocated_at_ms,
        started_at_ms: record.started_at_ms,
        finished_at_ms: record.finished_at_ms,
    }
}

fn node_report(node: &Node) -> NodeReport {
    NodeReport {
        node_id: node.record.node_id.clone(),
        address: node.record.address.clone(),
        rack: node.record.rack.clone(),
        labels: node.record.labels.clone(),
        state: node.record.state,
        capacity: node.record.capacity,
        used: node.used,
        containers: node.live.len() as u32,
        usage: node.usage,
        health_report: node.health_report.clone(),
        last_heartbeat_ms: node.last_heartbeat_ms,
        isolation: node.record.isolation.clone(),
        departed_at_ms: node.record.departed_at_ms,
        forgotten_at_ms: None,
    }
}

/// The report of a node the RM has forgotten, from its last record (the store's history):
/// departed, so with no containers and nothing in use.
pub fn forgotten_node_report(record: &NodeRecord) -> NodeReport {
    NodeReport {
        node_id: record.node_id.clone(),
        address: record.address.clone(),
        rack: record.rack.clone(),
        labels: record.labels.clone(),
        state: record.state,
        capacity: record.capacity,
        used: Resources::ZERO,
        containers: 0,
        usage: NodeUsage::default(),
        health_report: String::new(),
        last_heartbeat_ms: record.forgotten.map_or(0, |forgotten| forgotten.last_heartbeat_ms),
        isolation: record.isolation.clone(),
        departed_at_ms: record.departed_at_ms,
        forgotten_at_ms: record.forgotten.map(|forgotten| forgotten.at_ms),
    }
}
