//! Registration and heartbeats: the agent's side of the agent ↔ RM protocol.
//!
//! One loop sends every heartbeat. It wakes on the periodic tick (which also samples usage and
//! health) or at once when a container starts or ends. A `Notify` keeps at most one trigger
//! pending, so a burst of container events costs one heartbeat in flight plus one right after.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{
    ClientError, NodeCredential, NodeHeartbeatReply, NodeHeartbeatRequest, NodeId, RegisterNodeRequest, Resources, RmClient,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::credential;
use crate::manager::ContainerManager;
use crate::probe::{NodeSample, Probe};

/// First wait before registering again after a failure; doubles up to the maximum.
const REGISTER_BACKOFF_START: Duration = Duration::from_millis(100);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the node tells the RM about itself when it registers.
#[derive(Debug, Clone)]
pub(crate) struct NodeDescription {
    pub node_id: NodeId,
    pub address: String,
    pub capacity: Resources,
    pub rack: String,
    pub labels: Vec<String>,
    /// Whose account containers run as, and how limits apply.
    pub isolation: spindle_protocol::NodeIsolation,
}

/// Why the heartbeat loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeartbeatEnd {
    /// The agent's shutdown token was cancelled.
    Cancelled,
    /// The RM said shutdown: the node is decommissioned.
    ShutdownByRm,
}

/// Talks to the RM on the node's behalf.
pub(crate) struct Heartbeater {
    client: RmClient,
    /// Registers the node when it has no keys, or the RM no longer accepts them.
    join_token: Option<String>,
    /// Where the node's keys are saved.
    work_dir: PathBuf,
    manager: Arc<ContainerManager>,
    node: NodeDescription,
    probe: Probe,
    /// The periodic interval: configured, then the RM's.
    interval: Duration,
    /// Container starts and ends, from the manager.
    trigger: Arc<Notify>,
    /// Usage and health of the last periodic sample; immediate heartbeats repeat it.
    sample: NodeSample,
    /// Set while the RM cannot be reached, so an outage is logged once, not every second.
    in_outage: bool,
}

impl Heartbeater {
    pub(crate) fn new(
        client: RmClient,
        join_token: Option<String>,
        work_dir: PathBuf,
        manager: Arc<ContainerManager>,
        node: NodeDescription,
        probe: Probe,
        interval: Duration,
    ) -> Self {
        let trigger = manager.report_trigger();
        Heartbeater {
            client,
            join_token,
            work_dir,
            manager,
            node,
            probe,
            interval,
            trigger,
            sample: NodeSample {
                healthy: true,
                ..NodeSample::default()
            },
            in_outage: false,
        }
    }

    /// Registers, then heartbeats until `stop` is cancelled or the RM says shutdown.
    pub(crate) async fn run(mut self, stop: &CancellationToken) -> HeartbeatEnd {
        self.sample = self.probe.sample().await;
        if !self.register(stop).await {
            return HeartbeatEnd::Cancelled;
        }
        let mut next_periodic = Instant::now() + self.interval;
        loop {
            let periodic = tokio::select! {
                _ = stop.cancelled() => return HeartbeatEnd::Cancelled,
                _ = tokio::time::sleep_until(next_periodic) => true,
                _ = self.trigger.notified() => false,
            };
            if periodic {
                next_periodic = Instant::now() + self.interval;
                self.sample = self.probe.sample().await;
            }
            let request = NodeHeartbeatRequest {
                node_id: self.node.node_id.clone(),
                usage: self.sample.usage,
                healthy: self.sample.healthy,
                health_report: self.sample.health_report.clone(),
                containers: self.manager.reportable_statuses(),
            };
            self.client.set_token(self.manager.rm_bearer());
            let sent = std::time::Instant::now();
            let result = tokio::select! {
                _ = stop.cancelled() => return HeartbeatEnd::Cancelled,
                result = self.client.node_heartbeat(&request) => result,
            };
            self.manager.metrics.record_heartbeat(result.is_ok(), sent.elapsed().as_secs_f64());
            match result {
                Ok(reply) => {
                    self.rm_reachable();
                    if let Some(credential) = &reply.credential {
                        self.install_credential(credential, "rotated");
                    }
                    if self.apply(&reply) == Some(HeartbeatEnd::ShutdownByRm) {
                        return HeartbeatEnd::ShutdownByRm;
                    }
                    if reply.resync {
                        tracing::info!(node_id = %self.node.node_id, "the RM does not know this node (restarted, or declared it lost); registering again");
                        if !self.register(stop).await {
                            return HeartbeatEnd::Cancelled;
                        }
                        next_periodic = Instant::now() + self.interval;
                    }
                }
                // The RM no longer accepts the node's keys (expired while the agent was cut
                // off): register again, with the join token.
                Err(ClientError::Api { status: 403, message, .. }) if self.join_token.is_some() => {
                    tracing::warn!(node_id = %self.node.node_id, reason = %message, "the RM refused the node's credential; registering with the join token");
                    if !self.register(stop).await {
                        return HeartbeatEnd::Cancelled;
                    }
                }
                // Statuses stay with the manager until acknowledged, so the next heartbeat
                // simply carries them again.
                Err(err) => self.rm_unreachable("heartbeat", &err),
            }
        }
    }

    /// Applies a heartbeat reply; returns `ShutdownByRm` if the RM said to stop. A reply from
    /// an RM older than one already heard of (a replaced leader that has not noticed yet) is
    /// ignored: none of its kills, acknowledgements or orders are acted on.
    fn apply(&self, reply: &NodeHeartbeatReply) -> Option<HeartbeatEnd> {
        if !self.manager.observe_epoch(reply.epoch) {
            tracing::warn!(
                epoch = reply.epoch,
                current = self.manager.rm_epoch(),
                "ignoring a heartbeat reply from a replaced resource manager"
            );
            return None;
        }
        self.manager.acknowledge(&reply.acked);
        self.manager.kill_by_rm(&reply.kill);
        self.manager.set_draining(reply.drain);
        self.manager.start_shuffle_cleanup(reply.cleanup_apps.clone());
        if reply.shutdown {
            tracing::info!(node_id = %self.node.node_id, "the RM says this node is decommissioned; stopping");
            return Some(HeartbeatEnd::ShutdownByRm);
        }
        None
    }

    /// Takes new keys from the RM and saves them for the next start.
    fn install_credential(&self, credential: &NodeCredential, what: &str) {
        match self.manager.install_credential(credential) {
            Ok(keyring) => {
                tracing::info!(node_id = %self.node.node_id, generation = keyring.generation(), "node credential {what}");
                if let Err(err) = credential::save(&self.work_dir, &keyring) {
                    tracing::warn!(error = %err, "cannot save the node credential: the next start needs the join token again");
                }
            }
            Err(err) => tracing::error!(node_id = %self.node.node_id, error = %err, "the RM sent an unusable node credential"),
        }
    }

    /// Registers with the RM, retrying with backoff until it accepts; `false` if cancelled.
    /// Uses the node's keys, or the join token when it has none or the RM refuses them.
    async fn register(&mut self, stop: &CancellationToken) -> bool {
        let mut backoff = REGISTER_BACKOFF_START;
        let mut with_join_token = self.manager.rm_bearer().is_none();
        loop {
            let request = RegisterNodeRequest {
                node_id: self.node.node_id.clone(),
                address: self.node.address.clone(),
                capacity: self.node.capacity,
                rack: self.node.rack.clone(),
                labels: self.node.labels.clone(),
                containers: self.manager.reportable_statuses(),
                isolation: self.node.isolation.clone(),
            };
            let bearer = match with_join_token {
                true => self.join_token.clone(),
                false => self.manager.rm_bearer(),
            };
            self.client.set_token(bearer);
            let result = tokio::select! {
                _ = stop.cancelled() => return false,
                result = self.client.register_node(&request) => result,
            };
            match result {
                Ok(reply) if !self.manager.observe_epoch(reply.epoch) => {
                    tracing::warn!(
                        epoch = reply.epoch,
                        current = self.manager.rm_epoch(),
                        "a replaced resource manager answered the registration; trying again"
                    );
                }
                Ok(reply) => {
                    self.rm_reachable();
                    self.install_credential(&reply.credential, "issued");
                    if reply.heartbeat_interval_ms > 0 {
                        self.interval = Duration::from_millis(reply.heartbeat_interval_ms);
                    }
                    self.manager.acknowledge(&reply.acked);
                    self.manager.kill_by_rm(&reply.kill);
                    tracing::info!(
                        node_id = %self.node.node_id,
                        epoch = reply.epoch,
                        capacity = %self.node.capacity,
                        containers = request.containers.len(),
                        heartbeat_interval_ms = self.interval.as_millis() as u64,
                        "registered with the RM"
                    );
                    return true;
                }
                Err(ClientError::Api { status: 403, message, .. }) if !with_join_token && self.join_token.is_some() => {
                    tracing::warn!(node_id = %self.node.node_id, reason = %message, "the RM refused the saved node credential; registering with the join token");
                    with_join_token = true;
                    continue;
                }
                Err(err) => self.rm_unreachable("registration", &err),
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
        }
    }

    fn rm_unreachable(&mut self, what: &str, err: &ClientError) {
        if self.in_outage {
            tracing::debug!(error = %err, "{what} failed again");
            return;
        }
        self.in_outage = true;
        if matches!(err, ClientError::Unreachable { .. }) {
            tracing::warn!(node_id = %self.node.node_id, error = %err, "{what} failed; retrying until the RM answers (logged once per outage)");
        } else {
            tracing::error!(node_id = %self.node.node_id, error = %err, "the RM refused the {what}; retrying (logged once)");
        }
    }

    fn rm_reachable(&mut self) {
        if self.in_outage {
            self.in_outage = false;
            tracing::info!(node_id = %self.node.node_id, "the RM answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::AppId;

    /// The RM's `cleanup_apps` reach the disk: the listed app's shuffle dir goes, others stay.
    #[tokio::test]
    async fn a_reply_listing_an_ended_app_deletes_its_shuffle_dir() {
        let work_dir = tempfile::tempdir().unwrap();
        let manager = crate::shuffle::api_tests::test_manager(work_dir.path());
        let ended = AppId { cluster_ts: 1, seq: 1 };
        let running = AppId { cluster_ts: 1, seq: 2 };
        for app_id in [ended, running] {
            let dir = manager.app_shuffle_dir(app_id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("m_1.index"), [0u8; 16]).unwrap();
        }
        let heartbeater = Heartbeater::new(
            RmClient::new(&["http://127.0.0.1:1".to_owned()], None),
            None,
            work_dir.path().to_owned(),
            manager.clone(),
            NodeDescription {
                node_id: NodeId("n1:8042".to_owned()),
                address: "n1:8042".to_owned(),
                capacity: Resources::new(1, 1024),
                rack: crate::DEFAULT_RACK.to_owned(),
                labels: Vec::new(),
                isolation: Default::default(),
            },
            Probe::new(work_dir.path().to_owned()),
            Duration::from_secs(1),
        );
        let reply = NodeHeartbeatReply {
            cleanup_apps: vec![ended],
            ..NodeHeartbeatReply::default()
        };
        assert_eq!(heartbeater.apply(&reply), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.app_shuffle_dir(ended).exists() {
            assert!(Instant::now() < deadline, "the ended app's shuffle dir is still there");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(manager.app_shuffle_dir(running).is_dir());
    }
}
