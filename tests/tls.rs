//! A cluster that speaks TLS everywhere, as real processes: the RM and two agents serve HTTPS
//! with certificates of a CA the test makes, and jobs run through it — AMs to the RM, AMs to
//! agents, reducers fetching map output from agents, the RM fetching logs from agents. Clients
//! that do not trust the CA, and plain HTTP, get nowhere. One test: the test process trusts the
//! CA for good once it has made it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{ADMIN_TOKEN, Db, TestCluster, run_spindle, run_to_success, shell_job, task_containers};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_runs_batch_jobs_and_refuses_whoever_does_not_trust_its_ca() {
    let mut cluster = TestCluster::start_tls(Db::Sqlite).await;
    assert!(cluster.rm_url().starts_with("https://"));
    cluster.start_agent(2, 2048).await;
    cluster.start_agent(2, 2048).await;

    // A shell job: its AM talks to the RM and launches its tasks on the agents over HTTPS.
    let report = run_to_success(
        &cluster.user(),
        &shell_job("tls-hello", "echo hello from $SPINDLE_CONTAINER_ID", 2, 64, 0),
        TIMEOUT,
    )
    .await;

    // The RM fetches a task's log from its agent over HTTPS (the CLI trusts the CA too).
    let task = task_containers(&cluster.admin(), report.app_id).await.remove(0);
    let logs = cluster.cli(&["logs", &task.container_id.to_string()]).await;
    assert!(logs.success(), "{logs}");
    assert_eq!(logs.stdout.trim(), format!("hello from {}", task.container_id));

    // A word count: reducers fetch map output from both agents over HTTPS.
    let input = cluster.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for file in 0..4 {
        let mut text = String::new();
        for line in 0..2_000 {
            let word = format!("w{}", (file * 7 + line) % 97);
            text.push_str(&format!("{word} common\n"));
            *expected.entry(word).or_default() += 1;
            *expected.entry("common".to_owned()).or_default() += 1;
        }
        std::fs::write(input.join(format!("part-{file}.txt")), text).unwrap();
    }
    let output = cluster.path().join("output");
    let spec = serde_json::from_value(serde_json::json!({
        "name": "tls-wordcount",
        "kind": "mapreduce",
        "mapreduce": {
            "input": [input.display().to_string()],
            "output": output.display().to_string(),
            "mapper": "wordcount", "combiner": "sum", "reducer": "sum", "reducers": 2,
            "split_size_mb": 1,
            "map": {"vcores": 1, "memory_mb": 256}, "reduce": {"vcores": 1, "memory_mb": 256},
        }
    }))
    .unwrap();
    run_to_success(&cluster.user(), &spec, TIMEOUT).await;
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for part in ["part-r-00000", "part-r-00001"] {
        for line in std::fs::read_to_string(output.join(part)).unwrap().lines() {
            let (word, count) = line.split_once('\t').unwrap();
            counted.insert(word.to_owned(), count.parse().unwrap());
        }
    }
    assert_eq!(counted, expected);

    // Without the CA, the CLI refuses the RM's certificate and says why.
    let home = cluster.path().join("stranger-home");
    let url = cluster.rm_url();
    let stranger = run_spindle(&home, &["nodes", "--rm", &url, "--token", ADMIN_TOKEN], Duration::from_secs(30)).await;
    assert!(!stranger.success(), "{stranger}");
    assert!(
        stranger.stderr.contains("certificate") && stranger.stderr.contains("--ca-file"),
        "{stranger}"
    );
    eprintln!("without the CA: {}", stranger.stderr.trim());

    // Plain HTTP gets no answer from the RM or an agent.
    let plain = spindle_protocol::tls::client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let agent_address = cluster.node_id(0).to_string();
    for address in [format!("127.0.0.1:{}", cluster.rm_port), agent_address] {
        let answer = plain.get(format!("http://{address}/healthz")).send().await;
        assert!(
            answer.as_ref().map_or(true, |answer| !answer.status().is_success()),
            "{address} answered plain HTTP: {answer:?}"
        );
    }

    // An agent with a certificate but no CA to check the others with is refused at start.
    let ca = cluster.ca().unwrap().clone();
    let half = run_spindle(
        &home,
        &[
            "node-agent",
            "--rm",
            &url,
            "--tls-cert",
            &ca.cert_file.display().to_string(),
            "--tls-key",
            &ca.key_file.display().to_string(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!half.success() && half.stderr.contains("--ca-file"), "{half}");

    // `spindle local` is plain HTTP on loopback: a CA file in the environment is refused, not
    // half applied.
    let ca_file = ca.ca_file.display().to_string();
    let local = run_spindle(&home, &["local", "--ca-file", &ca_file], Duration::from_secs(30)).await;
    assert!(!local.success() && local.stderr.contains("plain HTTP"), "{local}");
}
