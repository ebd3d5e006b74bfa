//! The stable, machine-readable `code` of every error answer the RM and the agents send
//! (`{"error": {"code", "message"}}`). Callers decide on codes, never on message text, which is
//! for people and may change. A code names the reason, not the HTTP status: one status may carry
//! several codes (409 `already_running`, `draining`, `stale_epoch`, `conflict`).

// Generic, by status, for answers with no more specific reason.
pub const BAD_REQUEST: &str = "bad_request";
pub const UNAUTHORIZED: &str = "unauthorized";
pub const FORBIDDEN: &str = "forbidden";
pub const NOT_FOUND: &str = "not_found";
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
pub const CONFLICT: &str = "conflict";
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
pub const BAD_GATEWAY: &str = "bad_gateway";
pub const UNAVAILABLE: &str = "unavailable";
pub const INTERNAL: &str = "internal";

// The RM.
/// A job spec that parsed but is not valid: the message names the field (400). A body that is
/// not a job spec document at all (malformed JSON, a field of the wrong type, an unknown field
/// or kind) is `bad_request`.
pub const INVALID_SPEC: &str = "invalid_spec";
/// A request that is not a job spec named a bad field (400).
pub const INVALID_REQUEST: &str = "invalid_request";
pub const APP_NOT_FOUND: &str = "app_not_found";
pub const CONTAINER_NOT_FOUND: &str = "container_not_found";
pub const NODE_NOT_FOUND: &str = "node_not_found";
/// An app control names nothing the app has, such as an unknown operator (404).
pub const CONTROL_TARGET_NOT_FOUND: &str = "control_target_not_found";
/// A standby RM answers instead of the active one (307 or 503).
pub const STANDBY: &str = "standby";
/// No RM is active right now (503).
pub const NO_ACTIVE_RM: &str = "no_active_rm";

// The node agent.
/// The container id was launched on this node before: ids are single-use (409).
pub const ALREADY_RUNNING: &str = "already_running";
/// The node is decommissioning and takes no new containers (409).
pub const DRAINING: &str = "draining";
/// An RM of an older epoch sent this: a newer leader has replaced it (409).
pub const STALE_EPOCH: &str = "stale_epoch";
/// The agent has not registered yet and cannot check container tokens (503).
pub const NOT_REGISTERED: &str = "not_registered";
/// The token's Unix account cannot run containers on this node (400).
pub const BAD_ACCOUNT: &str = "bad_account";
pub const LOG_NOT_FOUND: &str = "log_not_found";
/// A finished container's logs were deleted after the node's retention period (404).
pub const LOGS_REMOVED: &str = "logs_removed";
pub const SHUFFLE_OUTPUT_NOT_FOUND: &str = "shuffle_output_not_found";
