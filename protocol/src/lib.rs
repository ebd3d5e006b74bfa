//! Wire types shared by every Spindle role (ids, resources, job specs, states, requests and
//! replies), the signed tokens, and a typed HTTP client. No server code lives here.

mod account;
mod client;
mod controls;
mod credential;
mod data_url;
pub mod error_codes;
mod ids;
mod internal;
mod job;
mod mapreduce;
mod reports;
mod resources;
mod savepoints;
mod states;
mod stream;
mod stream_validate;
pub mod tls;
mod token;

pub use account::{NodeIsolation, RunAs, check_account_name};
pub use client::{AgentClient, AppFilter, ClientError, IDEMPOTENCY_KEY_HEADER, LogOptions, RmClient};
pub use controls::{ControlError, OPERATOR_CONTROL_PREFIX, operator_control_key};
pub use credential::{
    AgentLogin, BadCredential, CredentialError, GenerationKey, NodeAuthority, NodeCredential, NodeKeyring, RM_BEARER_VALIDITY,
};
pub use data_url::{DataUrl, UrlError};
pub use ids::{AppId, ContainerId, IdParseError, NodeId};
pub use internal::*;
pub use job::{CustomSpec, JobKind, JobSpec, ShellSpec, SpecError, validate_resources};
pub use mapreduce::{Builtin, MapReduceSpec, Stage, TaskFunction};
pub use reports::*;
pub use resources::Resources;
pub use savepoints::{
    SAVEPOINT_REQUEST_KIND, SavepointReply, SavepointRequest, SavepointState, SavepointStatus, parse_savepoint_request, savepoint_location,
    savepoint_request_key, storage_path,
};
pub use states::{AppState, ContainerState, ExitReason, FinalStatus, NodeState, wire_name};
pub use stream::{
    Aggregate, AutoscaleSpec, DEFAULT_KEY_GROUPS, FailoverStrategy, MAX_KEY_GROUPS, MAX_PARALLELISM, OperatorKind, OperatorSpec, StreamSpec,
};
pub use stream_validate::MAX_OPERATORS;
pub use token::{ClusterSecret, ContainerGrant, ContainerToken, TokenError, constant_time_eq};

/// Environment variables every container gets from its agent.
pub mod env {
    /// Where an AM finds its job spec: a file in its working dir the agent wrote from the
    /// launch (a spec is too large for one environment variable).
    pub const JOB_SPEC_FILE: &str = "SPINDLE_JOB_SPEC_FILE";
    pub const APP_ID: &str = "SPINDLE_APP_ID";
    pub const CONTAINER_ID: &str = "SPINDLE_CONTAINER_ID";
    pub const ATTEMPT: &str = "SPINDLE_ATTEMPT";
    /// Comma-separated RM URLs.
    pub const RM: &str = "SPINDLE_RM";
    pub const NODE_ID: &str = "SPINDLE_NODE_ID";
    /// Memory limit of the container, so a task can size its buffers.
    pub const MEMORY_MB: &str = "SPINDLE_MEMORY_MB";
    pub const VCORES: &str = "SPINDLE_VCORES";
    /// Only in AM containers: the bearer token for the AM protocol.
    pub const AM_TOKEN: &str = "SPINDLE_AM_TOKEN";
    /// Only in AM containers: the job spec as JSON.
    pub const JOB_SPEC: &str = "SPINDLE_JOB_SPEC";
    /// Only in shell job containers: which of the job's N tasks this is, from 0.
    pub const TASK_INDEX: &str = "SPINDLE_TASK_INDEX";
    /// Where the app's tasks write map output on this node (`<work dir>/shuffle/<app_id>`):
    /// outside the container's own dir, so it outlives the container and the agent serves it.
    pub const SHUFFLE_DIR: &str = "SPINDLE_SHUFFLE_DIR";
    /// The bearer token that reads the app's map output from any agent's `/v1/shuffle/…`.
    pub const SHUFFLE_TOKEN: &str = "SPINDLE_SHUFFLE_TOKEN";
    /// On a TLS cluster: the CA every daemon's certificate is signed by (`crate::tls`). The
    /// `spindle` binary trusts it at start, in containers too.
    pub const CA_FILE: &str = "SPINDLE_CA_FILE";
}

/// Milliseconds since the Unix epoch: the time unit of every timestamp on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
