//! Test harness: a real agent (`run` on port 0 in a temp work dir) and a stub RM that records
//! what the agent sends and answers what the test queues.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use spindle_node_agent::{AgentConfig, AgentError};
use spindle_protocol::{
    AgentClient, AgentLogin, AppId, ClientError, ClusterSecret, ContainerId, ContainerState, ContainerStatus, ContainerToken,
    LaunchRequest, LaunchSpec, NodeAuthority, NodeHeartbeatReply, NodeHeartbeatRequest, NodeId, RegisterNodeReply, RegisterNodeRequest,
    Resources, now_ms,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "node-agent-test-secret";

/// How long tests wait for something that normally takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET)
}

/// The stub RM's side of node credentials: hourly keys, accepted for a day.
pub fn authority() -> NodeAuthority {
    NodeAuthority::new(secret(), Duration::from_secs(3600), Duration::from_secs(24 * 3600))
}

pub fn container_id(seq: u64) -> ContainerId {
    ContainerId {
        app: AppId {
            cluster_ts: 1_700_000_000_000,
            seq: 7,
        },
        attempt: 1,
        epoch: 1,
        seq,
    }
}

/// Polls `probe` every 10 ms until it yields a value, or panics after `PATIENCE`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet, which holds no resources).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A running agent.
pub struct TestAgent {
    pub node_id: NodeId,
    pub address: String,
    pub work_dir: PathBuf,
    pub shutdown: CancellationToken,
    pub run: Option<JoinHandle<Result<(), AgentError>>>,
    /// Shared by launches, so they reuse connections as an AM's client does.
    launch_client: AgentClient,
    /// One expiry for every token this agent's tests sign, so a token signed twice is the same.
    token_expiry_ms: u64,
    _work_dir_guard: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent on 127.0.0.1:0 that heartbeats to `rm_url`; waits until it serves.
    /// Returns the agent's own error if `run` fails at start (for tests that may skip).
    pub async fn start(rm_url: &str, customize: impl FnOnce(&mut AgentConfig)) -> Result<TestAgent, AgentError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let work_dir_guard = tempfile::tempdir().unwrap();
        let node_id = NodeId(address.clone());
        // A credential saved as if by an earlier registration, so agents without an RM take
        // launches too; those with the stub RM register with their join token all the same.
        std::fs::write(
            work_dir_guard.path().join("node-credential.json"),
            serde_json::to_string(&authority().credential(&node_id, now_ms())).unwrap(),
        )
        .unwrap();
        let join_token = secret().join_token(now_ms() + 3_600_000);
        let mut config = AgentConfig::new(vec![rm_url.to_owned()], Some(join_token), work_dir_guard.path().to_path_buf());
        config.capacity = Some(Resources::new(8, 8192));
        // Containers run directly and die with the agent, as these tests expect (the recovery
        // tests run real agent processes, in tests/agent_restart.rs).
        config.recover_containers = false;
        config.kill_containers_on_stop = true;
        customize(&mut config);
        let shutdown = CancellationToken::new();
        let mut run = tokio::spawn(spindle_node_agent::run(config, listener, shutdown.clone()));
        let http = spindle_protocol::tls::client_builder().build().expect("an HTTP client");
        let healthz = format!("http://{address}/healthz");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            tokio::select! {
                finished = &mut run => {
                    return Err(finished.expect("the agent task panicked").expect_err("run returned Ok before serving"));
                }
                answer = http.get(&healthz).send() => {
                    if answer.is_ok_and(|answer| answer.status().is_success()) {
                        break;
                    }
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "agent did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(TestAgent {
            node_id: NodeId(address.clone()),
            address: address.clone(),
            work_dir: work_dir_guard.path().canonicalize().unwrap(),
            shutdown,
            run: Some(run),
            launch_client: AgentClient::new(&address, None),
            token_expiry_ms: now_ms() + 3_600_000,
            _work_dir_guard: work_dir_guard,
        })
    }

    /// An agent whose RM never answers (connection refused): for API-only tests.
    pub async fn start_without_rm(customize: impl FnOnce(&mut AgentConfig)) -> TestAgent {
        TestAgent::start("http://127.0.0.1:1", customize).await.unwrap()
    }

    /// The RM's bearer for this node.
    pub fn rm_bearer(&self) -> String {
        authority().rm_bearer(&self.node_id, 1, now_ms() + 3_600_000)
    }

    /// Client with the RM's bearer for this node.
    pub fn admin(&self) -> AgentClient {
        AgentClient::new(&self.address, Some(self.rm_bearer()))
    }

    /// Client without a bearer token (launches carry their token in the body).
    pub fn anonymous(&self) -> AgentClient {
        self.launch_client.clone()
    }

    pub fn token(&self, seq: u64, memory_mb: u64) -> ContainerToken {
        authority().sign_container(
            spindle_protocol::ContainerGrant {
                container_id: container_id(seq),
                node_id: self.node_id.clone(),
                resources: Resources::new(1, memory_mb),
                user: "nobody".to_owned(),
            },
            self.token_expiry_ms,
        )
    }

    pub fn launch_request(&self, seq: u64, memory_mb: u64, command: &[&str]) -> LaunchRequest {
        LaunchRequest {
            token: self.token(seq, memory_mb),
            launch: LaunchSpec {
                command: command.iter().map(|arg| arg.to_string()).collect(),
                env: Default::default(),
                files: Default::default(),
            },
        }
    }

    pub async fn launch(&self, seq: u64, memory_mb: u64, command: &[&str]) -> Result<ContainerStatus, ClientError> {
        self.anonymous().launch(&self.launch_request(seq, memory_mb, command)).await
    }

    /// `GET /v1/containers` with the RM's bearer (the typed client has no call for it).
    pub async fn list(&self) -> Vec<ContainerStatus> {
        spindle_protocol::tls::client_builder()
            .build()
            .expect("an HTTP client")
            .get(format!("http://{}/v1/containers", self.address))
            .bearer_auth(self.rm_bearer())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn wait_complete(&self, container: ContainerId) -> ContainerStatus {
        let admin = self.admin();
        eventually("container completion", || {
            let admin = admin.clone();
            async move {
                let status = admin.status(container).await.unwrap();
                (status.state == ContainerState::Complete).then_some(status)
            }
        })
        .await
    }

    pub fn container_dir(&self, seq: u64) -> PathBuf {
        let id = container_id(seq);
        self.work_dir.join("apps").join(id.app.to_string()).join(id.to_string())
    }

    /// Reads pids a container wrote to `file` in its working dir, once it wrote `count`.
    pub async fn read_pids(&self, seq: u64, file: &str, count: usize) -> Vec<i32> {
        let path = self.container_dir(seq).join(file);
        eventually("pids written by the container", || {
            let path = path.clone();
            async move { read_pid_file(&path, count) }
        })
        .await
    }

    /// Cancels the shutdown token and waits for `run` to return.
    pub async fn stop(&mut self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        let run = self.run.take().expect("stopped once");
        tokio::time::timeout(PATIENCE, run)
            .await
            .expect("run did not return after shutdown")
            .expect("the agent task panicked")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn read_pid_file(path: &Path, count: usize) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(path).ok()?;
    let pids: Vec<i32> = text.lines().filter_map(|line| line.trim().parse().ok()).collect();
    (pids.len() >= count).then_some(pids)
}

/// What the stub RM saw and what it will answer.
pub struct StubState {
    pub registrations: Mutex<Vec<RegisterNodeRequest>>,
    /// Each heartbeat with the time (ms since the epoch) it arrived.
    pub heartbeats: Mutex<Vec<(u64, NodeHeartbeatRequest)>>,
    /// Answers for the next heartbeats, one each; then the default answer.
    pub queued_replies: Mutex<VecDeque<NodeHeartbeatReply>>,
    /// Acknowledge every completed container a heartbeat reports.
    pub ack_completed: AtomicBool,
    /// Set `drain` in every heartbeat reply.
    pub drain: AtomicBool,
    pub heartbeat_interval_ms: AtomicU64,
    /// Requests without the RM's bearer.
    pub unauthorized: AtomicU64,
}

/// A stand-in for the RM's internal node API.
pub struct StubRm {
    pub url: String,
    pub state: Arc<StubState>,
    shutdown: CancellationToken,
}

impl StubRm {
    pub async fn start() -> StubRm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        StubRm::serve(listener).await
    }

    pub async fn serve(listener: tokio::net::TcpListener) -> StubRm {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(StubState {
            registrations: Mutex::new(Vec::new()),
            heartbeats: Mutex::new(Vec::new()),
            queued_replies: Mutex::new(VecDeque::new()),
            ack_completed: AtomicBool::new(true),
            drain: AtomicBool::new(false),
            heartbeat_interval_ms: AtomicU64::new(1000),
            unauthorized: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/internal/nodes/register", post(stub_register))
            .route("/v1/internal/nodes/heartbeat", post(stub_heartbeat))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        StubRm { url, state, shutdown }
    }

    pub fn queue_reply(&self, reply: NodeHeartbeatReply) {
        self.state.queued_replies.lock().unwrap().push_back(reply);
    }

    pub fn registrations(&self) -> Vec<RegisterNodeRequest> {
        self.state.registrations.lock().unwrap().clone()
    }

    pub fn heartbeat_count(&self) -> usize {
        self.state.heartbeats.lock().unwrap().len()
    }

    /// The first heartbeat (with its arrival time) that satisfies `predicate`.
    pub async fn wait_for_heartbeat(&self, what: &str, predicate: impl Fn(&NodeHeartbeatRequest) -> bool) -> (u64, NodeHeartbeatRequest) {
        eventually(what, || {
            let found = self
                .state
                .heartbeats
                .lock()
                .unwrap()
                .iter()
                .find(|(_, request)| predicate(request))
                .cloned();
            async move { found }
        })
        .await
    }

    pub async fn wait_for_registrations(&self, count: usize) -> Vec<RegisterNodeRequest> {
        eventually("registration", || {
            let registrations = self.registrations();
            async move { (registrations.len() >= count).then_some(registrations) }
        })
        .await
    }
}

impl Drop for StubRm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Who the agent's bearer says it is, as the RM checks it; counts refusals.
fn agent_login(state: &StubState, headers: &HeaderMap) -> Option<AgentLogin> {
    let login = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|bearer| authority().authenticate(bearer, now_ms()).ok());
    if login.is_none() {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
    }
    login
}

async fn stub_register(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Json(request): Json<RegisterNodeRequest>,
) -> Result<Json<RegisterNodeReply>, StatusCode> {
    if agent_login(&state, &headers).is_none() {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let credential = authority().credential(&request.node_id, now_ms());
    state.registrations.lock().unwrap().push(request);
    Ok(Json(RegisterNodeReply {
        epoch: 1,
        heartbeat_interval_ms: state.heartbeat_interval_ms.load(Ordering::Relaxed),
        kill: Vec::new(),
        acked: Vec::new(),
        credential,
    }))
}

async fn stub_heartbeat(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Json(request): Json<NodeHeartbeatRequest>,
) -> Result<Json<NodeHeartbeatReply>, StatusCode> {
    match agent_login(&state, &headers) {
        Some(AgentLogin::Node { node_id, .. }) if node_id == request.node_id => {}
        _ => return Err(StatusCode::UNAUTHORIZED),
    }
    let mut reply = state.queued_replies.lock().unwrap().pop_front().unwrap_or_default();
    // The stub is the RM of epoch 1 (as its registration replies say).
    reply.epoch = reply.epoch.max(1);
    reply.drain |= state.drain.load(Ordering::Relaxed);
    if state.ack_completed.load(Ordering::Relaxed) {
        reply.acked.extend(
            request
                .containers
                .iter()
                .filter(|status| status.state == ContainerState::Complete)
                .map(|status| status.container_id),
        );
    }
    state.heartbeats.lock().unwrap().push((now_ms(), request));
    Ok(Json(reply))
}
