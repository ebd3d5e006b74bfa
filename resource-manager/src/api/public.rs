//! The public REST API: apps, nodes, cluster, logs. Handlers translate and delegate to the
//! service; they hold no state.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use spindle_protocol::{
    AgentClient, AppId, AppReport, AppState, ClusterReport, ContainerId, ContainerReport, DecommissionRequest, ErrorBody, JobSpec,
    LogOptions, NodeId, NodeReport, QueueReport, RM_BEARER_VALIDITY, SAVEPOINT_REQUEST_KIND, SavepointReply, SavepointRequest, ScaleReply,
    ScaleRequest, SubmitReply, error_codes, now_ms, operator_control_key,
};

use super::extract::{ApiJson, User};
use super::pages;
use crate::cluster::{AppError, AppQuery};
use crate::error::ApiError;
use crate::service::ResourceManager;

type Rm = State<Arc<ResourceManager>>;

const DEFAULT_APP_LIMIT: usize = 100;
const MAX_APP_LIMIT: usize = 10_000;

pub(super) fn parse_app_id(text: &str) -> Result<AppId, ApiError> {
    text.parse().map_err(|err| ApiError::bad_request(format!("app_id: {err}")))
}

fn parse_container_id(text: &str) -> Result<ContainerId, ApiError> {
    text.parse().map_err(|err| ApiError::bad_request(format!("container_id: {err}")))
}

/// Submit a job.
#[utoipa::path(post, path = "/v1/apps", request_body = JobSpec, tag = "apps",
    responses((status = 201, body = SubmitReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn submit_app(
    State(rm): Rm,
    User(caller): User,
    headers: axum::http::HeaderMap,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let app_id = rm.mutate(|cluster, now| cluster.submit_once(&caller, spec, key, now)).await??;
    rm.metrics.apps_submitted.inc();
    tracing::info!(app = %app_id, user = %caller.user, "application submitted");
    let location = format!("/v1/apps/{app_id}");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(SubmitReply { app_id })).into_response())
}

/// Longest `Idempotency-Key` accepted: a UUID or 32 random bytes in hex fit easily.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The submission's `Idempotency-Key` header, if any: 1 to 128 visible ASCII characters.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(spindle_protocol::IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "header {}: must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters (e.g. a UUID)",
            spindle_protocol::IDEMPOTENCY_KEY_HEADER
        )));
    }
    Ok(Some(key.to_owned()))
}

/// List apps, newest first: those in memory and, below them, the store's history of apps that
/// ended long ago. Diagnostics and AM counters of apps the caller may not view (not theirs, not
/// in a queue they administer, not an admin) read `<hidden>` / are left out. A full page has a
/// `Link` header to the next one (`before` the page's last app).
#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    params(("state" = Option<String>, Query), ("queue" = Option<String>, Query), ("user" = Option<String>, Query), ("limit" = Option<u32>, Query),
        ("before" = Option<String>, Query, description = "only apps older than this app id: the next page")),
    responses((status = 200, body = Vec<AppReport>), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_apps(State(rm): Rm, User(caller): User, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let mut query = AppQuery {
        limit: DEFAULT_APP_LIMIT,
        ..AppQuery::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "state" => {
                query.state = Some(
                    value
                        .parse::<AppState>()
                        .map_err(|err| ApiError::bad_request(format!("state: {err}")))?,
                )
            }
            "queue" => query.queue = Some(value),
            "user" => query.user = Some(value),
            "limit" => query.limit = pages::parse_limit(&value, MAX_APP_LIMIT)?,
            "before" => query.before = Some(value.parse().map_err(|err| ApiError::bad_request(format!("before: {err}")))?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`: use state, queue, user, limit or before"
                )));
            }
        }
    }
    let reports = rm.app_reports(&caller, &query).await?;
    let last = reports.last().map(|report| report.app_id.to_string());
    let mut filters = Vec::new();
    if let Some(state) = query.state {
        filters.push(("state", state.as_str().to_owned()));
    }
    if let Some(queue) = &query.queue {
        filters.push(("queue", queue.clone()));
    }
    if let Some(user) = &query.user {
        filters.push(("user", user.clone()));
    }
    Ok(pages::page(reports, query.limit, "/v1/apps", &filters, ("before", last)))
}

/// One app's report, from memory or the store's history; redacted as in the list for callers
/// who may not view the app.
#[utoipa::path(get, path = "/v1/apps/{app_id}", tag = "apps", params(("app_id" = String, Path)),
    responses((status = 200, body = AppReport), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_app(State(rm): Rm, User(caller): User, Path(app_id): Path<String>) -> Result<Json<AppReport>, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    Ok(Json(rm.app_report(&caller, app_id).await?))
}

/// Kill an app (its owner or an admin).
#[utoipa::path(delete, path = "/v1/apps/{app_id}", tag = "apps", params(("app_id" = String, Path)),
    responses((status = 200, body = AppReport), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn kill_app(State(rm): Rm, User(caller): User, Path(app_id): Path<String>) -> Result<Json<AppReport>, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    let report = match rm
        .mutate(|cluster, now| {
            cluster.kill_app(&caller, app_id, now)?;
            Ok::<_, AppError>(cluster.app_report_for(&caller, app_id))
        })
        .await?
    {
        Err(AppError::NotFound(_)) => return Err(rm.kill_refused_from_history(&caller, app_id).await.into()),
        killed => killed?,
    };
    tracing::info!(app = %app_id, user = %caller.user, "application killed");
    report.map(Json).ok_or_else(|| ApiError::from(AppError::NotFound(app_id)))
}

/// Set the parallelism of a stream app's operator (its owner or an admin). The change is
/// stored at once; the AM then rescales the running operator to it.
#[utoipa::path(put, path = "/v1/apps/{app_id}/operators/{name}", request_body = ScaleRequest, tag = "apps",
    params(("app_id" = String, Path), ("name" = String, Path, description = "operator name")),
    responses((status = 200, body = ScaleReply), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn scale_operator(
    State(rm): Rm,
    User(caller): User,
    Path((app_id, name)): Path<(String, String)>,
    ApiJson(request): ApiJson<ScaleRequest>,
) -> Result<Json<ScaleReply>, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    // A generic app control (`operators/<name>`): the spec checks it, the AM acts on it.
    let key = operator_control_key(&name);
    let value = serde_json::json!({ "parallelism": request.parallelism });
    let change = rm.mutate(|cluster, _| cluster.control_app(&caller, app_id, &key, &value)).await??;
    let previous = change
        .previous
        .get("parallelism")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(request.parallelism);
    tracing::info!(app = %app_id, user = %caller.user, operator = %name, from = previous, to = request.parallelism, "operator scaled");
    Ok(Json(ScaleReply {
        app_id,
        operator: name,
        parallelism: request.parallelism,
        previous,
    }))
}

/// Ask a running stream app for a savepoint, or to stop after one (its owner, an admin of its
/// queue or a cluster admin). The request is stored at once and answered 202 with its id; the
/// AM takes the savepoint as the app's account and reports it in the app's
/// `detail.stream.savepoints` (in progress, completed with its path, or failed with why).
#[utoipa::path(post, path = "/v1/apps/{app_id}/savepoints", request_body = SavepointRequest, tag = "apps",
    params(("app_id" = String, Path)),
    responses((status = 202, body = SavepointReply), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the app is not a running stream job")))]
pub async fn request_savepoint(
    State(rm): Rm,
    User(caller): User,
    Path(app_id): Path<String>,
    ApiJson(request): ApiJson<SavepointRequest>,
) -> Result<Response, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    let value = serde_json::to_value(&request).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let savepoint_id = rm
        .mutate(|cluster, _| cluster.request_app(&caller, app_id, SAVEPOINT_REQUEST_KIND, &value))
        .await??;
    tracing::info!(app = %app_id, user = %caller.user, savepoint = savepoint_id, stop = request.stop, "savepoint requested");
    Ok((StatusCode::ACCEPTED, Json(SavepointReply { app_id, savepoint_id })).into_response())
}

/// An app's containers, live and finished, by id; their diagnostics (stderr tails) read
/// `<hidden>` for callers who may not view the app. With `limit`, a page, and a `Link` header
/// to the next one (`after` the page's last container).
#[utoipa::path(get, path = "/v1/apps/{app_id}/containers", tag = "apps",
    params(("app_id" = String, Path), ("limit" = Option<u32>, Query, description = "at most this many (default: all)"),
        ("after" = Option<String>, Query, description = "only containers after this id: the next page")),
    responses((status = 200, body = Vec<ContainerReport>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn app_containers(
    State(rm): Rm,
    User(caller): User,
    Path(app_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let app_id = parse_app_id(&app_id)?;
    let (mut limit, mut after) = (usize::MAX, None);
    for (key, value) in params {
        match key.as_str() {
            "limit" => limit = pages::parse_limit(&value, usize::MAX)?,
            "after" => {
                after =
                    Some(parse_container_id(&value).map_err(|_| ApiError::bad_request(format!("after: `{value}` is not a container id")))?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`: use limit or after"
                )));
            }
        }
    }
    let reports = pages::after(rm.container_reports(&caller, app_id).await?, after, limit, |report| {
        report.container_id
    });
    let last = reports.last().map(|report| report.container_id.to_string());
    Ok(pages::page(
        reports,
        limit,
        &format!("/v1/apps/{app_id}/containers"),
        &[],
        ("after", last),
    ))
}

/// The nodes the RM tracks (departed ones until `departed_node_expiry`), by id; with `all=true`
/// also those it has forgotten, with their last state (`forgotten_at_ms` set), from its history.
/// With `limit`, a page, and a `Link` header to the next one (`after` the page's last node).
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    params(("all" = Option<bool>, Query, description = "also the nodes the RM has forgotten"),
        ("limit" = Option<u32>, Query, description = "at most this many (default: all)"),
        ("after" = Option<String>, Query, description = "only nodes after this node id: the next page")),
    responses((status = 200, body = Vec<NodeReport>), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_nodes(State(rm): Rm, _user: User, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let (mut with_forgotten, mut limit, mut after) = (false, usize::MAX, None);
    for (key, value) in params {
        match key.as_str() {
            "all" => {
                with_forgotten = value
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("all: `{value}` is neither true nor false")))?
            }
            "limit" => limit = pages::parse_limit(&value, usize::MAX)?,
            "after" => after = Some(value),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`: use all, limit or after"
                )));
            }
        }
    }
    let reports = rm.node_reports(with_forgotten).await.map_err(node_history_unavailable)?;
    let reports = pages::after(reports, after, limit, |report| report.node_id.as_str().to_owned());
    let last = reports.last().map(|report| report.node_id.to_string());
    let filters = if with_forgotten {
        vec![("all", "true".to_owned())]
    } else {
        Vec::new()
    };
    Ok(pages::page(reports, limit, "/v1/nodes", &filters, ("after", last)))
}

/// One node: as the RM tracks it, or its last state if the RM has forgotten it
/// (`forgotten_at_ms` set); 404 if it never registered or its history was purged.
#[utoipa::path(get, path = "/v1/nodes/{node_id}", tag = "nodes", params(("node_id" = String, Path)),
    responses((status = 200, body = NodeReport), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_node(State(rm): Rm, _user: User, Path(node_id): Path<String>) -> Result<Json<NodeReport>, ApiError> {
    let node_id = NodeId(node_id);
    let report = rm.node_report(&node_id).await.map_err(node_history_unavailable)?;
    report.map(Json).ok_or_else(|| {
        ApiError::with_code(
            StatusCode::NOT_FOUND,
            error_codes::NODE_NOT_FOUND,
            format!("node {node_id} not found: it never registered, or it departed and its history was purged (`retain_finished`)"),
        )
    })
}

/// The store could not be read for the history of forgotten nodes: nothing changed, try again.
fn node_history_unavailable(err: crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the nodes' history from the store ({err}); retry in a moment"),
    )
}

/// Call a drain off: a DECOMMISSIONING node is RUNNING again (admins only).
#[utoipa::path(post, path = "/v1/nodes/{node_id}/recommission", tag = "nodes", params(("node_id" = String, Path)),
    responses((status = 200, body = NodeReport), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn recommission_node(State(rm): Rm, User(caller): User, Path(node_id): Path<String>) -> Result<Json<NodeReport>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!(
            "user {} may not recommission nodes: only admins may",
            caller.user
        )));
    }
    let node_id = NodeId(node_id);
    let report = rm
        .mutate(|cluster, _| {
            cluster.recommission(&node_id)?;
            Ok::<_, crate::cluster::NodeError>(cluster.node_report(&node_id))
        })
        .await??;
    tracing::info!(node = %node_id, user = %caller.user, "node recommissioned");
    report.map(Json).ok_or_else(|| {
        ApiError::with_code(
            StatusCode::NOT_FOUND,
            error_codes::NODE_NOT_FOUND,
            format!("node {node_id} not found"),
        )
    })
}

/// Drain a node, then remove it (admins only).
#[utoipa::path(post, path = "/v1/nodes/{node_id}/decommission", tag = "nodes", params(("node_id" = String, Path)),
    request_body = DecommissionRequest,
    responses((status = 200, body = NodeReport), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn decommission_node(
    State(rm): Rm,
    User(caller): User,
    Path(node_id): Path<String>,
    ApiJson(request): ApiJson<DecommissionRequest>,
) -> Result<Json<NodeReport>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!(
            "user {} may not decommission nodes: only admins may",
            caller.user
        )));
    }
    let node_id = NodeId(node_id);
    let report = rm
        .mutate(|cluster, now| {
            cluster.decommission(&node_id, request.timeout_s, request.force, now)?;
            Ok::<_, crate::cluster::NodeError>(cluster.node_report(&node_id))
        })
        .await??;
    tracing::info!(node = %node_id, timeout_s = request.timeout_s, force = request.force, "node decommissioning");
    report.map(Json).ok_or_else(|| {
        ApiError::with_code(
            StatusCode::NOT_FOUND,
            error_codes::NODE_NOT_FOUND,
            format!("node {node_id} not found"),
        )
    })
}

/// Cluster totals.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterReport)))]
pub async fn cluster_report(State(rm): Rm, _user: User) -> Json<ClusterReport> {
    let store = rm.store_description();
    Json(rm.read(|cluster| cluster.cluster_report(store)).await)
}

/// The queue tree: each queue's guarantee, maximum, use, pending demand and users.
#[utoipa::path(get, path = "/v1/queues", tag = "cluster", responses((status = 200, body = QueueReport)))]
pub async fn queues(State(rm): Rm, _user: User) -> Json<QueueReport> {
    Json(rm.read(|cluster| cluster.queue_report()).await)
}

/// Reads the RM's config file again and applies its `[queues]` (admins only; SIGHUP does the
/// same). Refused with 409, changing nothing, if live apps would lose their queue.
#[utoipa::path(post, path = "/v1/queues/reload", tag = "cluster",
    responses((status = 200, body = QueueReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reload_queues(State(rm): Rm, User(caller): User) -> Result<Json<QueueReport>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!(
            "user {} may not reload the queues: only admins may",
            caller.user
        )));
    }
    Ok(Json(rm.reload_queues().await?))
}

/// A container's stdout or stderr, fetched from its node (the app's owner, an admin of its
/// queue or a cluster admin; 403 for anyone else).
#[utoipa::path(get, path = "/v1/containers/{container_id}/logs/{stream}", tag = "apps",
    params(("container_id" = String, Path), ("stream" = String, Path, description = "stdout or stderr"),
        ("tail_bytes" = Option<u64>, Query, description = "only the last N bytes"),
        ("tail_lines" = Option<u64>, Query, description = "only the last N lines"),
        ("follow" = Option<bool>, Query, description = "keep sending what is appended until the container has ended")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn container_logs(
    State(rm): Rm,
    User(caller): User,
    Path((container_id, stream)): Path<(String, String)>,
    axum::extract::Query(options): axum::extract::Query<LogOptions>,
) -> Result<Response, ApiError> {
    let container_id = parse_container_id(&container_id)?;
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::bad_request(format!(
            "stream: `{stream}` is not a log: use stdout or stderr"
        )));
    }
    let location = rm.container_location(&caller, container_id).await?;
    tracing::debug!(container = %container_id, user = %caller.user, owner = %location.owner, %stream, "container logs read");
    let bearer = rm
        .authority
        .rm_bearer(&location.node_id, rm.epoch(), now_ms() + RM_BEARER_VALIDITY.as_millis() as u64);
    let agent = AgentClient::new(&location.node_address, Some(bearer));
    // Streamed through, never held: a log may be gigabytes.
    let fetched = agent.log_response(container_id, &stream, &options).await;
    if let Ok(response) = fetched {
        let body = axum::body::Body::new(reqwest::Body::from(response));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    // The node no longer has it (retention, a lost or removed node): the copy made when the
    // app ended, if log aggregation is on.
    if let Some(dir) = &rm.config.log_aggregation.dir
        && let Some(copy) = crate::app_logs::read_copy(dir, container_id, &stream).await
    {
        let headers = [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::HeaderName::from_static("x-spindle-log-source"), "aggregated"),
        ];
        return Ok((headers, crate::app_logs::tail_of(copy, &options)).into_response());
    }
    match fetched {
        Ok(_) => unreachable!("answered above"),
        Err(err) if err.is_not_found() => Err(ApiError::not_found(format!(
            "node {} has no logs for {container_id} (and no aggregated copy exists)",
            location.node_address
        ))),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot fetch logs from node {}: {err}", location.node_address),
        )),
    }
}
