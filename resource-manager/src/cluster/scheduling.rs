//! Scheduling rounds and preemption, the cluster's side of the pure scheduler: a snapshot of
//! apps and nodes goes in, placements come back as ALLOCATED containers and wait reasons as
//! app diagnostics; victims chosen by the preemption planner get a notice, a grace period, and
//! then a PREEMPTED kill.

use std::borrow::Cow;

use spindle_protocol::{AppId, AppState, ContainerId, ExitReason, Resources};

use super::{App, Cluster};
use crate::scheduler::preemption;
use crate::scheduler::queues::QueueTree;
use crate::scheduler::snapshot::{AppAsk, ClusterSnapshot, ContainerKind, SnapshotApp, SnapshotContainer};

/// Why a queue reload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the new queue configuration would orphan running apps: {}; move or finish them first, or keep these leaf queues",
    orphans.iter().map(|(queue, apps)| format!("queue `{queue}` holds {}", apps.join(", "))).collect::<Vec<_>>().join("; ")
)]
pub struct ReloadRefused {
    /// Leaf queue name → ids of the live apps in it, for every leaf the new tree lacks.
    pub orphans: Vec<(String, Vec<String>)>,
}

/// One app of a snapshot, with the map from snapshot ask index back to the app's ask table
/// (the snapshot lists asks by priority and leaves out empty ones).
struct SnapshotEntry {
    app: SnapshotApp,
    ask_table_index: Vec<usize>,
}

impl Cluster {
    /// From now on a change that makes a round due leaves it to the owner, who calls
    /// `schedule` when `round_due` says so. The service does this: a round walks every node,
    /// and at thousands of nodes running one inside every heartbeat and allocate call that
    /// frees room or asks for it costs more than the calls themselves; deferred, one round
    /// serves every change made while it waited (YARN's asynchronous scheduling). Without it
    /// (tests, tools) rounds run inside the change, so its effect is seen at once.
    pub fn defer_rounds(&mut self) {
        self.rounds_deferred = true;
    }

    /// Whether a change since the last round gives a round something to do.
    pub fn round_due(&self) -> bool {
        self.round_due
    }

    /// A round now, unless rounds are deferred: then the owner runs it soon.
    pub(super) fn schedule_soon(&mut self, now_ms: u64) {
        if !self.rounds_deferred {
            self.schedule(now_ms);
        }
    }

    /// One scheduling round, if one is due: the capacity scheduler places what it can; every
    /// app that still waits gets the reason in its diagnostics.
    pub fn schedule(&mut self, now_ms: u64) {
        if !std::mem::take(&mut self.round_due) {
            return;
        }
        if !self.apps.values().any(app_wants_something) {
            for app in self.apps.values_mut() {
                app.waiting = None;
            }
            self.refresh_headroom_basis();
            return;
        }
        // Measured for the metrics only: no decision depends on the wall clock.
        let round_started = std::time::Instant::now();
        let entries = self.snapshot_apps(false);
        let (apps, ask_maps): (Vec<SnapshotApp>, Vec<Vec<usize>>) =
            entries.into_iter().map(|entry| (entry.app, entry.ask_table_index)).unzip();
        self.refresh_node_view();
        let snapshot = ClusterSnapshot {
            queues: &self.settings.queues,
            nodes: Cow::Borrowed(self.node_view.nodes()),
            apps,
            now_ms,
        };
        let _round = tracing::debug_span!("scheduling_round", apps = snapshot.apps.len(), nodes = snapshot.nodes.len()).entered();
        let decisions = self.scheduler.solve(&snapshot);
        let apps = snapshot.apps;
        for placement in &decisions.placements {
            let index = apps
                .binary_search_by_key(&placement.app_id, |app| app.app_id)
                .expect("placements name snapshot apps");
            let ask_index = match placement.container {
                ContainerKind::Am => None,
                ContainerKind::Ask(ask) => Some(ask_maps[index][ask]),
            };
            self.allocate_container(placement.app_id, ask_index, &placement.node_id, now_ms);
        }
        for app in &apps {
            if let Some(state) = self.apps.get_mut(&app.app_id) {
                state.waiting = decisions.wait_reason(app.app_id).map(ToString::to_string);
            }
        }
        self.refresh_headroom_basis();
        tracing::debug!(placed = decisions.placements.len(), "scheduling round");
        self.outbox.observed.scheduling_rounds.push(round_started.elapsed());
    }

    /// Preemption, run by `tick`: ask the planner which containers should be under notice and
    /// apply the plan to the notice book: new notices wake their AM (the allocate reply lists
    /// them), withdrawn ones just disappear from the list, due ones are killed as PREEMPTED.
    pub(super) fn preempt(&mut self, now_ms: u64) {
        let Some(grace_ms) = self.settings.preemption_grace_ms else {
            return;
        };
        let containers = &self.containers;
        self.notices
            .retain(|id| containers.get(id).is_some_and(|container| container.record.state.is_live()));
        let apps = self.snapshot_apps(true).into_iter().map(|entry| entry.app).collect();
        self.refresh_node_view();
        let snapshot = ClusterSnapshot {
            queues: &self.settings.queues,
            nodes: Cow::Borrowed(self.node_view.nodes()),
            apps,
            now_ms,
        };
        let chosen = preemption::victims(&snapshot);
        let changes = self.notices.apply(&chosen, now_ms);
        for container_id in changes.noticed {
            if let Some(app) = self.apps.get_mut(&container_id.app) {
                app.preempt_news = true;
            }
            self.outbox.wake.insert(container_id.app);
        }
        for container_id in changes.due {
            let queue = self
                .apps
                .get(&container_id.app)
                .map(|app| app.record.spec.queue.clone())
                .unwrap_or_default();
            self.kill_container(
                container_id,
                ExitReason::Preempted,
                format!(
                    "preempted after a notice of {} s: its queue `{queue}` ran above its guarantee while another queue needed its own",
                    grace_ms / 1000
                ),
                now_ms,
            );
        }
    }

    /// The containers of `app_id` under a preemption notice now.
    pub(super) fn preempt_notices(&self, app_id: AppId) -> Vec<ContainerId> {
        self.notices.of_app(app_id).collect()
    }

    /// Replaces the queue tree, unless a live app's queue would no longer be a leaf.
    pub fn replace_queues(&mut self, queues: QueueTree) -> Result<(), ReloadRefused> {
        let mut orphans: Vec<(String, Vec<String>)> = Vec::new();
        for app in self.apps.values().filter(|app| !app.record.state.is_terminal()) {
            let queue = &app.record.spec.queue;
            if queues.leaf(queue).is_some() {
                continue;
            }
            match orphans.iter_mut().find(|(name, _)| name == queue) {
                Some((_, apps)) => apps.push(app.record.app_id.to_string()),
                None => orphans.push((queue.clone(), vec![app.record.app_id.to_string()])),
            }
        }
        if !orphans.is_empty() {
            return Err(ReloadRefused { orphans });
        }
        self.settings.queues = queues;
        self.round_due = true;
        Ok(())
    }

    /// Accepted and running apps in id order, with their live containers if `with_containers`.
    fn snapshot_apps(&self, with_containers: bool) -> Vec<SnapshotEntry> {
        self.apps
            .values()
            .filter(|app| matches!(app.record.state, AppState::Accepted | AppState::Running))
            .filter_map(|app| self.snapshot_app(app, with_containers))
            .collect()
    }

    fn snapshot_app(&self, app: &App, with_containers: bool) -> Option<SnapshotEntry> {
        let attempt = app.record.attempts.last()?;
        let am_container = attempt.am_container.and_then(|id| self.containers.get(&id));
        let am_used = am_container
            .filter(|container| container.record.state.is_live())
            .map_or(Resources::ZERO, |container| container.record.resources);
        let mut ask_table_index: Vec<usize> = Vec::new();
        if attempt.am_container.is_some() && attempt.registered {
            ask_table_index = (0..app.asks.len()).filter(|&index| app.asks[index].count > 0).collect();
            // Lower priority numbers first; the stable sort keeps the AM's order otherwise.
            ask_table_index.sort_by_key(|&index| app.asks[index].priority);
        }
        let asks = ask_table_index
            .iter()
            .map(|&index| {
                let ask = &app.asks[index];
                AppAsk {
                    resources: ask.resources,
                    count: ask.count,
                    nodes: ask.nodes.clone(),
                    racks: ask.racks.clone(),
                    label: ask.label.clone(),
                }
            })
            .collect();
        let containers = if with_containers {
            app.live
                .iter()
                .filter_map(|id| self.containers.get(id))
                .map(|container| SnapshotContainer {
                    container_id: container.record.container_id,
                    resources: container.record.resources,
                    is_am: container.record.is_am,
                    allocated_at_ms: container.record.allocated_at_ms,
                    preempting: self.notices.is_under_notice(&container.record.container_id),
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(SnapshotEntry {
            app: SnapshotApp {
                app_id: app.record.app_id,
                queue: app.record.spec.queue.clone(),
                user: app.record.user.clone(),
                priority: app.record.spec.priority,
                submitted_at_ms: app.record.submitted_at_ms,
                used: app.allocated,
                am_used,
                pending_am: attempt.am_container.is_none().then_some(app.record.spec.am),
                asks,
                containers,
            },
            ask_table_index,
        })
    }
}

/// Whether a live app waits for its AM container or for containers its AM asked for.
fn app_wants_something(app: &App) -> bool {
    if !matches!(app.record.state, AppState::Accepted | AppState::Running) {
        return false;
    }
    let Some(attempt) = app.record.attempts.last() else {
        return false;
    };
    attempt.am_container.is_none() || (attempt.registered && app.asks.iter().any(|ask| ask.count > 0))
}
