//! Request extractors: JSON bodies whose errors name the bad field, and the three kinds of
//! callers (users with API tokens, agents with a join token or their node credential, AMs with their AM token).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use spindle_protocol::{AgentLogin, NodeId, now_ms};

use crate::cluster::Caller;
use crate::error::ApiError;
use crate::service::ResourceManager;

/// A JSON body. Errors say where in the document the problem is (`shell.vcores: …`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "request body is too large: the limit is set by `max_body_bytes` in the RM config",
                )
            } else {
                ApiError::new(status, rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("request body is empty: expected a JSON document"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid field `{path}`: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::bad_request(format!("malformed JSON: {err}")))?;
    Ok(value)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header: pass --token or set SPINDLE_TOKEN"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// A user of the public API, from their bearer token.
pub struct User(pub Caller);

impl FromRequestParts<Arc<ResourceManager>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, rm: &Arc<ResourceManager>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        rm.config
            .users
            .iter()
            .find(|user| spindle_protocol::constant_time_eq(user.token.as_bytes(), token.as_bytes()))
            .map(|user| {
                User(Caller {
                    user: user.name.clone(),
                    admin: user.admin,
                    unix_user: rm.config.unix_account(user),
                })
            })
            .ok_or_else(|| ApiError::unauthorized("the API token is not valid for this cluster: check --token / SPINDLE_TOKEN"))
    }
}

/// A node agent: with a join token (registration only) or its node credential.
pub struct Agent(pub AgentLogin);

impl FromRequestParts<Arc<ResourceManager>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, rm: &Arc<ResourceManager>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        rm.authority
            .authenticate(token, now_ms())
            .map(Agent)
            .map_err(|err| ApiError::forbidden(err.to_string()))
    }
}

impl Agent {
    /// Admits the agent as `node_id`: its own node credential, or (`join_ok`) a join token.
    pub fn check_node(&self, node_id: &NodeId, join_ok: bool) -> Result<(), ApiError> {
        match &self.0 {
            AgentLogin::Join if join_ok => Ok(()),
            AgentLogin::Join => Err(ApiError::forbidden(
                "a join token only registers a node; heartbeats need the node credential the registration returned",
            )),
            AgentLogin::Node { node_id: own, .. } if own == node_id => Ok(()),
            AgentLogin::Node { node_id: own, .. } => {
                Err(ApiError::forbidden(format!("the node credential is for node {own}, not {node_id}")))
            }
        }
    }

    /// The generation of the agent's keys (a join token has none).
    pub fn generation(&self) -> Option<u64> {
        match &self.0 {
            AgentLogin::Join => None,
            AgentLogin::Node { generation, .. } => Some(*generation),
        }
    }
}

/// An AM's bearer token; checked against the app and attempt named in the body.
pub struct AmToken(pub String);

impl FromRequestParts<Arc<ResourceManager>> for AmToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _rm: &Arc<ResourceManager>) -> Result<Self, Self::Rejection> {
        bearer(parts).map(|token| AmToken(token.to_owned()))
    }
}

impl AmToken {
    pub fn check(&self, rm: &ResourceManager, app_id: spindle_protocol::AppId, attempt: u32) -> Result<(), ApiError> {
        if rm.authority.secret().verify_am_token(app_id, attempt, &self.0) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the AM token is not valid for attempt {attempt} of {app_id}"
            )))
        }
    }
}
