//! What the end-to-end tests share: real `spindle` processes (an RM and node agents) in a
//! temporary directory of their own, an in-process RM for API tests, polling, and cleanup.
//!
//! Every process writes its stdout and stderr to `<dir>/logs/`; when a test panics, the guard
//! prints those logs (and the containers' own output) before it kills everything it started.
//! Nothing here uses a fixed port or a shared directory, so tests may run in parallel.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, AppReport, ContainerReport, JobSpec, NodeId, NodeState, RmClient};
use spindle_resource_manager::config::{ApiUser, RmConfig};
use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

/// The cluster secret every test cluster shares between its RM and agents.
pub const SECRET: &str = "e2e-cluster-secret-0123456789abcdef";
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
/// How many times a daemon is started again on another port when its port was taken meanwhile.
const PORT_RETRIES: usize = 5;
/// How much of each log file a failing test prints.
const LOG_TAIL_LINES: usize = 150;

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

/// Polls the app until it is FINISHED, FAILED or KILLED.
pub async fn wait_for_app_end(client: &RmClient, app_id: AppId, timeout: Duration) -> AppReport {
    wait_until(timeout, &format!("{app_id} to end"), || async {
        client.app(app_id).await.ok().filter(|report| report.state.is_terminal())
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

/// The output of one client command.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `spindle ARGS` with `home` as SPINDLE_HOME and none of the caller's Spindle variables;
/// kills it after `timeout`.
pub async fn run_spindle(home: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    let mut command = tokio::process::Command::new(spindle_bin());
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    isolate_env(command.as_std_mut(), home);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("`spindle {}` did not end within {}s", args.join(" "), timeout.as_secs()))
        .expect("run the spindle binary");
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A private SPINDLE_HOME and nothing inherited that would point the binary elsewhere.
fn isolate_env(command: &mut Command, home: &Path) {
    command
        .env("SPINDLE_HOME", home)
        .env_remove("SPINDLE_RM")
        .env_remove("SPINDLE_TOKEN")
        .env_remove("SPINDLE_CLUSTER_SECRET")
        .env_remove("SPINDLE_LOG_FORMAT")
        .env("RUST_LOG", "info");
}

/// One daemon process (RM or agent) with its output in two files. Killed when dropped.
pub struct Daemon {
    /// For messages, e.g. `agent1#2` (the second start of agent 1).
    pub name: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Daemon {
    fn spawn(name: String, dir: &Path, args: &[String]) -> Daemon {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("create the log dir");
        let stdout_path = logs.join(format!("{name}.stdout.log"));
        let stderr_path = logs.join(format!("{name}.stderr.log"));
        let mut command = Command::new(spindle_bin());
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create a log file"))
            .stderr(File::create(&stderr_path).expect("create a log file"));
        isolate_env(&mut command, &dir.join("home"));
        let child = command.spawn().expect("start the spindle binary");
        Daemon {
            name,
            child,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: ask it to stop.
    pub fn terminate(&self) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }

    /// How it ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the child process")
    }

    /// Waits until it exits; panics naming it after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        wait_until(timeout, &what, || {
            let status = self.exit_status();
            async move { status }
        })
        .await
    }

    /// Both its log files.
    pub fn logs(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("{}{}", read(&self.stdout_path), read(&self.stderr_path))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where the RM keeps its state.
#[derive(Debug, Clone)]
pub enum Db {
    /// A file in the test's directory.
    Sqlite,
    /// A database URL, e.g. a PostgreSQL schema of the test's own (see [`PgSchema`]).
    Url(String),
}

/// A node agent process and the node it registers as.
pub struct TestAgent {
    pub node_id: NodeId,
    pub daemon: Daemon,
}

/// An RM process and any number of agent processes in one temporary directory.
pub struct TestCluster {
    /// Everything lives here: config, store, logs, agents' work dirs, files jobs write.
    pub dir: tempfile::TempDir,
    pub rm_port: u16,
    /// `None` between `kill_rm` and `start_rm`.
    pub rm: Option<Daemon>,
    pub agents: Vec<TestAgent>,
    rm_starts: usize,
}

impl TestCluster {
    /// Writes the RM config and starts the RM; returns once it answers.
    pub async fn start(db: Db) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("spindle-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let db = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("rm.db").display()),
            Db::Url(url) => url,
        };
        std::fs::write(dir.path().join("rm.toml"), rm_config_toml(&db)).expect("write the RM config");
        let mut cluster = TestCluster {
            dir,
            rm_port: 0,
            rm: None,
            agents: Vec::new(),
            rm_starts: 0,
        };
        cluster.start_rm().await;
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rm_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rm_port)
    }

    /// A client with the admin's token.
    pub fn admin(&self) -> RmClient {
        RmClient::new(&[self.rm_url()], Some(ADMIN_TOKEN.to_owned()))
    }

    /// A client with the normal user's token.
    pub fn user(&self) -> RmClient {
        RmClient::new(&[self.rm_url()], Some(USER_TOKEN.to_owned()))
    }

    /// Starts the RM with the config file; on its first start on a port of its own choosing,
    /// later on the same port (agents and AMs know it). Returns once `/healthz` answers.
    pub async fn start_rm(&mut self) {
        assert!(self.rm.is_none(), "the RM is already running");
        let keep_port = self.rm_port != 0;
        for _ in 0..PORT_RETRIES {
            if !keep_port {
                self.rm_port = free_port();
            }
            self.rm_starts += 1;
            let config = self.path().join("rm.toml");
            let args = vec![
                "resource-manager".to_owned(),
                "--config".to_owned(),
                config.display().to_string(),
                "--listen".to_owned(),
                format!("127.0.0.1:{}", self.rm_port),
            ];
            let mut daemon = Daemon::spawn(format!("rm#{}", self.rm_starts), self.path(), &args);
            match wait_for_http(&mut daemon, &format!("{}/healthz", self.rm_url())).await {
                Ok(()) => {
                    self.rm = Some(daemon);
                    return;
                }
                Err(logs) if logs.contains("in use") && !keep_port => continue,
                Err(logs) if logs.contains("in use") => {
                    // Our own port, held a moment longer by the previous process or a client.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(logs) => panic!("the RM did not start:\n{logs}"),
            }
        }
        panic!("the RM could not get a port after {PORT_RETRIES} tries");
    }

    /// SIGKILL the RM: no goodbye, as a crash.
    pub fn kill_rm(&mut self) {
        let mut rm = self.rm.take().expect("the RM is running");
        rm.kill9();
    }

    /// Starts agent number `self.agents.len()` offering `vcores` and `memory_mb`, on a port of
    /// its own; returns its index once the RM lists its node RUNNING.
    pub async fn start_agent(&mut self, vcores: u32, memory_mb: u64) -> usize {
        let index = self.agents.len();
        for attempt in 1..=PORT_RETRIES {
            let port = free_port();
            let work_dir = self.path().join(format!("agent{index}"));
            let args: Vec<String> = [
                "node-agent",
                "--rm",
                &self.rm_url(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--work-dir",
                &work_dir.display().to_string(),
                "--secret",
                SECRET,
                "--vcores",
                &vcores.to_string(),
                "--memory-mb",
                &memory_mb.to_string(),
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            let mut daemon = Daemon::spawn(format!("agent{index}#{attempt}"), self.path(), &args);
            let node_id = NodeId(format!("127.0.0.1:{port}"));
            let client = self.admin();
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            let registered = loop {
                if let Some(status) = daemon.exit_status() {
                    break Err(format!("exited with {status}:\n{}", daemon.logs()));
                }
                if let Ok(node) = client.node(&node_id).await
                    && node.state == NodeState::Running
                {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(format!(
                        "did not register within {}s:\n{}",
                        STARTUP_TIMEOUT.as_secs(),
                        daemon.logs()
                    ));
                }
                tokio::time::sleep(POLL).await;
            };
            match registered {
                Ok(()) => {
                    self.agents.push(TestAgent { node_id, daemon });
                    return index;
                }
                Err(logs) if logs.contains("in use") => continue,
                Err(logs) => panic!("agent {index} {logs}"),
            }
        }
        panic!("agent {index} could not get a port after {PORT_RETRIES} tries");
    }

    pub fn node_id(&self, agent: usize) -> &NodeId {
        &self.agents[agent].node_id
    }

    /// The node's state as the RM reports it.
    pub async fn node_state(&self, node_id: &NodeId) -> Option<NodeState> {
        self.admin().node(node_id).await.ok().map(|node| node.state)
    }

    /// Runs a client command against this cluster with the admin's token.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let url = self.rm_url();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--rm", &url, "--token", ADMIN_TOKEN]);
        run_spindle(&self.path().join("home"), &full, Duration::from_secs(60)).await
    }

    /// Every log of the cluster's processes and containers, for a failing test.
    pub fn dump_logs(&self) {
        dump_logs_under(self.path());
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.agents.clear();
        self.rm = None;
        kill_processes_under(self.path());
    }
}

/// The RM's config file: short timings, an admin and a normal user.
fn rm_config_toml(db: &str) -> String {
    format!(
        "db = {db:?}\n\
         cluster_secret = {SECRET:?}\n\
         node_expiry = {NODE_EXPIRY_S}\n\
         heartbeat_interval = {HEARTBEAT_INTERVAL_MS}\n\
         container_launch_expiry = {CONTAINER_LAUNCH_EXPIRY_S}\n\
         \n\
         [[users]]\n\
         name = {ADMIN:?}\n\
         token = {ADMIN_TOKEN:?}\n\
         admin = true\n\
         \n\
         [[users]]\n\
         name = {USER:?}\n\
         token = {USER_TOKEN:?}\n"
    )
}

/// Waits until `url` answers 200 or the daemon exits (`Err` with its logs).
async fn wait_for_http(daemon: &mut Daemon, url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = daemon.exit_status() {
            return Err(format!("{} exited with {status}:\n{}", daemon.name, daemon.logs()));
        }
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer {url} within {}s:\n{}",
                daemon.name,
                STARTUP_TIMEOUT.as_secs(),
                daemon.logs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Prints the tail of every log under `dir`: daemons' (`logs/`) and containers' (`stdout`, `stderr`).
pub fn dump_logs_under(dir: &Path) {
    let mut files = Vec::new();
    collect_log_files(dir, &mut files);
    files.sort();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if text.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "===== {} (last {} of {} lines)\n{}",
            path.display(),
            tail.len(),
            lines.len(),
            tail.join("\n")
        );
    }
}

fn collect_log_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            collect_log_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "log")
            || path.file_name().is_some_and(|name| name == "stdout" || name == "stderr")
        {
            files.push(path);
        }
    }
}

/// SIGKILLs every process whose working directory is under `dir`: the daemons of a test and
/// the containers its agents started (they run in `<work-dir>/apps/…` as process groups of
/// their own, so they outlive a killed agent).
pub fn kill_processes_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let own_pid = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)) {
            // SAFETY: kill(2) on a pid read from /proc; no memory is involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A PostgreSQL schema of the test's own, dropped when the guard is dropped (even on panic).
pub struct PgSchema {
    server_url: String,
    pub schema: String,
    /// The URL the RM connects with: the server's, with `search_path` set to the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates `spindle_e2e_<random>` on SPINDLE_TEST_POSTGRES (default the local `test` database).
    pub async fn create() -> PgSchema {
        let server_url = std::env::var("SPINDLE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let mut admin = sqlx::PgConnection::connect(&server_url).await.unwrap_or_else(|error| {
            panic!("PostgreSQL is unreachable at {server_url} ({error}): start it, or point SPINDLE_TEST_POSTGRES at one")
        });
        let schema = format!("spindle_e2e_{}", hex::encode(rand::random::<[u8; 8]>()));
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create the test schema");
        let _ = admin.close().await;
        let separator = if server_url.contains('?') { '&' } else { '?' };
        let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
        PgSchema { server_url, schema, url }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (server_url, drop_schema) = (self.server_url.clone(), format!("DROP SCHEMA {} CASCADE", self.schema));
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server_url).await?;
                sqlx::query("SET lock_timeout = '10s'").execute(&mut admin).await?;
                sqlx::query(AssertSqlSafe(drop_schema)).execute(&mut admin).await?;
                Ok::<(), sqlx::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}

/// An RM in this process on an ephemeral port, with its store in a temporary directory.
pub struct InProcessRm {
    pub url: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessRm {
    /// The same users and timings as the process clusters'.
    pub async fn start() -> InProcessRm {
        let dir = tempfile::Builder::new()
            .prefix("spindle-e2e-rm-")
            .tempdir()
            .expect("create a temporary directory");
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the RM's port");
        let address: SocketAddr = listener.local_addr().expect("the RM's address");
        let config = RmConfig {
            listen: address,
            db: format!("sqlite://{}", dir.path().join("rm.db").display()),
            cluster_secret: SECRET.to_owned(),
            users: vec![
                ApiUser {
                    name: ADMIN.to_owned(),
                    token: ADMIN_TOKEN.to_owned(),
                    admin: true,
                },
                ApiUser {
                    name: USER.to_owned(),
                    token: USER_TOKEN.to_owned(),
                    admin: false,
                },
            ],
            node_expiry: Duration::from_secs(NODE_EXPIRY_S),
            heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
            container_launch_expiry: Duration::from_secs(CONTAINER_LAUNCH_EXPIRY_S),
            ..RmConfig::default()
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = spindle_resource_manager::run(config, listener, stop).await {
                panic!("the in-process RM failed: {error}");
            }
        });
        let rm = InProcessRm {
            url: format!("http://{address}"),
            dir,
            shutdown,
            task: Some(task),
        };
        let health = format!("{}/healthz", rm.url);
        let http = reqwest::Client::new();
        wait_until(STARTUP_TIMEOUT, "the in-process RM to answer", || async {
            http.get(&health).send().await.is_ok_and(|response| response.status().is_success())
        })
        .await;
        rm
    }

    pub fn admin(&self) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.url), Some(ADMIN_TOKEN.to_owned()))
    }

    pub fn user(&self) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.url), Some(USER_TOKEN.to_owned()))
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the in-process RM stopped cleanly");
        }
    }
}

impl Drop for InProcessRm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
