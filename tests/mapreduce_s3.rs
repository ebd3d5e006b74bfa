//! MapReduce on an S3-compatible store (the `s3s-fs` server `.ci/run` starts, bucket
//! `spindle-test`): a word count from `s3://` to `s3://`, with speculation on, equals the
//! reference; the output is the winners' parts plus `_SUCCESS` listing them, with nothing left
//! of the attempts; an existing output is refused; the secret appears in no report or log.
//! Skipped with a line saying so when no server answers, unless SPINDLE_REQUIRE_S3=1.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use spindle_protocol::{AppState, FinalStatus, JobSpec};
use spindle_storage::{ObjectUrl, S3Settings};
use support::{CleanupDir, S3_SECRET as SECRET, run_to_success, shared_s3_env, start_local, unique_s3_root, wait_for_app_end};

fn object(url: &str, env: &BTreeMap<String, String>) -> ObjectUrl {
    ObjectUrl::parse(url, &S3Settings::from_env(env)).unwrap()
}

/// Deterministic text in `files` objects below `input`, and its word counts.
async fn put_text(input: &ObjectUrl, files: usize) -> BTreeMap<String, u64> {
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut counts = BTreeMap::new();
    for file in 0..files {
        let mut text = String::new();
        for line in 0..40_000 {
            for position in 0..(1 + line % 5) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let word = words[(state % words.len() as u64) as usize];
                if position > 0 {
                    text.push(' ');
                }
                text.push_str(word);
                *counts.entry(word.to_owned()).or_insert(0) += 1;
            }
            text.push('\n');
        }
        input.child(&format!("part-{file}.txt")).put(text).await.unwrap();
    }
    // Hidden names are not input.
    input.child("_SUCCESS").put("").await.unwrap();
    counts
}

fn wordcount(input: &str, output: &str, env: &BTreeMap<String, String>, overwrite: bool) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "wordcount-s3",
        "kind": "mapreduce",
        "mapreduce": {
            "input": [input],
            "output": output,
            "overwrite": overwrite,
            "mapper": "wordcount",
            "combiner": "sum",
            "reducer": "sum",
            "reducers": 2,
            "split_size_mb": 1,
            "speculation": true,
            "env": env,
            "map": {"vcores": 1, "memory_mb": 256},
            "reduce": {"vcores": 1, "memory_mb": 256},
        }
    }))
    .expect("a valid job")
}

/// The word counts in the output's parts (`word<TAB>count`).
async fn read_output(output: &ObjectUrl) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in output.list().await.unwrap() {
        if entry.key.rsplit('/').next().unwrap().starts_with("part-") {
            let text = String::from_utf8(output.at(&entry.key).get().await.unwrap().to_vec()).unwrap();
            for line in text.lines() {
                let (word, count) = line.split_once('\t').unwrap();
                assert!(counts.insert(word.to_owned(), count.parse().unwrap()).is_none(), "{word} twice");
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_from_s3_to_s3_matches_the_reference_and_commits_atomically() {
    let Some(env) = shared_s3_env() else { return };
    let root = unique_s3_root("mapreduce");
    let input = object(&format!("{root}/input"), &env);
    let expected = put_text(&input, 3).await;

    let dir = support::shared_tempdir("spindle-mapreduce-s3-");
    let _cleanup = CleanupDir(dir.path());
    let cluster = start_local(dir.path()).await;
    let client = cluster.client();

    // A glob over keys, and a prefix: the same input.
    let output_url = format!("{root}/out");
    let spec = wordcount(&format!("{root}/input/part-*.txt"), &output_url, &env, false);
    let report = run_to_success(&client, &spec, Duration::from_secs(180)).await;
    let output = object(&output_url, &env);
    assert_eq!(read_output(&output).await, expected);
    let keys: Vec<String> = output
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.key.strip_prefix(output.key()).unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        ["/_SUCCESS", "/part-r-00000", "/part-r-00001"],
        "nothing of the attempts is left"
    );
    let success = String::from_utf8(output.child("_SUCCESS").get().await.unwrap().to_vec()).unwrap();
    assert!(
        success.contains("\"part-r-00000\"") && success.contains("\"part-r-00001\""),
        "{success}"
    );

    // The secret is in no report, diagnostics or log of the job.
    let shown = serde_json::to_string(&client.app(report.app_id).await.unwrap()).unwrap();
    assert!(!shown.contains(SECRET), "the app report shows the secret");
    let am = report.attempts.last().and_then(|attempt| attempt.am_container);
    let tasks = support::task_containers(&client, report.app_id)
        .await
        .into_iter()
        .map(|container| container.container_id);
    for container in am.into_iter().chain(tasks) {
        for stream in ["stdout", "stderr"] {
            let log = client.logs(container, stream).await.unwrap_or_default();
            assert!(!log.contains(SECRET), "{container} {stream} shows the secret");
        }
    }

    // The output exists: refused without overwrite (and left as it was), replaced with it.
    let again = client
        .submit(&wordcount(&format!("{root}/input"), &output_url, &env, false))
        .await
        .unwrap();
    let refused = wait_for_app_end(&client, again, Duration::from_secs(60)).await;
    assert_eq!(refused.final_status, FinalStatus::Failed, "{refused:#?}");
    assert!(refused.diagnostics.contains("already exists"), "{}", refused.diagnostics);
    assert_eq!(read_output(&output).await, expected);
    let replaced = run_to_success(
        &client,
        &wordcount(&format!("{root}/input"), &output_url, &env, true),
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(replaced.state, AppState::Finished);
    assert_eq!(read_output(&output).await, expected);

    object(&root, &env).delete_all().await.unwrap();
    let _ = cluster.shutdown().await;
}
