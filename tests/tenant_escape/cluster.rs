//! The two-tenant cluster as an operator would set it up: an RM and two root agents as processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spindle_cli::local::random_hex_secret;
use spindle_protocol::{ContainerReport, NodeId, NodeState, RmClient};

use super::STARTUP_TIMEOUT;
use super::accounts::{UnixAccount, make_dir, set_mode, write_file};
use crate::support::{self, Daemon, wait_for_http};

/// One agent of the cluster.
pub(super) struct Agent {
    pub(super) node_id: NodeId,
    /// Its canonical work dir.
    pub(super) work_dir: PathBuf,
    pub(super) daemon: Daemon,
}

/// An RM and two agents as an operator would set them up for two tenants: the RM's config
/// (0600) and store in a dir of its own, the agents' join token in a 0600 file (never on their
/// command line; the cluster secret stays with the RM), a shared checkpoint dir (1777, as /tmp)
/// and the daemons' logs private. AMs may hold most of the queue: both tenants' AMs run at once.
pub(super) struct TenantCluster {
    /// Everything lives here; 0711 (containers pass through to their work dirs).
    pub(super) root: tempfile::TempDir,
    pub(super) rm_url: String,
    pub(super) rm: Option<Daemon>,
    pub(super) agents: Vec<Agent>,
    pub(super) secret: String,
    /// What the agents joined with.
    pub(super) join_token: String,
    pub(super) admin_token: String,
    pub(super) alice_token: String,
    pub(super) bob_token: String,
}

impl TenantCluster {
    pub(super) async fn start(alice: &UnixAccount, bob: &UnixAccount) -> TenantCluster {
        let root = support::shared_tempdir("spindle-tenants-");
        let path = root.path().to_path_buf();
        make_dir(&path.join("logs"), 0o700);
        make_dir(&path.join("rm"), 0o755);
        make_dir(&path.join("ckpt"), 0o1777);
        make_dir(&path.join("control"), 0o755);
        set_mode(&path, 0o711);
        let mut cluster = TenantCluster {
            root,
            rm_url: String::new(),
            rm: None,
            agents: Vec::new(),
            secret: String::new(),
            join_token: String::new(),
            admin_token: format!("admin-{}", random_hex_secret()),
            alice_token: format!("alice-{}", random_hex_secret()),
            bob_token: format!("bob-{}", random_hex_secret()),
        };
        cluster.secret = random_hex_secret();
        cluster.join_token = spindle_protocol::ClusterSecret::new(&cluster.secret).join_token(spindle_protocol::now_ms() + 3_600_000);
        write_file(&cluster.secret_file(), &format!("{}\n", cluster.join_token), 0o600);
        let config = format!(
            "db = {db:?}\n\
             cluster_secret = {secret:?}\n\
             node_expiry = {expiry}\n\
             heartbeat_interval = {heartbeat}\n\
             container_launch_expiry = {launch}\n\
             \n\
             [[users]]\nname = \"admin\"\ntoken = {admin:?}\nadmin = true\n\
             \n\
             [[users]]\nname = \"alice\"\ntoken = {alice:?}\nunix_user = {alice_account:?}\n\
             \n\
             [[users]]\nname = \"bob\"\ntoken = {bob:?}\nunix_user = {bob_account:?}\n\
             \n\
             [queues]\nname = \"root\"\n\
             [[queues.children]]\nname = \"default\"\nguaranteed_percent = 100\nam_share_percent = 60\n",
            db = format!("sqlite://{}", cluster.rm_dir().join("rm.db").display()),
            secret = cluster.secret,
            expiry = support::NODE_EXPIRY_S,
            heartbeat = support::HEARTBEAT_INTERVAL_MS,
            launch = support::CONTAINER_LAUNCH_EXPIRY_S,
            admin = cluster.admin_token,
            alice = cluster.alice_token,
            alice_account = alice.name,
            bob = cluster.bob_token,
            bob_account = bob.name,
        );
        write_file(&cluster.rm_dir().join("rm.toml"), &config, 0o600);
        cluster.start_rm().await;
        for index in 0..2 {
            cluster.start_agent(index).await;
        }
        cluster
    }

    pub(super) fn path(&self) -> &Path {
        self.root.path()
    }

    pub(super) fn rm_dir(&self) -> PathBuf {
        self.path().join("rm")
    }

    /// The agents' join token: the only credential a worker is given.
    pub(super) fn secret_file(&self) -> PathBuf {
        self.path().join("agent-join-token")
    }

    pub(super) fn checkpoint_dir(&self) -> PathBuf {
        self.path().join("ckpt")
    }

    pub(super) fn client(&self, token: &str) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.rm_url), Some(token.to_owned()))
    }

    pub(super) fn admin(&self) -> RmClient {
        self.client(&self.admin_token)
    }

    pub(super) fn alice(&self) -> RmClient {
        self.client(&self.alice_token)
    }

    pub(super) fn bob(&self) -> RmClient {
        self.client(&self.bob_token)
    }

    pub(super) async fn start_rm(&mut self) {
        for attempt in 1..=5 {
            let port = support::free_port();
            self.rm_url = format!("http://127.0.0.1:{port}");
            let args: Vec<String> = [
                "resource-manager",
                "--config",
                &self.rm_dir().join("rm.toml").display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]
            .map(str::to_owned)
            .to_vec();
            let mut daemon = Daemon::spawn(format!("rm-{attempt}"), self.path(), &args);
            match wait_for_http(&mut daemon, &format!("{}/healthz", self.rm_url)).await {
                Ok(()) => {
                    self.rm = Some(daemon);
                    return;
                }
                Err(logs) if logs.contains("in use") => continue,
                Err(logs) => panic!("the RM did not start:\n{logs}"),
            }
        }
        panic!("the RM could not get a port");
    }

    /// Agent `index` with its join token from the file; returns once its node is RUNNING.
    pub(super) async fn start_agent(&mut self, index: usize) {
        let work_dir = self.path().join(format!("agent{index}"));
        for attempt in 1..=5 {
            let port = support::free_port();
            let args: Vec<String> = [
                "node-agent",
                "--rm",
                &self.rm_url,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--work-dir",
                &work_dir.display().to_string(),
                "--join-token-file",
                &self.secret_file().display().to_string(),
                "--vcores",
                "4",
                "--memory-mb",
                "4096",
            ]
            .map(str::to_owned)
            .to_vec();
            let mut daemon = Daemon::spawn(format!("agent{index}-{attempt}"), self.path(), &args);
            let node_id = NodeId(format!("127.0.0.1:{port}"));
            let admin = self.admin();
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            let registered = loop {
                if let Some(status) = daemon.exit_status() {
                    break Err(format!("exited with {status}:\n{}", daemon.logs()));
                }
                if admin.node(&node_id).await.is_ok_and(|node| node.state == NodeState::Running) {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(format!("did not register:\n{}", daemon.logs()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            match registered {
                Ok(()) => {
                    let work_dir = work_dir.canonicalize().expect("the agent made its work dir");
                    self.agents.push(Agent { node_id, work_dir, daemon });
                    return;
                }
                Err(logs) if logs.contains("in use") => continue,
                Err(logs) => panic!("agent {index} {logs}"),
            }
        }
        panic!("agent {index} could not get a port");
    }

    pub(super) fn agent_of(&self, node_id: &NodeId) -> &Agent {
        self.agents
            .iter()
            .find(|agent| &agent.node_id == node_id)
            .unwrap_or_else(|| panic!("no agent is node {node_id}"))
    }

    /// `<work dir>/apps/<app>/<container>` on the container's node.
    pub(super) fn container_dir(&self, container: &ContainerReport) -> PathBuf {
        self.agent_of(&container.node_id)
            .work_dir
            .join("apps")
            .join(container.container_id.app.to_string())
            .join(container.container_id.to_string())
    }

    /// Every secret of the cluster and its users but `extra`, by name.
    pub(super) fn secrets<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut secrets = vec![
            ("the cluster secret", self.secret.as_str()),
            ("the agents' join token", self.join_token.as_str()),
            ("the admin's API token", self.admin_token.as_str()),
            ("alice's API token", self.alice_token.as_str()),
            ("bob's API token", self.bob_token.as_str()),
        ];
        secrets.extend_from_slice(extra);
        secrets
    }
}

impl Drop for TenantCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            support::dump_logs_under(self.path());
        }
        self.agents.clear();
        self.rm = None;
        support::kill_processes_under(self.path());
    }
}
