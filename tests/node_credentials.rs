//! Node credentials against a real RM and real agents (in this process): agents join with a
//! join token and get keys for their own node only; a stolen credential acts as its node and
//! nothing else; keys rotate while the agent runs, jobs keep running, and old keys expire; a
//! restarted agent comes back with its saved credential.

mod support;

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use spindle_protocol::{
    AgentClient, ClusterSecret, JoinTokenRequest, NodeCredential, NodeHeartbeatRequest, NodeId, NodeKeyring, NodeState, NodeUsage,
    RegisterNodeRequest, Resources, RmClient, now_ms,
};
use support::{InProcessRm, SECRET, run_to_success, shell_job, wait_until};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(30);

/// An agent inside the test process.
struct Agent {
    node_id: NodeId,
    work_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), spindle_node_agent::AgentError>>,
}

impl Agent {
    /// Starts an agent on `port` (0: any) over `work_dir` with `join_token`.
    async fn start(rm: &InProcessRm, work_dir: tempfile::TempDir, port: u16, join_token: Option<String>) -> Agent {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let node_id = NodeId(listener.local_addr().unwrap().to_string());
        let mut config = spindle_node_agent::AgentConfig::new(vec![rm.url.clone()], join_token, work_dir.path().to_owned());
        config.advertise_host = Some("127.0.0.1".to_owned());
        config.capacity = Some(Resources::new(2, 2048));
        config.spindle_bin = support::spindle_bin();
        let stop = CancellationToken::new();
        let task = tokio::spawn(spindle_node_agent::run(config, listener, stop.clone()));
        Agent {
            node_id,
            work_dir,
            stop,
            task,
        }
    }

    /// Waits until the RM lists the node RUNNING and the agent has saved its credential (it
    /// does so right after the registration reply, which may be after the RM's listing).
    async fn wait_running(&self, rm: &InProcessRm) {
        let admin = rm.admin();
        wait_until(PATIENCE, &format!("{} to be RUNNING", self.node_id), || async {
            admin.node(&self.node_id).await.is_ok_and(|node| node.state == NodeState::Running)
                && self.work_dir.path().join("node-credential.json").exists()
        })
        .await;
    }

    /// What the agent saved: the keys an attacker who read its file would hold.
    fn saved_credential(&self) -> NodeCredential {
        read_credential(self.work_dir.path())
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.task.await.unwrap().expect("the agent stops cleanly");
        self.work_dir
    }
}

fn read_credential(work_dir: &Path) -> NodeCredential {
    let text = std::fs::read_to_string(work_dir.join("node-credential.json")).expect("the agent saved its node credential");
    serde_json::from_str(&text).unwrap()
}

fn register_request(node_id: &NodeId) -> RegisterNodeRequest {
    RegisterNodeRequest {
        node_id: node_id.clone(),
        address: node_id.to_string(),
        capacity: Resources::new(64, 65_536),
        rack: "/default-rack".to_owned(),
        labels: Vec::new(),
        containers: Vec::new(),
        isolation: Default::default(),
    }
}

fn heartbeat_request(node_id: &NodeId) -> NodeHeartbeatRequest {
    NodeHeartbeatRequest {
        node_id: node_id.clone(),
        usage: NodeUsage::default(),
        healthy: true,
        health_report: String::new(),
        containers: Vec::new(),
    }
}

fn refused(result: Result<impl std::fmt::Debug, spindle_protocol::ClientError>, status: u16, words: &[&str]) {
    match result {
        Err(spindle_protocol::ClientError::Api {
            status: actual, message, ..
        }) => {
            assert_eq!(actual, status, "{message}");
            for word in words {
                assert!(message.contains(word), "`{word}` not in: {message}");
            }
        }
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_credential_acts_as_its_own_node_and_nothing_else() {
    let rm = InProcessRm::start().await;
    let agent = Agent::start(&rm, support::shared_tempdir("spindle-cred-"), 0, Some(support::join_token())).await;
    agent.wait_running(&rm).await;
    let stolen = NodeKeyring::new(&agent.saved_credential()).unwrap();
    let mode = std::fs::metadata(agent.work_dir.path().join("node-credential.json")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let thief = RmClient::new(std::slice::from_ref(&rm.url), Some(stolen.bearer()));

    // Another node cannot be registered, nor heartbeat, with it; its own node can.
    let other = NodeId("127.0.0.1:1".to_owned());
    refused(
        thief.register_node(&register_request(&other)).await,
        403,
        &["credential is for node", "127.0.0.1:1"],
    );
    refused(thief.node_heartbeat(&heartbeat_request(&other)).await, 403, &["not 127.0.0.1:1"]);
    assert!(
        rm.admin().node(&other).await.is_err(),
        "a refused registration must not create the node"
    );
    let reply = thief.node_heartbeat(&heartbeat_request(&agent.node_id)).await.unwrap();
    assert!(reply.credential.is_none(), "the keys are current: nothing to rotate");

    // A join token registers new nodes, but neither heartbeats nor takes over a live node (its
    // launches would go to the token's holder).
    let joiner = RmClient::new(std::slice::from_ref(&rm.url), Some(support::join_token()));
    refused(
        joiner.node_heartbeat(&heartbeat_request(&agent.node_id)).await,
        403,
        &["join token only registers"],
    );
    refused(
        joiner.register_node(&register_request(&agent.node_id)).await,
        409,
        &["cannot take it over", "RUNNING"],
    );
    assert_eq!(
        rm.admin().node(&agent.node_id).await.unwrap().capacity,
        Resources::new(2, 2048),
        "the refused registration changed nothing"
    );

    // Node keys are not the RM's: with them no one reads, lists or stops the agent's containers.
    let agent_client = AgentClient::new(&agent.node_id.0, Some(stolen.bearer()));
    let container = "container_e01_1700000000000_0001_01_000001".parse().unwrap();
    refused(agent_client.status(container).await, 403, &["resource manager"]);
    let listing = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!("http://{}/v1/containers", agent.node_id))
        .bearer_auth(stolen.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::FORBIDDEN);

    // Join tokens come from admins, with a bounded life.
    let user = rm.user();
    refused(
        user.join_token(&JoinTokenRequest { ttl_s: 60 }).await,
        403,
        &["only cluster admins"],
    );
    for ttl_s in [0, 31 * 24 * 3600] {
        refused(rm.admin().join_token(&JoinTokenRequest { ttl_s }).await, 400, &["ttl_s"]);
    }
    let issued = rm.admin().join_token(&JoinTokenRequest { ttl_s: 60 }).await.unwrap();
    assert!(issued.expires_at_ms > now_ms() + 50_000 && issued.expires_at_ms <= now_ms() + 60_000);
    let second = Agent::start(&rm, support::shared_tempdir("spindle-cred-"), 0, Some(issued.token)).await;
    second.wait_running(&rm).await;
    assert_ne!(
        second.saved_credential().keys,
        agent.saved_credential().keys,
        "every node has keys of its own"
    );

    run_to_success(&rm.user(), &shell_job("after-joining", "echo hi", 2, 64, 0), PATIENCE).await;
    second.stop().await;
    agent.stop().await;
    rm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_while_the_agent_runs_and_old_ones_expire() {
    // Keys change every 2 s and are accepted for 4 s; launches expire after 1 s, so tokens are
    // always signed with a key the agent holds.
    let rm = InProcessRm::start_with(|config| {
        config.node_credential_rotation = Duration::from_secs(2);
        config.node_credential_lifetime = Duration::from_secs(4);
        config.container_launch_expiry = Duration::from_secs(1);
    })
    .await;
    let agent = Agent::start(&rm, support::shared_tempdir("spindle-cred-"), 0, Some(support::join_token())).await;
    agent.wait_running(&rm).await;
    let first = agent.saved_credential();
    let old_bearer = NodeKeyring::new(&first).unwrap().bearer();

    let rotated = wait_until(PATIENCE, "two rotations", || async {
        let now = read_credential(agent.work_dir.path());
        (now.current >= first.current + 2).then_some(now)
    })
    .await;
    assert!(
        rotated.keys.iter().all(|key| key.generation + 1 >= rotated.current),
        "the agent drops keys older than the previous generation: {:?}",
        rotated.keys
    );
    // Jobs launched across rotations run; the node never stopped heartbeating.
    for round in 0..3 {
        run_to_success(&rm.user(), &shell_job(&format!("rotating-{round}"), "echo hi", 2, 64, 0), PATIENCE).await;
    }
    assert_eq!(rm.admin().node(&agent.node_id).await.unwrap().state, NodeState::Running);

    // The first credential expires once its lifetime is over.
    let thief = RmClient::new(std::slice::from_ref(&rm.url), Some(old_bearer));
    let refusal = wait_until(PATIENCE, "the first credential to expire", || async {
        thief.node_heartbeat(&heartbeat_request(&agent.node_id)).await.err()
    })
    .await;
    refused(Err::<(), _>(refusal), 403, &["older than the oldest", "join token"]);

    // Restarted on its port without a join token, the agent comes back with its saved keys.
    let port: u16 = agent.node_id.0.rsplit_once(':').unwrap().1.parse().unwrap();
    let node_id = agent.node_id.clone();
    let work_dir = agent.stop().await;
    let restarted = Agent::start(&rm, work_dir, port, None).await;
    assert_eq!(restarted.node_id, node_id);
    let admin = rm.admin();
    let registered_at = now_ms();
    wait_until(PATIENCE, "the restarted agent to heartbeat", || async {
        admin
            .node(&node_id)
            .await
            .is_ok_and(|node| node.state == NodeState::Running && node.last_heartbeat_ms > registered_at)
    })
    .await;
    run_to_success(&rm.user(), &shell_job("after-restart", "echo hi", 1, 64, 0), PATIENCE).await;
    restarted.stop().await;
    rm.stop().await;
}

#[tokio::test]
async fn an_agent_without_a_credential_or_join_token_says_what_to_do() {
    let rm = InProcessRm::start().await;
    let agent = Agent::start(&rm, support::shared_tempdir("spindle-cred-"), 0, None).await;
    let message = agent.task.await.unwrap().unwrap_err().to_string();
    assert!(
        message.contains("no node credential") && message.contains("spindle join-token"),
        "{message}"
    );
    // Another cluster's join token is refused, naming it.
    let foreign = ClusterSecret::new("another-cluster-secret-0123").join_token(now_ms() + 60_000);
    assert_ne!(foreign, ClusterSecret::new(SECRET).join_token(now_ms() + 60_000));
    let joiner = RmClient::new(std::slice::from_ref(&rm.url), Some(foreign));
    refused(
        joiner.register_node(&register_request(&NodeId("127.0.0.1:2".into()))).await,
        403,
        &["join token is not valid"],
    );
    rm.stop().await;
}
