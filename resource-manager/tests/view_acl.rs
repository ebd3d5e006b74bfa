//! Who sees what, over HTTP against a real RM in this process (port 0): bob sees the state,
//! queue, user and name of alice's app but not its diagnostics, AM counters, containers'
//! stderr or logs; alice (the owner), carol (an admin of its queue) and root (a cluster admin)
//! see all of it. `/metrics` wants a token. The test plays the node agent (a fake one serving
//! launches and logs) and the AM.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Path;
use axum::routing::{self, post};
use reqwest::StatusCode;
use spindle_protocol::{
    AllocateRequest, AppId, AppReport, AppState, ClusterSecret, ContainerId, ContainerReport, ContainerState, ContainerStatus, ExitReason,
    JobDetail, JobSpec, LaunchRequest, NodeHeartbeatRequest, NodeId, NodeUsage, RegisterAmRequest, RegisterNodeRequest, Resources,
    RmClient, StageStatus,
};
use spindle_resource_manager::RmConfig;
use spindle_resource_manager::cluster::HIDDEN;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "view-acl-cluster-secret-0123456789";
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-token-0123456789abcdef";
const ROOT: &str = "root-token-0123456789abcdef";

/// Texts only alice's app's viewers may ever read, each from a different place.
const COMMAND_SECRET: &str = "command-secret-3141";
const ENV_SECRET: &str = "env-secret-2718";
const COUNTER_SECRET: &str = "counter-secret-1618";
const STDERR_SECRET: &str = "stderr-secret-1414";
const LOG_SECRET: &str = "log-secret-1732";
const SECRETS: [&str; 5] = [COMMAND_SECRET, ENV_SECRET, COUNTER_SECRET, STDERR_SECRET, LOG_SECRET];

/// An RM in this process: alice, bob and carol are plain users, root a cluster admin; carol
/// administers queue `batch`.
struct Rm {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Rm {
    async fn start() -> Rm {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let config: RmConfig = toml::from_str(&format!(
            r#"
            listen = "{address}"
            db = "sqlite://{db}"
            cluster_secret = "{SECRET}"
            users = [
                {{ name = "alice", token = "{ALICE}" }},
                {{ name = "bob", token = "{BOB}" }},
                {{ name = "carol", token = "{CAROL}" }},
                {{ name = "root", token = "{ROOT}", admin = true }},
            ]
            [queues]
            name = "root"
            [[queues.children]]
            name = "batch"
            guaranteed_percent = 100
            am_share_percent = 100
            admin_users = ["carol"]
            "#,
            db = dir.path().join("rm.db").display(),
        ))
        .expect("the RM config parses");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            spindle_resource_manager::run(config, listener, stop)
                .await
                .expect("the RM runs until stopped");
        });
        let rm = Rm {
            url: format!("http://{address}"),
            shutdown,
            task,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&format!("{}/healthz", rm.url), None).await.0 != StatusCode::OK {
            assert!(Instant::now() < deadline, "the RM did not answer /healthz");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rm
    }

    fn client(&self, token: String) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.url), Some(token))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("the RM stopped cleanly");
    }
}

/// A GET with an optional bearer token: the status and the body as sent.
async fn get(url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = spindle_protocol::tls::client_builder().build().expect("an HTTP client").get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the RM answers");
    (response.status(), response.text().await.expect("a body"))
}

/// A node agent that accepts every launch and serves a log holding `LOG_SECRET`.
async fn fake_agent() -> SocketAddr {
    async fn launch(Json(request): Json<LaunchRequest>) -> Json<ContainerStatus> {
        Json(running(request.token.container_id))
    }
    async fn logs(Path((container_id, stream)): Path<(String, String)>) -> String {
        format!("{stream} of {container_id}: {LOG_SECRET}\n")
    }
    let router = axum::Router::new()
        .route("/v1/containers", post(launch))
        .route("/v1/containers/{container_id}/logs/{stream}", routing::get(logs));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

fn running(container_id: ContainerId) -> ContainerStatus {
    ContainerStatus {
        container_id,
        state: ContainerState::Running,
        exit_code: None,
        exit_reason: None,
        diagnostics: String::new(),
        started_at_ms: Some(1),
        finished_at_ms: None,
    }
}

fn heartbeat(node_id: &NodeId, status: ContainerStatus) -> NodeHeartbeatRequest {
    NodeHeartbeatRequest {
        node_id: node_id.clone(),
        usage: NodeUsage::default(),
        healthy: true,
        health_report: String::new(),
        containers: vec![status],
    }
}

/// Alice's job: its command and env hold secrets; one AM attempt.
fn alices_job() -> JobSpec {
    toml::from_str(&format!(
        r#"
        name = "alices-job"
        queue = "batch"
        kind = "shell"
        max_attempts = 1
        [shell]
        command = ["sh", "-c", "echo {COMMAND_SECRET}"]
        containers = 1
        env = {{ API_KEY = "{ENV_SECRET}" }}
        "#
    ))
    .expect("the job parses")
}

fn allocate_with_detail(app_id: AppId) -> AllocateRequest {
    AllocateRequest {
        app_id,
        attempt: 1,
        asks: Vec::new(),
        releases: Vec::new(),
        progress: 0.5,
        wait_ms: 0,
        response_id: None,
        detail: Some(JobDetail {
            stages: vec![StageStatus {
                name: "run".to_owned(),
                total: 2,
                running: 1,
                succeeded: 1,
            }],
            counters: [(format!("lines of `{COUNTER_SECRET}`"), 3)].into(),
            ..spindle_protocol::JobDetail::default()
        }),
    }
}

async fn app_as(rm: &Rm, token: &str, app_id: AppId) -> (AppReport, String) {
    let (status, body) = get(&format!("{}/v1/apps/{app_id}", rm.url), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (serde_json::from_str(&body).unwrap(), body)
}

async fn containers_as(rm: &Rm, token: &str, app_id: AppId) -> (Vec<ContainerReport>, String) {
    let (status, body) = get(&format!("{}/v1/apps/{app_id}/containers", rm.url), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (serde_json::from_str(&body).unwrap(), body)
}

fn assert_no_secret(what: &str, body: &str) {
    for secret in SECRETS {
        assert!(!body.contains(secret), "{what} shows `{secret}` to bob: {body}");
    }
}

#[tokio::test]
async fn only_an_apps_owner_queue_admins_and_admins_see_its_diagnostics_counters_and_logs() {
    let rm = Rm::start().await;
    let agent_address = fake_agent().await.to_string();
    let node_id = NodeId(agent_address.clone());
    let joining = rm.client(ClusterSecret::new(SECRET).join_token(spindle_protocol::now_ms() + 60_000));
    let registered = joining
        .register_node(&RegisterNodeRequest {
            node_id: node_id.clone(),
            address: agent_address,
            capacity: Resources {
                vcores: 4,
                memory_mb: 4096,
            },
            rack: "/default-rack".to_owned(),
            labels: Vec::new(),
            containers: Vec::new(),
            isolation: Default::default(),
        })
        .await
        .expect("the agent registers");
    let agent = rm.client(spindle_protocol::NodeKeyring::new(&registered.credential).unwrap().bearer());

    let app_id = rm.client(ALICE.to_owned()).submit(&alices_job()).await.expect("alice submits");
    // Rounds run in the RM's round task, a moment after the submission.
    let mut am_container = None;
    for _ in 0..100 {
        am_container = rm.client(ALICE.to_owned()).app(app_id).await.unwrap().attempts[0].am_container;
        if am_container.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let am_container = am_container.expect("the AM container is granted within a second on the empty node");
    agent.node_heartbeat(&heartbeat(&node_id, running(am_container))).await.unwrap();
    let am = rm.client(ClusterSecret::new(SECRET).am_token(app_id, 1));
    am.register_am(&RegisterAmRequest { app_id, attempt: 1 }).await.unwrap();
    am.allocate(&allocate_with_detail(app_id)).await.unwrap();

    // While it runs: bob sees its stages and progress, not the counters its AM named.
    let (bobs, body) = app_as(&rm, BOB, app_id).await;
    assert_eq!(bobs.state, AppState::Running);
    assert_eq!(bobs.progress, 0.5);
    let detail = bobs.detail.expect("the stages are progress: bob sees them");
    assert_eq!((detail.stages.len(), detail.counters.len()), (1, 0));
    assert_no_secret("a running app's report", &body);
    let (alices, _) = app_as(&rm, ALICE, app_id).await;
    assert_eq!(alices.detail.unwrap().counters.len(), 1, "alice sees her AM's counters");

    // The AM container fails with a secret on its stderr: the app fails with it.
    let failed = ContainerStatus {
        state: ContainerState::Complete,
        exit_code: Some(1),
        exit_reason: Some(ExitReason::Failed),
        diagnostics: format!("exited with code 1; stderr tail: {STDERR_SECRET}"),
        finished_at_ms: Some(2),
        ..running(am_container)
    };
    agent.node_heartbeat(&heartbeat(&node_id, failed)).await.unwrap();

    for (who, token) in [("alice", ALICE), ("carol", CAROL), ("root", ROOT)] {
        let (report, _) = app_as(&rm, token, app_id).await;
        assert_eq!(report.state, AppState::Failed, "{who}");
        assert!(report.diagnostics.contains(STDERR_SECRET), "{who}: {}", report.diagnostics);
        assert!(report.attempts[0].diagnostics.contains(STDERR_SECRET), "{who}");
        let (containers, _) = containers_as(&rm, token, app_id).await;
        assert!(containers[0].diagnostics.contains(STDERR_SECRET), "{who}");
        let (status, log) = get(&format!("{}/v1/containers/{am_container}/logs/stderr", rm.url), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{who}: {log}");
        assert!(log.contains(LOG_SECRET), "{who}: {log}");
    }

    let (bobs, body) = app_as(&rm, BOB, app_id).await;
    assert_eq!(
        (bobs.state, bobs.queue.as_str(), bobs.user.as_str(), bobs.name.as_str()),
        (AppState::Failed, "batch", "alice", "alices-job")
    );
    assert_eq!(bobs.diagnostics, HIDDEN);
    assert_eq!(bobs.attempts[0].diagnostics, HIDDEN);
    assert_no_secret("GET /v1/apps/{id}", &body);
    let (status, list) = get(&format!("{}/v1/apps?user=alice", rm.url), Some(BOB)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("alices-job"), "bob lists alice's app: {list}");
    assert_no_secret("GET /v1/apps", &list);
    let (containers, body) = containers_as(&rm, BOB, app_id).await;
    assert_eq!((containers[0].state, containers[0].exit_code), (ContainerState::Complete, Some(1)));
    assert_eq!(containers[0].diagnostics, HIDDEN);
    assert_no_secret("GET /v1/apps/{id}/containers", &body);
    let (status, refused) = get(&format!("{}/v1/containers/{am_container}/logs/stdout", rm.url), Some(BOB)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused.contains("user bob may not read the logs")
            && refused.contains("only its owner, an admin of queue `batch` or a cluster admin may"),
        "{refused}"
    );
    assert_no_secret("the logs refusal", &refused);

    let metrics = format!("{}/metrics", rm.url);
    let (status, refused) = get(&metrics, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert!(
        refused.contains("/metrics needs the bearer token") && refused.contains("authorization:"),
        "{refused}"
    );
    assert_eq!(get(&metrics, Some("not-a-token")).await.0, StatusCode::UNAUTHORIZED);
    let (status, scraped) = get(&metrics, Some(BOB)).await;
    assert_eq!(status, StatusCode::OK, "{scraped}");
    assert!(scraped.contains("spindle_apps{state=\"FAILED\"} 1"), "{scraped}");
    assert_no_secret("/metrics", &scraped);
    rm.stop().await;
}
