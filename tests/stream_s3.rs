//! A streaming job writing to an S3-compatible store (the `s3s-fs` server `.ci/run` starts):
//! `file_sink` with `path = "s3://…"` stages multipart uploads at each barrier and the AM
//! completes them when the checkpoint completes. Through a live rescale 2 → 4 of the keyed
//! window and a `kill -9` of a worker, the committed objects hold every window count exactly
//! once, and nothing else is visible under the prefix. And `file_source` over an object
//! prefix, checkpointing to the store as well, picks up objects added while the job runs, each
//! read exactly once; a job stopped with a savepoint on the store resumes from it, changed.
//! Skipped with a line saying so when no server answers, unless SPINDLE_REQUIRE_S3=1.

mod support;

use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerId, ContainerState, FinalStatus};
use spindle_storage::{ObjectUrl, S3Settings};
use support::{
    CleanupDir, assert_exact, example_job, expected, kill_processes_under, local_container_dir, operator_mut, run_object_source_scenario,
    shared_s3_env, start_local, stream_detail, task_containers, unique_s3_root, wait_for_app_end, wait_for_checkpoint, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_on_s3_is_exact_through_a_rescale_and_a_killed_worker() {
    let Some(env) = shared_s3_env() else { return };
    let root = unique_s3_root("stream");
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();
    let started = Instant::now();

    let mut spec = example_job("stream-exactly-once.toml", dir.path());
    let generator = operator_mut(&mut spec, "events");
    generator.keys = Some(1000);
    generator.limit = Some(200_000);
    let expected = expected(&spec);
    operator_mut(&mut spec, "out").path = Some(format!("{root}/out"));
    spec.stream.as_mut().unwrap().env = env.clone();
    spec.validate().unwrap();
    let app_id = client.submit(&spec).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;

    client.scale_operator(app_id, "count", 4).await.unwrap();
    wait_until(Duration::from_secs(60), "the rescale to 4", || async {
        let detail = stream_detail(&client, app_id).await?;
        detail.last_rescale.filter(|r| r.to == 4 && r.finished_at_ms.is_some())
    })
    .await;
    let victim = wait_until(Duration::from_secs(30), "a running worker", || async {
        let running: Vec<ContainerId> = task_containers(&client, app_id)
            .await
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.container_id)
            .collect();
        running.first().copied()
    })
    .await;
    eprintln!("{:.1}s: kill -9 worker {victim}", started.elapsed().as_secs_f64());
    kill_processes_under(&local_container_dir(&work_root, app_id, victim));

    let report = wait_for_app_end(&client, app_id, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    // What a reader of the prefix sees: downloaded, then checked as the local tests check it.
    let out = ObjectUrl::parse(&format!("{root}/out"), &S3Settings::from_env(&env)).unwrap();
    let local = dir.path().join("downloaded");
    std::fs::create_dir_all(&local).unwrap();
    for entry in out.list().await.unwrap() {
        let name = entry.key.rsplit('/').next().unwrap().to_owned();
        assert!(name.starts_with("part-out-"), "only committed parts are visible: {}", entry.key);
        std::fs::write(local.join(&name), out.at(&entry.key).get().await.unwrap()).unwrap();
    }
    assert_exact(&local, &expected);
    out.delete_all().await.unwrap();
    let _ = cluster.shutdown().await;
}

/// `file_source` over an object prefix, checkpointing to the store: objects there at the
/// start and objects added while the job runs (after a rescale 2 → 4 of the window and a
/// `kill -9` of a worker) are each read once, from the offsets in the checkpoints, through a
/// keyed 1 s window into a `file_sink` on the store; the committed counts equal what the
/// objects hold, exactly (`run_object_source_scenario`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_reads_new_objects_exactly_once_into_a_sink_on_s3_checkpointing_to_s3() {
    let Some(env) = shared_s3_env() else { return };
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let agent_dirs: Vec<_> = (0..2).map(|agent| work_root.join(format!("agent-{agent}"))).collect();
    let root = unique_s3_root("stream-source");
    run_object_source_scenario(&cluster.client(), &env, &root, &agent_dirs, dir.path()).await;
    let _ = cluster.shutdown().await;
}

/// Savepoints on the store: a job checkpointing to S3 stops with a savepoint (taken into
/// `<checkpoint_dir>/savepoints`, so on the store, its files copied on the server); the job
/// changed to 3 window instances starts `from_savepoint = "s3://…"` and runs its bounded
/// input to the end. What both runs committed is every window exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_with_a_savepoint_on_s3_resumes_from_it_changed_and_exact() {
    let Some(env) = shared_s3_env() else { return };
    let root = unique_s3_root("stream-savepoint");
    let settings = S3Settings::from_env(&env);
    let open = |url: &str| ObjectUrl::parse(url, &settings).unwrap();
    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let client = cluster.client();

    let mut first = example_job("stream-exactly-once.toml", dir.path());
    let generator = operator_mut(&mut first, "events");
    generator.rate = Some(5_000);
    generator.keys = Some(1_000);
    generator.limit = Some(100_000);
    let expected = expected(&first);
    operator_mut(&mut first, "out").path = Some(format!("{root}/out"));
    let stream = first.stream.as_mut().unwrap();
    stream.env = env.clone();
    stream.checkpoint_dir = Some(format!("{root}/checkpoints"));
    first.validate().unwrap();
    let app_id = client.submit(&first).await.unwrap();
    wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;
    let out = open(&format!("{root}/out"));
    wait_until(Duration::from_secs(30), "committed output", || async {
        (!out.list().await.ok()?.is_empty()).then_some(())
    })
    .await;

    let reply = client
        .request_savepoint(app_id, &spindle_protocol::SavepointRequest { dir: None, stop: true })
        .await
        .unwrap();
    let report = wait_for_app_end(&client, app_id, Duration::from_secs(60)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let savepoint = format!("{root}/checkpoints/savepoints/savepoint-{app_id}-{}", reply.savepoint_id);
    let files: Vec<String> = open(&savepoint).list().await.unwrap().into_iter().map(|entry| entry.key).collect();
    assert!(files.iter().any(|key| key.ends_with("/_metadata.json")), "{files:?}");
    assert!(files.iter().any(|key| key.ends_with("/count-0.state")), "{files:?}");

    let mut second = first.clone();
    let stream = second.stream.as_mut().unwrap();
    stream.set_parallelism("count", 3).unwrap();
    stream.from_savepoint = Some(savepoint.clone());
    second.validate().unwrap();
    let resumed = client.submit(&second).await.unwrap();
    let report = wait_for_app_end(&client, resumed, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:#?}"
    );
    let local = dir.path().join("downloaded");
    std::fs::create_dir_all(&local).unwrap();
    for entry in out.list().await.unwrap() {
        let name = entry.key.rsplit('/').next().unwrap().to_owned();
        std::fs::write(local.join(&name), out.at(&entry.key).get().await.unwrap()).unwrap();
    }
    assert_exact(&local, &expected);
    open(&root).delete_all().await.unwrap();
    let _ = cluster.shutdown().await;
}
