//! The internal protocol under `/v1/internal/…`: agent ↔ RM and AM ↔ RM, and AM → agent launches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AppId, ContainerId, ContainerState, ContainerToken, ExitReason, FinalStatus, NodeId, NodeUsage, Resources};

/// A container as its node agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerStatus {
    pub container_id: ContainerId,
    /// `RUNNING` or `COMPLETE`.
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    pub exit_reason: Option<ExitReason>,
    pub diagnostics: String,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

/// Agent → RM, once at start and again whenever the RM asks it to (after an RM restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterNodeRequest {
    pub node_id: NodeId,
    /// `host:port` of the agent's API.
    pub address: String,
    pub capacity: Resources,
    pub rack: String,
    pub labels: Vec<String>,
    /// Containers it still runs, and those that ended and the RM has not yet acknowledged.
    pub containers: Vec<ContainerStatus>,
    /// Whose account containers run as and how their limits are applied.
    #[serde(default)]
    pub isolation: crate::NodeIsolation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterNodeReply {
    pub epoch: u64,
    pub heartbeat_interval_ms: u64,
    /// Containers it reported that the RM does not know or has given up on: kill them.
    pub kill: Vec<ContainerId>,
    /// Completed containers whose end the RM has recorded: stop reporting them.
    pub acked: Vec<ContainerId>,
    /// The node's credential: the agent uses it instead of its join token from now on.
    pub credential: crate::NodeCredential,
}

/// Agent → RM every heartbeat interval, and at once whenever a container starts or ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeHeartbeatRequest {
    pub node_id: NodeId,
    pub usage: NodeUsage,
    pub healthy: bool,
    pub health_report: String,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct NodeHeartbeatReply {
    /// The epoch of the RM that answers: an agent ignores replies of an RM older than one it
    /// has heard of (a replaced leader).
    #[serde(default)]
    pub epoch: u64,
    pub kill: Vec<ContainerId>,
    pub acked: Vec<ContainerId>,
    /// Decommissioning: take no new containers.
    pub drain: bool,
    /// Decommissioned (or refused): stop the agent.
    pub shutdown: bool,
    /// The RM does not know this node (it restarted, or declared it LOST): register again.
    pub resync: bool,
    /// Apps that ended and have no container left on this node: delete their shuffle data
    /// (`<work dir>/shuffle/<app_id>`). Repeated in a few replies; deleting is idempotent.
    #[serde(default)]
    pub cleanup_apps: Vec<AppId>,
    /// New keys, when the node's credential is of an older generation than the RM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::NodeCredential>,
}

/// AM → RM when the AM starts, and again after an RM restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterAmRequest {
    pub app_id: AppId,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterAmReply {
    pub queue: String,
    /// The largest container any live node can hold.
    pub max_container: Resources,
    /// Live containers of this attempt the RM knows of (non-empty after an RM restart).
    pub live_containers: Vec<ContainerId>,
}

/// Some containers of one size, with locality preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceAsk {
    /// Lower numbers are served first among one app's asks.
    #[serde(default)]
    pub priority: i32,
    pub resources: Resources,
    /// How many containers of this shape the AM wants now, beyond those it has been given.
    /// The number is absolute: each allocate replaces the previous one.
    pub count: u32,
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    #[serde(default)]
    pub racks: Vec<String>,
    /// A node label the containers require (they run only on nodes carrying it, and only if
    /// the app's queue may use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// AM → RM: the asks, releases and progress; long-polls for grants and completions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AllocateRequest {
    pub app_id: AppId,
    pub attempt: u32,
    pub asks: Vec<ResourceAsk>,
    pub releases: Vec<ContainerId>,
    pub progress: f32,
    /// Answer at once if anything is new, else wait up to this long for news.
    pub wait_ms: u64,
    /// The `response_id` of the last reply the AM received (`Some(0)` before the first). If
    /// the RM's last reply has the next id, that reply was lost on the way: the RM sends it
    /// again instead of new news, so no grant or completion is lost (YARN's responseId). An
    /// AM that sends none gets no such replays.
    #[serde(default)]
    pub response_id: Option<u64>,
    /// The job's stages and counters, shown in its app report; `None` keeps the last ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<crate::JobDetail>,
}

/// A container granted to an AM, with the token the node agent will ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub container_id: ContainerId,
    pub node_id: NodeId,
    pub node_address: String,
    pub resources: Resources,
    pub token: ContainerToken,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct AllocateReply {
    pub allocated: Vec<Allocation>,
    pub completed: Vec<ContainerStatus>,
    /// Containers the RM will take back after a grace period.
    pub preempt: Vec<ContainerId>,
    /// What the app could still get now.
    pub headroom: Resources,
    /// The app was killed or this attempt is no longer current: stop.
    pub shutdown: bool,
    /// Numbers the replies to one attempt, from 1; the AM sends back the last one it got.
    #[serde(default)]
    pub response_id: u64,
    /// The app's controls as the RM stores them (key → value, set by users through routes such
    /// as `PUT /v1/apps/{app_id}/operators/{name}`, which sets `operators/{name}`). Sent in
    /// every reply so an AM converges on them, even after missing a reply or restarting. The
    /// RM stores and forwards them; only the AM's framework gives them meaning.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub controls: BTreeMap<String, serde_json::Value>,
}

/// AM → RM at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinishAmRequest {
    pub app_id: AppId,
    pub attempt: u32,
    pub final_status: FinalStatus,
    pub diagnostics: String,
}

/// What to run in a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// argv. A first element `spindle` means the agent's own binary.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files the agent writes into the container's working dir before it starts (name →
    /// content, mode 0600, owned by the container's account): data too large for the
    /// environment, such as an AM's job spec. Names are plain file names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// AM (or RM, for AM containers) → agent `POST /v1/containers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub token: ContainerToken,
    pub launch: LaunchSpec,
}
