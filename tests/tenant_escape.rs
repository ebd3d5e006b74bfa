//! Tenants against each other and against the cluster, with real processes, run as root: an RM
//! and two agents whose config maps alice and bob to two Unix accounts made for the test, and a
//! `spindle local` cluster started by root. Alice's jobs try every way out we could think of —
//! the cluster secret (environment, files near the work dir, the agents' /proc entries, the
//! RM's files), bob's running job (its /proc entries, its dirs, logs and map output), forged
//! and replayed tokens, checkpoint metadata planted for bob's next app, and symlinks or FIFOs
//! that the agent (root) would read for her — and print one `ESCAPE <name> <verdict>` line per
//! attempt. Every verdict must be BLOCKED, no secret may appear in anything alice can read, and
//! bob's job must succeed with exactly its own output.
//!
//! The scripts report, the test judges: an attempt prints OK only when the command that would
//! have leaked something succeeded, and the test also looks for the secrets themselves in all
//! that alice gets back (her logs, her apps' and containers' diagnostics).

// The parts of this test, in tests/tenant_escape/ (a test's root file looks for its modules
// beside itself, among the other tests, without the paths).
#[path = "tenant_escape/accounts.rs"]
mod accounts;
#[path = "tenant_escape/cluster.rs"]
mod cluster;
#[path = "tenant_escape/scripts.rs"]
mod scripts;
mod support;

use accounts::{TestAccounts, make_dir, running_as_root, set_mode};
use cluster::TenantCluster;
use scripts::{ALICE_SCRIPT, BOB_SCRIPT, SCRIPT_HELPERS};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use spindle_cli::local::random_hex_secret;
use spindle_protocol::{AppId, AppReport, AppState, ContainerId, FinalStatus, JobSpec, RmClient};
use support::{Daemon, shell_job, task_containers, wait_for_app_end, wait_until};

/// How long one job of these tests may take; they take a few seconds.
const JOB_TIMEOUT: Duration = Duration::from_secs(45);

/// Startup of a daemon, a node's registration.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A container's log through the RM's proxy: status and body.
async fn rm_logs(rm_url: &str, token: &str, container_id: ContainerId, stream: &str) -> (u16, String) {
    let response = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!("{rm_url}/v1/containers/{container_id}/logs/{stream}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the RM answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Panics naming the secret if `text` contains any of `secrets`.
fn assert_no_secret(text: &str, what: &str, secrets: &[(&str, &str)]) {
    for (name, secret) in secrets {
        assert!(!text.contains(secret), "{what} contains {name} ({secret}):\n{text}");
    }
}

/// The `ESCAPE` lines of a script's output, checked: every one BLOCKED, none missing of those
/// named in `required` (prefixes), no `ERROR` line, the script got to its end. Returns how many.
fn assert_all_blocked(output: &str, what: &str, required: &[&str]) -> usize {
    let attempts: Vec<&str> = output.lines().filter_map(|line| line.strip_prefix("ESCAPE ")).collect();
    let escaped: Vec<&&str> = attempts
        .iter()
        .filter(|attempt| !attempt.split_once(' ').is_some_and(|(_, verdict)| verdict.starts_with("BLOCKED")))
        .collect();
    assert!(
        escaped.is_empty(),
        "{what}: attempts that were not blocked:\n  {}\n--- the whole output:\n{output}",
        escaped.iter().map(|line| line.to_string()).collect::<Vec<_>>().join("\n  ")
    );
    for name in required {
        assert!(
            attempts.iter().any(|attempt| attempt.starts_with(name)),
            "{what}: no attempt `{name}…` was made:\n{output}"
        );
    }
    eprintln!("{what}:\n  {}", attempts.join("\n  "));
    let errors: Vec<&str> = output.lines().filter(|line| line.starts_with("ERROR")).collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{output}");
    assert!(
        output.lines().any(|line| line == "END"),
        "{what}: the script did not get to its end:\n{output}"
    );
    attempts.len()
}

/// A shell job of `containers` tasks running `script` after the helpers, with `env`.
fn tenant_job(name: &str, script: &str, containers: u32, env: &[(&str, String)]) -> JobSpec {
    let mut spec = shell_job(name, &format!("{SCRIPT_HELPERS}\n{script}"), containers, 64, 0);
    let shell = spec.shell.as_mut().unwrap();
    for (key, value) in env {
        shell.env.insert((*key).to_owned(), value.clone());
    }
    spec
}

/// Bob's bounded stream job (a generator of `limit` events, a keyed window count, a sink that
/// drops it), its checkpoints under `checkpoint_dir`, one AM attempt.
fn bob_stream_job(checkpoint_dir: &Path) -> JobSpec {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "bob-stream",
        "kind": "stream",
        "max_attempts": 1,
        "stream": {
            "checkpoint_interval_ms": 300,
            "checkpoint_dir": checkpoint_dir.display().to_string(),
            "worker": { "vcores": 1, "memory_mb": 256 },
            "operators": [
                { "name": "events", "kind": "generator", "parallelism": 1, "rate": 20000, "keys": 10, "seed": 5, "limit": 20000 },
                { "name": "by_key", "kind": "key_by", "input": ["events"], "expr": "$1" },
                { "name": "count", "kind": "window", "input": ["by_key"], "parallelism": 1, "size_ms": 500, "aggregate": "count" },
                { "name": "out", "kind": "discard_sink", "input": ["count"] }
            ]
        }
    }))
    .expect("a valid stream job");
    spec.validate().expect("a valid stream job");
    spec
}

fn assert_ended(report: &AppReport, expected: (AppState, FinalStatus)) {
    assert_eq!((report.state, report.final_status), expected, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_reach_each_other_or_the_clusters_secrets() {
    if !running_as_root() {
        eprintln!("skipped: tenant isolation needs root (agents change to the tenants' accounts); CI runs as root");
        return;
    }
    let started = Instant::now();
    let accounts = TestAccounts::create(&["ta", "tb"]);
    let (alice_account, bob_account) = (accounts.0[0].clone(), accounts.0[1].clone());
    let cluster = TenantCluster::start(&alice_account, &bob_account).await;
    let (admin, alice, bob) = (cluster.admin(), cluster.alice(), cluster.bob());
    eprintln!(
        "cluster up in {:.1}s: alice runs as {} (uid {}), bob as {} (uid {})",
        started.elapsed().as_secs_f64(),
        alice_account.name,
        alice_account.uid,
        bob_account.name,
        bob_account.uid
    );

    // Bob's job, holding its secret until released.
    let bob_secret = format!("bob-secret-{}", random_hex_secret());
    let release = cluster.path().join("control").join("release-bob");
    let bob_app = bob
        .submit(&tenant_job(
            "bob-secret-keeper",
            BOB_SCRIPT,
            1,
            &[("B_SECRET", bob_secret.clone()), ("RELEASE", release.display().to_string())],
        ))
        .await
        .expect("bob's job is accepted");
    let bob_task = wait_until(JOB_TIMEOUT, "bob's task to have written its secret", || async {
        let task = task_containers(&admin, bob_app).await.into_iter().next()?;
        cluster.container_dir(&task).join("secret.txt").exists().then_some(task)
    })
    .await;
    let bob_am = admin
        .containers(bob_app)
        .await
        .unwrap()
        .into_iter()
        .find(|container| container.is_am)
        .expect("bob's AM container");
    let bob_task_dir = cluster.container_dir(&bob_task);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&bob_task_dir).unwrap()),
        bob_account.uid,
        "bob's task dir is his account's"
    );
    // The agents' node keys, as the RM issued them (hex in their credential files).
    let node_keys: Vec<String> = cluster
        .agents
        .iter()
        .flat_map(|agent| {
            let text = std::fs::read_to_string(agent.work_dir.join("node-credential.json")).expect("the agent saved its credential");
            let credential: spindle_protocol::NodeCredential = serde_json::from_str(&text).unwrap();
            credential.keys.into_iter().map(|key| key.key)
        })
        .collect();
    let mut secrets = cluster.secrets(&[("bob's secret", bob_secret.as_str())]);
    secrets.extend(node_keys.iter().map(|key| ("a node's key", key.as_str())));

    // Alice's attempts, while bob's job runs.
    let join = |items: Vec<String>| items.join(" ");
    let alice_env: Vec<(&str, String)> = vec![
        ("B_ACCOUNT", bob_account.name.clone()),
        ("B_APP", bob_app.to_string()),
        ("B_TASK", bob_task.container_id.to_string()),
        ("B_TASK_DIR", bob_task_dir.display().to_string()),
        ("B_AM_DIR", cluster.container_dir(&bob_am).display().to_string()),
        ("B_TASK_AGENT", format!("http://{}", bob_task.node_address)),
        (
            "B_SHUFFLE_DIRS",
            join(
                cluster
                    .agents
                    .iter()
                    .map(|agent| agent.work_dir.join("shuffle").join(bob_app.to_string()).display().to_string())
                    .collect(),
            ),
        ),
        ("SECRET_FILE", cluster.secret_file().display().to_string()),
        ("RM_DIR", cluster.rm_dir().display().to_string()),
        ("CKPT_DIR", cluster.checkpoint_dir().display().to_string()),
        (
            "AGENT_WORK_DIRS",
            join(cluster.agents.iter().map(|agent| agent.work_dir.display().to_string()).collect()),
        ),
        (
            "AGENT_PIDS",
            join(cluster.agents.iter().map(|agent| agent.daemon.pid().to_string()).collect()),
        ),
        ("RM_PID", cluster.rm.as_ref().unwrap().pid().to_string()),
    ];
    let alice_app = alice
        .submit(&tenant_job("alice-escapes", ALICE_SCRIPT, 3, &alice_env))
        .await
        .expect("alice's job is accepted");
    let report = wait_for_app_end(&alice, alice_app, JOB_TIMEOUT).await;
    assert_ended(&report, (AppState::Finished, FinalStatus::Succeeded));
    assert_no_secret(&report.diagnostics, "alice's app diagnostics", &secrets);

    let mut outputs = Vec::new();
    for task in task_containers(&alice, alice_app).await {
        assert_no_secret(&task.diagnostics, "alice's container diagnostics", &secrets);
        let (status, stdout) = rm_logs(&cluster.rm_url, &cluster.alice_token, task.container_id, "stdout").await;
        let (stderr_status, stderr) = rm_logs(&cluster.rm_url, &cluster.alice_token, task.container_id, "stderr").await;
        assert_no_secret(&stdout, &format!("alice's stdout of {}", task.container_id), &secrets);
        assert_no_secret(&stderr, &format!("alice's stderr of {}", task.container_id), &secrets);
        outputs.push((task.container_id, status, stdout, stderr_status, stderr));
    }
    assert_eq!(outputs.len(), 3, "alice's job ran 3 tasks once each");
    let task_output = |index: u32| {
        outputs
            .iter()
            .find(|(_, status, stdout, ..)| *status == 200 && stdout.starts_with(&format!("TASK {index}\n")))
            .unwrap_or_else(|| panic!("no readable stdout of alice's task {index}: {outputs:#?}"))
    };
    let (_, _, main_output, ..) = task_output(0);
    let attempts = assert_all_blocked(
        main_output,
        "alice's task 0",
        &[
            "env-cluster-secret",
            "env-am-token",
            "list-agent-work-dir",
            "cat-agent-secret-file",
            "node-credential:",
            "rm-config",
            "rm-db",
            "environ:",
            "secret-on-cmdline:",
            "bob-environ:",
            "bob-stdout-fd:",
            "bob-secret-file",
            "bob-stdout",
            "bob-am-job-spec",
            "bob-list-shuffle:",
            "agent-bob-logs-with-shuffle-token",
            "agent-kill-bob-with-am-token",
            "rm-finish-bob-with:made-up-",
            "rm-node-heartbeat-with:",
        ],
    );
    let uid_line = format!("WHOAMI uid={} ", alice_account.uid);
    assert!(main_output.contains(&uid_line), "alice's task runs as her account:\n{main_output}");
    let (_, _, shuffle_output, ..) = task_output(1);
    let served = assert_all_blocked(shuffle_output, "alice's task 1 (map output)", &["shuffle-m_0", "shuffle-m_5"]);
    eprintln!(
        "alice's {attempts} attempts and {served} map output fetches were all blocked ({:.1}s in)",
        started.elapsed().as_secs_f64()
    );

    // Task 2 swapped its logs for symlinks to the agent's secret file and the RM's config.
    let (swapped, status, stdout, stderr_status, stderr) = outputs
        .iter()
        .find(|(_, status, stdout, ..)| !(*status == 200 && stdout.starts_with("TASK ")))
        .expect("alice's task 2, whose logs are symlinks");
    for (stream, status, body) in [("stdout", status, stdout), ("stderr", stderr_status, stderr)] {
        assert!(
            *status != 200 || body.is_empty(),
            "the RM served alice's {stream} of {swapped}, a symlink she planted: HTTP {status}\n{body}"
        );
        eprintln!("alice's {stream} swapped for a symlink: HTTP {status} {}", body.trim());
    }

    // The checkpoint metadata she planted: bob's next app is one of its targets.
    let planted: Vec<AppId> = main_output
        .lines()
        .filter_map(|line| line.strip_prefix("PLANTED "))
        .map(|id| id.parse().expect("an app id"))
        .collect();
    assert_eq!(planted.len(), 3, "{main_output}");

    // The agent reads a failed container's stderr tail (as root) for its diagnostics: a
    // symlink there must not make it read the secret for alice, a FIFO must not hang it.
    let secret_file = cluster.secret_file().display().to_string();
    let tail_symlink = alice
        .submit(&tenant_job(
            "alice-stderr-symlink",
            "rm -f stderr; ln -s \"$SECRET_FILE\" stderr; echo END; exit 3",
            1,
            &[("SECRET_FILE", secret_file.clone())],
        ))
        .await
        .unwrap();
    let tail_fifo = alice
        .submit(&tenant_job(
            "alice-stderr-fifo",
            "rm -f stderr; mkfifo stderr; echo END; exit 3",
            1,
            &[],
        ))
        .await
        .unwrap();
    for (app_id, what) in [(tail_symlink, "a symlink to the secret file"), (tail_fifo, "a FIFO")] {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let report = loop {
            let report = alice.app(app_id).await.unwrap();
            if report.state.is_terminal() {
                break report;
            }
            assert!(
                Instant::now() < deadline,
                "alice's job whose failed task left {what} as its stderr did not end: the agent hangs on it?\n{report:#?}\n{:#?}",
                admin.containers(app_id).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_ended(&report, (AppState::Failed, FinalStatus::Failed));
        for viewer in [&alice, &admin] {
            let report = viewer.app(app_id).await.unwrap();
            assert_no_secret(
                &report.diagnostics,
                &format!("the diagnostics of alice's job with {what} as stderr"),
                &secrets,
            );
            for container in viewer.containers(app_id).await.unwrap() {
                assert_no_secret(
                    &container.diagnostics,
                    &format!("the diagnostics of {} (stderr: {what})", container.container_id),
                    &secrets,
                );
            }
        }
    }

    // The view ACL both ways: state for all, diagnostics and logs for the owner only.
    let seen_by_bob = bob.app(tail_symlink).await.unwrap();
    assert_eq!((seen_by_bob.user.as_str(), seen_by_bob.state), ("alice", AppState::Failed));
    assert_eq!(seen_by_bob.diagnostics, "<hidden>", "{seen_by_bob:#?}");
    assert_ne!(alice.app(tail_symlink).await.unwrap().diagnostics, "<hidden>");
    for container in bob.containers(tail_symlink).await.unwrap() {
        assert!(
            container.diagnostics.is_empty() || container.diagnostics == "<hidden>",
            "{container:#?}"
        );
    }
    let (main_task, ..) = task_output(0);
    let (status, body) = rm_logs(&cluster.rm_url, &cluster.bob_token, *main_task, "stdout").await;
    assert_eq!(status, 403, "bob reads alice's logs: {body}");
    let seen_by_alice = alice.app(bob_app).await.unwrap();
    assert_eq!((seen_by_alice.user.as_str(), seen_by_alice.state), ("bob", AppState::Running));
    let (status, body) = rm_logs(&cluster.rm_url, &cluster.alice_token, bob_task.container_id, "stdout").await;
    assert_eq!(status, 403, "alice reads bob's logs: {body}");
    assert_no_secret(&body, "the RM's refusal", &secrets);

    // Bob's job went on untouched and ends with exactly its own output.
    std::fs::write(&release, "").unwrap();
    let report = wait_for_app_end(&bob, bob_app, JOB_TIMEOUT).await;
    assert_ended(&report, (AppState::Finished, FinalStatus::Succeeded));
    let (status, stdout) = rm_logs(&cluster.rm_url, &cluster.bob_token, bob_task.container_id, "stdout").await;
    assert_eq!((status, stdout), (200, format!("bob: {bob_secret}\nbob: done\n")));
    let tasks = task_containers(&bob, bob_app).await;
    assert_eq!(tasks.len(), 1, "bob's task ran once: {tasks:#?}");
    assert!(
        !bob_task_dir.join("planted-by-alice").exists() && !bob_task_dir.parent().unwrap().join("planted-by-alice").exists(),
        "alice wrote into bob's dirs"
    );

    // Bob's stream job whose checkpoint dir alice made first: its AM refuses the dir (it would
    // otherwise "recover" alice's last checkpoint 99 and end at once) and says why, to bob only.
    let stream_app = bob.submit(&bob_stream_job(&cluster.checkpoint_dir())).await.unwrap();
    assert!(
        planted.contains(&stream_app),
        "alice planted metadata for {planted:?}, bob's stream app is {stream_app}"
    );
    let report = wait_for_app_end(&bob, stream_app, JOB_TIMEOUT).await;
    assert_ended(&report, (AppState::Failed, FinalStatus::Failed));
    assert!(
        report.diagnostics.contains("is not a directory of this job's account") && !report.diagnostics.contains("last checkpoint 99"),
        "bob's stream job neither refused alice's checkpoint dir clearly nor stayed away from her metadata:\n{report:#?}"
    );
    assert_eq!(alice.app(stream_app).await.unwrap().diagnostics, "<hidden>");
    // The same job in a dir of its own (an app id alice did not guess) runs to the end.
    let stream_app = bob.submit(&bob_stream_job(&cluster.checkpoint_dir())).await.unwrap();
    assert!(!planted.contains(&stream_app), "{stream_app} in {planted:?}");
    let report = wait_for_app_end(&bob, stream_app, JOB_TIMEOUT).await;
    assert_ended(&report, (AppState::Finished, FinalStatus::Succeeded));
    let checkpoint = report
        .detail
        .as_ref()
        .and_then(|detail| detail.stream())
        .and_then(|stream| stream.last_checkpoint);
    assert!(checkpoint.is_none_or(|checkpoint| checkpoint.id < 99), "{report:#?}");
    let own_dir = cluster.checkpoint_dir().join(stream_app.to_string());
    let metadata = std::fs::metadata(&own_dir).expect("the stream job's checkpoint dir");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&metadata),
            metadata.permissions().mode() & 0o777
        ),
        (bob_account.uid, 0o700),
        "{}",
        own_dir.display()
    );
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    drop(cluster);
    drop(accounts);
}

/// `spindle local` started by root: its jobs run as `nobody` and reach nothing of the data dir
/// (store, `local.toml` with the secret and token), the client config or the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_started_by_root_keeps_its_secrets_from_jobs() {
    if !running_as_root() {
        eprintln!("skipped: this checks what a local cluster started by root shows its jobs; CI runs as root");
        return;
    }
    let dir = support::shared_tempdir("spindle-local-tenant-");
    set_mode(dir.path(), 0o755);
    let _cleanup = support::CleanupDir(dir.path());
    make_dir(&dir.path().join("logs"), 0o700);
    make_dir(&dir.path().join("home"), 0o755);
    // The containers' dirs go under TMPDIR: here, so that the test's dir holds all.
    let tmp = dir.path().join("tmp");
    make_dir(&tmp, 0o755);
    let data_dir = dir.path().join("data");
    let args: Vec<String> = [
        "local",
        "--agents",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir.display().to_string(),
        "--agent-vcores",
        "2",
        "--agent-memory-mb",
        "2048",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut local = Daemon::spawn_with_env("local".to_owned(), dir.path(), &args, &[("TMPDIR", &tmp.display().to_string())]);
    let rm_url = wait_until(STARTUP_TIMEOUT, "`spindle local` to print its URL", || {
        let exited = local.exit_status();
        let logs = local.logs();
        async move {
            if let Some(status) = exited {
                panic!("`spindle local` exited with {status}:\n{logs}");
            }
            logs.lines()
                .find_map(|line| line.trim().strip_prefix("RM "))
                .map(|url| url.trim().to_owned())
        }
    })
    .await;
    let config_path = dir.path().join("home").join("config.toml");
    let state: toml::Value = toml::from_str(&std::fs::read_to_string(data_dir.join("local.toml")).unwrap()).unwrap();
    let secret = state["cluster_secret"].as_str().unwrap().to_owned();
    let token = state["token"].as_str().unwrap().to_owned();
    let client = RmClient::new(&[rm_url], Some(token.clone()));
    let work_root = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("spindle-local-"))
        .expect("the local cluster's containers' dir");

    let script = r#"
echo "WHOAMI uid=$(id -u)"
attempt local-toml cat "$DATA_DIR/local.toml"
attempt spindle-db cat "$DATA_DIR/spindle.db"
attempt list-data-dir ls "$DATA_DIR"
attempt client-config cat "$CLIENT_CONFIG"
attempt env-cluster-secret sh -c 'env | grep -q "^SPINDLE_CLUSTER_SECRET="'
attempt list-work-root ls "$WORK_ROOT"
attempt list-agent-work-dir ls "$WORK_ROOT/agent-0"
attempt list-apps-dir ls ../..
locals=$(pgrep -u 0 -f -- '--data-dir' | tr '\n' ' ')
[ -n "$locals" ] || echo "ERROR pgrep found no local cluster"
probe_root_processes $locals $LOCAL_PID
scan_environs
scan_cmdlines
echo END
"#;
    let spec = tenant_job(
        "local-escapes",
        script,
        1,
        &[
            ("DATA_DIR", data_dir.display().to_string()),
            ("CLIENT_CONFIG", config_path.display().to_string()),
            ("WORK_ROOT", work_root.display().to_string()),
            ("LOCAL_PID", local.pid().to_string()),
        ],
    );
    let app_id = client.submit(&spec).await.expect("the job is accepted");
    let report = wait_for_app_end(&client, app_id, JOB_TIMEOUT).await;
    assert_ended(&report, (AppState::Finished, FinalStatus::Succeeded));
    let task = task_containers(&client, app_id).await.into_iter().next().expect("the task");
    let output = client.logs(task.container_id, "stdout").await.expect("the task's stdout");
    let secrets = [("the cluster secret", secret.as_str()), ("the admin token", token.as_str())];
    assert_no_secret(&output, "the local job's stdout", &secrets);
    assert!(output.contains("WHOAMI uid=65534\n"), "the job runs as nobody:\n{output}");
    let attempts = assert_all_blocked(
        &output,
        "the local job",
        &["local-toml", "spindle-db", "client-config", "environ:", "secret-on-cmdline:"],
    );
    eprintln!("the local job's {attempts} attempts were all blocked");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&data_dir), mode(&data_dir.join("local.toml")), mode(&config_path)),
        (0o700, 0o600, 0o600)
    );

    local.terminate();
    let status = local.wait_for_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "`spindle local` exited with {status} on SIGTERM");
}
