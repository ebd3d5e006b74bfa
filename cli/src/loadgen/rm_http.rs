//! The load generator's HTTP client of the RM's internal protocol, with the bearer given per
//! call (`RmClient` holds one bearer per instance, and retries and fails over, which a load
//! generator must not hide). The fake AMs share one connection pool (each has one call in
//! flight, so the RM sees about one connection per AM, as with real ones); each fake agent
//! keeps a connection of its own, as a real agent process does, unless `--shared-connections`.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a call other than a long poll may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{path}: {reason}")]
    Transport { path: &'static str, reason: String },
    #[error("{path}: HTTP {status}: {body}")]
    Status { path: &'static str, status: u16, body: String },
    #[error("{path}: unexpected answer: {reason}")]
    Decode { path: &'static str, reason: String },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Paths of the internal protocol.
pub const REGISTER_NODE: &str = "/v1/internal/nodes/register";
pub const NODE_HEARTBEAT: &str = "/v1/internal/nodes/heartbeat";
pub const REGISTER_AM: &str = "/v1/internal/am/register";
pub const ALLOCATE: &str = "/v1/internal/am/allocate";
pub const FINISH_AM: &str = "/v1/internal/am/finish";

/// The RM's base URL and the shared pool.
#[derive(Clone)]
pub struct RmHttp {
    client: reqwest::Client,
    base: String,
}

/// `Bearer <token>`, marked sensitive so it never shows in a debug print.
pub fn bearer(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).expect("tokens are printable ASCII");
    value.set_sensitive(true);
    value
}

impl RmHttp {
    /// A client of the RM at `base` with a pool of its own.
    pub fn new(base: &str) -> RmHttp {
        RmHttp {
            client: client(usize::MAX),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client of the same RM that keeps one connection of its own, as one agent process does.
    pub fn with_own_connection(&self) -> RmHttp {
        RmHttp {
            client: client(1),
            base: self.base.clone(),
        }
    }

    /// POSTs `body` as JSON with `bearer`; the reply's JSON and how long the call took.
    /// `timeout`: `None` for the usual bound, longer for a long poll.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &'static str,
        bearer: &HeaderValue,
        body: &B,
        timeout: Option<Duration>,
    ) -> Result<(R, Duration), CallError> {
        let body = serde_json::to_vec(body).expect("protocol requests serialize");
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .timeout(timeout.unwrap_or(CALL_TIMEOUT))
            .send()
            .await
            .map_err(|err| transport(path, &err))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| transport(path, &err))?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            return Err(CallError::Status {
                path,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let reply = serde_json::from_slice(&bytes).map_err(|err| CallError::Decode {
            path,
            reason: err.to_string(),
        })?;
        Ok((reply, elapsed))
    }

    /// GETs `path` as text with `bearer` (the RM's `/metrics`).
    pub async fn get_text(&self, path: &'static str, bearer: &HeaderValue) -> Result<String, CallError> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, bearer.clone())
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|err| transport(path, &err))?;
        let status = response.status();
        let text = response.text().await.map_err(|err| transport(path, &err))?;
        if !status.is_success() {
            return Err(CallError::Status {
                path,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(text)
    }
}

/// A reqwest client keeping up to `idle_connections` connections open between calls.
fn client(idle_connections: usize) -> reqwest::Client {
    spindle_protocol::tls::client_builder()
        .connect_timeout(Duration::from_secs(3))
        // Below the RM's 10 s header-read timeout, which closes idle connections, as
        // `RmClient` does.
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(idle_connections)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds with a static configuration")
}

/// reqwest's error with its causes ("connection refused"), which its own message leaves out.
fn transport(path: &'static str, err: &reqwest::Error) -> CallError {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    CallError::Transport { path, reason }
}
