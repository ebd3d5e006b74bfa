//! `POST /v1/cluster/join-tokens`: how an admin lets new node agents in without handing out
//! the cluster secret.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use spindle_protocol::{ErrorBody, JoinTokenReply, JoinTokenRequest, MAX_JOIN_TOKEN_TTL_S, now_ms};

use super::extract::{ApiJson, User};
use crate::error::ApiError;
use crate::service::ResourceManager;

/// Makes a join token (cluster admins only).
#[utoipa::path(post, path = "/v1/cluster/join-tokens", tag = "nodes", request_body = JoinTokenRequest,
    responses((status = 200, body = JoinTokenReply), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_join_token(
    State(rm): State<Arc<ResourceManager>>,
    User(caller): User,
    ApiJson(request): ApiJson<JoinTokenRequest>,
) -> Result<Json<JoinTokenReply>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!(
            "user {} may not make join tokens: only cluster admins may add nodes",
            caller.user
        )));
    }
    if request.ttl_s == 0 || request.ttl_s > MAX_JOIN_TOKEN_TTL_S {
        return Err(ApiError::bad_request(format!(
            "ttl_s: {} is out of range: a join token lives 1 s to {MAX_JOIN_TOKEN_TTL_S} s (30 days)",
            request.ttl_s
        )));
    }
    let expires_at_ms = now_ms() + request.ttl_s * 1000;
    tracing::info!(user = %caller.user, expires_at_ms, "join token issued");
    Ok(Json(JoinTokenReply {
        token: rm.authority.join_token(expires_at_ms),
        expires_at_ms,
    }))
}
