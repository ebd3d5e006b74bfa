//! The RM's HTTP server: the public API, the internal protocol, health, metrics, OpenAPI.

mod dashboard;
mod extract;
mod internal;
mod join;
mod pages;
mod public;
mod yarn;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use spindle_protocol::now_ms;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::service::{MAX_ALLOCATE_WAIT, ResourceManager};
use extract::User;

pub use extract::parse_json;

#[derive(OpenApi)]
#[openapi(
    info(title = "Spindle resource manager", description = "Submit jobs, watch apps, containers and nodes."),
    paths(
        public::submit_app, public::list_apps, public::get_app, public::kill_app, public::scale_operator, public::request_savepoint, public::app_containers,
        public::list_nodes, public::get_node, public::decommission_node, public::recommission_node, public::cluster_report, public::queues, public::reload_queues,
        public::container_logs, join::create_join_token
    ),
    components(schemas(spindle_protocol::JobSpec, spindle_protocol::ShellSpec, spindle_protocol::CustomSpec, spindle_protocol::JobKind,
        spindle_protocol::Resources, spindle_protocol::AppState, spindle_protocol::FinalStatus, spindle_protocol::ContainerState,
        spindle_protocol::ExitReason, spindle_protocol::NodeState, spindle_protocol::NodeUsage, spindle_protocol::AttemptReport,
        spindle_protocol::SavepointStatus, spindle_protocol::SavepointState)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("token", Vec::<String>::new())]);
    }
}

/// The whole router, with the body size limit and the request timeouts of the config.
pub fn router(rm: Arc<ResourceManager>) -> Router {
    let max_body = rm.config.max_body_bytes;
    let http_metrics = rm.metrics.http.clone();
    let request_timeout = rm.config.http.request_timeout;
    // A long poll waits up to MAX_ALLOCATE_WAIT by design: it gets that on top of the limit
    // every other route has, which still bounds a slowly sent body or a stuck handler.
    let long_polls = Router::new().route("/v1/internal/am/allocate", post(internal::allocate));
    let long_polls = spindle_http_server::with_request_timeout(long_polls, request_timeout + MAX_ALLOCATE_WAIT);
    let router = spindle_http_server::with_request_timeout(short_routes(), request_timeout)
        .merge(long_polls)
        .fallback(|uri: axum::http::Uri| async move { ApiError::not_found(format!("no such endpoint: {}", uri.path())) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(rm);
    spindle_http_server::metrics::observed(router, Some(http_metrics))
}

/// Every route that answers promptly: all but the long polls.
fn short_routes() -> Router<Arc<ResourceManager>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { axum::Json(ApiDoc::openapi()) }))
        .route("/v1/apps", post(public::submit_app).get(public::list_apps))
        .route("/v1/apps/{app_id}", get(public::get_app).delete(public::kill_app))
        .route("/v1/apps/{app_id}/containers", get(public::app_containers))
        .route("/v1/apps/{app_id}/operators/{name}", put(public::scale_operator))
        .route("/v1/apps/{app_id}/savepoints", post(public::request_savepoint))
        .route("/v1/nodes", get(public::list_nodes))
        .route("/v1/nodes/{node_id}", get(public::get_node))
        .route("/v1/nodes/{node_id}/decommission", post(public::decommission_node))
        .route("/v1/nodes/{node_id}/recommission", post(public::recommission_node))
        .route("/v1/cluster", get(public::cluster_report))
        .route("/v1/cluster/join-tokens", post(join::create_join_token))
        .route("/v1/queues", get(public::queues))
        .route("/v1/queues/reload", post(public::reload_queues))
        .route("/v1/containers/{container_id}/logs/{stream}", get(public::container_logs))
        .route("/v1/internal/nodes/register", post(internal::register_node))
        .route("/v1/internal/nodes/heartbeat", post(internal::node_heartbeat))
        .route("/v1/internal/am/register", post(internal::register_am))
        .route("/v1/internal/am/finish", post(internal::finish_am))
        .merge(yarn::routes())
        .merge(dashboard::routes())
}

/// OpenMetrics text (Prometheus reads it), for any API user's bearer token: the figures name
/// apps, users and queues, which only the cluster's users may see (why not a token-less port:
/// README.md).
async fn metrics(State(rm): State<Arc<ResourceManager>>, user: Result<User, ApiError>) -> Result<impl IntoResponse, ApiError> {
    user.map_err(metrics_unauthorized)?;
    let snapshot = rm.read(|cluster| cluster.scrape_snapshot(now_ms())).await;
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::OPENMETRICS_CONTENT_TYPE)],
        rm.metrics.encode(snapshot),
    ))
}

/// A refused scrape says how to give Prometheus a token, since a scraper is who usually asks.
fn metrics_unauthorized(refused: ApiError) -> ApiError {
    ApiError::new(
        refused.status,
        format!(
            "/metrics needs the bearer token of an API user ({}); in Prometheus, give the scrape job \
             `authorization: {{type: Bearer, credentials_file: FILE}}` with a token from the RM config's [[users]]",
            refused.message
        ),
    )
}
