//! A typed HTTP client for the RM's public and internal APIs and the agent's API.
//! Several RM URLs may be given; the client tries them in order until one answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::*;

/// What went wrong talking to a Spindle server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {urls}: {reason}. Is it running? Check the address (--rm or SPINDLE_RM).")]
    Unreachable { urls: String, reason: String },
    #[error("{message} (HTTP {status}, {code})")]
    Api { status: u16, code: String, message: String },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an error answer, if the server gave one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable code of an error answer (`spindle_protocol::error_codes`), if the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Shared plumbing of both clients: base URLs, a bearer token, JSON in and out.
#[derive(Debug, Clone)]
struct Http {
    client: reqwest::Client,
    bases: Vec<String>,
    token: Option<String>,
    /// The base URL that answered last (not as a standby), shared by clones: tried first.
    active: Arc<Mutex<Option<String>>>,
}

/// The header that makes a submission safe to send again: the RM answers a repeated key from
/// the same user with the app the first one made.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The header a standby RM sets on every answer (`spindle_resource_manager::ha`).
const ROLE_HEADER: &str = "x-spindle-role";
/// How long a client looks for the active RM among its URLs once a standby has answered:
/// a failover takes a lease and a little more.
const FAILOVER_WAIT: Duration = Duration::from_secs(20);
/// The pause between two rounds over the URLs while waiting for an active RM.
const FAILOVER_PAUSE: Duration = Duration::from_millis(50);

/// The active's base URL from a standby's 307: its `Location` less the path that was asked.
fn redirect_base(response: &reqwest::Response, path: &str) -> Option<String> {
    if response.status() != StatusCode::TEMPORARY_REDIRECT {
        return None;
    }
    let location = response.headers().get(reqwest::header::LOCATION)?.to_str().ok()?;
    let base = location.strip_suffix(path)?;
    (base.starts_with("http://") || base.starts_with("https://")).then(|| base.to_owned())
}

/// reqwest's message with its causes, which say what went wrong ("connection refused", "invalid
/// peer certificate: UnknownIssuer"); its own message names only the URL.
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A base URL; an address without a scheme gets `https://` once the process trusts a CA
/// (`crate::tls`), else `http://`.
fn normalise_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("{}://{url}", crate::tls::default_scheme())
    }
}

impl Http {
    fn new(bases: &[String], token: Option<String>, timeout: Duration) -> Self {
        let client = crate::tls::client_builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(64)
            // Below the daemons' 10 s header-read timeout, which closes idle connections: the
            // client drops an idle connection before the server does, so no request is sent
            // on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // A standby's 307 is followed by `send_as`, within the configured URLs' group;
            // reqwest's own following would drop the bearer token on the way.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds with a static configuration");
        Http {
            client,
            bases: bases.iter().map(|base| normalise_base(base)).collect(),
            token,
            active: Arc::default(),
        }
    }

    async fn send_raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_as(self.token.as_deref(), method, path, body, timeout, None).await
    }

    /// Sends with `token` as the bearer instead of the client's own (`None`: no header).
    ///
    /// Tries the RM this client last found active, then each URL in order. A standby's answer
    /// (307 to the active, or 503 while one takes over) moves on to the active it names, or
    /// to the next URL; once any standby has answered, the RMs form a group in which one will
    /// lead soon, so the round is repeated for up to `FAILOVER_WAIT`. A connection that could
    /// not be made moves on too; a request that may have reached a server (a reset or a
    /// timeout after sending) is sent again only if it is a read, so a submission is never
    /// made twice unless it carries an idempotency key.
    async fn send_as<B: Serialize>(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        let mut last_error = String::from("no URL configured");
        let mut standby_seen = false;
        loop {
            let mut candidates = self.candidates();
            let mut index = 0;
            while let Some(base) = candidates.get(index).cloned() {
                index += 1;
                let url = format!("{base}{path}");
                let mut request = self.client.request(method.clone(), &url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if let Some(body) = body {
                    request = request.json(body);
                }
                if let Some(timeout) = timeout {
                    request = request.timeout(timeout);
                }
                if let Some(key) = idempotency_key {
                    request = request.header(IDEMPOTENCY_KEY_HEADER, key);
                }
                match request.send().await {
                    Ok(response) if response.headers().get(ROLE_HEADER).is_some_and(|role| role == "standby") => {
                        standby_seen = true;
                        last_error = format!("{base} is a standby ({})", response.status());
                        if let Some(active) = redirect_base(&response, path)
                            && !candidates[index..].contains(&active)
                        {
                            candidates.insert(index, active);
                        }
                    }
                    Ok(response) => {
                        *self.active.lock().expect("the active URL is never poisoned") = Some(base);
                        return Ok(response);
                    }
                    Err(err) if err.is_connect() || method == Method::GET || idempotency_key.is_some() => last_error = describe(&err),
                    Err(err) => {
                        return Err(ClientError::Unreachable {
                            urls: base,
                            reason: format!("{} (the request may have arrived, so it was not sent again)", describe(&err)),
                        });
                    }
                }
            }
            if !standby_seen || tokio::time::Instant::now() + FAILOVER_PAUSE >= deadline {
                break;
            }
            tokio::time::sleep(FAILOVER_PAUSE).await;
        }
        if last_error.contains("certificate") && !crate::tls::enabled() {
            last_error.push_str(" (an https server: give its CA with --ca-file or SPINDLE_CA_FILE)");
        }
        Err(ClientError::Unreachable {
            urls: self.bases.join(","),
            reason: last_error,
        })
    }

    /// The URLs to try, the one last found active first.
    fn candidates(&self) -> Vec<String> {
        let active = self.active.lock().expect("the active URL is never poisoned").clone();
        let rest = self.bases.iter().filter(|base| active.as_ref() != Some(*base)).cloned();
        active.clone().into_iter().chain(rest).collect()
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        self.call_keyed(method, path, body, timeout, None).await
    }

    /// `call`, with an idempotency key (which makes a POST safe to send again).
    async fn call_keyed<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<R, ClientError> {
        let response = self
            .send_as(self.token.as_deref(), method, path, body, timeout, idempotency_key)
            .await?;
        let response = check(response).await?;
        let url = response.url().to_string();
        response.json::<R>().await.map_err(|err| ClientError::Decode {
            url,
            reason: err.to_string(),
        })
    }

    /// `GET /v1/containers/{id}/logs/{stream}[?tail_bytes=N]`, the same path on the RM and on
    /// agents, unread, with the long timeout of a large log.
    async fn log_response(&self, container_id: ContainerId, stream: &str, options: &LogOptions) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/containers/{container_id}/logs/{stream}{}", options.query());
        // A followed log stays open while its container runs.
        let timeout = if options.follow { LOG_FOLLOW_TIMEOUT } else { LOG_FETCH_TIMEOUT };
        let response = self.send_raw::<()>(Method::GET, &path, None, Some(timeout)).await?;
        check(response).await
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let response = self.send_raw::<()>(Method::GET, path, None, None).await?;
        let response = check(response).await?;
        let url = response.url().to_string();
        response.text().await.map_err(|err| ClientError::Decode {
            url,
            reason: err.to_string(),
        })
    }
}

/// Turns a non-2xx answer into `ClientError::Api`, reading the `{"error": …}` body.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
        Ok(parsed) => (parsed.error.code, parsed.error.message),
        Err(_) => (status_code_name(status), if body.is_empty() { status.to_string() } else { body }),
    };
    Err(ClientError::Api {
        status: status.as_u16(),
        code,
        message,
    })
}

fn status_code_name(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_")
}

/// Query of `GET /v1/apps`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Client of the RM: users (with an API token), agents (join token or node credential) and AMs (AM token).
#[derive(Debug, Clone)]
pub struct RmClient {
    http: Http,
}

impl RmClient {
    /// `urls`: one or more RM addresses (`host:port` or `http://host:port`).
    pub fn new(urls: &[String], token: Option<String>) -> Self {
        RmClient {
            http: Http::new(urls, token, Duration::from_secs(30)),
        }
    }

    /// Replaces the bearer token (an agent's keys rotate).
    pub fn set_token(&mut self, token: Option<String>) {
        self.http.token = token;
    }

    /// Submits with a fresh idempotency key, so a submission whose answer was lost (the RM
    /// died or failed over after receiving it) is sent again safely: never two apps.
    pub async fn submit(&self, spec: &JobSpec) -> Result<AppId, ClientError> {
        let key = new_idempotency_key();
        let reply: SubmitReply = self.http.call_keyed(Method::POST, "/v1/apps", Some(spec), None, Some(&key)).await?;
        Ok(reply.app_id)
    }

    pub async fn apps(&self, filter: &AppFilter) -> Result<Vec<AppReport>, ClientError> {
        let query = serde_json::to_value(filter).expect("filters serialize");
        let query: Vec<(String, String)> = query
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string())))
            .collect();
        let mut path = String::from("/v1/apps");
        for (index, (key, value)) in query.iter().enumerate() {
            path.push(if index == 0 { '?' } else { '&' });
            path.push_str(&format!("{key}={}", encode_query(value)));
        }
        self.http.call::<(), _>(Method::GET, &path, None, None).await
    }

    pub async fn app(&self, app_id: AppId) -> Result<AppReport, ClientError> {
        self.http
            .call::<(), _>(Method::GET, &format!("/v1/apps/{app_id}"), None, None)
            .await
    }

    pub async fn kill(&self, app_id: AppId) -> Result<AppReport, ClientError> {
        self.http
            .call::<(), _>(Method::DELETE, &format!("/v1/apps/{app_id}"), None, None)
            .await
    }

    /// Asks for operator `operator` of stream app `app_id` to run with `parallelism` instances.
    pub async fn scale_operator(&self, app_id: AppId, operator: &str, parallelism: u32) -> Result<ScaleReply, ClientError> {
        let path = format!("/v1/apps/{app_id}/operators/{}", encode_query(operator));
        self.http.call(Method::PUT, &path, Some(&ScaleRequest { parallelism }), None).await
    }

    /// Asks stream app `app_id` for a savepoint (and to stop after it, with `stop`); its AM
    /// reports it in the app's `detail.stream.savepoints` under the answer's id.
    pub async fn request_savepoint(&self, app_id: AppId, request: &SavepointRequest) -> Result<SavepointReply, ClientError> {
        let path = format!("/v1/apps/{app_id}/savepoints");
        self.http.call(Method::POST, &path, Some(request), None).await
    }

    pub async fn containers(&self, app_id: AppId) -> Result<Vec<ContainerReport>, ClientError> {
        self.http
            .call::<(), _>(Method::GET, &format!("/v1/apps/{app_id}/containers"), None, None)
            .await
    }

    /// The nodes the RM tracks, departed ones (DECOMMISSIONED, LOST) until it forgets them.
    pub async fn nodes(&self) -> Result<Vec<NodeReport>, ClientError> {
        self.http.call::<(), _>(Method::GET, "/v1/nodes", None, None).await
    }

    /// The nodes the RM tracks and those it has forgotten (their last state, `forgotten_at_ms` set).
    pub async fn all_nodes(&self) -> Result<Vec<NodeReport>, ClientError> {
        self.http.call::<(), _>(Method::GET, "/v1/nodes?all=true", None, None).await
    }

    pub async fn node(&self, node_id: &NodeId) -> Result<NodeReport, ClientError> {
        self.http
            .call::<(), _>(Method::GET, &format!("/v1/nodes/{node_id}"), None, None)
            .await
    }

    /// Calls a drain off (admins only): the node is RUNNING again.
    pub async fn recommission(&self, node_id: &NodeId) -> Result<NodeReport, ClientError> {
        self.http
            .call(
                Method::POST,
                &format!("/v1/nodes/{node_id}/recommission"),
                Some(&serde_json::json!({})),
                None,
            )
            .await
    }

    pub async fn decommission(&self, node_id: &NodeId, request: &DecommissionRequest) -> Result<NodeReport, ClientError> {
        self.http
            .call(Method::POST, &format!("/v1/nodes/{node_id}/decommission"), Some(request), None)
            .await
    }

    /// A join token for new agents (cluster admins only).
    pub async fn join_token(&self, request: &JoinTokenRequest) -> Result<JoinTokenReply, ClientError> {
        self.http.call(Method::POST, "/v1/cluster/join-tokens", Some(request), None).await
    }

    pub async fn queues(&self) -> Result<QueueReport, ClientError> {
        self.http.call::<(), _>(Method::GET, "/v1/queues", None, None).await
    }

    /// Makes the RM apply its config file's queues again (admins only).
    pub async fn reload_queues(&self) -> Result<QueueReport, ClientError> {
        self.http.call::<(), _>(Method::POST, "/v1/queues/reload", None, None).await
    }

    pub async fn cluster(&self) -> Result<ClusterReport, ClientError> {
        self.http.call::<(), _>(Method::GET, "/v1/cluster", None, None).await
    }

    /// A container's stdout or stderr, fetched by the RM from the container's node.
    pub async fn logs(&self, container_id: ContainerId, stream: &str) -> Result<String, ClientError> {
        self.http.text(&format!("/v1/containers/{container_id}/logs/{stream}")).await
    }

    /// A container's stdout or stderr as an unread response, to stream on (a log may be larger
    /// than memory), or only its last `tail_bytes` bytes.
    pub async fn log_response(
        &self,
        container_id: ContainerId,
        stream: &str,
        options: &LogOptions,
    ) -> Result<reqwest::Response, ClientError> {
        self.http.log_response(container_id, stream, options).await
    }

    pub async fn register_node(&self, request: &RegisterNodeRequest) -> Result<RegisterNodeReply, ClientError> {
        self.http
            .call(Method::POST, "/v1/internal/nodes/register", Some(request), None)
            .await
    }

    pub async fn node_heartbeat(&self, request: &NodeHeartbeatRequest) -> Result<NodeHeartbeatReply, ClientError> {
        self.http
            .call(Method::POST, "/v1/internal/nodes/heartbeat", Some(request), None)
            .await
    }

    pub async fn register_am(&self, request: &RegisterAmRequest) -> Result<RegisterAmReply, ClientError> {
        self.http.call(Method::POST, "/v1/internal/am/register", Some(request), None).await
    }

    /// Long-polls: the request may wait up to `wait_ms` on the server.
    pub async fn allocate(&self, request: &AllocateRequest) -> Result<AllocateReply, ClientError> {
        let timeout = Duration::from_millis(request.wait_ms) + Duration::from_secs(10);
        self.http
            .call(Method::POST, "/v1/internal/am/allocate", Some(request), Some(timeout))
            .await
    }

    pub async fn finish_am(&self, request: &FinishAmRequest) -> Result<(), ClientError> {
        let _: serde_json::Value = self.http.call(Method::POST, "/v1/internal/am/finish", Some(request), None).await?;
        Ok(())
    }
}

/// Client of one node agent's container API.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: Http,
}

impl AgentClient {
    /// `token`: the RM's bearer for this node, or a container token's signature (AM) for reads and stops.
    pub fn new(address: &str, token: Option<String>) -> Self {
        AgentClient {
            http: Http::new(&[address.to_owned()], token, Duration::from_secs(30)),
        }
    }

    pub async fn launch(&self, request: &LaunchRequest) -> Result<ContainerStatus, ClientError> {
        self.http.call(Method::POST, "/v1/containers", Some(request), None).await
    }

    pub async fn status(&self, container_id: ContainerId) -> Result<ContainerStatus, ClientError> {
        self.http
            .call::<(), _>(Method::GET, &format!("/v1/containers/{container_id}"), None, None)
            .await
    }

    pub async fn stop(&self, container_id: ContainerId) -> Result<ContainerStatus, ClientError> {
        self.http
            .call::<(), _>(Method::DELETE, &format!("/v1/containers/{container_id}"), None, None)
            .await
    }

    pub async fn logs(&self, container_id: ContainerId, stream: &str) -> Result<String, ClientError> {
        self.http.text(&format!("/v1/containers/{container_id}/logs/{stream}")).await
    }

    /// A container's log as an unread response, to stream on (the RM's log proxy), or only
    /// its last `tail_bytes` bytes.
    pub async fn log_response(
        &self,
        container_id: ContainerId,
        stream: &str,
        options: &LogOptions,
    ) -> Result<reqwest::Response, ClientError> {
        self.http.log_response(container_id, stream, options).await
    }

    /// Partition `partition` of the map output `output_name` of `app_id`, read with the app's
    /// shuffle token (`SPINDLE_SHUFFLE_TOKEN`) rather than the client's own token, so one
    /// client per agent serves every fetch. The whole partition is held in memory: use
    /// `fetch_shuffle_to` to stream a large one into a file.
    pub async fn fetch_shuffle(&self, app_id: AppId, output_name: &str, partition: u32, token: &str) -> Result<Vec<u8>, ClientError> {
        let mut bytes = Vec::new();
        self.fetch_shuffle_to(app_id, output_name, partition, token, &mut bytes).await?;
        Ok(bytes)
    }

    /// Like `fetch_shuffle`, but writes the partition to `sink` as it arrives; returns its length.
    /// A body shorter than the agent's `Content-Length` (a broken connection) is an error.
    pub async fn fetch_shuffle_to<W>(
        &self,
        app_id: AppId,
        output_name: &str,
        partition: u32,
        token: &str,
        sink: &mut W,
    ) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin + ?Sized,
    {
        use tokio::io::AsyncWriteExt;

        let path = format!("/v1/shuffle/{app_id}/{}/{partition}", encode_query(output_name));
        let response = self
            .http
            .send_as::<()>(Some(token), Method::GET, &path, None, Some(SHUFFLE_FETCH_TIMEOUT), None)
            .await?;
        let mut response = check(response).await?;
        let url = response.url().to_string();
        let decode_error = |reason: String| ClientError::Decode { url: url.clone(), reason };
        let expected = response.content_length();
        let mut received: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|err| decode_error(err.to_string()))? {
            sink.write_all(&chunk)
                .await
                .map_err(|err| decode_error(format!("cannot store the partition: {err}")))?;
            received += chunk.len() as u64;
        }
        sink.flush()
            .await
            .map_err(|err| decode_error(format!("cannot store the partition: {err}")))?;
        if let Some(expected) = expected.filter(|expected| *expected != received) {
            return Err(decode_error(format!("the partition ended after {received} of {expected} bytes")));
        }
        Ok(received)
    }
}

/// How long one shuffle fetch may take in all: partitions can be large, so far more than the
/// control calls' 30 s; a fetch that fails is retried by the reducer.
const SHUFFLE_FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The longest a log is streamed through the RM.
const LOG_FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long a followed log may stay open (it ends when its container does).
const LOG_FOLLOW_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which part of a container's log to read: the query of `GET /v1/containers/{id}/logs/{stream}`
/// at the RM and at the agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Only the last N bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_bytes: Option<u64>,
    /// Only the last N lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u64>,
    /// Keep the answer open and send what is appended until the container has ended.
    #[serde(default)]
    pub follow: bool,
}

impl LogOptions {
    /// `?tail_bytes=…&tail_lines=…&follow=true`, or nothing.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(bytes) = self.tail_bytes {
            parts.push(format!("tail_bytes={bytes}"));
        }
        if let Some(lines) = self.tail_lines {
            parts.push(format!("tail_lines={lines}"));
        }
        if self.follow {
            parts.push("follow=true".to_owned());
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// 128 random bits in hex.
fn new_idempotency_key() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    hex::encode(bytes)
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
