//! `spindle logs` against real processes: every container of an app under headers, `--follow`
//! of a running app (lines arrive while it runs, each with its container), `--tail N` lines, and
//! the logs of a finished app still readable from the RM's aggregated copies once its nodes and
//! their container directories are gone.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use spindle_protocol::AppState;
use support::{ADMIN_TOKEN, Db, TestCluster, shell_job, spindle_bin, wait_for_app_end, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Each task prints 3 lines at once, waits, then 3 more, and ends.
const SCRIPT: &str = "for i in 1 2 3; do echo \"task $SPINDLE_TASK_INDEX line $i\"; done; sleep 4; \
                      for i in 4 5 6; do echo \"task $SPINDLE_TASK_INDEX line $i\"; done; echo \"bye $SPINDLE_TASK_INDEX\" >&2";

fn expected_lines(task: u32) -> Vec<String> {
    (1..=6).map(|line| format!("task {task} line {line}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_logs_follow_while_it_runs_and_stay_readable_after_its_nodes_are_gone() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();
    let app_id = admin.submit(&shell_job("ticker", SCRIPT, 2, 128, 0)).await.unwrap();

    // --follow, started while the app runs: the first lines of both tasks arrive before the
    // tasks print their last ones (they sleep 4 s in between), each prefixed with its container.
    let url = cluster.rm_url();
    let app = app_id.to_string();
    let mut follow = tokio::process::Command::new(spindle_bin())
        .args(["logs", &app, "--follow", "--rm", &url, "--token", ADMIN_TOKEN])
        .env("SPINDLE_HOME", cluster.path().join("home"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start spindle logs --follow");
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut followed: Vec<String> = Vec::new();
    let mut first_lines_at = None;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("lines keep coming")
    {
        followed.push(line);
        let firsts = (0..2).all(|task| followed.iter().any(|line| line.ends_with(&format!("task {task} line 3"))));
        if firsts && first_lines_at.is_none() {
            first_lines_at = Some(started.elapsed());
            let report = admin.app(app_id).await.unwrap();
            assert_eq!(report.state, AppState::Running, "the first lines arrive while the app runs");
            let lasts = followed.iter().filter(|line| line.contains("line 4")).count();
            assert_eq!(lasts, 0, "before the tasks print their last lines: {followed:#?}");
        }
    }
    let status = follow.wait().await.unwrap();
    assert!(status.success(), "--follow ends with the app: {status}");
    eprintln!(
        "first lines of both tasks followed after {:?}",
        first_lines_at.expect("the first lines arrived")
    );
    for task in 0..2 {
        // The task's container is its own prefix; every line of it arrived once, in order.
        let of_task: Vec<&String> = followed.iter().filter(|line| line.contains(&format!("task {task} "))).collect();
        let prefix = of_task[0].split(' ').next().unwrap().to_owned();
        assert!(prefix.starts_with("[01_") && prefix.ends_with(']'), "{prefix}");
        let texts: Vec<String> = of_task
            .iter()
            .map(|line| line.strip_prefix(&format!("{prefix} ")).expect("one prefix per task").to_owned())
            .collect();
        assert_eq!(texts, expected_lines(task), "{followed:#?}");
    }
    assert!(wait_for_app_end(&admin, app_id, Duration::from_secs(30)).await.state == AppState::Finished);

    // The copies: both streams of the AM and the two tasks.
    let copies = cluster.path().join("app-logs").join(&app);
    wait_until(Duration::from_secs(30), "the app's logs to be aggregated", || {
        let copies = copies.clone();
        async move { std::fs::read_dir(&copies).map(|dir| dir.count()).unwrap_or(0) >= 6 }
    })
    .await;

    // Every container under a header, and --tail N lines.
    let whole = cluster.cli(&["logs", &app]).await;
    assert!(whole.success(), "{whole}");
    assert_eq!(whole.stdout.matches("==> container_").count(), 3, "{whole}");
    for task in 0..2 {
        for line in expected_lines(task) {
            assert_eq!(whole.stdout.matches(&format!("{line}\n")).count(), 1, "{line} in {whole}");
        }
    }
    let tail = cluster.cli(&["logs", &app, "--tail", "2"]).await;
    assert!(
        tail.stdout.contains("task 0 line 5\ntask 0 line 6\n") && !tail.stdout.contains("line 4"),
        "{tail}"
    );

    // The nodes go, and their container directories with them: the RM serves its copies.
    for agent in &mut cluster.agents {
        agent.daemon.kill9();
    }
    for agent in 0..2 {
        let _ = std::fs::remove_dir_all(cluster.path().join(format!("agent{agent}")).join("apps"));
    }
    let after = cluster.cli(&["logs", &app]).await;
    assert!(after.success(), "{after}");
    assert_eq!(after.stdout, whole.stdout, "the same logs from the copies");
    let stderr = cluster.cli(&["logs", &app, "--stderr", "--tail", "1"]).await;
    for task in 0..2 {
        assert!(stderr.stdout.contains(&format!("bye {task}\n")), "{stderr}");
    }
}
