//! The internal protocol: agents (register, heartbeat) and AMs (register, allocate, finish).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use spindle_protocol::{
    AllocateReply, AllocateRequest, FinishAmRequest, NodeHeartbeatReply, NodeHeartbeatRequest, RegisterAmReply, RegisterAmRequest,
    RegisterNodeReply, RegisterNodeRequest, now_ms,
};

use super::extract::{Agent, AmToken, ApiJson};
use crate::error::ApiError;
use crate::service::ResourceManager;

type Rm = State<Arc<ResourceManager>>;

pub async fn register_node(
    State(rm): Rm,
    agent: Agent,
    ApiJson(request): ApiJson<RegisterNodeRequest>,
) -> Result<Json<RegisterNodeReply>, ApiError> {
    agent.check_node(&request.node_id, true)?;
    let node_id = request.node_id.clone();
    let containers = request.containers.len();
    let reply = rm.mutate(|cluster, now| cluster.register_node(request, now)).await??;
    tracing::info!(node = %node_id, containers, generation = reply.credential.current, "node registered");
    Ok(Json(reply))
}

pub async fn node_heartbeat(
    State(rm): Rm,
    agent: Agent,
    ApiJson(request): ApiJson<NodeHeartbeatRequest>,
) -> Result<Json<NodeHeartbeatReply>, ApiError> {
    agent.check_node(&request.node_id, false)?;
    rm.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    let node_id = request.node_id.clone();
    let mut reply = rm.mutate(|cluster, now| cluster.node_heartbeat(request, now)).await?;
    // Rotation: an agent behind the RM's generation gets the new keys.
    let now = now_ms();
    if agent
        .generation()
        .is_some_and(|generation| generation < rm.authority.generation_at(now))
    {
        tracing::info!(node = %node_id, "rotating the node's credential");
        reply.credential = Some(rm.authority.credential(&node_id, now));
    }
    Ok(Json(reply))
}

pub async fn register_am(
    State(rm): Rm,
    token: AmToken,
    ApiJson(request): ApiJson<RegisterAmRequest>,
) -> Result<Json<RegisterAmReply>, ApiError> {
    token.check(&rm, request.app_id, request.attempt)?;
    let reply = rm.mutate(|cluster, now| cluster.register_am(&request, now)).await??;
    tracing::info!(app = %request.app_id, attempt = request.attempt, "application master registered");
    Ok(Json(reply))
}

pub async fn allocate(State(rm): Rm, token: AmToken, ApiJson(request): ApiJson<AllocateRequest>) -> Result<Json<AllocateReply>, ApiError> {
    token.check(&rm, request.app_id, request.attempt)?;
    Ok(Json(rm.allocate(request).await?))
}

pub async fn finish_am(
    State(rm): Rm,
    token: AmToken,
    ApiJson(request): ApiJson<FinishAmRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    token.check(&rm, request.app_id, request.attempt)?;
    rm.mutate(|cluster, now| cluster.finish_am(&request, now)).await??;
    tracing::info!(app = %request.app_id, status = ?request.final_status, "application finished");
    Ok(Json(serde_json::json!({})))
}
