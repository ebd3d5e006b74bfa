//! The HTTP server loop every Spindle daemon runs (the RM and the node agents): an axum router
//! behind hyper's HTTP/1 connections, with the limits that keep slow or hostile clients from
//! tying a daemon up — what `axum::serve` does not offer.
//!
//! ```text
//! listener ─accept─► permit (a semaphore of max_connections; at the cap, accepting waits)
//!                      └─► one task per connection: [TLS handshake, within header_read_timeout]
//!                            └─► hyper http1 with header_read_timeout
//!                            └─► router: routes wrapped by with_request_timeout
//! shutdown ─► stop accepting ─► each connection finishes its request and closes
//!          ─► shutdown_timeout later, connections still open are dropped
//! ```
//!
//! Glossary: *header-read timeout* — how long a connection may take to deliver a whole request
//! head, counted from when the server starts waiting for one (at accept, and after each
//! response on a kept-alive connection), so it closes idle and slow-loris connections alike;
//! *request timeout* — how long a route may take from its head to its response head, which
//! bounds slow bodies and stuck handlers.

pub mod metrics;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use spindle_protocol::{ErrorBody, ErrorDetail};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A connection that has sent no complete request head this long is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request (other than a long poll, which has its own bound) not answered by then gets 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping daemon lets requests in flight finish before it closes their connections.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause after an accept error that is not the client's (EMFILE: out of file descriptors),
/// so the loop does not spin while descriptors are scarce.
/// The most a connection buffers: hyper's smallest allowed. Every idle keep-alive connection
/// keeps its buffers, and a cluster's daemons hold thousands (one per agent and per AM): at
/// hyper's default (~400 KB, grown by big reads) 1,200 connections of a load test held 48 MB of
/// read buffers. A request head must fit in it (8 KB, as nginx's default; larger gets 431);
/// bodies stream through it in pieces of that size.
const MAX_CONNECTION_BUFFER: usize = 8 * 1024;
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// What bounds the server's connections; the request timeout is a router layer instead
/// ([`with_request_timeout`]), so each daemon can give its long polls their own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Closes a connection that does not deliver a whole request head this long after the
    /// server starts waiting for one: idle connections and slowly dribbled headers alike.
    pub header_read_timeout: Duration,
    /// Connections served at once; while at the cap the server accepts no more, and new ones
    /// wait in the kernel's listen backlog. Keeps file descriptors and memory bounded.
    pub max_connections: usize,
    /// After shutdown, requests in flight get this long to finish; then their connections are
    /// dropped and `serve` returns anyway.
    pub shutdown_timeout: Duration,
}

impl ServerLimits {
    /// The default timeouts with a cap of `max_connections`.
    pub fn with_max_connections(max_connections: usize) -> ServerLimits {
        ServerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Serves `router` on an already-bound `listener` (over TLS with `tls`) until `shutdown`
/// resolves, then stops accepting, lets requests in flight finish for at most
/// `limits.shutdown_timeout`, and returns. Accept errors are logged and retried, never fatal: a
/// daemon outlives a descriptor shortage.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    debug_assert!(limits.max_connections > 0, "a server without connections serves nobody");
    let permits = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    // Two stages, so a stop is graceful first and bounded second.
    let finish_requests = CancellationToken::new();
    let drop_connections = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = acquire_connection_slot(&permits, limits.max_connections) => permit,
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    handle_accept_error(err).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            router: router.clone(),
            header_read_timeout: limits.header_read_timeout,
            _permit: permit,
            finish_requests: finish_requests.clone(),
            drop_connections: drop_connections.clone(),
        };
        match &tls {
            None => connections.spawn(connection.serve(stream)),
            Some(acceptor) => connections.spawn(connection.serve_tls(acceptor.clone(), stream)),
        };
    }
    drop(listener);
    finish_requests.cancel();
    connections.close();
    if tokio::time::timeout(limits.shutdown_timeout, connections.wait()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            timeout_s = limits.shutdown_timeout.as_secs_f64(),
            "requests still in flight at the end of the shutdown timeout: closing their connections"
        );
        drop_connections.cancel();
        connections.wait().await;
    }
}

/// A permit for one more connection; at the cap, says so once and waits for a connection to end.
async fn acquire_connection_slot(permits: &Arc<Semaphore>, max_connections: usize) -> OwnedSemaphorePermit {
    if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
        return permit;
    }
    tracing::warn!(
        max_connections,
        "connection cap reached: new connections wait in the listen backlog until one closes"
    );
    Arc::clone(permits)
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed")
}

/// One accepted connection and what bounds it.
struct Connection {
    router: Router,
    header_read_timeout: Duration,
    _permit: OwnedSemaphorePermit,
    finish_requests: CancellationToken,
    drop_connections: CancellationToken,
}

impl Connection {
    /// The TLS handshake first, bounded like a request head (a client that opens a connection
    /// and sends nothing ties up a slot no longer than an idle plain one), then HTTP.
    async fn serve_tls(self, acceptor: TlsAcceptor, stream: tokio::net::TcpStream) {
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream)) => handshake,
            () = self.finish_requests.cancelled() => return,
        };
        match handshake {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    /// Serves the connection until it ends, its header-read timeout fires, or the server stops.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // hyper's header-read timeout needs a timer, and panics without one.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(MAX_CONNECTION_BUFFER);
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(self.router));
        let mut connection = std::pin::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            () = self.finish_requests.cancelled() => {
                // Answers the request in flight (if any), then closes; an idle connection closes now.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    outcome = connection.as_mut() => outcome,
                    () = self.drop_connections.cancelled() => return,
                }
            }
        };
        if let Err(err) = outcome {
            // Timeouts, resets and malformed requests: the client's problem, not the daemon's.
            tracing::debug!(error = %err, "connection closed with an error");
        }
    }
}

/// Connection-level accept errors (the peer gave up) are ignored; others, such as running out
/// of file descriptors, are logged and followed by a pause.
async fn handle_accept_error(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %err, "cannot accept a connection; retrying shortly");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// `router` with every route it has so far answering 503 when not done within `limit` (from its
/// request head to its response head: a slowly sent body counts, a slowly read response does
/// not). Routes added afterwards are not covered, so a long poll can get a longer limit:
/// `with_request_timeout(short_routes, d).merge(with_request_timeout(long_polls, longer))`.
/// The handler's future is dropped at the limit, as when a client hangs up.
pub fn with_request_timeout<S>(router: Router<S>, limit: Duration) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::from_fn_with_state(limit, enforce_request_timeout))
}

async fn enforce_request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => request_timed_out(limit),
    }
}

/// The JSON error of every Spindle API, with `Connection: close` since a client that sends its
/// body this slowly should not keep the connection either.
fn request_timed_out(limit: Duration) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "unavailable".to_owned(),
            message: format!(
                "the request did not complete within {:.1}s (its body arrived too slowly, or the server is overloaded): retry",
                limit.as_secs_f64()
            ),
        },
    };
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONNECTION, "close")], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests;
