//! The fake agents' HTTP API, which only the RM calls: `POST /nodes/{index}/v1/containers`
//! launches an AM container on agent `index` (its address is `host:port/nodes/{index}`), as
//! the real agent's `POST /v1/containers` does, and starts the fake AM that "runs" in it.
//! Task containers are launched by the fake AMs in process (`am.rs`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use spindle_protocol::{LaunchRequest, TokenError, env, error_codes};

use super::agents::{Fleet, LaunchRefused};
use super::ams::AmPool;
use super::containers::LaunchKind;
use super::ledger::Ledger;
use super::stats::{Count, Stats};

/// What the launch handler needs.
pub struct LaunchApi {
    pub fleet: Arc<Fleet>,
    pub pool: Arc<AmPool>,
    pub stats: Arc<Stats>,
    pub ledger: Arc<Ledger>,
}

pub fn router(api: Arc<LaunchApi>) -> Router {
    Router::new().route("/nodes/{index}/v1/containers", post(launch_am)).with_state(api)
}

async fn launch_am(
    State(api): State<Arc<LaunchApi>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    Json(request): Json<LaunchRequest>,
) -> Response {
    let Some(agent) = api.fleet.agents.get(index) else {
        return error(StatusCode::NOT_FOUND, "not_found", format!("no fake agent {index}"));
    };
    // As the real agent: the launch comes with the RM's bearer for this node, signed by the
    // RM's key (which the node's credential names).
    let rm_bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !rm_bearer.is_some_and(|rm_bearer| agent.verifies_rm_bearer(rm_bearer)) {
        api.ledger.violation(format!(
            "{}: an AM launch came without a valid RM bearer for this node",
            agent.node_id
        ));
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no valid RM bearer for this node".to_owned(),
        );
    }
    let container_id = request.token.container_id;
    let stop = api.pool.stop.child_token();
    match agent.launch(&request.token, LaunchKind::Am(stop.clone()), &api.ledger) {
        Ok(status) => {
            api.stats.inc(Count::AmLaunches);
            let am_token = request.launch.env.get(env::AM_TOKEN).cloned();
            api.pool.start_am(container_id, index, am_token, stop);
            (StatusCode::CREATED, Json(status)).into_response()
        }
        // The RM launches again what it is not sure was launched (after a restart).
        Err(refused @ LaunchRefused::AlreadyRunning(_)) => error(StatusCode::CONFLICT, error_codes::ALREADY_RUNNING, refused.to_string()),
        Err(refused) => {
            api.stats.inc(Count::LaunchErrors);
            if !matches!(
                refused,
                LaunchRefused::BadToken(TokenError::Expired { .. }) | LaunchRefused::NotRegistered
            ) {
                api.ledger
                    .violation(format!("{} refused the AM launch of {container_id}: {refused}", agent.node_id));
            }
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", refused.to_string())
        }
    }
}

/// The error body of every Spindle API.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}
