//! The real binary as daemons: an RM and node agents as processes in a temporary directory,
//! started on free ports, killed or stopped on demand, and cleaned up by a drop guard.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use spindle_protocol::{NodeId, NodeState, RmClient};

use super::cleanup::{dump_logs_under, kill_processes_under};
use super::cli::{CliOutput, isolate_env, run_spindle};
use super::{
    ADMIN, ADMIN_TOKEN, CONTAINER_LAUNCH_EXPIRY_S, HEARTBEAT_INTERVAL_MS, NODE_EXPIRY_S, POLL, SECRET, STARTUP_TIMEOUT, USER, USER_TOKEN,
    free_port, spindle_bin, wait_until,
};

/// How many times a daemon is started again on another port when its port was taken meanwhile.
const PORT_RETRIES: usize = 5;

/// One daemon process (RM or agent) with its output in two files. Killed when dropped.
pub struct Daemon {
    /// For messages, e.g. `agent1#2` (the second start of agent 1).
    pub name: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `spindle ARGS` in `dir`, its output in `dir/logs/NAME.{stdout,stderr}.log`.
    pub fn spawn(name: String, dir: &Path, args: &[String]) -> Daemon {
        Daemon::spawn_with_env(name, dir, args, &[])
    }

    /// As `spawn`, in the network namespace `netns` (a test host, `NetnsHosts`).
    pub fn spawn_in_netns(name: String, dir: &Path, netns: &str, args: &[String]) -> Daemon {
        let mut full = vec![
            format!("--net=/run/netns/{netns}"),
            "--".to_owned(),
            spindle_bin().display().to_string(),
        ];
        full.extend(args.iter().cloned());
        Daemon::spawn_program(name, dir, Path::new("/usr/bin/nsenter"), &full, &[])
    }

    /// As `spawn_in_netns`, on a host that shares no directory with the others: in a mount
    /// namespace of its own whose /tmp is a private tmpfs holding only `own` (bind-mounted
    /// back at its own path), so the RM's, the other hosts' and the test's directories, and
    /// any default under /tmp, are not there. `own` must be under /tmp; `stash` is an empty
    /// directory outside it, where `own` (and the binary, when a target dir under /tmp holds
    /// it) waits while /tmp is covered.
    pub fn spawn_in_private_host(name: String, dir: &Path, netns: &str, own: &Path, stash: &Path, args: &[String]) -> Daemon {
        assert!(own.starts_with("/tmp") && !stash.starts_with("/tmp"), "{own:?} {stash:?}");
        const SCRIPT: &str = r#"set -e
own="$1"; stash="$2"; bin="$3"
mkdir -p "$stash/own"
mount --bind "$own" "$stash/own"
case "$bin" in /tmp/*) touch "$stash/bin"; mount --bind "$bin" "$stash/bin";; esac
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p "$own"
mount --move "$stash/own" "$own"
case "$bin" in /tmp/*) mkdir -p "$(dirname "$bin")"; touch "$bin"; mount --move "$stash/bin" "$bin";; esac
shift 2
exec "$@""#;
        let mut full: Vec<String> = [
            &format!("--net=/run/netns/{netns}"),
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            SCRIPT,
            "sh",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        full.extend([
            own.display().to_string(),
            stash.display().to_string(),
            spindle_bin().display().to_string(),
        ]);
        full.extend(args.iter().cloned());
        let home = own.join("home").display().to_string();
        Daemon::spawn_program(name, dir, Path::new("/usr/bin/nsenter"), &full, &[("SPINDLE_HOME", &home)])
    }

    /// As `spawn`, with these variables added to its (isolated) environment.
    pub fn spawn_with_env(name: String, dir: &Path, args: &[String], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_program(name, dir, &spindle_bin(), args, env)
    }

    fn spawn_program(name: String, dir: &Path, program: &Path, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("create the log dir");
        let stdout_path = logs.join(format!("{name}.stdout.log"));
        let stderr_path = logs.join(format!("{name}.stderr.log"));
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create a log file"))
            .stderr(File::create(&stderr_path).expect("create a log file"));
        isolate_env(&mut command, &dir.join("home"));
        command.envs(env.iter().copied());
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
    /// Its command line, to start it again the same way.
    pub args: Vec<String>,
    starts: usize,
}

/// An RM process and any number of agent processes in one temporary directory.
pub struct TestCluster {
    /// Everything lives here: config, store, logs, agents' work dirs, files jobs write.
    pub dir: tempfile::TempDir,
    pub rm_port: u16,
    /// `None` between `kill_rm` and `start_rm`.
    pub rm: Option<Daemon>,
    pub agents: Vec<TestAgent>,
    /// More RMs on the same store (PostgreSQL): ports, and processes while they run. The
    /// agents and clients of the cluster are given every RM's URL.
    pub other_rms: Vec<(u16, Option<Daemon>)>,
    rm_starts: usize,
    /// Set: every daemon serves HTTPS with this CA's certificate (`start_tls`).
    tls: Option<super::TestCa>,
}

impl TestCluster {
    /// Writes the RM config and starts the RM; returns once it answers.
    pub async fn start(db: Db) -> TestCluster {
        TestCluster::start_with(db, None).await
    }

    /// A cluster whose RM and agents serve HTTPS with a certificate of a CA made for it. This
    /// test process then trusts that CA, for good: one such test per test binary.
    pub async fn start_tls(db: Db) -> TestCluster {
        let dir = crate::support::shared_tempdir("spindle-e2e-ca-");
        let ca = super::TestCa::create(&dir.keep());
        spindle_protocol::tls::trust_ca_file(&ca.ca_file).expect("trust the test CA");
        TestCluster::start_with(db, Some(ca)).await
    }

    /// `rms` RMs on one PostgreSQL schema (`db`) with a `leader_lease` of `lease_s` seconds:
    /// the first one started leads; returns once all answer.
    pub async fn start_ha(db: String, lease_s: f64, rms: usize) -> TestCluster {
        let mut cluster = TestCluster::start_with_config(Db::Url(db), None, &format!("leader_lease = {lease_s}\n")).await;
        for _ in 1..rms {
            cluster.add_rm().await;
        }
        cluster
    }

    async fn start_with(db: Db, tls: Option<super::TestCa>) -> TestCluster {
        TestCluster::start_with_config(db, tls, "").await
    }

    /// A cluster whose RM config is the usual one with `node_expiry` set to `seconds`, for
    /// tests that take a node away on purpose and must not have it declared lost on a loaded
    /// machine.
    pub async fn start_with_node_expiry(db: Db, seconds: u64) -> TestCluster {
        let cluster = TestCluster::start_with_config(db, None, "").await;
        let path = cluster.path().join("rm.toml");
        let config = std::fs::read_to_string(&path).expect("read the RM config");
        let config = config.replace(&format!("node_expiry = {NODE_EXPIRY_S}\n"), &format!("node_expiry = {seconds}\n"));
        std::fs::write(&path, config).expect("write the RM config");
        let mut cluster = cluster;
        cluster.kill_rm();
        cluster.start_rm().await;
        cluster
    }

    async fn start_with_config(db: Db, tls: Option<super::TestCa>, top_level: &str) -> TestCluster {
        let dir = crate::support::shared_tempdir("spindle-e2e-");
        let db = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("rm.db").display()),
            Db::Url(url) => url,
        };
        let mut config = format!("{top_level}{}", rm_config_toml(&db));
        // Finished apps' logs are copied here (tests/logs.rs reads them after the agents are gone).
        config.push_str(&format!("\n[log_aggregation]\ndir = {:?}\n", dir.path().join("app-logs")));
        if let Some(ca) = &tls {
            config.push_str(&format!(
                "
[tls]
cert_file = {:?}
key_file = {:?}
ca_file = {:?}
",
                ca.cert_file, ca.key_file, ca.ca_file
            ));
        }
        std::fs::write(dir.path().join("rm.toml"), config).expect("write the RM config");
        let mut cluster = TestCluster {
            dir,
            rm_port: 0,
            rm: None,
            agents: Vec::new(),
            other_rms: Vec::new(),
            rm_starts: 0,
            tls,
        };
        cluster.start_rm().await;
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rm_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.rm_port)
    }

    /// The CA of a TLS cluster.
    pub fn ca(&self) -> Option<&super::TestCa> {
        self.tls.as_ref()
    }

    /// Every RM's URL: the first one's, then the others' in the order they were added.
    pub fn rm_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let others = self.other_rms.iter().map(|(port, _)| format!("{scheme}://127.0.0.1:{port}"));
        std::iter::once(self.rm_url()).chain(others).collect()
    }

    /// A client with the admin's token.
    pub fn admin(&self) -> RmClient {
        RmClient::new(&self.rm_urls(), Some(ADMIN_TOKEN.to_owned()))
    }

    /// A client with the normal user's token.
    pub fn user(&self) -> RmClient {
        RmClient::new(&self.rm_urls(), Some(USER_TOKEN.to_owned()))
    }

    /// Starts one more RM on the cluster's config and store (several RMs need PostgreSQL),
    /// on a port of its own; returns its number (1 for the first one added) once `/healthz`
    /// answers. Agents started later are given its URL too.
    pub async fn add_rm(&mut self) -> usize {
        let port = free_port();
        self.other_rms.push((port, None));
        let number = self.other_rms.len();
        self.restart_rm(number).await;
        number
    }

    /// Starts RM `number` (0: the first) again on its port, if it is not running.
    pub async fn restart_rm(&mut self, number: usize) {
        if number == 0 {
            if self.rm.is_none() {
                self.start_rm().await;
            }
            return;
        }
        let (port, running) = &self.other_rms[number - 1];
        if running.is_some() {
            return;
        }
        let port = *port;
        self.rm_starts += 1;
        let args: Vec<String> = ["resource-manager", "--config"]
            .iter()
            .map(|arg| arg.to_string())
            .chain([
                self.path().join("rm.toml").display().to_string(),
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
            ])
            .collect();
        let mut daemon = Daemon::spawn(format!("rm{number}#{}", self.rm_starts), self.path(), &args);
        let url = format!("{}/healthz", self.rm_urls()[number]);
        for _ in 0..PORT_RETRIES {
            match wait_for_http(&mut daemon, &url).await {
                Ok(()) => {
                    self.other_rms[number - 1].1 = Some(daemon);
                    return;
                }
                Err(logs) if logs.contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    daemon = Daemon::spawn(format!("rm{number}#{}", self.rm_starts), self.path(), &args);
                }
                Err(logs) => panic!("RM {number} did not start:\n{logs}"),
            }
        }
        panic!("RM {number} could not get its port back");
    }

    /// The process of RM `number` (0: the first), if it runs.
    pub fn rm_process(&mut self, number: usize) -> Option<&mut Daemon> {
        match number {
            0 => self.rm.as_mut(),
            _ => self.other_rms[number - 1].1.as_mut(),
        }
    }

    /// SIGKILL RM `number` (0: the first): no goodbye, as a crash.
    pub fn kill_rm_number(&mut self, number: usize) {
        let daemon = match number {
            0 => self.rm.take(),
            _ => self.other_rms[number - 1].1.take(),
        };
        if let Some(mut daemon) = daemon {
            daemon.kill9();
        }
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
            // In a file, as deploy/ does: a token on the command line is readable by every
            // process on the host (the tenant-escape suite checks every root agent for one).
            let token_file = self.path().join("agent-join-token");
            std::fs::write(&token_file, super::join_token()).expect("write the agent's join token file");
            let owner_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
            std::fs::set_permissions(&token_file, owner_only).expect("make the join token file private");
            let args: Vec<String> = [
                "node-agent",
                "--rm",
                &self.rm_urls().join(","),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--work-dir",
                &work_dir.display().to_string(),
                "--join-token-file",
                &token_file.display().to_string(),
                "--vcores",
                &vcores.to_string(),
                "--memory-mb",
                &memory_mb.to_string(),
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            let mut args = args;
            if let Some(ca) = &self.tls {
                for (flag, file) in [
                    ("--tls-cert", &ca.cert_file),
                    ("--tls-key", &ca.key_file),
                    ("--ca-file", &ca.ca_file),
                ] {
                    args.extend([flag.to_owned(), file.display().to_string()]);
                }
            }
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
                    self.agents.push(TestAgent {
                        node_id,
                        daemon,
                        args,
                        starts: 1,
                    });
                    return index;
                }
                Err(logs) if logs.contains("in use") => continue,
                Err(logs) => panic!("agent {index} {logs}"),
            }
        }
        panic!("agent {index} could not get a port after {PORT_RETRIES} tries");
    }

    /// Stops agent `index` (SIGTERM and a wait for its exit, or SIGKILL) and starts it again
    /// with the same command line (port, work dir); returns once it runs again.
    pub async fn restart_agent(&mut self, index: usize, graceful: bool) {
        let agent = &mut self.agents[index];
        if graceful {
            agent.daemon.terminate();
            agent.daemon.wait_for_exit(Duration::from_secs(30)).await;
        } else {
            agent.daemon.kill9();
        }
        agent.starts += 1;
        let name = format!("agent{index}#{}", agent.starts);
        agent.daemon = Daemon::spawn(name, self.dir.path(), &agent.args);
        let url = format!("http://{}/healthz", agent.node_id);
        if let Err(logs) = wait_for_http(&mut self.agents[index].daemon, &url).await {
            panic!("agent {index} did not start again: {logs}");
        }
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
        let ca_file = self.tls.as_ref().map(|ca| ca.ca_file.display().to_string());
        if let Some(ca_file) = &ca_file {
            full.extend(["--ca-file", ca_file]);
        }
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
        self.other_rms.clear();
        kill_processes_under(self.path());
    }
}

/// The RM's config file: short timings, an admin and a normal user.
pub fn rm_config_toml(db: &str) -> String {
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
pub async fn wait_for_http(daemon: &mut Daemon, url: &str) -> Result<(), String> {
    // An https URL is checked against the CA this process trusts (`TestCluster::start_tls`).
    let client = spindle_protocol::tls::client_builder()
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
