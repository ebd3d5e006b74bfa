//! What every daemon's router reports about the requests it serves: a `tracing` span around
//! each request (method, route, status, latency) and, in `/metrics`, requests by route, method
//! and status with a latency histogram.
//!
//! The route is the router's pattern (`/v1/apps/{app_id}`), never the path itself, so the
//! label set stays bounded whatever clients send; a path no route matches counts as
//! `unmatched`. Latency runs until the response head: a streamed body (a followed log, a
//! shuffle partition) is not waited for.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower_http::trace::TraceLayer;

/// The `Content-Type` of OpenMetrics text (Prometheus asks for it and reads it).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label set of a request: bounded (routes are patterns, methods a known few).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// A histogram of seconds from 0.25 ms to about 8 s (a long poll that waits longer lands in
/// the last bucket, `+Inf`).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Requests served, by route, method and status, and their latency.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Registers the two families (`spindle_http_requests_total`,
    /// `spindle_http_request_duration_seconds`) in `registry`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let metrics = HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "spindle_http_requests",
            "HTTP requests served, by route pattern, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "spindle_http_request_duration_seconds",
            "Time from a request's arrival to its response head, by route pattern, method and status",
            metrics.latency.clone(),
        );
        metrics
    }

    fn observe(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }
}

/// A whole scrape: the metrics of `registry` (events, kept for the process's life), then
/// `state` (read at this scrape), then `# EOF`.
pub fn encode_scrape(registry: &Registry, state: impl Collector) -> String {
    let mut scraped = Registry::default();
    scraped.register_collector(Box::new(state));
    let mut out = String::new();
    // Writing to a String cannot fail: an error would be a bug of the encoder's.
    let encoded = encode_registry(&mut out, registry)
        .and_then(|()| encode_registry(&mut out, &scraped))
        .and_then(|()| encode_eof(&mut out));
    debug_assert!(encoded.is_ok(), "encoding metrics into a String failed: {encoded:?}");
    out
}

/// Wraps every route of `router` (and its fallback) in a trace span and, with `metrics`, in
/// the request counters. Call it on the finished router: layers apply to the routes that exist
/// when they are added.
pub fn observed(router: Router, metrics: Option<HttpMetrics>) -> Router {
    let router = match metrics {
        Some(metrics) => router.layer(axum::middleware::from_fn_with_state(metrics, count_request)),
        None => router,
    };
    router.layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
        tracing::info_span!(
            "request",
            method = %request.method(),
            route = route_of(request),
        )
    }))
}

async fn count_request(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(&request).to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let labels = RequestLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    metrics.observe(&labels, started.elapsed().as_secs_f64());
    response
}

/// The matched route pattern, or `unmatched` (a 404, or a method no route has).
fn route_of(request: &Request) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str)
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn requests_are_counted_by_route_pattern_not_by_path() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let router = Router::new().route("/v1/apps/{app_id}", get(|| async { "app" }));
        let router = observed(router, Some(metrics));
        for uri in ["/v1/apps/a", "/v1/apps/b", "/nowhere"] {
            let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
            router.clone().oneshot(request).await.unwrap();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"spindle_http_requests_total{route="/v1/apps/{app_id}",method="GET",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"spindle_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
            "{text}"
        );
        assert!(text.contains("spindle_http_request_duration_seconds_bucket{"), "{text}");
        assert!(!text.contains("/v1/apps/a"), "paths never become labels: {text}");
    }
}
