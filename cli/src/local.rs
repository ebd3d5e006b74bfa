//! A whole cluster in one process: an RM on an embedded SQLite store and N node agents on
//! ephemeral ports. `spindle local`, `spindle demo` and tests start it the same way.
//!
//! The data dir is owner-only (0700): it holds the store and, in `<data-dir>/local.toml` (0600),
//! the cluster secret, the API token and the agents' ports, which are reused, so a restarted `spindle local` opens its own store again, recovers the apps it had,
//! and its agents come back as the same nodes instead of leaving LOST ones behind.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use spindle_protocol::{NodeState, Resources, RmClient, now_ms};
use spindle_resource_manager::config::{ApiUser, RmConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::daemon::{bind, reachable_address};
use crate::error::UsageError;
use crate::local_capacity::AgentCapacity;
use crate::settings::write_private_file;

/// How long the RM and the agents may take to come up before `start` gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each role may take to stop before it is aborted.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `start` looks whether the roles are up yet.
const STARTUP_POLL: Duration = Duration::from_millis(50);

/// How to start a local cluster.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How many node agents run next to the RM.
    pub agents: usize,
    /// Where the RM's REST API listens; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Holds the store, `local.toml` and each agent's work dir.
    pub data_dir: PathBuf,
    /// What each agent offers; `None`: a share of the machine (`local_capacity`).
    pub agent_capacity: Option<Resources>,
    /// The binary agents run for `spindle app-master`: this one, except in tests.
    pub spindle_bin: PathBuf,
    /// An RM config file whose queues and scheduler settings the local RM uses (and reloads
    /// on `spindle queues reload`); its listen, db, secret, admin user and log copies are the local ones.
    pub rm_config: Option<PathBuf>,
}

impl LocalOptions {
    /// Two agents, an ephemeral RM port, and the running binary for the AM.
    pub fn new(data_dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(LocalOptions {
            agents: 2,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            data_dir: data_dir.into(),
            agent_capacity: None,
            spindle_bin: std::env::current_exe().context("cannot find the running spindle binary")?,
            rm_config: None,
        })
    }
}

/// The RM defaults, except that AMs may hold half of the `default` queue: a laptop cluster of a
/// few vcores would otherwise run one app at a time (10% of 8 vcores is less than one AM).
fn local_rm_config() -> RmConfig {
    let mut config = RmConfig::default();
    for leaf in &mut config.queues.children {
        leaf.am_share_percent = 50;
    }
    config
}

/// What a data dir remembers between runs (`local.toml`, owner-only: it holds secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalState {
    cluster_secret: String,
    token: String,
    /// Ports the agents had last time; each agent asks for its old port again.
    #[serde(default)]
    agent_ports: Vec<u16>,
}

/// What a role task returns: its name, for messages, and how it ended.
type RoleExit = (String, anyhow::Result<()>);

/// A running local cluster. Stop it with [`LocalCluster::shutdown`]; dropping it aborts the roles.
#[derive(Debug)]
pub struct LocalCluster {
    /// Base URL of the RM's REST API, e.g. `http://127.0.0.1:8088`.
    pub rm_url: String,
    /// API token of the admin user the cluster runs with.
    pub token: String,
    /// Absolute path of the data dir.
    pub data_dir: PathBuf,
    /// Where the agents keep containers (`local_work::work_root`): outside the data dir.
    pub work_root: PathBuf,
    /// The `spindle` binary containers run (`local_work::runnable_binary`).
    spindle_bin: PathBuf,
    /// Where each agent serves its API, in start order.
    pub agent_addresses: Vec<SocketAddr>,
    /// What each agent offers, and why: `spindle local` says so at start.
    pub agent_capacity: AgentCapacity,
    /// Cancelled first at shutdown, so the agents' last reports reach a live RM.
    agents_shutdown: CancellationToken,
    /// Cancelled once the agents have stopped.
    rm_shutdown: CancellationToken,
    /// The agents' tasks: joined at shutdown, watched for an early exit meanwhile.
    agent_tasks: JoinSet<RoleExit>,
    /// The RM's task (a set of one, so it is watched the same way).
    rm_task: JoinSet<RoleExit>,
    /// An exclusive lock on `<data dir>/local.lock` for the cluster's life: a second `spindle
    /// local` on the same data dir is refused before it touches anything.
    _lock: std::fs::File,
}

impl LocalCluster {
    /// Starts the RM and the agents and returns once every agent is RUNNING at the RM.
    pub async fn start(options: LocalOptions) -> anyhow::Result<LocalCluster> {
        prepare_data_dir(&options.data_dir)?;
        let data_dir = options.data_dir.canonicalize()?;
        let lock_path = data_dir.join("local.lock");
        let lock = spindle_resource_manager::store::exclusive_lock(&lock_path)
            .with_context(|| format!("cannot lock {}", lock_path.display()))?
            .ok_or_else(|| {
                UsageError::new(format!(
                    "another `spindle local` runs on the data dir {} (it holds {}): stop it first, or pass another --data-dir",
                    data_dir.display(),
                    lock_path.display()
                ))
            })?;
        let mut state = load_or_create_state(&data_dir)?;
        let base = match &options.rm_config {
            Some(path) => RmConfig::parse_file(path)?,
            None => local_rm_config(),
        };
        let mut users = base.users.clone();
        users.push(ApiUser {
            name: local_user_name(),
            token: state.token.clone(),
            admin: true,
            unix_user: None,
        });
        // Finished apps' logs stay readable after the agents' retention (`spindle logs APP`), in
        // the data dir whatever the file says: a copy of deploy/rm.toml names /var/lib/spindle.
        let mut log_aggregation = base.log_aggregation.clone();
        log_aggregation.dir = Some(data_dir.join("app-logs"));
        // Its agents and clients reach it over plain HTTP on this host: a copy of a deployment's
        // config must not turn TLS on under them.
        if base.tls != Default::default() {
            tracing::warn!(
                config = %options.rm_config.as_deref().unwrap_or(Path::new("")).display(),
                "spindle local serves plain HTTP on this host: the config's [tls] is ignored"
            );
        }
        let config = RmConfig {
            listen: options.listen,
            db: format!("sqlite://{}", data_dir.join("spindle.db").display()),
            cluster_secret: state.cluster_secret.clone(),
            users,
            log_aggregation,
            tls: Default::default(),
            ..base
        };
        config.validate().context("the local RM configuration is not valid")?;

        let agent_capacity = AgentCapacity::decide(options.agent_capacity, options.agents).await?;
        let rm_listener = bind(options.listen, "resource manager", "--listen").await?;
        let rm_url = format!("http://{}", reachable_address(rm_listener.local_addr()?));
        let work_root = crate::local_work::work_root(&data_dir)?;
        let spindle_bin = crate::local_work::runnable_binary(&options.spindle_bin, &work_root)?;
        let mut cluster = LocalCluster {
            rm_url: rm_url.clone(),
            token: state.token.clone(),
            data_dir: data_dir.clone(),
            work_root,
            spindle_bin,
            agent_addresses: Vec::new(),
            agent_capacity,
            agents_shutdown: CancellationToken::new(),
            rm_shutdown: CancellationToken::new(),
            agent_tasks: JoinSet::new(),
            rm_task: JoinSet::new(),
            _lock: lock,
        };
        // The agents run in this process, which holds the secret anyway: each gets its node
        // credential straight into its work dir, fresh at every start. (A join token would be
        // refused for nodes the restarted RM still lists as RUNNING, until they expire.)
        let authority = config.node_authority();
        let rm_shutdown = cluster.rm_shutdown.clone();
        cluster.rm_task.spawn(async move {
            let outcome = spindle_resource_manager::run(config, rm_listener, rm_shutdown).await;
            ("resource manager".to_owned(), outcome.map_err(anyhow::Error::from))
        });

        let started = async {
            cluster
                .wait_until_ready(|client| async move { client.cluster().await.map(|_| true) })
                .await?;
            for index in 0..options.agents {
                let preferred_port = state.agent_ports.get(index).copied().unwrap_or(0);
                cluster.spawn_agent(index, preferred_port, &authority).await?;
            }
            let ports: Vec<u16> = cluster.agent_addresses.iter().map(SocketAddr::port).collect();
            if state.agent_ports != ports {
                state.agent_ports = ports.clone();
                save_state(&data_dir, &state)?;
            }
            cluster
                .wait_until_ready(|client| {
                    let ports = ports.clone();
                    async move {
                        let nodes = client.nodes().await?;
                        Ok(ports.iter().all(|port| {
                            let suffix = format!(":{port}");
                            nodes
                                .iter()
                                .any(|node| node.state == NodeState::Running && node.address.ends_with(&suffix))
                        }))
                    }
                })
                .await
        };
        match started.await {
            Ok(()) => Ok(cluster),
            Err(err) => {
                if let Err(stop_err) = cluster.shutdown().await {
                    tracing::warn!(error = %format!("{stop_err:#}"), "the local cluster did not stop cleanly");
                }
                Err(err)
            }
        }
    }

    /// Starts agent `index` on `preferred_port` if it is free, else on any free port.
    async fn spawn_agent(&mut self, index: usize, preferred_port: u16, authority: &spindle_protocol::NodeAuthority) -> anyhow::Result<()> {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, preferred_port)).await {
            Ok(listener) => listener,
            Err(_) => bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "node agent", "--listen").await?,
        };
        let address = listener.local_addr()?;
        self.agent_addresses.push(address);
        let work_dir = self.work_root.join(format!("agent-{index}"));
        let node_id = spindle_protocol::NodeId(format!("{}:{}", Ipv4Addr::LOCALHOST, address.port()));
        spindle_node_agent::save_node_credential(&work_dir, &authority.credential(&node_id, now_ms()))?;
        let mut config = spindle_node_agent::AgentConfig::new(vec![self.rm_url.clone()], None, work_dir);
        config.advertise_host = Some(Ipv4Addr::LOCALHOST.to_string());
        config.capacity = Some(self.agent_capacity.each());
        config.spindle_bin = self.spindle_bin.clone();
        // A local cluster stops whole, its agents with its RM: its containers go with it, and
        // nothing is left to adopt, so launches skip recovery's cost (~1.3 ms each).
        config.recover_containers = false;
        config.kill_containers_on_stop = true;
        let shutdown = self.agents_shutdown.clone();
        self.agent_tasks.spawn(async move {
            let outcome = spindle_node_agent::run(config, listener, shutdown).await;
            (format!("node agent {index}"), outcome.map_err(anyhow::Error::from))
        });
        Ok(())
    }

    /// Polls `ready` until it says yes, failing early if a role stops meanwhile.
    async fn wait_until_ready<F, Fut>(&mut self, ready: F) -> anyhow::Result<()>
    where
        F: Fn(RmClient) -> Fut,
        Fut: Future<Output = Result<bool, spindle_protocol::ClientError>>,
    {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_error = None;
        loop {
            for tasks in [&mut self.rm_task, &mut self.agent_tasks] {
                if let Some(exit) = tasks.try_join_next() {
                    return Err(role_exit_error(exit)).context("the local cluster did not start");
                }
            }
            match ready(self.client()).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => last_error = Some(err),
            }
            if Instant::now() > deadline {
                let cause = last_error.map(|err| format!(": {err}")).unwrap_or_default();
                return Err(anyhow!(
                    "the local cluster did not come up within {}s{cause}",
                    STARTUP_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
    }

    /// A client of the RM with the cluster's admin token.
    pub fn client(&self) -> RmClient {
        RmClient::new(std::slice::from_ref(&self.rm_url), Some(self.token.clone()))
    }

    /// Resolves when a role stops on its own and the cluster cannot go on: the RM stopped, or
    /// an agent failed. The error says which and why. An agent that stops cleanly was
    /// decommissioned: the rest of the cluster carries on without it.
    pub async fn wait_for_unexpected_exit(&mut self) -> anyhow::Error {
        loop {
            let exit = tokio::select! {
                Some(exit) = self.rm_task.join_next(), if !self.rm_task.is_empty() => exit,
                Some(exit) = self.agent_tasks.join_next(), if !self.agent_tasks.is_empty() => match exit {
                    Ok((role, Ok(()))) => {
                        eprintln!("the {role} was decommissioned and stopped; the cluster goes on without it");
                        continue;
                    }
                    other => other,
                },
                else => return std::future::pending().await,
            };
            return role_exit_error(exit);
        }
    }

    /// Stops the agents, then the RM; reports the first role that failed or hung.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.agents_shutdown.cancel();
        let agents_outcome = drain(&mut self.agent_tasks).await;
        self.rm_shutdown.cancel();
        let rm_outcome = drain(&mut self.rm_task).await;
        agents_outcome.and(rm_outcome)
    }
}

/// Waits for every task of `tasks` to end, aborting them after the timeout.
async fn drain(tasks: &mut JoinSet<RoleExit>) -> anyhow::Result<()> {
    let mut first_error = None;
    let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok((_, Ok(()))))) => {}
            Ok(Some(exit)) => {
                first_error.get_or_insert(role_exit_error(exit));
            }
            Err(_elapsed) => {
                tasks.abort_all();
                first_error.get_or_insert(anyhow!(
                    "a role did not stop within {}s and was aborted",
                    SHUTDOWN_TIMEOUT.as_secs()
                ));
                break;
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn role_exit_error(exit: Result<RoleExit, tokio::task::JoinError>) -> anyhow::Error {
    match exit {
        Ok((role, Ok(()))) => anyhow!("the {role} stopped"),
        Ok((role, Err(err))) => err.context(format!("the {role} failed")),
        Err(join_error) => anyhow!("a role crashed: {join_error}"),
    }
}

/// Who may enter a data dir: its owner only, since it holds the store and the secrets.
const DATA_DIR_MODE: u32 = 0o700;

/// Creates the data dir owner-only (0700), or tightens an existing one that an earlier `spindle
/// local` made (it holds `local.toml`). Any other existing directory is the user's choice and
/// keeps its mode, with a warning if others may enter it: the secrets in it are 0600 anyway.
fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let set_private = |dir: &Path| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DATA_DIR_MODE));
    if !data_dir.exists() {
        return std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(data_dir)
            // The mode given to mkdir loses the umask's bits; this one is exact.
            .and_then(|()| set_private(data_dir))
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()));
    }
    let mode = std::fs::metadata(data_dir)
        .with_context(|| format!("cannot read the data dir {}", data_dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if state_path(data_dir).exists() {
        set_private(data_dir).with_context(|| format!("cannot make the data dir {} owner-only", data_dir.display()))?;
    } else {
        tracing::warn!(
            data_dir = %data_dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "other users may list the data dir; its store and secrets are owner-only files, but `chmod 700` it to hide them entirely"
        );
    }
    Ok(())
}

/// The data dir's state, made the first time and kept.
fn load_or_create_state(data_dir: &Path) -> anyhow::Result<LocalState> {
    let path = state_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return toml::from_str(&text).map_err(|err| {
                UsageError::new(format!(
                    "{}: {} (delete it to start afresh)",
                    path.display(),
                    err.to_string().trim_end()
                ))
                .into()
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let state = LocalState {
        cluster_secret: random_hex_secret(),
        token: random_hex_secret(),
        agent_ports: Vec::new(),
    };
    save_state(data_dir, &state)?;
    Ok(state)
}

fn save_state(data_dir: &Path, state: &LocalState) -> anyhow::Result<()> {
    write_private_file(&state_path(data_dir), &toml::to_string(state)?)
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("local.toml")
}

/// 32 random bytes in hex.
pub fn random_hex_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The name the local API user gets: the login name, as YARN would show it.
fn local_user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.trim().is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = load_or_create_state(dir.path()).unwrap();
        assert_eq!(first.token.len(), 64);
        assert_ne!(first.token, first.cluster_secret);
        first.agent_ports = vec![4001, 4002];
        save_state(dir.path(), &first).unwrap();
        assert_eq!(load_or_create_state(dir.path()).unwrap(), first);
    }

    #[test]
    fn the_data_dir_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let fresh = parent.path().join("a/b/local");
        prepare_data_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        save_state(&fresh, &load_or_create_state(&fresh).unwrap()).unwrap();
        assert_eq!(mode(&state_path(&fresh)), 0o600);

        // An earlier run's data dir is tightened; a directory of the user's is left alone.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let theirs = parent.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&theirs).unwrap();
        assert_eq!(mode(&theirs), 0o755);
    }

    #[test]
    fn a_broken_state_file_says_how_to_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("local.toml"), "token = 1\n").unwrap();
        let err = load_or_create_state(dir.path()).unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
