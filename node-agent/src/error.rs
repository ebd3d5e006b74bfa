//! The crate's one error type, and how each error becomes an HTTP answer.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spindle_protocol::{AppId, ContainerId, ErrorBody, ErrorDetail, TokenError, error_codes};

/// Everything that can go wrong in the agent: at start-up (returned by `run`) and per request
/// (turned into `{"error": {"code", "message"}}` with a fitting status).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent configuration: {0}")]
    Config(String),
    #[error("cgroup memory enforcement was requested but is unavailable: {0}. Run as root with a writable /sys/fs/cgroup, or use sampling")]
    CgroupUnavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token's Unix account cannot run containers here (unknown, root, below min_uid).
    #[error("cannot run the container as its user: {0}")]
    Account(#[from] crate::account::AccountError),
    #[error("container {0} is not known on this node")]
    ContainerNotFound(String),
    #[error("no {stream} log for container {container_id} on this node")]
    LogNotFound { container_id: ContainerId, stream: String },
    #[error(
        "the logs of container {container_id} were removed after the retention period: this node keeps a finished \
         container's files for {retention:?} (--log-retention-s)"
    )]
    LogsRemoved { container_id: ContainerId, retention: Duration },
    #[error(
        "no complete map output {output} of app {app_id} on this node: the map has not finished writing it \
         (its index is missing), it ran elsewhere, or the app's shuffle data was cleaned up"
    )]
    ShuffleOutputNotFound { app_id: AppId, output: String },
    #[error(
        "no route for {0}: the agent serves /healthz, /v1/containers[/{{id}}[/logs/{{stream}}]] and \
         /v1/shuffle/{{app_id}}/{{output_name}}/{{partition}}"
    )]
    UnknownRoute(String),
    #[error("container {0} was already launched on this node: container ids are single-use")]
    DuplicateContainer(ContainerId),
    #[error("node is decommissioning: it takes no new containers")]
    Draining,
    #[error("the node has not registered with the resource manager yet: it has no keys to check container tokens with")]
    NotRegistered,
    /// An RM bearer of an epoch older than one the agent has heard of: that RM has been
    /// replaced by a newer leader and must not launch or kill anything.
    #[error(
        "refused: the resource manager of epoch {epoch} sent this, but one of epoch {current} leads now \
         (the sender has been replaced)"
    )]
    StaleRm { epoch: u64, current: u64 },
    #[error("the request body is larger than the 1 MiB limit")]
    PayloadTooLarge,
}

impl AgentError {
    /// Wraps an I/O error with what the agent was doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// The code of the error body (`error_codes`), also the outcome label of a refused launch.
    pub(crate) fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AgentError::BadRequest(_) => (StatusCode::BAD_REQUEST, error_codes::BAD_REQUEST),
            AgentError::Account(_) => (StatusCode::BAD_REQUEST, error_codes::BAD_ACCOUNT),
            AgentError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, error_codes::UNAUTHORIZED),
            AgentError::Forbidden(_) | AgentError::Token(_) => (StatusCode::FORBIDDEN, error_codes::FORBIDDEN),
            AgentError::ContainerNotFound(_) => (StatusCode::NOT_FOUND, error_codes::CONTAINER_NOT_FOUND),
            AgentError::LogNotFound { .. } => (StatusCode::NOT_FOUND, error_codes::LOG_NOT_FOUND),
            AgentError::LogsRemoved { .. } => (StatusCode::NOT_FOUND, error_codes::LOGS_REMOVED),
            AgentError::ShuffleOutputNotFound { .. } => (StatusCode::NOT_FOUND, error_codes::SHUFFLE_OUTPUT_NOT_FOUND),
            AgentError::UnknownRoute(_) => (StatusCode::NOT_FOUND, error_codes::NOT_FOUND),
            AgentError::DuplicateContainer(_) => (StatusCode::CONFLICT, error_codes::ALREADY_RUNNING),
            AgentError::Draining => (StatusCode::CONFLICT, error_codes::DRAINING),
            AgentError::StaleRm { .. } => (StatusCode::CONFLICT, error_codes::STALE_EPOCH),
            AgentError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, error_codes::PAYLOAD_TOO_LARGE),
            AgentError::NotRegistered => (StatusCode::SERVICE_UNAVAILABLE, error_codes::NOT_REGISTERED),
            AgentError::Config(_) | AgentError::CgroupUnavailable(_) | AgentError::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, error_codes::INTERNAL)
            }
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed inside the agent");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::{AppId, NodeId};

    #[test]
    fn errors_map_to_statuses_and_codes() {
        let container = ContainerId {
            app: AppId { cluster_ts: 1, seq: 1 },
            attempt: 1,
            epoch: 1,
            seq: 1,
        };
        let cases = [
            (AgentError::BadRequest("x".into()), 400, "bad_request"),
            (AgentError::Unauthorized("x".into()), 401, "unauthorized"),
            (AgentError::Token(TokenError::BadSignature), 403, "forbidden"),
            (
                AgentError::Token(TokenError::WrongNode {
                    expected: NodeId("a:1".into()),
                    actual: NodeId("b:1".into()),
                }),
                403,
                "forbidden",
            ),
            (AgentError::ContainerNotFound(container.to_string()), 404, "container_not_found"),
            (
                AgentError::LogsRemoved {
                    container_id: container,
                    retention: Duration::from_secs(60),
                },
                404,
                "logs_removed",
            ),
            (
                AgentError::ShuffleOutputNotFound {
                    app_id: container.app,
                    output: "m_1".into(),
                },
                404,
                "shuffle_output_not_found",
            ),
            (AgentError::UnknownRoute("/x".into()), 404, "not_found"),
            (AgentError::DuplicateContainer(container), 409, "already_running"),
            (AgentError::Draining, 409, "draining"),
            (AgentError::StaleRm { epoch: 1, current: 2 }, 409, "stale_epoch"),
            (AgentError::NotRegistered, 503, "not_registered"),
            (AgentError::PayloadTooLarge, 413, "payload_too_large"),
        ];
        for (error, status, code) in cases {
            let (actual_status, actual_code) = error.status_and_code();
            assert_eq!(actual_status.as_u16(), status, "{error}");
            assert_eq!(actual_code, code, "{error}");
        }
        assert!(AgentError::Draining.to_string().contains("node is decommissioning"));
    }
}
