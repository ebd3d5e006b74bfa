//! What the end-to-end tests share: real `spindle` processes (an RM and node agents) in a
//! temporary directory of their own, an in-process RM for API tests, polling, and cleanup.
//!
//! Every process writes its stdout and stderr to `<dir>/logs/`; when a test panics, the guard
//! prints those logs (and the containers' own output) before it kills everything it started.
//! Nothing here uses a fixed port or a shared directory, so tests may run in parallel.
//!
//! Here: the cluster's users and timings, polling and job helpers. `cli.rs` runs the client,
//! `daemons.rs` runs an RM and agents as processes, `cleanup.rs` prints logs and kills what a
//! test left running, `postgres.rs` gives a test a schema of its own, and `in_process.rs` runs
//! an RM inside the test.

#![allow(dead_code)]

mod cleanup;
mod cli;
mod daemons;
mod in_process;
mod netns;
mod object_source;
mod postgres;
mod private_postgres;
mod s3;
mod streams;
mod tls;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, AppReport, ContainerReport, JobSpec, RmClient};

// What the test binaries name as `support::…`. Like the rest of this module, each binary that
// compiles it uses only part of it, which `dead_code` does not cover for re-exports.
#[allow(unused_imports)]
pub use self::{
    cleanup::{CleanupDir, dump_logs_under, kill_processes_under},
    cli::{CliOutput, run_spindle, run_spindle_with_env},
    daemons::{Daemon, Db, TestAgent, TestCluster, rm_config_toml, wait_for_http},
    in_process::InProcessRm,
    netns::NetnsHosts,
    object_source::{object_source_job, run_object_source_scenario},
    postgres::PgSchema,
    private_postgres::PrivatePostgres,
    s3::{S3_BUCKET, S3_SECRET, S3Server, s3_env, shared_s3_env, unique_s3_root},
    streams::{
        assert_exact, committed_windows, example_job, expected, local_container_dir, operator_mut, start_local, stream_detail,
        wait_for_checkpoint,
    },
    tls::TestCa,
};

/// The cluster secret every test cluster shares between its RM and agents.
pub const SECRET: &str = "e2e-cluster-secret-0123456789abcdef";

/// Set by CI: tests that drive the RM with tools from PyPI fail, instead of skipping, when no
/// python has them.
pub const REQUIRE_TEST_PYTHON: &str = "SPINDLE_REQUIRE_TEST_PYTHON";

/// A python that can import `modules` (tools from PyPI the tests use): `SPINDLE_TEST_PYTHON`,
/// the venv `.ci/run` makes (`target/test-venv`), or `python3`. `None` (with a line saying
/// the test is skipped, or a panic under `SPINDLE_REQUIRE_TEST_PYTHON`) when none can.
pub fn test_python(modules: &str) -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    let candidates = [
        std::env::var_os("SPINDLE_TEST_PYTHON").map(PathBuf::from),
        Some(venv),
        Some(PathBuf::from("python3")),
    ];
    let found = candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if found.is_none() {
        skip_unless_required(
            REQUIRE_TEST_PYTHON,
            &format!(
                "no python can import {modules} (python3 -m venv target/test-venv && target/test-venv/bin/pip install yarn-api-client==1.0.3 prometheus-client==0.21.1)"
            ),
        );
    }
    found
}

/// Parses Prometheus text with `prometheus_client`'s parser: family name → `{"type", "samples":
/// [[name, labels, value]]}`, or `None` when the parser is not installed (the caller skips).
pub fn parse_prometheus_text(text: &str) -> Option<serde_json::Value> {
    let python = test_python("prometheus_client")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/parse_prometheus.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let output = child.wait_with_output().expect("the parser ends");
    assert!(
        output.status.success(),
        "Prometheus' parser refused the text:\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("the parser prints JSON"))
}

/// Set by CI: a missing PostgreSQL server (or its binaries) fails the tests that need it
/// instead of skipping them.
pub const REQUIRE_POSTGRES: &str = "SPINDLE_REQUIRE_POSTGRES";

/// For a test whose service is missing on this machine: one line saying it is skipped (the
/// caller then returns), or a panic when `require_var` says the service must be there.
pub fn skip_unless_required(require_var: &str, why: &str) {
    assert!(std::env::var_os(require_var).is_none(), "{require_var} is set, but {why}");
    // Straight to stderr, not `eprintln!`, which the test harness captures: the skip must show.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why} (set {require_var} to make this a failure)");
}

/// A join token of the test clusters (`SECRET`), valid for an hour.
pub fn join_token() -> String {
    spindle_protocol::ClusterSecret::new(SECRET).join_token(spindle_protocol::now_ms() + 3_600_000)
}
/// An admin: may decommission nodes and kill anyone's apps.
pub const ADMIN: &str = "admin";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
/// A normal user.
pub const USER: &str = "alice";
pub const USER_TOKEN: &str = "e2e-alice-token-0123456789abcdef";

/// Short timings, so that a lost node or a restart is seen within seconds.
pub const NODE_EXPIRY_S: u64 = 3;
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
pub const CONTAINER_LAUNCH_EXPIRY_S: u64 = 20;

/// How often `wait_until` looks again.
const POLL: Duration = Duration::from_millis(100);
/// How long a daemon may take to answer after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A temporary dir jobs may read and write: containers run as other accounts than the test
/// (`nobody` when the tests run as root), and tempfile makes dirs only their owner may enter.
pub fn shared_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("open the temporary directory to jobs");
    dir
}

/// The real binary, as cargo built it for this test.
pub fn spindle_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spindle"))
}

/// `examples/` of the repository.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A port that was free a moment ago (bind port 0, read it, let it go). Whoever uses it must
/// cope with losing a race for it: the daemon starters retry on another one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind an ephemeral port")
}

/// What `wait_until` accepts from its check: `true`/`Some(value)` means done.
pub trait Ready {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every 100 ms until it is ready; panics naming `what` after `timeout`.
pub async fn wait_until<R, Fut>(timeout: Duration, what: &str, mut check: impl FnMut() -> Fut) -> R::Value
where
    R: Ready,
    Fut: Future<Output = R>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await.ready() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {:.1}s waiting for {what}", timeout.as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A shell job of `containers` containers of `sh -c script`, 1 vcore and `memory_mb` each.
pub fn shell_job(name: &str, script: &str, containers: u32, memory_mb: u64, max_retries: u32) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "kind": "shell",
        "shell": {
            "command": ["sh", "-c", script],
            "containers": containers,
            "vcores": 1,
            "memory_mb": memory_mb,
            "max_retries": max_retries,
        }
    }))
    .expect("a valid shell job")
}

/// Submits a job and waits for it to end; panics (with the report) unless it SUCCEEDED.
/// The lines of a file that tasks append their `SPINDLE_TASK_INDEX` to, sorted by index
/// (none if it does not exist yet).
pub fn task_lines(path: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort_by_key(|line| line.parse::<u32>().unwrap_or(u32::MAX));
    lines
}

pub async fn run_to_success(client: &RmClient, spec: &JobSpec, timeout: Duration) -> AppReport {
    let app_id = client.submit(spec).await.expect("the job is accepted");
    let report = wait_for_app_end(client, app_id, timeout).await;
    assert_eq!(
        (report.state, report.final_status),
        (spindle_protocol::AppState::Finished, spindle_protocol::FinalStatus::Succeeded),
        "{report:#?}"
    );
    report
}

/// Polls the app until it is FINISHED, FAILED or KILLED.
pub async fn wait_for_app_end(client: &RmClient, app_id: AppId, timeout: Duration) -> AppReport {
    wait_until(timeout, &format!("{app_id} to end"), || async {
        client.app(app_id).await.ok().filter(|report| report.state.is_terminal())
    })
    .await
}

/// An ended app's containers once every one has ended: the app is FINISHED when its AM
/// unregisters, and the AM's own container ends a heartbeat or two later.
pub async fn wait_for_containers_to_end(client: &RmClient, app_id: AppId) -> Vec<ContainerReport> {
    wait_until(Duration::from_secs(30), &format!("every container of {app_id} to end"), || async {
        let containers = client.containers(app_id).await.ok()?;
        containers
            .iter()
            .all(|container| container.exit_reason.is_some())
            .then_some(containers)
    })
    .await
}

/// The task containers (not the AM's) of an app.
pub async fn task_containers(client: &RmClient, app_id: AppId) -> Vec<ContainerReport> {
    let mut containers: Vec<ContainerReport> = client
        .containers(app_id)
        .await
        .expect("list the app's containers")
        .into_iter()
        .filter(|container| !container.is_am)
        .collect();
    containers.sort_by_key(|container| container.container_id);
    containers
}

/// Every `key<TAB>count` line of the job's part files.
pub fn read_counts(output: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(output).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("part-r-") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (word, count) = line.split_once('\t').unwrap_or_else(|| panic!("{line:?} in {}", path.display()));
            assert!(
                counts.insert(word.to_owned(), count.parse::<u64>().unwrap()).is_none(),
                "{word} twice"
            );
        }
    }
    counts
}
