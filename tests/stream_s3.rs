//! A streaming job writing to an S3-compatible store (the `s3s-fs` server `.ci/run` starts):
//! `file_sink` with `path = "s3://…"` stages multipart uploads at each barrier and the AM
//! completes them when the checkpoint completes. Through a live rescale 2 → 4 of the keyed
//! window and a `kill -9` of a worker, the committed objects hold every window count exactly
//! once, and nothing else is visible under the prefix. And `file_source` over an object
//! prefix picks up objects added while the job runs, each read exactly once. Skipped with a
//! line saying so when no server answers, unless SPINDLE_REQUIRE_S3=1.

mod support;

use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ContainerId, ContainerState, FinalStatus};
use spindle_storage::{ObjectUrl, S3Settings};
use support::{
    CleanupDir, assert_exact, example_job, expected, kill_processes_under, local_container_dir, operator_mut, shared_s3_env, start_local,
    stream_detail, task_containers, unique_s3_root, wait_for_app_end, wait_for_checkpoint, wait_until,
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

/// `file_source` over an object prefix: objects there at the start and objects added while the
/// job runs (after a rescale 2 → 4 of the window and a `kill -9` of a worker) are each read
/// once, from the offsets in the checkpoints, through a keyed 1 s window into a `file_sink` on
/// the store; the committed counts equal what the objects hold, exactly. A last object with a
/// far later time moves the watermark past every window; then the job is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_reads_new_objects_exactly_once_into_a_sink_on_s3() {
    let Some(env) = shared_s3_env() else { return };
    let root = unique_s3_root("stream-source");
    let settings = S3Settings::from_env(&env);
    let open = |url: &str| ObjectUrl::parse(url, &settings).unwrap();
    let input = open(&format!("{root}/in"));
    let mut expected: std::collections::BTreeMap<(String, i64), u64> = Default::default();
    // Object `i` holds 40,000 lines `k<n % 50> <time>` spanning 10 s from i × 10 s.
    let put = |i: u64, expected: &mut std::collections::BTreeMap<(String, i64), u64>| {
        let mut text = String::new();
        for j in 0..40_000u64 {
            let (key, time) = (format!("k{}", (i * 7 + j) % 50), (i * 10_000 + j / 4) as i64);
            *expected.entry((key.clone(), time - time % 1000)).or_default() += 1;
            text.push_str(&format!("{key} {time}\n"));
        }
        (input.child(&format!("part-{i}.txt")), text)
    };
    for i in 0..3 {
        let (object, text) = put(i, &mut expected);
        object.put(text).await.unwrap();
    }

    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let work_root = cluster.work_root.clone();
    let _cleanup_containers = CleanupDir(&work_root);
    let client = cluster.client();
    let mut spec = example_job("stream-exactly-once.toml", dir.path());
    {
        let source = operator_mut(&mut spec, "events");
        *source = spindle_protocol::OperatorSpec {
            name: "events".into(),
            kind: Some(spindle_protocol::OperatorKind::FileSource),
            parallelism: 1,
            path: Some(format!("{root}/in")),
            time_field: Some("$2".into()),
            ..Default::default()
        };
    }
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
    for i in 3..5 {
        let (object, text) = put(i, &mut expected);
        object.put(text).await.unwrap();
    }
    let victim = wait_until(Duration::from_secs(30), "a running worker", || async {
        task_containers(&client, app_id)
            .await
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.container_id)
            .next_back()
    })
    .await;
    kill_processes_under(&local_container_dir(&work_root, app_id, victim));
    input.child("part-9.txt").put("sentinel 999999\n").await.unwrap();

    let out = open(&format!("{root}/out"));
    let local = dir.path().join("downloaded");
    let committed = wait_until(Duration::from_secs(120), "every window committed", || async {
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        for entry in out.list().await.ok()? {
            let name = entry.key.rsplit('/').next().unwrap().to_owned();
            std::fs::write(local.join(&name), out.at(&entry.key).get().await.ok()?).unwrap();
        }
        let committed = support::committed_windows(&local);
        (committed.len() >= expected.len()).then_some(committed)
    })
    .await;
    assert_eq!(committed.len(), expected.len());
    assert_exact(&local, &expected);
    client.kill(app_id).await.unwrap();
    wait_for_app_end(&client, app_id, Duration::from_secs(30)).await;
    open(&root).delete_all().await.unwrap();
    let _ = cluster.shutdown().await;
}
