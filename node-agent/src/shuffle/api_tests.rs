//! The shuffle as tasks see it: the endpoint over HTTP (through `AgentClient` and raw requests),
//! the environment containers get, and deleting an ended app's data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_protocol::{
    AgentClient, AppId, ClientError, ClusterSecret, ContainerId, ContainerState, LaunchRequest, LaunchSpec, NodeAuthority, NodeId,
    NodeKeyring, Resources, now_ms,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launcher::LaunchContext;
use crate::manager::ContainerManager;
use crate::shuffle::app_shuffle_dir;

const SECRET: &str = "test-secret-0123456789";

fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET)
}

pub(crate) fn authority() -> NodeAuthority {
    NodeAuthority::new(secret(), Duration::from_secs(3600), Duration::from_secs(24 * 3600))
}

/// The keys the RM would have issued node `node_id` now.
pub(crate) fn keys(node_id: &NodeId) -> NodeKeyring {
    NodeKeyring::new(&authority().credential(node_id, now_ms())).unwrap()
}

fn app(seq: u32) -> AppId {
    AppId {
        cluster_ts: 1_700_000_000_000,
        seq,
    }
}

/// A container manager over `work_dir` on node `n1:8042`, as `run` builds one.
pub(crate) fn test_manager(work_dir: &std::path::Path) -> Arc<ContainerManager> {
    let context = LaunchContext {
        node_id: NodeId("n1:8042".to_owned()),
        rm_urls: "http://127.0.0.1:1".to_owned(),
        work_dir: work_dir.to_owned(),
        spindle_bin: "spindle".into(),
        recover: false,
        node_port: 8042,
        cgroups: None,
        run_mode: std::sync::Arc::new(crate::account::RunMode::detect(crate::account::DEFAULT_MIN_UID).unwrap()),
        inherited_env: crate::launcher::inherited_env(true),
        cpu: None,
        cpu_hard_cap: false,
        ca_file: None,
    };
    Arc::new(ContainerManager::new(
        Some(keys(&NodeId("n1:8042".to_owned()))),
        context,
        TaskTracker::new(),
        CancellationToken::new(),
        Duration::from_secs(3600),
    ))
}

/// The agent's API on port 0, over a temporary work dir.
struct TestApi {
    work_dir: tempfile::TempDir,
    manager: Arc<ContainerManager>,
    address: String,
    stop: CancellationToken,
}

impl TestApi {
    async fn start() -> TestApi {
        let work_dir = crate::access::tests::passable_tempdir();
        let manager = test_manager(work_dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let router = crate::api::router(manager.clone(), spindle_protocol::Resources::new(4, 4096));
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        TestApi {
            work_dir,
            manager,
            address,
            stop,
        }
    }

    fn client(&self) -> AgentClient {
        AgentClient::new(&self.address, None)
    }

    /// Writes an output of `partitions` into the app's shuffle dir as the task runtime does.
    /// Map output as a task of `app_id` writes it; the agent learns the app's shuffle token as
    /// from a launch of one of its containers.
    fn write_output(&self, app_id: AppId, name: &str, partitions: &[&[u8]]) {
        self.manager.learn_shuffle_token(app_id, secret().shuffle_token(app_id));
        let dir = app_shuffle_dir(self.work_dir.path(), app_id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut data = Vec::new();
        let mut index = Vec::new();
        for partition in partitions {
            index.extend_from_slice(&(data.len() as u64).to_le_bytes());
            data.extend_from_slice(partition);
        }
        index.extend_from_slice(&(data.len() as u64).to_le_bytes());
        std::fs::write(dir.join(format!("{name}.data")), data).unwrap();
        let temporary = dir.join(format!("{name}.index.tmp"));
        std::fs::write(&temporary, index).unwrap();
        std::fs::rename(temporary, dir.join(format!("{name}.index"))).unwrap();
    }

    /// A raw GET, for what the typed client does not show (headers, missing auth).
    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = spindle_protocol::tls::client_builder()
            .build()
            .expect("an HTTP client")
            .get(format!("http://{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The status and error message of a failed fetch.
fn api_error(result: Result<Vec<u8>, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, message, .. }) => (status, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_task_reads_each_partition_exactly_with_its_apps_token() {
    let api = TestApi::start().await;
    let partitions: [&[u8]; 4] = [b"apple\t1\n", b"", b"banana\t2\ncherry\t3\n", b"\x00\xff binary"];
    api.write_output(app(1), "m_000012_1", &partitions);
    let token = secret().shuffle_token(app(1));
    for (partition, expected) in partitions.iter().enumerate() {
        let bytes = api
            .client()
            .fetch_shuffle(app(1), "m_000012_1", partition as u32, &token)
            .await
            .unwrap();
        assert_eq!(bytes, *expected, "partition {partition}");
    }
    let response = api.get(&format!("/v1/shuffle/{}/m_000012_1/2", app(1)), Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(partitions[2].len() as u64));
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn a_missing_or_foreign_token_gets_401() {
    let api = TestApi::start().await;
    api.write_output(app(1), "m_1", &[b"secret data"]);
    let path = format!("/v1/shuffle/{}/m_1/0", app(1));

    let response = api.get(&path, None).await;
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("SPINDLE_SHUFFLE_TOKEN"),
        "{body}"
    );

    let another_apps_token = secret().shuffle_token(app(2));
    let (status, message) = api_error(api.client().fetch_shuffle(app(1), "m_1", 0, &another_apps_token).await);
    assert_eq!(status, 401);
    assert!(message.contains(&app(1).to_string()), "{message}");
    // Neither the RM's bearer nor another cluster's shuffle token opens it.
    for token in [
        authority().rm_bearer(&NodeId("n1:8042".to_owned()), 1, now_ms() + 60_000),
        ClusterSecret::new("another-cluster-secret").shuffle_token(app(1)),
    ] {
        let (status, _) = api_error(api.client().fetch_shuffle(app(1), "m_1", 0, &token).await);
        assert_eq!(status, 401);
    }
}

#[tokio::test]
async fn bad_ids_names_and_partitions_get_400_naming_the_field() {
    let api = TestApi::start().await;
    api.write_output(app(1), "m_1", &[b"a", b"b"]);
    let token = secret().shuffle_token(app(1));
    let app_path = format!("/v1/shuffle/{}", app(1));
    let cases = [
        ("/v1/shuffle/application_nope/m_1/0".to_owned(), "app_id"),
        (format!("{app_path}/a..b/0"), "output_name"),
        (format!("{app_path}/..%2Fm_1/0"), "output_name"),
        (format!("{app_path}/m%201/0"), "output_name"),
        (format!("{app_path}/m_1/first"), "partition"),
        (format!("{app_path}/m_1/-1"), "partition"),
        (format!("{app_path}/m_1/2"), "partition 2 is out of range"),
    ];
    for (path, field) in cases {
        let response = api.get(&path, Some(&token)).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{path}: {body}");
    }
    let (status, message) = api_error(api.client().fetch_shuffle(app(1), "../m_1", 0, &token).await);
    assert_eq!(status, 400, "{message}");
}

#[tokio::test]
async fn an_incomplete_output_or_an_unknown_app_gets_404() {
    let api = TestApi::start().await;
    let dir = app_shuffle_dir(api.work_dir.path(), app(1));
    std::fs::create_dir_all(&dir).unwrap();
    // The map is still writing: data, but no index yet.
    std::fs::write(dir.join("m_1.data"), b"half of it").unwrap();
    let token = secret().shuffle_token(app(1));
    api.manager.learn_shuffle_token(app(1), token.clone());
    let (status, message) = api_error(api.client().fetch_shuffle(app(1), "m_1", 0, &token).await);
    assert_eq!(status, 404);
    assert!(message.contains("m_1") && message.contains("index"), "{message}");
    let (status, _) = api_error(api.client().fetch_shuffle(app(1), "m_2", 0, &token).await);
    assert_eq!(status, 404);
    // No container of app 3 ran here: the agent has no token of it to check, so none opens it.
    let (status, _) = api_error(api.client().fetch_shuffle(app(3), "m_1", 0, &secret().shuffle_token(app(3))).await);
    assert_eq!(status, 401, "an app that never ran on this node");
}

#[tokio::test]
async fn a_large_partition_is_streamed_whole() {
    let api = TestApi::start().await;
    // 24 MiB in the middle partition, of bytes that show any shift or truncation.
    let large: Vec<u8> = (0..24u64 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    api.write_output(app(1), "m_big", &[b"before", &large, b"after"]);
    let token = secret().shuffle_token(app(1));

    let mut file = tokio::fs::File::create(api.work_dir.path().join("fetched")).await.unwrap();
    let written = api.client().fetch_shuffle_to(app(1), "m_big", 1, &token, &mut file).await.unwrap();
    drop(file);
    assert_eq!(written, large.len() as u64);
    let fetched = std::fs::read(api.work_dir.path().join("fetched")).unwrap();
    assert!(fetched == large, "the fetched partition differs from the written one");

    let in_memory = api.client().fetch_shuffle(app(1), "m_big", 2, &token).await.unwrap();
    assert_eq!(in_memory, b"after");
}

/// A map task's life: the container gets the dir and token, writes its output there, ends; the
/// output is still served, then the RM's clean-up deletes it.
#[tokio::test]
async fn map_output_outlives_its_container_until_the_app_is_cleaned_up() {
    let api = TestApi::start().await;
    let container_id: ContainerId = format!("container_e01_{}_0001_01_000002", app(1).cluster_ts).parse().unwrap();
    assert_eq!(container_id.app, app(1));
    let script = r#"
        test -d "$SPINDLE_SHUFFLE_DIR" || exit 10
        echo "$SPINDLE_SHUFFLE_DIR"
        echo "$SPINDLE_SHUFFLE_TOKEN"
        printf 'p0p1!' > "$SPINDLE_SHUFFLE_DIR/m_7.data"
        printf '\000\000\000\000\000\000\000\000\002\000\000\000\000\000\000\000\005\000\000\000\000\000\000\000' > "$SPINDLE_SHUFFLE_DIR/m_7.index.tmp"
        mv "$SPINDLE_SHUFFLE_DIR/m_7.index.tmp" "$SPINDLE_SHUFFLE_DIR/m_7.index"
    "#;
    let request = LaunchRequest {
        token: authority().sign_container(
            spindle_protocol::ContainerGrant {
                container_id,
                node_id: NodeId("n1:8042".to_owned()),
                resources: Resources::new(1, 64),
                user: "nobody".to_owned(),
            },
            now_ms() + 60_000,
        ),
        launch: LaunchSpec {
            command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            // The app cannot point its tasks elsewhere or pick another app's token.
            env: [
                ("SPINDLE_SHUFFLE_DIR".to_owned(), "/tmp/elsewhere".to_owned()),
                ("SPINDLE_SHUFFLE_TOKEN".to_owned(), secret().shuffle_token(app(2))),
            ]
            .into(),
            files: Default::default(),
        },
    };
    api.manager.launch(request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = api.manager.status(&container_id).unwrap();
        if status.state == ContainerState::Complete {
            break status;
        }
        assert!(Instant::now() < deadline, "the container never completed: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stdout = std::fs::read_to_string(api.manager.log_path(&container_id, "stdout")).unwrap();
    assert_eq!(status.exit_code, Some(0), "{status:?} {stdout}");
    let shuffle_dir = app_shuffle_dir(api.work_dir.path(), app(1));
    let token = secret().shuffle_token(app(1));
    assert_eq!(stdout, format!("{}\n{token}\n", shuffle_dir.display()));
    assert!(
        !shuffle_dir.starts_with(api.work_dir.path().join("apps")),
        "outside the container's dir"
    );

    let token = secret().shuffle_token(app(1));
    assert_eq!(api.client().fetch_shuffle(app(1), "m_7", 0, &token).await.unwrap(), b"p0");
    assert_eq!(api.client().fetch_shuffle(app(1), "m_7", 1, &token).await.unwrap(), b"p1!");

    assert_eq!(api.manager.clean_up_shuffle(&[app(1)]).await, vec![app(1)]);
    assert!(!shuffle_dir.exists());
    let (status, _) = api_error(api.client().fetch_shuffle(app(1), "m_7", 0, &token).await);
    assert_eq!(status, 401, "cleaned up: the app's token went with its data");
}

#[tokio::test]
async fn clean_up_spares_apps_with_a_running_container_and_is_idempotent() {
    let work_dir = crate::access::tests::passable_tempdir();
    let manager = test_manager(work_dir.path());
    let running: ContainerId = format!("container_e01_{}_0002_01_000001", app(2).cluster_ts).parse().unwrap();
    let request = LaunchRequest {
        token: authority().sign_container(
            spindle_protocol::ContainerGrant {
                container_id: running,
                node_id: NodeId("n1:8042".to_owned()),
                resources: Resources::new(1, 64),
                user: "nobody".to_owned(),
            },
            now_ms() + 60_000,
        ),
        launch: LaunchSpec {
            command: vec!["sleep".to_owned(), "30".to_owned()],
            env: Default::default(),
            files: Default::default(),
        },
    };
    manager.launch(request).await.unwrap();
    let ended_dir = app_shuffle_dir(work_dir.path(), app(1));
    std::fs::create_dir_all(&ended_dir).unwrap();
    std::fs::write(ended_dir.join("m_1.data"), vec![7u8; 4096]).unwrap();
    let running_dir = app_shuffle_dir(work_dir.path(), app(2));
    assert!(running_dir.is_dir(), "the launch made the app's shuffle dir");

    let removed = manager.clean_up_shuffle(&[app(1), app(2), app(3)]).await;
    assert_eq!(removed, vec![app(1), app(3)], "an app with no dir here is cleaned up already");
    assert!(!ended_dir.exists());
    assert!(running_dir.is_dir(), "a running container may still write there");
    assert_eq!(manager.clean_up_shuffle(&[app(1)]).await, vec![app(1)], "again: nothing to do");

    manager.kill_by_rm(&[running]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while manager.status(&running).unwrap().state != ContainerState::Complete {
        assert!(Instant::now() < deadline, "the kill never took");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(manager.clean_up_shuffle(&[app(2)]).await, vec![app(2)]);
    assert!(!running_dir.exists());
}
