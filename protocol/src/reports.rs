//! What the public REST API answers: reports of apps, containers, nodes, the cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AppId, AppState, ContainerId, ContainerState, ExitReason, FinalStatus, JobKind, NodeId, NodeState, Resources};

/// `POST /v1/apps` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitReply {
    pub app_id: AppId,
}

/// One application, as `GET /v1/apps/{app_id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppReport {
    pub app_id: AppId,
    pub name: String,
    pub queue: String,
    pub user: String,
    pub kind: JobKind,
    pub priority: i32,
    pub state: AppState,
    pub final_status: FinalStatus,
    /// Why the app is where it is: waiting, failed, killed.
    pub diagnostics: String,
    /// 0.0 to 1.0, as the AM reports it.
    pub progress: f32,
    pub max_attempts: u32,
    pub attempts: Vec<AttemptReport>,
    /// Resources its live containers hold now.
    pub allocated: Resources,
    pub running_containers: u32,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// What the AM says of its job's stages and counters (MapReduce); absent for kinds that
    /// report none. Soft state: the AM sends it again with its next allocate after an RM restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<JobDetail>,
}

/// What an AM reports of its job with each allocate. The RM bounds it, stores it and serves
/// it as sent: it gives no field a meaning of its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    /// In execution order, e.g. `map` then `reduce`.
    #[serde(default)]
    pub stages: Vec<StageStatus>,
    /// Named totals, e.g. `map_input_records`.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Figures for the RM's `/metrics`, named `spindle_<kind>_…` after the app's job kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricFamily>,
    /// The framework's own sections, such as a stream job's `stream` ([`StreamDetail`]).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

/// The section a stream job's AM reports its pipeline in.
pub const STREAM_SECTION: &str = "stream";

impl JobDetail {
    /// Section `name`, if present and of type `T`.
    pub fn section<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        serde_json::from_value(self.sections.get(name)?.clone()).ok()
    }

    /// Sets section `name`.
    pub fn with_section(mut self, name: &str, value: &impl Serialize) -> Self {
        let value = serde_json::to_value(value).expect("report sections serialize");
        self.sections.insert(name.to_owned(), value);
        self
    }

    /// A stream job's pipeline, operators, instances and checkpoints.
    pub fn stream(&self) -> Option<StreamDetail> {
        self.section(STREAM_SECTION)
    }
}

/// One metric family an AM exposes through the RM's `/metrics` (Prometheus text format).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct MetricFamily {
    pub name: String,
    pub help: String,
    /// `gauge` or `counter`.
    pub kind: String,
    pub samples: Vec<MetricSample>,
}

/// One sample of a family: its labels (the RM adds `app`) and value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct MetricSample {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What a streaming job's AM reports of its pipeline (every figure per second is averaged over
/// the last report interval of about a second).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct StreamDetail {
    pub operators: Vec<OperatorStatus>,
    /// The latest complete checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Restarts from a checkpoint after failures so far.
    pub restarts: u32,
    /// A rescale in progress or the last one: its operator, from and to, and its pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescale: Option<RescaleStatus>,
    /// The last restart from a checkpoint: why, and how much of the job went back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<RestartStatus>,
    /// The savepoints asked of this app (those the RM still keeps), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<crate::SavepointStatus>,
}

/// One operator of a streaming job (fused transforms are listed with the operator they run in).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct OperatorStatus {
    pub name: String,
    pub kind: String,
    /// Instances running now.
    pub parallelism: u32,
    /// Instances asked for (differs from `parallelism` while rescaling).
    pub target_parallelism: u32,
    pub instances: Vec<InstanceStatus>,
    /// Records its instances took in since the job started, over every instance it ever had
    /// (carried in checkpoints across rescales, restarts and AM attempts: exact at each
    /// checkpoint; back to the checkpoint's figure after a restore from it).
    #[serde(default)]
    pub records_in: u64,
    /// Records it sent on since the job started, counted as `records_in` is.
    #[serde(default)]
    pub records_out: u64,
    /// Bytes of the records it took in, in the batch format they travel in.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes of the records it sent on.
    #[serde(default)]
    pub bytes_out: u64,
    /// Records dropped because the watermark had passed their window.
    #[serde(default)]
    pub late_records: u64,
    /// Records skipped because a field they need does not parse.
    #[serde(default)]
    pub bad_records: u64,
}

/// One instance of an operator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct InstanceStatus {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<ContainerId>,
    /// Key groups it owns, `[first, end)`, for keyed operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<(u32, u32)>,
    /// Records this instance took in since it started (the operator's totals span instances).
    pub records_in: u64,
    /// Records this instance sent on since it started.
    pub records_out: u64,
    pub records_in_per_s: f64,
    pub records_out_per_s: f64,
    /// Fraction of the last interval spent processing (DS2's "useful time").
    pub busy: f64,
    /// Fraction of the last interval spent waiting for downstream credit.
    pub backpressured: f64,
    pub state_bytes: u64,
    /// Sources: records (or messages) available but not read yet, where the source knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lag: Option<u64>,
}

/// A complete checkpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct CheckpointStatus {
    pub id: u64,
    pub completed_at_ms: u64,
    /// From trigger to the last acknowledgement.
    pub duration_ms: u64,
    pub size_bytes: u64,
}

/// A change of one operator's parallelism.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct RescaleStatus {
    pub operator: String,
    pub from: u32,
    pub to: u32,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Longest time any moved key group could not be processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
}

/// A restart from a checkpoint after a failure: the whole pipeline, or only the failed
/// instances' failover region (the instances they exchange records with, transitively) while
/// the rest of the job runs on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct RestartStatus {
    pub at_ms: u64,
    pub reason: String,
    /// Instances stopped and deployed again from the checkpoint.
    pub instances: u32,
    /// Instances the job ran: `instances` equals it when the whole pipeline restarted.
    pub of_instances: u32,
    /// The checkpoint they went back to (none: the job's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
}

/// One stage of a job: its tasks by state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct StageStatus {
    pub name: String,
    pub total: u32,
    pub running: u32,
    pub succeeded: u32,
}

/// Most stages and counters a `JobDetail` may carry (the RM refuses more).
pub const MAX_DETAIL_ENTRIES: usize = 64;

/// One AM attempt of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptReport {
    pub attempt: u32,
    pub am_container: Option<ContainerId>,
    pub node_id: Option<NodeId>,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub diagnostics: String,
}

/// One container, live or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerReport {
    pub container_id: ContainerId,
    pub node_id: NodeId,
    /// Where the node agent serves its API.
    pub node_address: String,
    pub resources: Resources,
    pub state: ContainerState,
    pub is_am: bool,
    pub exit_code: Option<i32>,
    pub exit_reason: Option<ExitReason>,
    pub diagnostics: String,
    pub allocated_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

/// One node agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeReport {
    pub node_id: NodeId,
    pub address: String,
    pub rack: String,
    pub labels: Vec<String>,
    pub state: NodeState,
    pub capacity: Resources,
    /// Resources granted to live containers on the node.
    pub used: Resources,
    pub containers: u32,
    pub usage: NodeUsage,
    pub health_report: String,
    pub last_heartbeat_ms: u64,
    /// Whose account containers run as on this node, and how limits are applied.
    #[serde(default)]
    pub isolation: crate::NodeIsolation,
    /// When it departed (became DECOMMISSIONED or LOST); absent while it is in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed_at_ms: Option<u64>,
    /// When the RM forgot it, `departed_node_expiry` after it departed: the report is its last
    /// state, from the RM's history (`GET /v1/nodes?all=true`, `GET /v1/nodes/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten_at_ms: Option<u64>,
}

/// What the node's own probe measures (as opposed to what the RM granted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeUsage {
    pub cpu_percent: f32,
    pub memory_used_mb: u64,
}

/// A resource manager's part in its group (several RMs on one PostgreSQL database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RmRole {
    /// Leads: schedules and answers the API.
    Active,
    /// Waits to take over; answers API calls with 307 to the active.
    Standby,
}

/// `GET /healthz` (no token needed): the RM is up, and which one leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// Always `ok`: the process answers.
    pub status: String,
    pub role: RmRole,
    /// The active RM's advertised URL, if one is known (this RM's own when active).
    pub active: Option<String>,
    /// The epoch the active RM leads in, if known.
    pub epoch: Option<u64>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterReport {
    /// Increases at every RM start; part of every container id.
    pub epoch: u64,
    pub started_at_ms: u64,
    pub store: String,
    pub capacity: Resources,
    pub used: Resources,
    pub available: Resources,
    pub nodes: BTreeMap<String, u32>,
    pub apps: BTreeMap<String, u32>,
    pub containers_running: u32,
}

/// One queue of the queue tree (`GET /v1/queues` answers the root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueReport {
    /// Dotted path from the root, e.g. `root.default`.
    pub name: String,
    /// Share of the parent's resources the queue is guaranteed, in percent.
    pub guaranteed_percent: f32,
    /// Share of the parent's resources the queue may use at most, in percent.
    pub maximum_percent: f32,
    /// Its guarantee and maximum in resources, for the cluster's current size.
    #[serde(default)]
    pub guaranteed: Resources,
    #[serde(default)]
    pub maximum: Resources,
    /// Resources its apps' live containers hold now.
    pub used: Resources,
    /// Resources its apps ask for and have not got yet (AM containers included).
    #[serde(default)]
    pub pending: Resources,
    /// Apps in the queue that have not ended.
    pub apps_running: u32,
    /// Leaf queues: the users with live apps here, and what each holds.
    #[serde(default)]
    pub users: Vec<QueueUserReport>,
    #[schema(no_recursion)]
    pub children: Vec<QueueReport>,
}

/// One user of a leaf queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueUserReport {
    pub user: String,
    pub used: Resources,
    pub pending: Resources,
    pub apps_running: u32,
}

/// `POST /v1/cluster/join-tokens` body: a token that lets new agents register until it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Seconds the token stays valid: 1 s to 30 days.
    pub ttl_s: u64,
}

/// The longest a join token may live: it lets its holder add nodes.
pub const MAX_JOIN_TOKEN_TTL_S: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenReply {
    /// Give it to agents in a file (`spindle node-agent --join-token-file`).
    pub token: String,
    pub expires_at_ms: u64,
}

/// `POST /v1/nodes/{node_id}/decommission` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecommissionRequest {
    /// How long running containers may go on before they are killed.
    #[serde(default = "default_decommission_timeout")]
    pub timeout_s: u64,
    /// Kill running containers now instead of letting them finish.
    #[serde(default)]
    pub force: bool,
}

fn default_decommission_timeout() -> u64 {
    300
}

/// `PUT /v1/apps/{app_id}/operators/{name}` body: the parallelism a streaming job's operator
/// should have. Declarative: the RM stores it in the job spec and the AM converges on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub parallelism: u32,
}

/// `PUT /v1/apps/{app_id}/operators/{name}` answer: the stored change (the AM rescales after).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScaleReply {
    pub app_id: AppId,
    pub operator: String,
    /// The parallelism now asked for.
    pub parallelism: u32,
    /// The parallelism asked for before this change.
    pub previous: u32,
}

/// `{"error": {"code", "message"}}`, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: one of `error_codes` (`already_running`, `draining`, …).
    pub code: String,
    /// For people: what was wrong and what to do.
    pub message: String,
}
