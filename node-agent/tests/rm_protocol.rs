//! The agent against a stub RM: registration, immediate and periodic heartbeats, and what the
//! RM's replies make the agent do (kill, ack, drain, shutdown, resync).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{StubRm, TestAgent, container_id, process_gone};
use spindle_protocol::{ContainerState, ExitReason, NodeHeartbeatReply, Resources};

fn reports(request: &spindle_protocol::NodeHeartbeatRequest, seq: u64, state: ContainerState) -> bool {
    request
        .containers
        .iter()
        .any(|status| status.container_id == container_id(seq) && status.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_starts_and_ends_are_reported_at_once() {
    let rm = StubRm::start().await;
    // Periodic heartbeats every 5 s: only the immediate path can explain a fast report.
    rm.state.heartbeat_interval_ms.store(5_000, Ordering::Relaxed);
    let agent = TestAgent::start(&rm.url, |config| {
        config.heartbeat_interval = Duration::from_secs(5);
        config.rack = "/rack-7".into();
        config.labels = vec!["ssd".into()];
    })
    .await
    .unwrap();

    let registration = rm.wait_for_registrations(1).await.remove(0);
    assert_eq!(registration.node_id, agent.node_id);
    assert_eq!(registration.address, agent.address);
    assert_eq!(registration.capacity, Resources::new(8, 8192));
    assert_eq!(registration.rack, "/rack-7");
    assert_eq!(registration.labels, vec!["ssd".to_owned()]);
    assert!(registration.containers.is_empty());

    agent.launch(1, 128, &["sh", "-c", "sleep 0.3"]).await.unwrap();
    rm.wait_for_heartbeat("the start report", |request| reports(request, 1, ContainerState::Running))
        .await;
    let (arrived_ms, heartbeat) = rm
        .wait_for_heartbeat("the completion report", |request| reports(request, 1, ContainerState::Complete))
        .await;
    let status = heartbeat
        .containers
        .iter()
        .find(|status| status.container_id == container_id(1))
        .unwrap();
    assert_eq!(status.exit_reason, Some(ExitReason::Success));
    let delay_ms = arrived_ms.saturating_sub(status.finished_at_ms.unwrap());
    assert!(delay_ms < 900, "the completion took {delay_ms} ms to reach the RM");
    assert!(heartbeat.healthy, "{}", heartbeat.health_report);
    assert!(heartbeat.usage.memory_used_mb > 0);

    // The stub acknowledged container 1: later heartbeats leave it out.
    agent.launch(2, 128, &["true"]).await.unwrap();
    let (_, later) = rm
        .wait_for_heartbeat("the second completion", |request| reports(request, 2, ContainerState::Complete))
        .await;
    assert!(
        later.containers.iter().all(|status| status.container_id != container_id(1)),
        "{later:?}"
    );
    assert_eq!(rm.state.unauthorized.load(Ordering::Relaxed), 0);
    // Its status is still served after the ack (its files stay too).
    let status = agent.admin().status(container_id(1)).await.unwrap();
    assert_eq!(status.state, ContainerState::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rm_kill_list_kills_containers() {
    let rm = StubRm::start().await;
    rm.state.heartbeat_interval_ms.store(200, Ordering::Relaxed);
    let agent = TestAgent::start(&rm.url, |_| {}).await.unwrap();
    agent.launch(1, 128, &["sleep", "100"]).await.unwrap();
    rm.wait_for_heartbeat("the start report", |request| reports(request, 1, ContainerState::Running))
        .await;
    rm.queue_reply(NodeHeartbeatReply {
        kill: vec![container_id(1), container_id(404)],
        ..Default::default()
    });
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::KilledByRm));
    assert_eq!(done.exit_code, Some(128 + libc::SIGTERM));
    rm.wait_for_heartbeat("the kill's completion report", |request| {
        reports(request, 1, ContainerState::Complete)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_refuses_launches() {
    let rm = StubRm::start().await;
    rm.state.heartbeat_interval_ms.store(100, Ordering::Relaxed);
    let agent = TestAgent::start(&rm.url, |_| {}).await.unwrap();
    rm.wait_for_registrations(1).await;

    rm.state.drain.store(true, Ordering::Relaxed);
    let seen = rm.heartbeat_count();
    common::eventually("two drain replies", || {
        let count = rm.heartbeat_count();
        async move { (count >= seen + 2).then_some(()) }
    })
    .await;
    let refused = agent.launch(1, 128, &["true"]).await.unwrap_err();
    assert_eq!(refused.code(), Some(spindle_protocol::error_codes::DRAINING), "{refused}");
    assert!(refused.to_string().contains("node is decommissioning"), "{refused}");

    rm.state.drain.store(false, Ordering::Relaxed);
    let seen = rm.heartbeat_count();
    common::eventually("two normal replies", || {
        let count = rm.heartbeat_count();
        async move { (count >= seen + 2).then_some(()) }
    })
    .await;
    agent.launch(1, 128, &["true"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_shutdown_stops_the_agent_and_its_containers() {
    let rm = StubRm::start().await;
    rm.state.heartbeat_interval_ms.store(200, Ordering::Relaxed);
    let mut agent = TestAgent::start(&rm.url, |_| {}).await.unwrap();
    agent.launch(1, 128, &["sh", "-c", "echo $$ > pids; exec sleep 100"]).await.unwrap();
    let pid = agent.read_pids(1, "pids", 1).await[0];
    rm.queue_reply(NodeHeartbeatReply {
        shutdown: true,
        ..Default::default()
    });
    let run = agent.run.take().unwrap();
    let result = tokio::time::timeout(common::PATIENCE, run)
        .await
        .expect("run returns after the RM says shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(process_gone(pid), "a decommissioned node's containers are killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_registers_again_with_unacknowledged_completions() {
    let rm = StubRm::start().await;
    rm.state.heartbeat_interval_ms.store(200, Ordering::Relaxed);
    rm.state.ack_completed.store(false, Ordering::Relaxed);
    let agent = TestAgent::start(&rm.url, |_| {}).await.unwrap();
    rm.wait_for_registrations(1).await;
    agent.launch(1, 128, &["sh", "-c", "exit 4"]).await.unwrap();
    agent.launch(2, 128, &["sleep", "100"]).await.unwrap();
    rm.wait_for_heartbeat("the completion report", |request| reports(request, 1, ContainerState::Complete))
        .await;

    rm.queue_reply(NodeHeartbeatReply {
        resync: true,
        ..Default::default()
    });
    let registrations = rm.wait_for_registrations(2).await;
    let again = &registrations[1];
    let completed = again
        .containers
        .iter()
        .find(|status| status.container_id == container_id(1))
        .expect("the unacknowledged completion is part of the new registration");
    assert_eq!(completed.state, ContainerState::Complete);
    assert_eq!(completed.exit_code, Some(4));
    assert!(
        again
            .containers
            .iter()
            .any(|status| { status.container_id == container_id(2) && status.state == ContainerState::Running })
    );
    // Heartbeats go on after the new registration.
    let count = rm.heartbeat_count();
    common::eventually("heartbeats after resync", || {
        let now = rm.heartbeat_count();
        async move { (now > count).then_some(()) }
    })
    .await;
    agent.admin().stop(container_id(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_once_the_rm_is_up_and_kills_its_containers_on_shutdown() {
    // A port nothing listens on yet: the RM "starts after the agent".
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let rm_url = format!("http://127.0.0.1:{port}");
    let mut agent = TestAgent::start(&rm_url, |_| {}).await.unwrap();
    agent.launch(1, 128, &["sh", "-c", "echo $$ > pids; exec sleep 100"]).await.unwrap();
    let pid = agent.read_pids(1, "pids", 1).await[0];
    tokio::time::sleep(Duration::from_millis(300)).await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let rm = StubRm::serve(listener).await;
    let registration = rm.wait_for_registrations(1).await.remove(0);
    assert!(
        registration
            .containers
            .iter()
            .any(|status| status.container_id == container_id(1) && status.state == ContainerState::Running),
        "{registration:?}"
    );

    agent.stop().await.unwrap();
    assert!(
        process_gone(pid),
        "stopping the agent kills its containers: nothing could adopt them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_to_keep_its_containers_leaves_them_running_on_shutdown() {
    let mut agent = TestAgent::start_without_rm(|config| config.kill_containers_on_stop = false).await;
    agent.launch(1, 128, &["sh", "-c", "echo $$ > pids; exec sleep 100"]).await.unwrap();
    let pid = agent.read_pids(1, "pids", 1).await[0];
    agent.stop().await.unwrap();
    assert!(!process_gone(pid), "the container outlives its agent");
    // SAFETY: the container's process group, started by this test's agent.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
}
