//! The agent's HTTP API. Handlers only translate between HTTP and the container manager.
//!
//! | method and path | who may call |
//! |---|---|
//! | `GET /healthz` | anyone |
//! | `GET /metrics` | anyone (node totals only: `metrics.rs`) |
//! | `POST /v1/containers` | whoever holds a container token the RM signed for this node |
//! | `GET /v1/containers` | the RM's bearer for this node |
//! | `GET`/`DELETE /v1/containers/{id}`, `GET …/{id}/logs/{stdout,stderr}` | the RM's bearer, or the container's own token signature |
//! | `GET /v1/shuffle/{app_id}/{output_name}/{partition}` | the app's shuffle token (its own tasks) |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use spindle_http_server::metrics::OPENMETRICS_CONTENT_TYPE;
use spindle_protocol::{AppId, ContainerId, ContainerStatus, LaunchRequest, LogOptions, Resources};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;
use tower_http::limit::RequestBodyLimitLayer;

use crate::AgentError;
use crate::manager::ContainerManager;
use crate::shuffle;

/// Largest request body accepted (a launch request with its environment).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The log streams a container has.
const LOG_STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Read size when streaming a partition: larger than ReaderStream's 4 KiB default, since
/// partitions run to megabytes and more.
const SHUFFLE_CHUNK_BYTES: usize = 64 * 1024;

/// All routes, with the body limit, sharing the container manager.
/// All routes, with the body limit, sharing the container manager; `/metrics` reports the
/// node's `capacity` beside what is granted.
pub(crate) fn router(manager: Arc<ContainerManager>, capacity: Resources) -> Router {
    let http_metrics = manager.metrics.http.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(move |State(manager): State<Arc<ContainerManager>>| async move {
                let text = manager.metrics.encode(manager.census(capacity));
                ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text)
            }),
        )
        .route("/v1/containers", get(list_containers).post(launch_container))
        .route("/v1/containers/{container_id}", get(container_status).delete(stop_container))
        .route("/v1/containers/{container_id}/logs/{stream}", get(container_log))
        .route("/v1/shuffle/{app_id}/{output_name}/{partition}", get(shuffle_partition))
        .fallback(unknown_route)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_payload_too_large))
        .with_state(manager);
    spindle_http_server::metrics::observed(router, Some(http_metrics))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn launch_container(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
    payload: Result<Json<LaunchRequest>, JsonRejection>,
) -> Result<Response, AgentError> {
    let Json(request) = payload.map_err(rejection_error)?;
    // The container token authorizes a launch; an RM's bearer beside it (the RM launching an
    // AM) must also be of the current leader.
    manager.check_rm_epoch(bearer(&headers).ok())?;
    let started = std::time::Instant::now();
    let launched = manager.launch(request).await;
    let outcome = launched.as_ref().map_or_else(AgentError::code, |_| "started");
    manager.metrics.record_launch(outcome, started.elapsed().as_secs_f64());
    let status = launched?;
    let location = format!("/v1/containers/{}", status.container_id);
    let mut response = (StatusCode::CREATED, Json(status)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn list_containers(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ContainerStatus>>, AgentError> {
    manager.authorize(bearer(&headers)?, None)?;
    Ok(Json(manager.list()))
}

async fn container_status(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
    Path(container_id): Path<String>,
) -> Result<Json<ContainerStatus>, AgentError> {
    let container_id = parse_container_id(&container_id)?;
    manager.authorize(bearer(&headers)?, Some(&container_id))?;
    Ok(Json(manager.status(&container_id)?))
}

async fn stop_container(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
    Path(container_id): Path<String>,
) -> Result<Json<ContainerStatus>, AgentError> {
    let container_id = parse_container_id(&container_id)?;
    manager.authorize(bearer(&headers)?, Some(&container_id))?;
    Ok(Json(manager.stop_by_app(&container_id).await?))
}

/// Streams the file, so a large log never sits in the agent's memory. The query
/// (`LogOptions`): `tail_bytes=N`, `tail_lines=N`, `follow=true` (appended bytes are sent as
/// they come until the container has ended).
async fn container_log(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
    Path((container_id, stream)): Path<(String, String)>,
    axum::extract::Query(options): axum::extract::Query<LogOptions>,
) -> Result<Response, AgentError> {
    let container_id = parse_container_id(&container_id)?;
    manager.authorize(bearer(&headers)?, Some(&container_id))?;
    if !LOG_STREAMS.contains(&stream.as_str()) {
        return Err(AgentError::BadRequest(format!(
            "unknown log stream `{stream}`: expected stdout or stderr"
        )));
    }
    let path = manager.log_path(&container_id, &stream);
    let file = match crate::served_file::open_served_file(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(manager.missing_log(container_id, stream));
        }
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(AgentError::Forbidden(err.to_string()));
        }
        Err(err) => {
            return Err(AgentError::io(format!("cannot open {}", path.display()), err));
        }
    };
    let body = crate::log_reading::log_body(file, &options, Arc::clone(&manager), container_id)
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", path.display()), err))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Streams one partition of a map output: a byte range of its data file, never all in memory.
async fn shuffle_partition(
    State(manager): State<Arc<ContainerManager>>,
    headers: HeaderMap,
    Path((app_id, output_name, partition)): Path<(String, String, String)>,
) -> Result<Response, AgentError> {
    let app_id: AppId = app_id
        .parse()
        .map_err(|err: spindle_protocol::IdParseError| AgentError::BadRequest(format!("app_id: {err}")))?;
    let token = bearer(&headers).map_err(|_| {
        AgentError::Unauthorized("missing `Authorization: Bearer <token>`: use the app's shuffle token (SPINDLE_SHUFFLE_TOKEN)".to_owned())
    })?;
    manager.authorize_shuffle(app_id, token)?;
    shuffle::check_output_name(&output_name)?;
    let partition: u32 = partition.parse().map_err(|_| {
        AgentError::BadRequest(format!(
            "partition `{partition}` is not a partition number: expected 0 to reducers - 1"
        ))
    })?;
    let range = shuffle::open_partition(app_id, &manager.app_shuffle_dir(app_id), &output_name, partition).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(range.file.take(range.len), SHUFFLE_CHUNK_BYTES));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::CONTENT_LENGTH, HeaderValue::from(range.len)),
        ],
        body,
    )
        .into_response())
}

async fn unknown_route(method: Method, uri: Uri) -> AgentError {
    AgentError::UnknownRoute(format!("{method} {}", uri.path()))
}

fn parse_container_id(text: &str) -> Result<ContainerId, AgentError> {
    text.parse()
        .map_err(|err: spindle_protocol::IdParseError| AgentError::BadRequest(err.to_string()))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, AgentError> {
    let missing = || {
        AgentError::Unauthorized(
            "missing `Authorization: Bearer <token>`: use the resource manager's bearer or the container's token signature".to_owned(),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// Bad JSON, unknown fields and wrong types become 400 naming the problem (axum's text
/// includes the path of the offending field); an oversized body becomes 413.
fn rejection_error(rejection: JsonRejection) -> AgentError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AgentError::PayloadTooLarge
    } else {
        AgentError::BadRequest(rejection.body_text())
    }
}

/// The body limit layer answers 413 in plain text; every error here is JSON.
async fn json_payload_too_large(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        AgentError::PayloadTooLarge.into_response()
    } else {
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert!(matches!(bearer(&headers), Err(AgentError::Unauthorized(_))));
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), "abc");
        headers.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), "xyz");
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(bearer(&headers).is_err());
    }

    #[test]
    fn container_ids_in_paths_are_checked() {
        assert!(parse_container_id("container_e01_1_0001_01_000001").is_ok());
        let err = parse_container_id("nope").unwrap_err();
        assert!(matches!(err, AgentError::BadRequest(ref message) if message.contains("container_e<epoch>")));
    }
}
