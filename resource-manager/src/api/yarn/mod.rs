//! YARN REST compatibility: the documented subset of Hadoop's ResourceManager REST API
//! (`/ws/v1/cluster/...`) with Hadoop's JSON shapes and field names, over the same cluster state
//! and the same bearer tokens as `/v1`, so existing YARN clients and monitoring tools work
//! unchanged. A route or parameter outside the subset answers 501 naming it. What is mapped how:
//! resource-manager/README.md, "YARN REST compatibility".

mod shapes;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use spindle_protocol::{AppId, AppState, JobSpec, NodeState, now_ms};

use super::extract::{ApiJson, User};
use super::public::parse_app_id;
use crate::cluster::{AppError, AppQuery};
use crate::error::ApiError;
use crate::service::ResourceManager;

type Rm = State<Arc<ResourceManager>>;

/// Most apps one list answers (YARN's own default is all of them).
const MAX_APPS: usize = 10_000;

pub fn routes() -> Router<Arc<ResourceManager>> {
    Router::new()
        // What YARN clients probe to find the active RM.
        .route(
            "/cluster",
            get(|_user: User| async { "Spindle ResourceManager: YARN REST at /ws/v1/cluster" }),
        )
        .route("/ws/v1/cluster", get(info))
        .route("/ws/v1/cluster/info", get(info))
        .route("/ws/v1/cluster/metrics", get(metrics))
        .route("/ws/v1/cluster/scheduler", get(scheduler))
        .route("/ws/v1/cluster/apps", get(apps).post(submit))
        .route("/ws/v1/cluster/apps/new-application", post(new_application))
        .route("/ws/v1/cluster/apps/{app_id}", get(app))
        .route("/ws/v1/cluster/apps/{app_id}/state", get(app_state).put(set_app_state))
        .route("/ws/v1/cluster/apps/{app_id}/appattempts", get(attempts))
        .route("/ws/v1/cluster/nodes", get(nodes))
        .route("/ws/v1/cluster/nodes/{node_id}", get(node))
        .route("/ws/v1/{*rest}", axum::routing::any(not_implemented))
}

/// Any other YARN route: named in the answer, with what is supported.
async fn not_implemented(Path(rest): Path<String>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "Spindle does not implement /ws/v1/{rest} of YARN's REST API; supported: cluster, cluster/info, cluster/metrics, \
             cluster/scheduler, cluster/apps (GET, POST), cluster/apps/new-application, cluster/apps/{{id}}, \
             cluster/apps/{{id}}/state (GET, PUT), cluster/apps/{{id}}/appattempts, cluster/nodes, cluster/nodes/{{id}}"
        ),
    )
}

async fn info(State(rm): Rm, _user: User) -> Json<Value> {
    Json(shapes::cluster_info(
        &rm.read(|cluster| cluster.cluster_report(String::new())).await,
    ))
}

async fn metrics(State(rm): Rm, _user: User) -> Json<Value> {
    Json(shapes::cluster_metrics(
        &rm.read(|cluster| cluster.cluster_report(String::new())).await,
    ))
}

async fn scheduler(State(rm): Rm, _user: User) -> Json<Value> {
    Json(shapes::scheduler(&rm.read(|cluster| cluster.queue_report()).await))
}

/// `?states=RUNNING,ACCEPTED&state=…&queue=…&user=…&limit=…&finalStatus=…`.
async fn apps(State(rm): Rm, User(caller): User, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let mut query = AppQuery {
        limit: MAX_APPS,
        ..AppQuery::default()
    };
    let mut states: Vec<AppState> = Vec::new();
    let mut final_status = None;
    for (key, value) in &params {
        match key.as_str() {
            "states" | "state" => {
                for state in value.split(',').filter(|state| !state.trim().is_empty()) {
                    states.push(
                        state
                            .trim()
                            .to_uppercase()
                            .parse()
                            .map_err(|err| ApiError::bad_request(format!("{key}: {err}")))?,
                    );
                }
            }
            "queue" => query.queue = Some(value.clone()),
            "user" => query.user = Some(value.clone()),
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=MAX_APPS).contains(limit))
                    .ok_or_else(|| ApiError::bad_request(format!("limit: must be 1 to {MAX_APPS}, not `{value}`")))?;
            }
            "finalStatus" => final_status = Some(value.to_uppercase()),
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    format!(
                        "query parameter `{other}` of /ws/v1/cluster/apps is not supported: use states, queue, user, limit or finalStatus"
                    ),
                ));
            }
        }
    }
    let limit = query.limit;
    // Several states: filtered here, from all the caller may list.
    query.limit = if states.is_empty() && final_status.is_none() {
        limit
    } else {
        MAX_APPS
    };
    let reports = rm.app_reports(&caller, &query).await?;
    let now = now_ms();
    let apps: Vec<Value> = reports
        .iter()
        .filter(|report| states.is_empty() || states.contains(&report.state))
        .filter(|report| {
            final_status
                .as_ref()
                .is_none_or(|status| *status == shapes::wire(&report.final_status))
        })
        .take(limit)
        .map(|report| shapes::app(report, now))
        .collect();
    Ok(Json(json!({ "apps": { "app": apps } })))
}

async fn app(State(rm): Rm, User(caller): User, Path(app_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let report = report_of(&rm, &caller, &app_id).await?;
    Ok(Json(json!({ "app": shapes::app(&report, now_ms()) })))
}

async fn app_state(State(rm): Rm, User(caller): User, Path(app_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let report = report_of(&rm, &caller, &app_id).await?;
    Ok(Json(json!({ "state": shapes::wire(&report.state) })))
}

/// `PUT …/state {"state": "KILLED"}`: kills the app (the only change YARN allows there).
async fn set_app_state(
    State(rm): Rm,
    User(caller): User,
    Path(app_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    let wanted = body.get("state").and_then(Value::as_str).unwrap_or_default();
    if wanted != "KILLED" {
        return Err(ApiError::bad_request(format!("state: only `KILLED` may be set, not `{wanted}`")));
    }
    let state = match rm
        .mutate(|cluster, now| {
            cluster.kill_app(&caller, app_id, now)?;
            Ok::<_, AppError>(cluster.app_report_for(&caller, app_id).map(|report| report.state))
        })
        .await?
    {
        Err(AppError::NotFound(_)) => return Err(rm.kill_refused_from_history(&caller, app_id).await.into()),
        killed => killed?,
    };
    tracing::info!(app = %app_id, user = %caller.user, "application killed (YARN REST)");
    Ok(Json(json!({ "state": shapes::wire(&state.unwrap_or(AppState::Killed)) })))
}

async fn attempts(State(rm): Rm, User(caller): User, Path(app_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let report = report_of(&rm, &caller, &app_id).await?;
    let state = shapes::wire(&report.state);
    let last = report.attempts.len();
    let attempts: Vec<Value> = report
        .attempts
        .iter()
        .enumerate()
        .map(|(index, attempt)| shapes::attempt(report.app_id, attempt, index + 1 == last, &state))
        .collect();
    Ok(Json(json!({ "appAttempts": { "appAttempt": attempts } })))
}

/// `?states=RUNNING,LOST`.
async fn nodes(State(rm): Rm, _user: User, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let mut states: Vec<NodeState> = Vec::new();
    for (key, value) in &params {
        if key != "states" {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("query parameter `{key}` of /ws/v1/cluster/nodes is not supported: use states"),
            ));
        }
        for state in value.split(',').filter(|state| !state.trim().is_empty()) {
            let parsed = serde_json::from_value(json!(state.trim().to_uppercase()))
                .map_err(|_| ApiError::bad_request(format!("states: `{state}` is not a node state")))?;
            states.push(parsed);
        }
    }
    let nodes: Vec<Value> = rm
        .read(|cluster| cluster.node_reports())
        .await
        .iter()
        .filter(|node| states.is_empty() || states.contains(&node.state))
        .map(shapes::node)
        .collect();
    Ok(Json(json!({ "nodes": { "node": nodes } })))
}

async fn node(State(rm): Rm, _user: User, Path(node_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let nodes = rm.read(|cluster| cluster.node_reports()).await;
    let node = nodes.iter().find(|node| node.node_id.0 == node_id).ok_or_else(|| {
        ApiError::with_code(
            StatusCode::NOT_FOUND,
            spindle_protocol::error_codes::NODE_NOT_FOUND,
            format!("node {node_id} not found"),
        )
    })?;
    Ok(Json(json!({ "node": shapes::node(node) })))
}

/// An app id for the next `POST /ws/v1/cluster/apps`, and the largest container a node holds.
async fn new_application(State(rm): Rm, User(caller): User) -> Result<Json<Value>, ApiError> {
    let (app_id, largest) = rm
        .mutate(|cluster, _| Ok::<_, AppError>((cluster.reserve_app_id(&caller), cluster.max_container())))
        .await??;
    Ok(Json(json!({
        "application-id": app_id.to_string(),
        "maximum-resource-capability": { "memory": largest.memory_mb, "vCores": largest.vcores },
    })))
}

/// A YARN application submission, run as a Spindle shell job of one container running the AM
/// command (`/bin/sh -c COMMAND`) with its environment and resources. 202 with `Location`.
async fn submit(State(rm): Rm, User(caller): User, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let (app_id, spec) = submission_spec(&body)?;
    let app_id = rm
        .mutate(|cluster, now| cluster.submit_reserved(&caller, spec, app_id, now))
        .await??;
    rm.metrics.apps_submitted.inc();
    tracing::info!(app = %app_id, user = %caller.user, "application submitted (YARN REST)");
    let location = format!("/ws/v1/cluster/apps/{app_id}");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response())
}

/// The fields of a YARN submission Spindle maps; anything else that would change what runs is
/// refused with 501 naming it.
fn submission_spec(body: &Value) -> Result<(AppId, JobSpec), ApiError> {
    const MAPPED: [&str; 8] = [
        "application-id",
        "application-name",
        "queue",
        "priority",
        "am-container-spec",
        "resource",
        "max-app-attempts",
        "application-type",
    ];
    const IGNORED: [&str; 4] = [
        "application-tags",
        "unmanaged-AM",
        "keep-containers-across-application-attempts",
        "cancel-tokens-when-complete",
    ];
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    if let Some(field) = object
        .keys()
        .find(|key| !MAPPED.contains(&key.as_str()) && !IGNORED.contains(&key.as_str()))
    {
        return Err(unsupported(field));
    }
    if body["unmanaged-AM"].as_bool() == Some(true) {
        return Err(unsupported("unmanaged-AM = true"));
    }
    let spec = &body["am-container-spec"];
    if let Some(field) = spec
        .as_object()
        .and_then(|spec| spec.keys().find(|key| !matches!(key.as_str(), "commands" | "environment")))
    {
        return Err(unsupported(&format!("am-container-spec.{field}")));
    }
    let app_id = parse_app_id(body["application-id"].as_str().unwrap_or_default())?;
    let command = spec["commands"]["command"]
        .as_str()
        .filter(|command| !command.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("am-container-spec.commands.command: the AM command is required"))?;
    let mut env = serde_json::Map::new();
    for entry in spec["environment"]["entry"].as_array().into_iter().flatten() {
        let (Some(key), Some(value)) = (entry["key"].as_str(), entry["value"].as_str()) else {
            return Err(ApiError::bad_request(
                "am-container-spec.environment.entry: each needs a key and a value",
            ));
        };
        env.insert(key.to_owned(), json!(value));
    }
    let mut shell = json!({
        "command": ["/bin/sh", "-c", command],
        "containers": 1,
        "env": env,
    });
    if let Some(memory) = body["resource"]["memory"].as_u64() {
        shell["memory_mb"] = json!(memory);
    }
    if let Some(vcores) = body["resource"]["vCores"].as_u64() {
        shell["vcores"] = json!(vcores);
    }
    let mut job = json!({
        "name": body["application-name"].as_str().unwrap_or("yarn-app"),
        "kind": "shell",
        "shell": shell,
    });
    if let Some(queue) = body["queue"].as_str() {
        job["queue"] = json!(queue);
    }
    if let Some(priority) = body["priority"].as_i64() {
        job["priority"] = json!(priority);
    }
    if let Some(attempts) = body["max-app-attempts"].as_u64() {
        job["max_attempts"] = json!(attempts);
    }
    let spec: JobSpec = serde_json::from_value(job).map_err(|err| ApiError::bad_request(format!("not a valid submission: {err}")))?;
    Ok((app_id, spec))
}

fn unsupported(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "`{field}` of a YARN submission is not supported: Spindle runs the AM command as a shell job (see resource-manager/README.md)"
        ),
    )
}

async fn report_of(rm: &ResourceManager, caller: &crate::cluster::Caller, app_id: &str) -> Result<spindle_protocol::AppReport, ApiError> {
    let app_id = parse_app_id(app_id)?;
    Ok(rm.app_report(caller, app_id).await?)
}
