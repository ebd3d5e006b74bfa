//! Rebuilding the state machine from the store after an RM restart (work-preserving: running
//! containers are kept; agents and AMs reconnect and carry on).

use spindle_protocol::{AppId, AppState, ContainerId, ContainerState, ExitReason};

use super::{App, Cluster, ClusterSettings, Container, Node};
use crate::records::Snapshot;

impl Cluster {
    /// A cluster rebuilt from a snapshot. Recovered nodes get a full `node_expiry` from now to
    /// register again before they are declared LOST; departed ones keep the time they departed,
    /// so a restart does not put off forgetting them (by more than that `node_expiry`).
    pub fn recover(settings: ClusterSettings, epoch: u64, now_ms: u64, snapshot: Snapshot) -> Cluster {
        // New apps are named after this RM's start; never reuse an old app's timestamp.
        let newest_ts = snapshot.apps.iter().map(|app| app.app_id.cluster_ts).max().unwrap_or(0);
        let mut cluster = Cluster::new(settings, epoch, now_ms.max(newest_ts + 1));
        for mut record in snapshot.nodes {
            // The store leaves forgotten nodes out; one that slipped in stays history.
            if record.forgotten.is_some() {
                continue;
            }
            let node_id = record.node_id.clone();
            // Stored before departures were timed: its `departed_node_expiry` starts now.
            if !record.state.is_active() && record.departed_at_ms.is_none() {
                record.departed_at_ms = Some(now_ms);
                cluster.mark_node(&node_id);
            }
            cluster.nodes.insert(node_id, Node::new(record, now_ms));
        }
        // Apps the store kept out (ended, beyond `finished_apps_in_memory`) are history.
        cluster.newest_evicted = snapshot.newest_unloaded_app;
        let mut ended: Vec<(u64, AppId)> = snapshot
            .apps
            .iter()
            .filter(|record| record.state.is_terminal())
            .map(|record| (record.finished_at_ms.unwrap_or(0), record.app_id))
            .collect();
        ended.sort_unstable();
        cluster.ended = ended.into_iter().map(|(_, app_id)| app_id).collect();
        for record in snapshot.apps {
            if let Some(key) = &record.submission_key {
                cluster.submission_keys.insert((record.user.clone(), key.clone()), record.app_id);
            }
            cluster.apps.insert(record.app_id, App::new(record));
        }
        for record in snapshot.containers {
            let container_id = record.container_id;
            let Some(app) = cluster.apps.get_mut(&container_id.app) else {
                continue;
            };
            let current_attempt = app.record.attempts.last().map(|attempt| attempt.attempt);
            let of_current_attempt = current_attempt == Some(container_id.attempt) && !app.record.state.is_terminal();
            if record.state.is_live() {
                app.live.insert(container_id);
                app.allocated += record.resources;
                if let Some(node) = cluster.nodes.get_mut(&record.node_id) {
                    node.used += record.resources;
                    node.live.insert(container_id);
                }
                if of_current_attempt && !record.is_am && record.state == ContainerState::Allocated {
                    app.undelivered.push(container_id);
                }
            } else if of_current_attempt && !record.is_am {
                // The AM may not have heard of this completion before the restart. It is told
                // again; AMs ignore completions they already know (at-least-once delivery).
                app.completions.push(spindle_protocol::ContainerStatus {
                    container_id,
                    state: ContainerState::Complete,
                    exit_code: record.exit_code,
                    exit_reason: record.exit_reason,
                    diagnostics: record.diagnostics.clone(),
                    started_at_ms: record.started_at_ms,
                    finished_at_ms: record.finished_at_ms,
                });
            }
            cluster.containers.insert(container_id, Container { record, kill_reason: None });
        }
        // Kills are soft state: ask again for those the old RM had asked for. An ended app's
        // containers and a superseded attempt's must not run on (an AM that finished its app
        // exits by itself, so only a KILLED app's AM container is killed).
        let mut must_stop: Vec<ContainerId> = cluster
            .containers
            .values()
            .filter(|container| container.record.state.is_live())
            .filter(|container| {
                let app = &cluster.apps[&container.record.container_id.app].record;
                let current_attempt = app.attempts.last().map(|attempt| attempt.attempt);
                current_attempt != Some(container.record.container_id.attempt)
                    || app.state == AppState::Killed
                    || (app.state.is_terminal() && !container.record.is_am)
            })
            .map(|container| container.record.container_id)
            .collect();
        must_stop.sort();
        for container_id in must_stop {
            cluster.kill_container(
                container_id,
                ExitReason::KilledByRm,
                "its application or attempt ended".to_owned(),
                now_ms,
            );
        }
        // An AM container granted but maybe never launched before the crash: launch it again.
        // An agent that already runs it refuses the duplicate, which is harmless.
        let relaunch: Vec<_> = cluster
            .apps
            .values()
            .filter(|app| !app.record.state.is_terminal())
            .filter_map(|app| app.record.attempts.last().and_then(|attempt| attempt.am_container))
            .filter(|id| {
                cluster
                    .containers
                    .get(id)
                    .is_some_and(|c| c.record.state == ContainerState::Allocated)
            })
            .collect();
        for container_id in relaunch {
            let address = cluster.containers[&container_id].record.node_address.clone();
            if let Some(launch) = cluster.am_launch(container_id.app, container_id, address) {
                cluster.outbox.am_launches.push(launch);
            }
        }
        cluster.refresh_headroom_basis();
        cluster
    }
}
