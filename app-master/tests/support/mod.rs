//! A fake RM (the AM protocol: register, allocate, finish) and a fake node agent
//! (`POST /v1/containers`) on one in-test axum server, so the real AM runs end to end over HTTP.
//! Launched containers end at once with the exit code the test's `behaviour` picks, and their
//! completion reaches the AM in the next allocate, as the real RM would report it.

// Each test file uses a part of the fake.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use spindle_protocol::{
    AllocateReply, AllocateRequest, Allocation, AppId, ContainerId, ContainerState, ContainerStatus, ContainerToken, ExitReason,
    FinishAmRequest, LaunchRequest, NodeId, RegisterAmReply, RegisterAmRequest, Resources,
};
use tokio::sync::Notify;

pub const APP: AppId = AppId {
    cluster_ts: 1_700_000_000_000,
    seq: 7,
};
pub const ATTEMPT: u32 = 1;
pub const AM_TOKEN: &str = "am-token";

/// Picks how launch number `launch` (from 1) of task `task` ends: `Some(exit code)` at once, or
/// `None` to keep running.
pub type Behaviour = Arc<dyn Fn(u32, u32) -> Option<i32> + Send + Sync>;

/// One launch the fake agent accepted or refused.
#[derive(Debug, Clone)]
pub struct Launch {
    pub container_id: ContainerId,
    pub task_index: u32,
    pub request: LaunchRequest,
    pub refused: bool,
}

/// What the fake saw, and the knobs a test turns.
pub struct FakeState {
    pub registers: u32,
    pub allocates: u32,
    pub launches: Vec<Launch>,
    pub releases: Vec<ContainerId>,
    pub finish: Option<FinishAmRequest>,
    /// Answer 503 to this many upcoming allocates.
    pub failing_allocates: u32,
    /// Answer every allocate with this status from now on.
    pub reject_allocates: Option<u16>,
    /// Tell the AM to stop in the next allocate reply.
    pub shutdown: bool,
    /// Grant this many containers more than asked, once.
    pub extra_grants: u32,
    /// The agent refuses this many upcoming launches with 403.
    pub refused_launches: u32,
    /// Listed as live in the register reply.
    pub live_on_register: Vec<ContainerId>,
    /// The `response_id` of every allocate that got an answer, in order.
    pub response_ids_seen: Vec<Option<u64>>,
    /// Preemption notices in every reply.
    pub preempt: Vec<ContainerId>,
    /// The app's controls in every reply.
    pub controls: BTreeMap<String, serde_json::Value>,
    /// The detail of the last allocate that carried one.
    pub last_detail: Option<spindle_protocol::JobDetail>,
    replies_sent: u64,
    behaviour: Behaviour,
    next_seq: u64,
    completions: Vec<ContainerStatus>,
    released: HashSet<ContainerId>,
}

struct Shared {
    state: Mutex<FakeState>,
    /// Wakes a long-polling allocate when a completion or a knob changes.
    news: Notify,
    address: String,
}

/// The running fake; the server stops when it is dropped.
pub struct FakeCluster {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeCluster {
    pub async fn start(behaviour: Behaviour) -> FakeCluster {
        Self::start_at("127.0.0.1:0", behaviour).await
    }

    /// Starts on a given address, e.g. one an AM is already trying to reach.
    pub async fn start_at(address: &str, behaviour: Behaviour) -> FakeCluster {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                registers: 0,
                allocates: 0,
                launches: Vec::new(),
                releases: Vec::new(),
                finish: None,
                failing_allocates: 0,
                reject_allocates: None,
                shutdown: false,
                extra_grants: 0,
                refused_launches: 0,
                live_on_register: Vec::new(),
                response_ids_seen: Vec::new(),
                preempt: Vec::new(),
                controls: BTreeMap::new(),
                last_detail: None,
                replies_sent: 0,
                behaviour,
                next_seq: 2,
                completions: Vec::new(),
                released: HashSet::new(),
            }),
            news: Notify::new(),
            address,
        });
        let router = Router::new()
            .route("/v1/internal/am/register", post(register))
            .route("/v1/internal/am/allocate", post(allocate))
            .route("/v1/internal/am/finish", post(finish))
            .route("/v1/containers", post(launch))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeCluster { shared, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// Reads or turns the knobs; wakes a waiting allocate afterwards.
    pub fn with<T>(&self, change: impl FnOnce(&mut FakeState) -> T) -> T {
        let result = change(&mut self.shared.state.lock().unwrap());
        self.shared.news.notify_one();
        result
    }
}

pub fn container(seq: u64) -> ContainerId {
    ContainerId {
        app: APP,
        attempt: ATTEMPT,
        epoch: 1,
        seq,
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let body = json!({"error": {"code": "fake", "message": message}});
    (status, Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|value| value.to_str().ok()) == Some(&format!("Bearer {AM_TOKEN}"))
}

fn lock(shared: &Shared) -> MutexGuard<'_, FakeState> {
    shared.state.lock().unwrap()
}

async fn register(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(request): Json<RegisterAmRequest>) -> Response {
    if !authorized(&headers) || request.app_id != APP || request.attempt != ATTEMPT {
        return error(401, "not this attempt");
    }
    let mut state = lock(&shared);
    state.registers += 1;
    Json(RegisterAmReply {
        queue: "default".into(),
        max_container: Resources::new(8, 8192),
        live_containers: state.live_on_register.clone(),
    })
    .into_response()
}

async fn allocate(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(request): Json<AllocateRequest>) -> Response {
    if !authorized(&headers) || request.app_id != APP || request.attempt != ATTEMPT {
        return error(401, "not this attempt");
    }
    let allocated = {
        let mut state = lock(&shared);
        state.allocates += 1;
        if let Some(status) = state.reject_allocates {
            return error(status, "rejected by the test");
        }
        if state.failing_allocates > 0 {
            state.failing_allocates -= 1;
            return error(503, "restarting");
        }
        state.response_ids_seen.push(request.response_id);
        if request.detail.is_some() {
            state.last_detail = request.detail.clone();
        }
        state.released.extend(request.releases.iter().copied());
        state.releases.extend(request.releases.iter().copied());
        let asked: u32 = request.asks.iter().map(|ask| ask.count).sum();
        let count = asked + std::mem::take(&mut state.extra_grants);
        let resources = request.asks.first().map(|ask| ask.resources).unwrap_or_default();
        (0..count)
            .map(|_| {
                state.next_seq += 1;
                grant(container(state.next_seq), resources, &shared.address)
            })
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.min(2000));
    loop {
        {
            let mut state = lock(&shared);
            let news = state.shutdown || !allocated.is_empty() || !state.completions.is_empty();
            if news || tokio::time::Instant::now() >= deadline {
                state.replies_sent += 1;
                return Json(AllocateReply {
                    allocated,
                    completed: std::mem::take(&mut state.completions),
                    preempt: state.preempt.clone(),
                    headroom: Resources::ZERO,
                    shutdown: state.shutdown,
                    response_id: state.replies_sent,
                    controls: state.controls.clone(),
                })
                .into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, shared.news.notified()).await;
    }
}

fn grant(container_id: ContainerId, resources: Resources, address: &str) -> Allocation {
    let node_id = NodeId(address.to_owned());
    Allocation {
        container_id,
        node_id: node_id.clone(),
        node_address: address.to_owned(),
        resources,
        token: ContainerToken {
            container_id,
            node_id,
            resources,
            expires_at_ms: u64::MAX,
            signature: format!("sig-{container_id}"),
            user: "nobody".to_owned(),
            key_generation: 0,
            shuffle_token: String::new(),
        },
    }
}

async fn finish(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(request): Json<FinishAmRequest>) -> Response {
    if !authorized(&headers) {
        return error(401, "not this attempt");
    }
    lock(&shared).finish = Some(request);
    Json(json!({})).into_response()
}

/// The fake agent: records the launch and ends the container as `behaviour` says.
async fn launch(State(shared): State<Arc<Shared>>, Json(request): Json<LaunchRequest>) -> Response {
    let container_id = request.token.container_id;
    let task_index: u32 = request.launch.env["SPINDLE_TASK_INDEX"].parse().unwrap();
    let mut state = lock(&shared);
    let refused = state.refused_launches > 0;
    state.launches.push(Launch {
        container_id,
        task_index,
        request,
        refused,
    });
    if refused {
        state.refused_launches -= 1;
        return error(403, "the container token is not valid");
    }
    let launch_number = state
        .launches
        .iter()
        .filter(|launch| launch.task_index == task_index && !launch.refused)
        .count() as u32;
    let exit_code = (state.behaviour)(task_index, launch_number);
    let status = ContainerStatus {
        container_id,
        state: ContainerState::Running,
        exit_code: None,
        exit_reason: None,
        diagnostics: String::new(),
        started_at_ms: Some(1),
        finished_at_ms: None,
    };
    if let Some(code) = exit_code.filter(|_| !state.released.contains(&container_id)) {
        let mut done = status.clone();
        done.state = ContainerState::Complete;
        done.exit_code = Some(code);
        done.exit_reason = Some(if code == 0 { ExitReason::Success } else { ExitReason::Failed });
        done.diagnostics = if code == 0 { "" } else { "task said no" }.into();
        done.finished_at_ms = Some(2);
        state.completions.push(done);
        shared.news.notify_one();
    }
    Json(status).into_response()
}
