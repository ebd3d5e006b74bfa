//! The daemon roles: `resource-manager`, `node-agent`, `app-master` and `local`. Each reads its
//! settings, binds its listener here (so a taken port is reported plainly) and hands over to its
//! library with a token that the first Ctrl-C or SIGTERM cancels.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use spindle_protocol::Resources;
use spindle_resource_manager::config::RmConfig;

use crate::args::{LocalArgs, NodeAgentArgs, ResourceManagerArgs};
use crate::daemon::{bind, cancel_on_signal, shutdown_signal};
use crate::error::UsageError;
use crate::local::{LocalCluster, LocalOptions};
use crate::settings::{ClientConfigFile, ClientSettings, client_config_path, process_env, spindle_home, write_private_file};

const MISSING_RM_SECRET: &str = "the resource manager needs a cluster secret (known to it only; agents join with `spindle join-token`): \
     set `cluster_secret = \"…\"` in its config file (--config FILE) or the environment variable \
     SPINDLE_CLUSTER_SECRET; make one with `openssl rand -hex 32`";

/// Open files the RM needs besides its connections: the store, logs, the listener.
const FILES_BESIDES_CONNECTIONS: usize = 256;

pub async fn resource_manager(args: ResourceManagerArgs) -> anyhow::Result<ExitCode> {
    let config = rm_config(&args, crate::settings::cluster_secret_env())?;
    if config.users.is_empty() {
        tracing::warn!("no API users are configured ([[users]] in the config file): every client request will be refused");
    }
    // A connection per agent and AM: thousands of agents outgrow the usual soft limit of 1,024
    // open files long before `http.max_connections`.
    let files_allowed = crate::daemon::raise_open_file_limit();
    if (files_allowed as usize) < config.http.max_connections + FILES_BESIDES_CONNECTIONS {
        tracing::warn!(
            files_allowed,
            max_connections = config.http.max_connections,
            "this process may open fewer files than http.max_connections needs: raise the limit (ulimit -n, LimitNOFILE=)              or lower http.max_connections, or connections beyond the limit will be refused"
        );
    }
    let listener = bind(config.listen, "resource manager", "--listen").await?;
    let db = spindle_resource_manager::store::mask_password(&config.db);
    tracing::info!(listen = %listener.local_addr()?, db = %db, "starting the resource manager");
    spindle_resource_manager::run(config, listener, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The RM's config: the file (or defaults), then `SPINDLE_CLUSTER_SECRET`, then the flags.
pub fn rm_config(args: &ResourceManagerArgs, env_secret: Option<String>) -> anyhow::Result<RmConfig> {
    // Parsed, not yet validated: the environment's secret and the flags have their say first.
    let (mut config, source) = match &args.config {
        None => (RmConfig::default(), "the RM configuration".to_owned()),
        Some(path) => (
            RmConfig::parse_file(path).map_err(|err| UsageError::new(err.to_string()))?,
            path.display().to_string(),
        ),
    };
    if let Some(secret) = env_secret {
        config.cluster_secret = secret;
    }
    if let Some(db) = &args.db {
        config.db = db.clone();
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(advertise) = &args.advertise {
        config.advertise = Some(advertise.clone());
    }
    if config.cluster_secret.trim().is_empty() {
        return Err(UsageError::new(MISSING_RM_SECRET).into());
    }
    config.validate().map_err(|err| UsageError::new(format!("{source}: {err}")))?;
    Ok(config)
}

pub async fn node_agent(args: NodeAgentArgs, rm_flag: Option<&str>, ca_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    // The same sources as a client's: --rm, SPINDLE_RM, $SPINDLE_HOME/config.toml, the default.
    let rm_urls = ClientSettings::load(rm_flag, None)?.rm_urls;
    let join_token = agent_join_token(args.join_token_file.as_deref(), crate::settings::join_token_env())?;
    let work_dir = match args.work_dir {
        Some(work_dir) => work_dir,
        None => spindle_home(process_env)
            .map(|home| home.join("node-agent"))
            .ok_or_else(|| UsageError::new("there is no home directory for the default work dir: pass --work-dir DIR"))?,
    };
    let rm_list = rm_urls.join(",");
    let mut config = spindle_node_agent::AgentConfig::new(rm_urls, join_token, work_dir);
    config.advertise_host = args.advertise_host;
    config.capacity = capacity(args.vcores, args.memory_mb);
    if let Some(rack) = args.rack {
        config.rack = rack;
    }
    config.labels = args.labels;
    config.log_retention = Duration::from_secs(args.log_retention_s);
    config.max_connections = args.max_connections;
    config.min_uid = args.min_uid;
    config.cpu_hard_cap = args.cpu_hard_cap;
    if args.no_recovery {
        config.recover_containers = false;
        config.kill_containers_on_stop = true;
    }
    config.tls = match (args.tls_cert, args.tls_key, ca_file) {
        (Some(cert_file), Some(key_file), Some(ca_file)) => Some(spindle_node_agent::AgentTls {
            cert_file,
            key_file,
            ca_file: ca_file.to_owned(),
        }),
        (Some(_), _, None) => {
            return Err(UsageError::new(
                "--tls-cert needs --ca-file (or SPINDLE_CA_FILE): the agent checks the RM and other agents against the cluster's CA",
            )
            .into());
        }
        (None, _, Some(_)) => {
            return Err(UsageError::new(
                "--ca-file makes the agent reach the RM and agents over https, so it must serve https too: pass --tls-cert and --tls-key",
            )
            .into());
        }
        _ => None,
    };
    config.spindle_bin = std::env::current_exe().context("cannot find the running spindle binary")?;
    let listener = bind(args.listen, "node agent", "--listen").await?;
    tracing::info!(listen = %listener.local_addr()?, rm = %rm_list, "starting the node agent");
    spindle_node_agent::run(config, listener, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The join token from the file, else the environment; none is fine if the agent has a saved
/// node credential (checked once its node id is known).
pub fn agent_join_token(file: Option<&Path>, env_token: Option<String>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| UsageError::new(format!("cannot read the join token file {}: {err}", path.display())))?,
        None => match env_token {
            Some(token) => token,
            None => return Ok(None),
        },
    };
    let token = token.trim();
    if !token.starts_with("join.") {
        let source = file.map_or_else(|| "SPINDLE_JOIN_TOKEN".to_owned(), |path| path.display().to_string());
        return Err(UsageError::new(format!(
            "{source} does not hold a join token (join.…): make one with `spindle join-token` (agents no longer take the cluster secret)"
        ))
        .into());
    }
    Ok(Some(token.to_owned()))
}

/// A capacity override: clap makes sure both halves come together.
fn capacity(vcores: Option<u32>, memory_mb: Option<u64>) -> Option<Resources> {
    Some(Resources::new(vcores?, memory_mb?))
}

pub async fn app_master() -> anyhow::Result<ExitCode> {
    crate::app_master::run_from_env(cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn local(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let home =
        spindle_home(process_env).ok_or_else(|| UsageError::new("there is no home directory for the client config: set SPINDLE_HOME"))?;
    let mut options = LocalOptions::new(args.data_dir.unwrap_or_else(|| home.join("local")))?;
    options.agents = args.agents;
    options.listen = args.listen;
    options.agent_capacity = capacity(args.agent_vcores, args.agent_memory_mb);
    options.rm_config = args.rm_config;
    let mut cluster = LocalCluster::start(options).await?;

    let config_path = client_config_path(&home);
    let client_config = ClientConfigFile {
        rm: Some(vec![cluster.rm_url.clone()]),
        token: Some(cluster.token.clone()),
    };
    let written = toml::to_string(&client_config)
        .map_err(anyhow::Error::from)
        .and_then(|text| write_private_file(&config_path, &text));
    out!(
        "{}",
        banner(
            &cluster.rm_url,
            &cluster.data_dir,
            &cluster.work_root,
            &config_path,
            &cluster.agent_capacity.describe(args.agents),
            args.agents,
            written.is_ok()
        )
    );
    if let Err(err) = written {
        eprintln!("warning: the client config was not written: {err:#}");
    }

    let outcome = tokio::select! {
        () = shutdown_signal() => Ok(()),
        err = cluster.wait_for_unexpected_exit() => Err(err),
    };
    eprintln!("stopping the local cluster…");
    let stopped = cluster.shutdown().await;
    outcome.and(stopped).map(|()| ExitCode::SUCCESS)
}

/// What `spindle local` prints: where things are, what each agent offers, and how another
/// agent joins. Never the admin token (it is not even an argument): terminals are logged and
/// shared, so it stays in owner-only files (the client config, and the data dir's `local.toml`).
fn banner(
    rm_url: &str,
    data_dir: &Path,
    work_root: &Path,
    config_path: &Path,
    capacity: &[String],
    agents: usize,
    config_written: bool,
) -> String {
    let config_line = if config_written {
        format!(
            "  config  {}  (mode 0600, with the admin token; clients read it: no flags needed)\n",
            config_path.display()
        )
    } else {
        format!(
            "  (pass --rm {rm_url} to clients, and --token or SPINDLE_TOKEN with the token in {})\n",
            data_dir.join("local.toml").display()
        )
    };
    let capacity: String = capacity
        .iter()
        .enumerate()
        .map(|(line, text)| format!("  {:<8}{text}\n", if line == 0 { "agents" } else { "" }))
        .collect();
    // The token file goes in the data dir: owner-only, as a join token should be. The agent's
    // work dir goes beside the local agents' (`local_work`): containers' accounts can reach it.
    let join_token_file = data_dir.join("join-token");
    let joined_work_dir = work_root.join("joined-agent");
    format!(
        "Spindle is running: a resource manager and {agents} node agent{plural}.\n\
         \x20 RM      {rm}\n\
         {config_line}\
         \x20 data    {data}\n\
         {capacity}\
         Try:\n\
         \x20 spindle submit examples/hello-shell.toml --wait\n\
         \x20 spindle nodes\n\
         Another node agent joins from another shell of this host (a local cluster is one host: \
         its agents are on 127.0.0.1; for several hosts see deploy/README.md):\n\
         \x20 spindle join-token > {token_file}\n\
         \x20 spindle node-agent --rm {rm} --join-token-file {token_file} --listen 127.0.0.1:8042 --work-dir {work_dir}\n\
         Ctrl-C stops the cluster; `spindle local` again picks up its apps.\n",
        plural = if agents == 1 { "" } else { "s" },
        rm = rm_url,
        data = data_dir.display(),
        token_file = join_token_file.display(),
        work_dir = joined_work_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn rm_args(config: Option<&Path>) -> ResourceManagerArgs {
        ResourceManagerArgs {
            config: config.map(Path::to_owned),
            db: None,
            listen: None,
            advertise: None,
        }
    }

    #[test]
    fn the_rm_refuses_to_start_without_a_secret_and_says_how_to_set_one() {
        let err = rm_config(&rm_args(None), None).unwrap_err();
        assert!(err.is::<UsageError>());
        let message = err.to_string();
        assert!(
            message.contains("cluster_secret") && message.contains("SPINDLE_CLUSTER_SECRET"),
            "{message}"
        );
    }

    #[test]
    fn the_env_secret_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm.toml");
        std::fs::write(&path, "db = \"sqlite://file.db\"\ncluster_secret = \"file-secret-0123456789\"\n").unwrap();
        let config = rm_config(&rm_args(Some(&path)), None).unwrap();
        assert_eq!(
            (config.db.as_str(), config.cluster_secret.as_str()),
            ("sqlite://file.db", "file-secret-0123456789")
        );

        let mut args = rm_args(Some(&path));
        args.db = Some("sqlite://flag.db".into());
        args.listen = Some("127.0.0.1:9999".parse().unwrap());
        let config = rm_config(&args, Some(SECRET.into())).unwrap();
        assert_eq!((config.db.as_str(), config.cluster_secret.as_str()), ("sqlite://flag.db", SECRET));
        assert_eq!(config.listen.port(), 9999);
    }

    #[test]
    fn a_broken_rm_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let message = rm_config(&rm_args(Some(&path)), Some(SECRET.into())).unwrap_err().to_string();
        assert!(message.contains("rm.toml") && message.contains("lisen"), "{message}");
    }

    #[test]
    fn the_local_banner_says_what_agents_got_and_how_another_joins() {
        let capacity = ["4 vcores / 3 GB each: …".to_owned(), "choose with …".to_owned()];
        let text = banner(
            "http://127.0.0.1:8088",
            Path::new("/home/u/.spindle/local"),
            Path::new("/tmp/spindle-local-1f"),
            Path::new("/home/u/.spindle/config.toml"),
            &capacity,
            2,
            true,
        );
        assert!(
            text.contains("\n  agents  4 vcores / 3 GB each: …\n          choose with …\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  spindle join-token > /home/u/.spindle/local/join-token\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\n  spindle node-agent --rm http://127.0.0.1:8088 --join-token-file /home/u/.spindle/local/join-token --listen 127.0.0.1:8042 --work-dir /tmp/spindle-local-1f/joined-agent\n"
            ),
            "{text}"
        );
        // tests/tenant_escape.rs reads the URL from the first line that starts with `RM `.
        let rm_lines: Vec<&str> = text.lines().filter(|line| line.trim().starts_with("RM ")).collect();
        assert_eq!(rm_lines, ["  RM      http://127.0.0.1:8088"]);
    }

    #[test]
    fn the_join_token_comes_from_the_file_then_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-token");
        std::fs::write(&path, "join.123.abc\n").unwrap();
        assert_eq!(
            agent_join_token(Some(&path), Some("join.9.env".into())).unwrap().as_deref(),
            Some("join.123.abc")
        );
        assert_eq!(
            agent_join_token(None, Some("join.9.env".into())).unwrap().as_deref(),
            Some("join.9.env")
        );
        assert_eq!(agent_join_token(None, None).unwrap(), None, "a saved credential may do");

        std::fs::write(&path, "the-cluster-secret-0123456789\n").unwrap();
        let message = agent_join_token(Some(&path), None).unwrap_err().to_string();
        assert!(
            message.contains("join-token") && message.contains("spindle join-token"),
            "{message}"
        );
        let missing = agent_join_token(Some(&dir.path().join("nope")), None).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
