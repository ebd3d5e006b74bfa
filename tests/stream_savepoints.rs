//! Savepoints end to end, with real AM and worker processes and the real client: `spindle
//! savepoint` while the job runs, `spindle stop --savepoint` half-way through its bounded
//! input, then the job changed — the keyed window operator 2 → 3 instances, a stateless
//! `command` operator added before the sink — submitted with `from_savepoint`: the output both
//! runs committed is exactly once (every (key, window) once, with the count the generators'
//! seed gives).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use spindle_protocol::{AppState, FinalStatus, OperatorKind, OperatorSpec};
use support::{
    CleanupDir, CliOutput, assert_exact, committed_windows, example_job, expected, operator_mut, run_spindle, start_local,
    wait_for_app_end, wait_for_checkpoint,
};

/// The path `spindle savepoint` / `spindle stop` printed.
fn printed_path(output: &CliOutput) -> String {
    output
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no path in:\n{output}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_stop_and_a_changed_job_from_the_savepoint_give_exactly_once_output() {
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let home = dir.path().join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let connect = ["--rm", cluster.rm_url.as_str(), "--token", cluster.token.as_str()];
    let spindle = |args: Vec<String>| {
        let home = home.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_spindle(&home, &args, Duration::from_secs(60)).await
        }
    };
    let started = Instant::now();
    let savepoints = dir.path().join("savepoints");

    // 20 s of input at 5,000 events/s per generator: the stop comes well before its end.
    let mut first = example_job("stream-exactly-once.toml", dir.path());
    let generator = operator_mut(&mut first, "events");
    generator.rate = Some(5_000);
    generator.keys = Some(1_000);
    generator.limit = Some(100_000);
    let expected = expected(&first);
    let client = cluster.client();
    let app_id = client.submit(&first).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;

    // A savepoint while it runs: the job goes on.
    let mut args: Vec<String> = ["savepoint", &app_id.to_string(), "--dir", &savepoints.display().to_string()]
        .map(str::to_owned)
        .to_vec();
    args.extend(connect.map(str::to_owned));
    let taken = spindle(args).await;
    assert!(taken.success(), "{taken}");
    let savepoint = printed_path(&taken);
    eprintln!("{:.1}s: savepoint at {savepoint}", started.elapsed().as_secs_f64());
    assert!(Path::new(&savepoint).join("_metadata.json").is_file());
    assert!(
        !client.app(app_id).await.unwrap().state.is_terminal(),
        "a savepoint does not stop the job"
    );

    // Some output committed first, so the stop comes with windows on both sides of it.
    support::wait_until(Duration::from_secs(30), "committed output", || async {
        (!committed_windows(&dir.path().join("out")).is_empty()).then_some(())
    })
    .await;

    // `stop` without --savepoint says what it needs and does nothing.
    let mut args: Vec<String> = ["stop", &app_id.to_string()].map(str::to_owned).to_vec();
    args.extend(connect.map(str::to_owned));
    let refused = spindle(args).await;
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert!(
        refused.stderr.contains("--savepoint") && refused.stderr.contains("spindle kill"),
        "{refused}"
    );

    // Stop with a savepoint: the app ends FINISHED/SUCCEEDED with part of the output committed.
    let mut args: Vec<String> = [
        "stop",
        &app_id.to_string(),
        "--savepoint",
        "--dir",
        &savepoints.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(connect.map(str::to_owned));
    let stopped = spindle(args).await;
    assert!(stopped.success(), "{stopped}");
    let final_savepoint = printed_path(&stopped);
    eprintln!(
        "{:.1}s: stopped with a savepoint at {final_savepoint}",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(final_savepoint, savepoint);
    let report = wait_for_app_end(&client, app_id, Duration::from_secs(10)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let halfway = committed_windows(&dir.path().join("out")).len();
    assert!(
        halfway > 0 && halfway < expected.len(),
        "the stop came half-way: {halfway} of {} windows committed",
        expected.len()
    );
    assert!(
        Path::new(&savepoint).join("_metadata.json").is_file(),
        "checkpoint retention never deletes a savepoint"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&final_savepoint).join("_metadata.json")).unwrap()).unwrap();
    assert_eq!(
        (metadata["format_version"].as_u64(), metadata["stopped"].as_bool()),
        (Some(1), Some(true))
    );
    let operators: Vec<(&str, usize)> = metadata["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| (op["name"].as_str().unwrap(), op["state"].as_array().unwrap().len()))
        .collect();
    assert_eq!(operators, [("events", 2), ("by_key", 0), ("count", 2), ("out", 0)], "{metadata:#}");

    // The job changed: the window on 3 instances, a stateless `cat` before the sink.
    let mut second = first.clone();
    let stream = second.stream.as_mut().unwrap();
    stream.set_parallelism("count", 3).unwrap();
    stream.from_savepoint = Some(format!("file://{final_savepoint}"));
    stream.operators.push(OperatorSpec {
        name: "tap".into(),
        kind: Some(OperatorKind::Map),
        input: vec!["count".into()],
        parallelism: 2,
        command: Some(vec!["cat".into()]),
        ..OperatorSpec::default()
    });
    stream.operators.iter_mut().find(|op| op.name == "out").unwrap().input = vec!["tap".into()];
    second.validate().unwrap();

    // `spindle submit` checks the savepoint where it can read it: other key groups are refused
    // before anything reaches the RM.
    let mut wrong = second.clone();
    wrong.stream.as_mut().unwrap().key_groups = 64;
    let wrong_file = dir.path().join("wrong.toml");
    std::fs::write(&wrong_file, toml::to_string(&wrong).unwrap()).unwrap();
    let mut args: Vec<String> = ["submit", &wrong_file.display().to_string()].map(str::to_owned).to_vec();
    args.extend(connect.map(str::to_owned));
    let refused = spindle(args).await;
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert!(refused.stderr.contains("stream.key_groups"), "{refused}");

    let job_file = dir.path().join("changed.toml");
    std::fs::write(&job_file, toml::to_string(&second).unwrap()).unwrap();
    let mut args: Vec<String> = ["submit", &job_file.display().to_string(), "--wait"].map(str::to_owned).to_vec();
    args.extend(connect.map(str::to_owned));
    let resumed = spindle(args).await;
    eprintln!("{:.1}s: the changed job ended", started.elapsed().as_secs_f64());
    assert!(resumed.success(), "{resumed}");

    assert_exact(&dir.path().join("out"), &expected);
    let resumed_id: spindle_protocol::AppId = resumed.stdout.lines().next().unwrap().trim().parse().unwrap();
    let report = client.app(resumed_id).await.unwrap();
    let detail = report.detail.as_ref().and_then(|detail| detail.stream()).unwrap();
    assert_eq!(detail.restarts, 0);
    let count = detail.operators.iter().find(|op| op.name == "count").unwrap();
    assert_eq!(count.parallelism, 3);
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("out").join(".staging"))
        .unwrap()
        .flatten()
        .collect();
    assert!(staged.is_empty(), "left in .staging: {staged:?}");
    let _ = cluster.shutdown().await;
}
