//! The real `spindle` binary as processes: an RM and node agents started, killed and restarted
//! the way an operator (or a crash) would, with jobs running through it all.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerId, ContainerState, ExitReason, FinalStatus, NodeId, NodeState};
use support::{Db, PgSchema, TestCluster, shell_job, task_containers, wait_for_app_end, wait_until};

/// How long a job of these tests may take; they finish in well under half of it.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_two_agents_run_a_shell_job() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();

    // Over plain REST, as any HTTP client would.
    let spec = shell_job("hello", "echo hello $SPINDLE_TASK_INDEX", 4, 128, 3);
    let response = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .post(format!("{}/v1/apps", cluster.rm_url()))
        .bearer_auth(support::ADMIN_TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned();
    let reply: spindle_protocol::SubmitReply = response.json().await.unwrap();
    let app_id = reply.app_id;
    assert_eq!(location, format!("/v1/apps/{app_id}"));

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );

    let tasks = task_containers(&admin, app_id).await;
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    let nodes: BTreeSet<&NodeId> = cluster.agents.iter().map(|agent| &agent.node_id).collect();
    let mut greeted = BTreeSet::new();
    for task in &tasks {
        assert_eq!(
            (task.state, task.exit_reason, task.exit_code),
            (ContainerState::Complete, Some(ExitReason::Success), Some(0))
        );
        assert!(
            nodes.contains(&task.node_id),
            "{} ran on an unknown node {}",
            task.container_id,
            task.node_id
        );
        let logs = cluster.cli(&["logs", &task.container_id.to_string()]).await;
        assert!(logs.success(), "{logs}");
        let index: u32 = logs
            .stdout
            .trim()
            .strip_prefix("hello ")
            .and_then(|index| index.parse().ok())
            .unwrap_or_else(|| panic!("`spindle logs {}` printed {:?}", task.container_id, logs.stdout));
        greeted.insert(index);
        let tail = cluster.cli(&["logs", &task.container_id.to_string(), "--tail-bytes", "3"]).await;
        assert!(tail.success(), "{tail}");
        assert_eq!(
            tail.stdout,
            logs.stdout[logs.stdout.len() - 3..],
            "`--tail-bytes 3` is the last 3 bytes"
        );
        let last_line = cluster.cli(&["logs", &task.container_id.to_string(), "--tail", "1"]).await;
        assert_eq!(last_line.stdout, logs.stdout, "`--tail 1` is the one line it printed");
    }
    assert_eq!(greeted, (0..4).collect(), "every task index said hello once");

    let apps = cluster.cli(&["apps", "--json"]).await;
    assert!(apps.success(), "{apps}");
    let listed: serde_json::Value = serde_json::from_str(&apps.stdout).expect("`apps --json` prints JSON");
    assert!(
        listed.as_array().unwrap().iter().any(|app| app["app_id"] == app_id.to_string()),
        "{listed}"
    );

    let app = cluster.cli(&["app", &app_id.to_string()]).await;
    assert!(app.success() && app.stdout.contains(&app_id.to_string()), "{app}");

    let node_list = cluster.cli(&["nodes"]).await;
    assert!(node_list.success(), "{node_list}");
    for node_id in &nodes {
        assert!(node_list.stdout.contains(node_id.as_str()), "{node_list}");
    }

    let queues = cluster.cli(&["queues", "--json"]).await;
    assert!(queues.success(), "{queues}");
    let root: spindle_protocol::QueueReport = serde_json::from_str(&queues.stdout).expect("queues --json prints the queue tree");
    assert_eq!(root.children[0].name, "root.default");

    let example = support::examples_dir().join("hello-shell.toml");
    let submitted = cluster.cli(&["submit", example.to_str().unwrap(), "--wait"]).await;
    assert!(submitted.success(), "{submitted}");
    assert!(submitted.stdout.contains("SUCCEEDED"), "{submitted}");

    // `spindle top --once` while a job runs: the cluster's nodes and the app, as text and JSON.
    let watched = admin.submit(&shell_job("watched", "sleep 30", 1, 64, 0)).await.unwrap();
    wait_until(JOB_TIMEOUT, "the watched job to run a task", || async {
        admin.app(watched).await.ok().filter(|app| app.running_containers >= 2)
    })
    .await;
    let top = cluster.cli(&["top", "--once"]).await;
    assert!(top.success(), "{top}");
    let watched_id = watched.to_string();
    for expected in nodes
        .iter()
        .map(|node_id| node_id.as_str())
        .chain([watched_id.as_str(), "watched", "RUNNING"])
    {
        assert!(top.stdout.contains(expected), "`top --once` does not show {expected}:\n{top}");
    }
    let top_json = cluster.cli(&["top", "--once", "--json"]).await;
    let snapshot: serde_json::Value = serde_json::from_str(&top_json.stdout).expect("`top --once --json` prints JSON");
    assert_eq!(snapshot["nodes"].as_array().map(Vec::len), Some(nodes.len()), "{snapshot}");
    assert_eq!(snapshot["apps"][0]["app_id"], watched_id, "{snapshot}");
    assert!(snapshot["cluster"]["containers_running"].as_u64() >= Some(2), "{snapshot}");
    admin.kill(watched).await.unwrap();

    // SIGTERM stops every daemon cleanly: the agents first, then the RM.
    for agent in &mut cluster.agents {
        agent.daemon.terminate();
        let status = agent.daemon.wait_for_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{} exited with {status} on SIGTERM", agent.daemon.name);
    }
    let rm = cluster.rm.as_mut().unwrap();
    rm.terminate();
    let status = rm.wait_for_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the RM exited with {status} on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_drain_and_die() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    // Two vcores each: with the AM's, 12 one-vcore tasks cannot all run at once.
    cluster.start_agent(2, 4096).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();
    let app_id = admin.submit(&shell_job("drain", "sleep 2", 12, 64, 20)).await.unwrap();

    // The agent under the AM is the one drained: its AM keeps it DECOMMISSIONING while the job
    // runs. The other is killed: its tasks are lost and run again elsewhere.
    let am_node = wait_until(Duration::from_secs(30), "the AM container to be placed", || async {
        admin.app(app_id).await.ok()?.attempts.first()?.node_id.clone()
    })
    .await;
    let drained = cluster
        .agents
        .iter()
        .position(|agent| agent.node_id == am_node)
        .expect("the AM runs on one of the agents");
    let doomed = 1 - drained;
    let (drained_node, doomed_node) = (cluster.node_id(drained).clone(), cluster.node_id(doomed).clone());

    wait_until(Duration::from_secs(30), "tasks running on both agents", || async {
        let running = running_tasks(&cluster, app_id).await;
        running.iter().any(|(_, node)| *node == drained_node) && running.iter().any(|(_, node)| *node == doomed_node)
    })
    .await;

    // A third agent joins mid-run and gets work.
    let joined = cluster.start_agent(4, 4096).await;
    let joined_node = cluster.node_id(joined).clone();
    wait_until(Duration::from_secs(30), "a container on the agent that joined", || async {
        task_containers(&admin, app_id).await.iter().any(|task| task.node_id == joined_node)
    })
    .await;
    assert!(
        !admin.app(app_id).await.unwrap().state.is_terminal(),
        "the job must still be running when the third agent joins"
    );

    let decommission = cluster.cli(&["decommission", drained_node.as_str(), "--timeout-s", "30"]).await;
    assert!(decommission.success(), "{decommission}");
    assert_eq!(
        cluster.node_state(&drained_node).await,
        Some(NodeState::Decommissioning),
        "the AM still runs there"
    );
    let on_drained_before: BTreeSet<ContainerId> = admin
        .containers(app_id)
        .await
        .unwrap()
        .iter()
        .filter(|c| c.node_id == drained_node)
        .map(|c| c.container_id)
        .collect();

    cluster.agents[doomed].daemon.kill9();
    let killed_at = Instant::now();
    // What the RM still believes runs there once any report sent before the kill has landed:
    // nobody can tell it otherwise now, so these must end NODE_LOST (well before node_expiry).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live_on_doomed: Vec<ContainerId> = running_tasks(&cluster, app_id)
        .await
        .into_iter()
        .filter(|(_, node)| *node == doomed_node)
        .map(|(container, _)| container)
        .collect();
    let lost_after = wait_until(Duration::from_secs(15), "the killed agent's node to be LOST", || async {
        let nodes = admin.nodes().await.ok()?;
        let node = nodes.iter().find(|node| node.node_id == doomed_node)?;
        (node.state == NodeState::Lost).then(|| killed_at.elapsed())
    })
    .await;
    assert!(
        lost_after <= Duration::from_secs(support::NODE_EXPIRY_S + 1),
        "the node was LOST {lost_after:?} after the kill; node_expiry is {}s",
        support::NODE_EXPIRY_S
    );
    eprintln!(
        "the killed agent ran {} tasks; its node was LOST {lost_after:?} after the kill",
        live_on_doomed.len()
    );

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );

    let containers = admin.containers(app_id).await.unwrap();
    let on_drained_after: BTreeSet<ContainerId> = containers
        .iter()
        .filter(|c| c.node_id == drained_node)
        .map(|c| c.container_id)
        .collect();
    assert_eq!(
        on_drained_after, on_drained_before,
        "no container may be placed on a decommissioning node"
    );
    for container_id in &live_on_doomed {
        let container = containers.iter().find(|c| c.container_id == *container_id).unwrap();
        assert_eq!(container.exit_reason, Some(ExitReason::NodeLost), "{container:?}");
    }
    let succeeded = containers
        .iter()
        .filter(|c| !c.is_am && c.exit_reason == Some(ExitReason::Success))
        .count();
    assert_eq!(succeeded, 12, "each task succeeded exactly once");

    wait_until(Duration::from_secs(15), "the drained node to be DECOMMISSIONED", || async {
        cluster.node_state(&drained_node).await == Some(NodeState::Decommissioned)
    })
    .await;
    let status = cluster.agents[drained].daemon.wait_for_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the decommissioned agent exited with {status}");
    assert_eq!(cluster.node_state(&joined_node).await, Some(NodeState::Running));
}

/// The app's task containers that are running now, with their nodes.
async fn running_tasks(cluster: &TestCluster, app_id: spindle_protocol::AppId) -> Vec<(ContainerId, NodeId)> {
    task_containers(&cluster.admin(), app_id)
        .await
        .into_iter()
        .filter(|task| task.state == ContainerState::Running)
        .map(|task| (task.container_id, task.node_id))
        .collect()
}

/// SQLite serves one RM: a second RM on the same database, or a second `spindle local` on the
/// same data dir, is refused at start, and the first carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rm_on_one_sqlite_database_is_refused() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(2, 2048).await;
    let config = cluster.path().join("rm.toml").display().to_string();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let args: Vec<String> = ["resource-manager", "--config", &config, "--listen", &listen]
        .map(str::to_owned)
        .to_vec();
    let mut second = support::Daemon::spawn("rm-second".to_owned(), cluster.path(), &args);
    let status = second.wait_for_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the second RM must not run");
    let logs = second.logs();
    assert!(
        logs.contains("in use by another resource manager") && logs.contains("PostgreSQL"),
        "{logs}"
    );
    let report = wait_for_app_end(
        &cluster.user(),
        cluster.user().submit(&shell_job("after", "true", 1, 64, 0)).await.unwrap(),
        JOB_TIMEOUT,
    )
    .await;
    assert_eq!(report.final_status, FinalStatus::Succeeded, "the first RM carries on: {report:#?}");

    // Two `spindle local` on one data dir: the second stops before touching anything.
    let data_dir = cluster.path().join("local-data").display().to_string();
    let first_port = support::free_port().to_string();
    let local_args = |port: &str| -> Vec<String> {
        [
            "local",
            "--agents",
            "1",
            "--data-dir",
            &data_dir,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut first_local = support::Daemon::spawn("local-first".to_owned(), cluster.path(), &local_args(&first_port));
    support::wait_for_http(&mut first_local, &format!("http://127.0.0.1:{first_port}/healthz"))
        .await
        .expect("the first local cluster serves");
    let mut second_local = support::Daemon::spawn(
        "local-second".to_owned(),
        cluster.path(),
        &local_args(&support::free_port().to_string()),
    );
    let status = second_local.wait_for_exit(Duration::from_secs(30)).await;
    let logs = second_local.logs();
    assert!(
        !status.success() && logs.contains("another `spindle local` runs on the data dir"),
        "{logs}"
    );
    assert!(first_local.exit_status().is_none(), "the first local cluster still runs");
    first_local.terminate();
    first_local.wait_for_exit(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_restart_preserves_work_sqlite() {
    rm_restart_preserves_work(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_restart_preserves_work_postgres() {
    let Some(schema) = PgSchema::create().await else { return };
    rm_restart_preserves_work(Db::Url(schema.url.clone())).await;
    drop(schema);
}

/// Kills the RM with SIGKILL mid-job and starts it again on the same store: the job goes on
/// without re-running what ran, and a submission made just before the crash is not lost.
async fn rm_restart_preserves_work(db: Db) {
    let mut cluster = TestCluster::start(db).await;
    cluster.start_agent(2, 4096).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();
    let epoch_before = admin.cluster().await.unwrap().epoch;

    let ran = cluster.path().join("ran.txt");
    let script = format!("echo $SPINDLE_TASK_INDEX >> {}; sleep 1", ran.display());
    let app_id = admin.submit(&shell_job("waves", &script, 8, 64, 3)).await.unwrap();
    wait_until(Duration::from_secs(30), "3 tasks to have run", || async { lines(&ran).len() >= 3 }).await;

    let late_ran = cluster.path().join("late.txt");
    let late_script = format!("echo $SPINDLE_TASK_INDEX >> {}", late_ran.display());
    let late_app = admin.submit(&shell_job("late", &late_script, 2, 64, 3)).await.unwrap();
    cluster.kill_rm();
    let lines_at_crash = lines(&ran).len();
    assert!(lines_at_crash < 8, "the job must still be running at the crash");
    eprintln!("the RM was killed after {lines_at_crash} of 8 tasks had started");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_rm().await;

    let epoch_after = admin.cluster().await.unwrap().epoch;
    assert_eq!(epoch_after, epoch_before + 1, "every RM start opens a new epoch");
    let listed = admin.apps(&Default::default()).await.unwrap();
    for id in [app_id, late_app] {
        assert!(
            listed.iter().any(|app| app.app_id == id),
            "{id} is not listed after the restart: {listed:#?}"
        );
    }

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );
    assert_eq!(report.app_id, app_id);
    let mut indexes = lines(&ran);
    indexes.sort_by_key(|index| index.parse::<u32>().unwrap_or(u32::MAX));
    let expected: Vec<String> = (0..8).map(|index| index.to_string()).collect();
    assert_eq!(
        indexes, expected,
        "each task ran exactly once ({lines_at_crash} had started at the crash)"
    );

    let late = wait_for_app_end(&admin, late_app, JOB_TIMEOUT).await;
    assert_eq!(
        (late.state, late.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{late:?}"
    );
    let mut late_indexes = lines(&late_ran);
    late_indexes.sort();
    assert_eq!(late_indexes, ["0", "1"], "the app submitted just before the crash ran once");
    assert_eq!(report.attempts.len(), 1, "the AM survived the RM's restart: {:#?}", report.attempts);
}

/// The lines of a file the tasks append to (none if it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The queue tree can change without a restart: SIGHUP or `spindle queues reload` re-read the
/// config file; a tree that is not valid is refused with the queue and field at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_queues_reload_apply_a_new_queue_tree() {
    let cluster = TestCluster::start(Db::Sqlite).await;
    let config = cluster.path().join("rm.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let with_teams = format!(
        "{original}\n[queues]\nname = \"root\"\n\
         [[queues.children]]\nname = \"default\"\nguaranteed_percent = 50\n\
         [[queues.children]]\nname = \"teams\"\nguaranteed_percent = 50\nsubmit_users = [\"admin\"]\n"
    );
    std::fs::write(&config, &with_teams).unwrap();
    let pid = cluster.rm.as_ref().expect("the RM runs").pid();
    // SAFETY: kill(2) with a valid signal number on our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let admin = cluster.admin();
    wait_until(Duration::from_secs(10), "the RM to apply the new queues after SIGHUP", || async {
        let root = admin.queues().await.ok()?;
        root.children.iter().any(|queue| queue.name == "root.teams").then_some(())
    })
    .await;
    assert!(cluster.rm.as_ref().unwrap().logs().contains("queues reloaded"));

    let mut job = shell_job("team-job", "true", 1, 64, 0);
    job.queue = "teams".to_owned();
    let refused = cluster.user().submit(&job).await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "alice is not in teams' submit_users: {refused}");

    std::fs::write(
        &config,
        with_teams.replace("guaranteed_percent = 50\nsubmit", "guaranteed_percent = 60\nsubmit"),
    )
    .unwrap();
    let output = cluster.cli(&["queues", "reload"]).await;
    assert!(!output.success(), "{output:?}");
    assert!(
        output
            .stderr
            .contains("queue `root`: field `children`: guaranteed_percent of the children sums to 110"),
        "{}",
        output.stderr
    );
    let root = admin.queues().await.unwrap();
    assert_eq!(root.children.len(), 2, "the old tree stays");

    std::fs::write(&config, &original).unwrap();
    let output = cluster.cli(&["queues", "reload"]).await;
    assert!(output.success(), "{output:?}");
    assert!(output.stdout.contains("queues reloaded"), "{}", output.stdout);
    assert_eq!(admin.queues().await.unwrap().children.len(), 1, "back to root.default alone");
}
