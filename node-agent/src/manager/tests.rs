//! Unit tests of the container manager.

use super::*;

/// The AM's (or RM's) HTTP client may give up on a launch: axum then drops `launch`
/// wherever it waits. The container must still be supervised: it ends, and can be killed.
#[tokio::test]
async fn a_launch_whose_caller_goes_away_is_still_supervised() {
    let work_dir = crate::access::tests::passable_tempdir();
    let node_id = spindle_protocol::NodeId("n1:8042".to_owned());
    let context = LaunchContext {
        node_id: node_id.clone(),
        rm_urls: "http://127.0.0.1:1".to_owned(),
        work_dir: work_dir.path().to_owned(),
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
    let tasks = TaskTracker::new();
    let manager = Arc::new(ContainerManager::new(
        Some(crate::shuffle::api_tests::keys(&node_id)),
        context,
        tasks,
        CancellationToken::new(),
        Duration::from_secs(60),
    ));
    let container_id: ContainerId = "container_e01_1700000000000_0007_01_000001".parse().unwrap();
    let request = LaunchRequest {
        token: crate::shuffle::api_tests::authority().sign_container(
            spindle_protocol::ContainerGrant {
                container_id,
                node_id,
                resources: Resources::new(1, 64),
                user: "nobody".to_owned(),
            },
            now_ms() + 60_000,
        ),
        launch: LaunchSpec {
            command: vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()],
            env: Default::default(),
            files: Default::default(),
        },
    };
    // Polled once, then dropped.
    let finished = tokio::select! {
        biased;
        result = manager.launch(request) => Some(result),
        () = std::future::ready(()) => None,
    };
    assert!(finished.is_none(), "the launch was still in progress: {finished:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Recorded by the spawned launch once its account is resolved.
        let Ok(status) = manager.status(&container_id) else {
            assert!(Instant::now() < deadline, "the container was never recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if status.state == ContainerState::Complete {
            assert_eq!(status.exit_code, Some(3), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the container never completed: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
