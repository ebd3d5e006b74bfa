//! Containers as real processes: exits, logs, environment, kills of whole process groups, and
//! memory limits through cgroups and through sampling.

mod common;

use std::time::{Duration, Instant};

use common::{TestAgent, container_id, process_gone};
use spindle_node_agent::{AgentError, MemoryEnforcement};
use spindle_protocol::{AgentClient, ContainerState, ExitReason, LogOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_container_completes_and_serves_its_logs() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    let started = agent.launch(1, 128, &["sh", "-c", "echo hi; echo err >&2"]).await.unwrap();
    assert_eq!(started.state, ContainerState::Running);
    assert!(started.started_at_ms.is_some());

    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Success));
    assert_eq!(done.exit_code, Some(0));
    assert!(done.finished_at_ms >= done.started_at_ms);
    let admin = agent.admin();
    assert_eq!(admin.logs(container_id(1), "stdout").await.unwrap(), "hi\n");
    assert_eq!(admin.logs(container_id(1), "stderr").await.unwrap(), "err\n");
    // The container's own token works for its logs too (its AM reads them).
    let token = agent.token(1, 128);
    let am = AgentClient::new(&agent.address, Some(token.signature));
    assert_eq!(am.logs(container_id(1), "stdout").await.unwrap(), "hi\n");
    // Only the end, streamed.
    let tail = admin
        .log_response(
            container_id(1),
            "stdout",
            &LogOptions {
                tail_bytes: Some(2),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.text().await.unwrap(), "i\n");
    let whole = admin
        .log_response(
            container_id(1),
            "stdout",
            &LogOptions {
                tail_bytes: Some(1000),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(whole.text().await.unwrap(), "hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_their_environment_and_working_dir() {
    let agent = TestAgent::start_without_rm(|config| {
        config.rm_urls = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()];
        // argv[0] `spindle` runs this binary instead.
        config.spindle_bin = "/bin/echo".into();
    })
    .await;
    let mut request = agent.launch_request(
        2,
        256,
        &[
            "sh",
            "-c",
            "echo $SPINDLE_APP_ID $SPINDLE_CONTAINER_ID $SPINDLE_ATTEMPT $SPINDLE_MEMORY_MB $SPINDLE_VCORES; \
             echo $SPINDLE_NODE_ID $SPINDLE_RM $GREETING; pwd",
        ],
    );
    request.launch.env.insert("GREETING".into(), "hello".into());
    agent.anonymous().launch(&request).await.unwrap();
    let done = agent.wait_complete(container_id(2)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Success), "{done:?}");
    let stdout = agent.admin().logs(container_id(2), "stdout").await.unwrap();
    let id = container_id(2);
    let expected = format!(
        "{} {id} 1 256 1\n{} http://127.0.0.1:1,http://127.0.0.1:2 hello\n{}\n",
        id.app,
        agent.node_id,
        agent.container_dir(2).display()
    );
    assert_eq!(stdout, expected);

    agent.launch(3, 64, &["spindle", "from", "spindle"]).await.unwrap();
    agent.wait_complete(container_id(3)).await;
    let stdout = agent.admin().logs(container_id(3), "stdout").await.unwrap();
    assert_eq!(stdout, "from spindle\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_reports_its_code_and_stderr() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    agent
        .launch(1, 128, &["sh", "-c", "echo first >&2; echo 'no such input' >&2; exit 3"])
        .await
        .unwrap();
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Failed));
    assert_eq!(done.exit_code, Some(3));
    assert!(done.diagnostics.starts_with("exited with code 3"), "{}", done.diagnostics);
    assert!(done.diagnostics.ends_with("first\nno such input"), "{}", done.diagnostics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_that_cannot_start_fail_with_shell_codes() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    let status = agent.launch(1, 128, &["/no/such/program", "arg"]).await.unwrap();
    // Reported as a completion, as YARN does, so the AM sees it like any other failure.
    assert_eq!(status.state, ContainerState::Complete);
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Failed));
    assert_eq!(done.exit_code, Some(127));
    assert!(done.diagnostics.contains("/no/such/program"), "{}", done.diagnostics);
    assert!(done.diagnostics.contains("No such file"), "{}", done.diagnostics);
    let stderr = agent.admin().logs(container_id(1), "stderr").await.unwrap();
    assert!(stderr.contains("/no/such/program"));

    let not_executable = agent.work_dir.join("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho no\n").unwrap();
    agent.launch(2, 128, &[not_executable.to_str().unwrap()]).await.unwrap();
    let done = agent.wait_complete(container_id(2)).await;
    assert_eq!(done.exit_code, Some(126));
    assert!(done.diagnostics.contains("Permission denied"), "{}", done.diagnostics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_kills_the_whole_process_group_quickly() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    agent
        .launch(
            1,
            128,
            &[
                "sh",
                "-c",
                "echo $$ > pids; sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; wait",
            ],
        )
        .await
        .unwrap();
    let pids = agent.read_pids(1, "pids", 3).await;

    let am = AgentClient::new(&agent.address, Some(agent.token(1, 128).signature));
    let asked = Instant::now();
    let stopped = am.stop(container_id(1)).await.unwrap();
    assert!(asked.elapsed() < Duration::from_millis(1500), "{:?}", asked.elapsed());
    assert_eq!(stopped.state, ContainerState::Complete);
    assert_eq!(stopped.exit_reason, Some(ExitReason::KilledByApp));
    assert_eq!(stopped.exit_code, Some(128 + libc::SIGTERM));
    for pid in pids {
        common::eventually(
            "the container's processes to die",
            || async move { process_gone(pid).then_some(()) },
        )
        .await;
    }
    // Stopping it again just answers the final status.
    let again = am.stop(container_id(1)).await.unwrap();
    assert_eq!(again, stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_ignoring_sigterm_gets_sigkill_after_the_grace_period() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    // An ignored signal stays ignored across exec, so sleep ignores SIGTERM too.
    agent
        .launch(1, 128, &["sh", "-c", "trap '' TERM; echo ready > ready; sleep 100"])
        .await
        .unwrap();
    agent.read_pids(1, "ready", 0).await;
    let asked = Instant::now();
    let stopped = agent.admin().stop(container_id(1)).await.unwrap();
    let took = asked.elapsed();
    assert!(took >= spindle_node_agent::CONTAINER_KILL_GRACE, "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(stopped.exit_reason, Some(ExitReason::KilledByApp));
    assert_eq!(stopped.exit_code, Some(128 + libc::SIGKILL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_die_with_their_leader() {
    let agent = TestAgent::start_without_rm(|_| {}).await;
    agent
        .launch(1, 128, &["sh", "-c", "sleep 100 & echo $! > pids; exit 0"])
        .await
        .unwrap();
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Success));
    let orphan = agent.read_pids(1, "pids", 1).await[0];
    common::eventually("the orphan to die", || async move { process_gone(orphan).then_some(()) }).await;
}

const MEMORY_HOG: &[&str] = &["python3", "-c", "b = bytearray(300 * 1024 * 1024); import time; time.sleep(5)"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroups_stop_a_container_at_its_memory_limit() {
    let agent = match TestAgent::start("http://127.0.0.1:1", |config| {
        config.memory_enforcement = MemoryEnforcement::Cgroup;
    })
    .await
    {
        Ok(agent) => agent,
        Err(AgentError::CgroupUnavailable(reason)) => {
            eprintln!("skipping: no writable cgroup memory hierarchy here ({reason})");
            return;
        }
        Err(other) => panic!("the agent did not start: {other}"),
    };
    let started = Instant::now();
    agent.launch(1, 64, MEMORY_HOG).await.unwrap();
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::ExceededMemory), "{done:?}");
    assert!(
        done.diagnostics.contains("more than its 64 MB memory limit"),
        "{}",
        done.diagnostics
    );
    assert!(
        done.diagnostics.contains("cgroup OOM"),
        "the kernel stopped it: {}",
        done.diagnostics
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // Its emptied cgroup is reused by the next container, whose own failure is not taken for
    // the earlier OOM kill.
    agent.launch(3, 64, &["sh", "-c", "exit 1"]).await.unwrap();
    let done = agent.wait_complete(container_id(3)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Failed), "{done:?}");

    // A container within its limit is unaffected.
    agent
        .launch(2, 64, &["python3", "-c", "b = bytearray(8 * 1024 * 1024)"])
        .await
        .unwrap();
    let done = agent.wait_complete(container_id(2)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::Success), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_kills_a_container_over_its_memory_limit() {
    let agent = TestAgent::start_without_rm(|config| {
        config.memory_enforcement = MemoryEnforcement::Sampling;
    })
    .await;
    let started = Instant::now();
    agent.launch(1, 64, MEMORY_HOG).await.unwrap();
    let done = agent.wait_complete(container_id(1)).await;
    assert_eq!(done.exit_reason, Some(ExitReason::ExceededMemory), "{done:?}");
    assert!(
        done.diagnostics.contains("more than its 64 MB memory limit"),
        "{}",
        done.diagnostics
    );
    assert!(
        done.diagnostics.contains("resident set"),
        "the monitor stopped it: {}",
        done.diagnostics
    );
    assert_eq!(done.exit_code, Some(128 + libc::SIGTERM));
    assert!(started.elapsed() < Duration::from_secs(4));
}
