//! Forgotten nodes over HTTP, against a real RM in this process (port 0) started on a store that
//! already holds a tracked node and one the last RM forgot: the restarted RM does not track the
//! forgotten one again, `GET /v1/nodes` leaves it out, `?all=true` and `GET /v1/nodes/{id}`
//! answer its last state from the history.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use spindle_protocol::{ClientError, NodeId, NodeState, Resources, RmClient};
use spindle_resource_manager::RmConfig;
use spindle_resource_manager::records::{ForgottenNode, NodeRecord, WriteBatch};
use spindle_resource_manager::store::Store;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "node-history-cluster-secret-0123456789";
const TOKEN: &str = "alice-token-0123456789abcdef";

fn record(name: &str, state: NodeState, departed_at_ms: Option<u64>, forgotten: Option<ForgottenNode>) -> NodeRecord {
    NodeRecord {
        node_id: NodeId(name.to_owned()),
        address: name.to_owned(),
        rack: "/rack-1".to_owned(),
        labels: Vec::new(),
        capacity: Resources::new(4, 4096),
        state,
        decommission_deadline_ms: None,
        isolation: Default::default(),
        departed_at_ms,
        forgotten,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_node_is_history_that_a_restarted_rm_does_not_track() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = format!("sqlite://{}", dir.path().join("rm.db").display());
    // What the last RM left: a node it tracks (RUNNING) and one it forgot.
    let forgotten = ForgottenNode {
        at_ms: 5_000_000,
        last_heartbeat_ms: 1_000_000,
    };
    {
        let store = Store::connect(&db).await.expect("the store opens");
        let epoch = store.begin_epoch().await.unwrap();
        let nodes = vec![
            record("tracked:8042", NodeState::Running, None, None),
            record("gone:8042", NodeState::Lost, Some(1_010_000), Some(forgotten)),
        ];
        store
            .commit(
                epoch,
                &WriteBatch {
                    nodes,
                    ..WriteBatch::default()
                },
            )
            .await
            .unwrap();
        store.close().await;
    }

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config: RmConfig = toml::from_str(&format!(
        r#"
        db = "{db}"
        cluster_secret = "{SECRET}"
        users = [{{ name = "alice", token = "{TOKEN}" }}]
        "#
    ))
    .expect("the RM config parses");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        spindle_resource_manager::run(config, listener, stop)
            .await
            .expect("the RM runs until stopped");
    });
    let client = RmClient::new(std::slice::from_ref(&url), Some(TOKEN.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let tracked = loop {
        match client.nodes().await {
            Ok(nodes) => break nodes,
            Err(error) => assert!(Instant::now() < deadline, "the RM did not answer: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids = |nodes: &[spindle_protocol::NodeReport]| nodes.iter().map(|node| node.node_id.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&tracked), ["tracked:8042"], "the forgotten node is not tracked again");

    let all = client.all_nodes().await.unwrap();
    assert_eq!(ids(&all), ["gone:8042", "tracked:8042"], "by id, with the history");
    let gone = &all[0];
    assert_eq!(
        (
            gone.state,
            gone.departed_at_ms,
            gone.forgotten_at_ms,
            gone.last_heartbeat_ms,
            gone.containers
        ),
        (NodeState::Lost, Some(1_010_000), Some(5_000_000), 1_000_000, 0)
    );
    assert_eq!(all[1].forgotten_at_ms, None);

    let one = client.node(&NodeId("gone:8042".to_owned())).await.unwrap();
    assert_eq!(&one, gone, "one node's history reads the same");
    match client.node(&NodeId("never:8042".to_owned())).await {
        Err(ClientError::Api { status: 404, message, .. }) => assert!(message.contains("never:8042"), "{message}"),
        other => panic!("expected 404 for a node never seen, got {other:?}"),
    }

    let bad = spindle_protocol::tls::client_builder()
        .build()
        .unwrap()
        .get(format!("{url}/v1/nodes?all=maybe"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    let body = bad.text().await.unwrap();
    assert!(body.contains("all: `maybe`"), "{body}");

    shutdown.cancel();
    task.await.expect("the RM stopped cleanly");
}
