//! The web dashboard at `/`: one page (HTML, CSS and a small script, embedded in the binary, no
//! build step) that reads the REST API with the user's API token, kept in the browser tab's
//! session, and redraws the current view every 2 s: the cluster (totals, nodes, queues), apps
//! with filters, an app (attempts, stages, counters, a stream's pipeline, containers) and a
//! container's log. The files hold no data: everything shown comes from `/v1/…` with the
//! token, so the page is never open to whoever reaches the port.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::ResourceManager;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

pub fn routes() -> Router<Arc<ResourceManager>> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new binary may bring new files: browsers ask again rather than keep stale ones.
            (header::CACHE_CONTROL, "no-cache"),
            // The page runs only its own script and talks only to this RM.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
