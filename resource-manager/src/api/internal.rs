//! The internal protocol: agents (register, heartbeat) and AMs (register, allocate, finish).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use spindle_protocol::{
    AllocateReply, AllocateRequest, FinishAmRequest, NodeHeartbeatReply, NodeHeartbeatRequest, NodeState, RegisterAmReply,
    RegisterAmRequest, RegisterNodeReply, RegisterNodeRequest, now_ms,
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
    if agent.generation().is_none() {
        refuse_join_over_live_node(&rm, &request.node_id).await?;
    }
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
    rm.metrics.heartbeats.inc();
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

/// A join token adds nodes; it does not take over one that is alive (its address, and so its
/// launches, would move to whoever holds the token). Once the node is LOST or decommissioned,
/// its id is free again: an agent that lost its credential file gets back in after
/// `node_expiry`.
async fn refuse_join_over_live_node(rm: &ResourceManager, node_id: &spindle_protocol::NodeId) -> Result<(), ApiError> {
    let state = rm.read(|cluster| cluster.node_report(node_id)).await.map(|node| node.state);
    match state {
        Some(state @ (NodeState::Running | NodeState::Unhealthy | NodeState::Decommissioning)) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "node {node_id} is registered and {}: a join token cannot take it over; its agent uses its node \
                 credential, or registers again once the node is LOST",
                format!("{state:?}").to_uppercase()
            ),
        )),
        _ => Ok(()),
    }
}
