//! The RM's errors, and the one place they become HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spindle_protocol::{ErrorBody, ErrorDetail, error_codes};

use crate::cluster::AppError;
use crate::cluster::NodeError;
use crate::cluster::ReloadRefused;
use crate::config::ConfigError;
use crate::store::StoreError;

/// Everything that can go wrong in the RM.
#[derive(Debug, thiserror::Error)]
pub enum RmError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(spindle_protocol::tls::TlsFileError),
    #[error("the resource manager stopped because a store write failed ({0}); restart it to recover from the store")]
    Stopped(String),
    #[error("queue reload refused: {0}")]
    Reload(#[from] ReloadError),
    /// A change applied in memory whose commit failed (or never ran: the term ended first):
    /// its caller is told it was not saved.
    #[error("the resource manager could not save the change and is stopping ({0}); retry against a restarted RM")]
    NotSaved(String),
}

/// Why a queue reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the resource manager was started without a config file (`--config FILE`; for `spindle local`, `--rm-config FILE`): there is nothing to reload"
    )]
    NoConfigFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Refused(#[from] ReloadRefused),
}

/// An error answer: status, stable code, message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// An answer with the generic code of its status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let code = match status {
            StatusCode::BAD_REQUEST => error_codes::BAD_REQUEST,
            StatusCode::UNAUTHORIZED => error_codes::UNAUTHORIZED,
            StatusCode::FORBIDDEN => error_codes::FORBIDDEN,
            StatusCode::NOT_FOUND => error_codes::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED => error_codes::METHOD_NOT_ALLOWED,
            StatusCode::CONFLICT => error_codes::CONFLICT,
            StatusCode::PAYLOAD_TOO_LARGE => error_codes::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => error_codes::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::TOO_MANY_REQUESTS => error_codes::TOO_MANY_REQUESTS,
            StatusCode::BAD_GATEWAY => error_codes::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE => error_codes::UNAVAILABLE,
            _ => error_codes::INTERNAL,
        };
        Self::with_code(status, code, message)
    }

    /// An answer with a specific code (`spindle_protocol::error_codes`).
    pub fn with_code(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> ApiError {
        let (status, code) = match &err {
            AppError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, error_codes::INVALID_SPEC),
            AppError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, error_codes::INVALID_REQUEST),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, error_codes::APP_NOT_FOUND),
            AppError::ContainerNotFound(_) => (StatusCode::NOT_FOUND, error_codes::CONTAINER_NOT_FOUND),
            AppError::ControlTargetNotFound(_) => (StatusCode::NOT_FOUND, error_codes::CONTROL_TARGET_NOT_FOUND),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, error_codes::FORBIDDEN),
            AppError::Conflict(_) => (StatusCode::CONFLICT, error_codes::CONFLICT),
        };
        let message = match &err {
            AppError::InvalidSpec(spec) => format!("invalid job spec: {spec}"),
            other => other.to_string(),
        };
        ApiError::with_code(status, code, message)
    }
}

impl From<NodeError> for ApiError {
    fn from(err: NodeError) -> ApiError {
        let (status, code) = match &err {
            NodeError::NotFound(_) => (StatusCode::NOT_FOUND, error_codes::NODE_NOT_FOUND),
            NodeError::Conflict { .. } => (StatusCode::CONFLICT, error_codes::CONFLICT),
            NodeError::Invalid { .. } => (StatusCode::BAD_REQUEST, error_codes::INVALID_REQUEST),
        };
        ApiError::with_code(status, code, err.to_string())
    }
}

impl From<crate::app_history::HistoryError> for ApiError {
    fn from(err: crate::app_history::HistoryError) -> ApiError {
        match err {
            crate::app_history::HistoryError::App(app) => app.into(),
            store @ crate::app_history::HistoryError::Store(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, store.to_string()),
        }
    }
}

impl From<RmError> for ApiError {
    fn from(err: RmError) -> ApiError {
        match err {
            RmError::App(app) => app.into(),
            RmError::Node(node) => node.into(),
            RmError::Reload(ReloadError::Config(config)) => ApiError::bad_request(format!("queue reload refused: {config}")),
            RmError::Reload(reload) => ApiError::new(StatusCode::CONFLICT, format!("queue reload refused: {reload}")),
            RmError::Store(store) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the resource manager could not save the change and is stopping ({store}); retry against a restarted RM"),
            ),
            not_saved @ RmError::NotSaved(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, not_saved.to_string()),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}
