//! What an agent is told at start: where the RM is, its join token, where containers live,
//! and the few knobs an operator may turn.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use spindle_protocol::{NodeId, Resources};

use crate::AgentError;

/// The rack a node reports when none is configured (YARN's default).
pub const DEFAULT_RACK: &str = "/default-rack";

/// How often the agent heartbeats until the RM's register reply says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a finished container's directory (its logs and whatever it wrote) stays on disk.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Connections the agent's API serves at once (AMs, the RM, reducers fetching map output);
/// further ones wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How container memory limits are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryEnforcement {
    /// A cgroup memory hierarchy (v1, else v2) if one is writable, else RSS sampling.
    #[default]
    Auto,
    /// Cgroups only: the agent refuses to start when no cgroup memory hierarchy is writable.
    Cgroup,
    /// Sample each container's RSS every 500 ms and kill it when over its limit.
    Sampling,
}

impl FromStr for MemoryEnforcement {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(MemoryEnforcement::Auto),
            "cgroup" => Ok(MemoryEnforcement::Cgroup),
            "sampling" => Ok(MemoryEnforcement::Sampling),
            _ => Err(format!("unknown memory enforcement `{text}`: expected auto, cgroup or sampling")),
        }
    }
}

/// The agent's certificate and key, and the cluster's CA (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// Everything `run` needs to know; `AgentConfig::new` fills in the defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// One or more RM base URLs; the client tries them in order.
    pub rm_urls: Vec<String>,
    /// Lets the agent register when it has no saved node credential for its node id
    /// (`spindle join-token`). Afterwards the RM's credential, saved in the work dir, is used.
    pub join_token: Option<String>,
    /// HTTPS for the agent's API, and the CA it (and its containers) check the RM and other
    /// agents against. `None`: plain HTTP.
    pub tls: Option<AgentTls>,
    /// Containers run in `<work_dir>/apps/<app_id>/<container_id>`, their stdout/stderr files there.
    pub work_dir: PathBuf,
    /// Host part of the node id and address; default: the listener's IP (the host name if the
    /// listener is bound to an unspecified address such as 0.0.0.0).
    pub advertise_host: Option<String>,
    /// Capacity offered to the RM; default: all CPUs and total memory minus max(1 GiB, 10%).
    pub capacity: Option<Resources>,
    /// Rack for the scheduler's locality preferences.
    pub rack: String,
    /// Node labels, reported at registration.
    pub labels: Vec<String>,
    /// Heartbeat period until the RM's register reply gives its own.
    pub heartbeat_interval: Duration,
    /// The binary that runs when a launch command's argv[0] is exactly `spindle`.
    pub spindle_bin: PathBuf,
    /// How container memory limits are enforced.
    pub memory_enforcement: MemoryEnforcement,
    /// How long a finished container's directory (stdout, stderr, what it wrote) is kept after
    /// its end; then a background sweep deletes it, and the app's directory once it is empty.
    /// The sweep runs every quarter of this, at least every 10 minutes (and first at start), so
    /// files go at most one sweep interval late. Directories an earlier agent process left
    /// count from their modification time. Default 24 h.
    pub log_retention: Duration,
    /// Connections the API serves at once (`--max-connections`, default 1024), so a flood of
    /// idle or slow clients cannot exhaust the agent's file descriptors; idle ones are closed
    /// after 10 s without a request.
    pub max_connections: usize,
    /// Containers outlive an agent restart (YARN's NodeManager recovery; the default): each
    /// runs under a small `/bin/sh` script that records how it ended (`container_init`), and
    /// the agent keeps what it needs in `<work dir>/recovery/`; a restarted agent adopts the
    /// containers still running and reports the ends it missed. Costs ~1.3 ms per launch.
    pub recover_containers: bool,
    /// Kill running containers when `shutdown` stops the agent. Off by default: with
    /// `recover_containers` an agent stopped for an upgrade leaves its containers running for
    /// the next start (within the RM's node expiry) to adopt; without it, turn this on, or
    /// containers would be orphans the RM re-runs elsewhere. Decommission kills them anyway.
    pub kill_containers_on_stop: bool,
    /// Containers never run as accounts with a lower uid (YARN's `min.user.id`; default 1000).
    /// Only an agent running as root changes accounts; uid 0 is refused whatever this says.
    pub min_uid: u32,
    /// Cap each container's CPU time at its vcores (CFS quota), not only weigh it: steadier
    /// timings, but idle CPU stays idle. Off by default, as YARN's strict-resource-usage.
    pub cpu_hard_cap: bool,
}

impl AgentConfig {
    /// A configuration with every default: probed capacity, `/default-rack`, 1 s heartbeats,
    /// this executable as `spindle`, automatic memory enforcement, logs kept for 24 h.
    pub fn new(rm_urls: Vec<String>, join_token: Option<String>, work_dir: PathBuf) -> Self {
        AgentConfig {
            rm_urls,
            join_token,
            tls: None,
            work_dir,
            advertise_host: None,
            capacity: None,
            rack: DEFAULT_RACK.to_owned(),
            labels: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            spindle_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("spindle")),
            memory_enforcement: MemoryEnforcement::Auto,
            log_retention: DEFAULT_LOG_RETENTION,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            recover_containers: true,
            kill_containers_on_stop: false,
            min_uid: crate::account::DEFAULT_MIN_UID,
            cpu_hard_cap: false,
        }
    }

    /// Refuses configurations that could never work, with what to change.
    pub(crate) fn validate(&self) -> Result<(), AgentError> {
        if self.rm_urls.iter().all(|url| url.trim().is_empty()) {
            return Err(AgentError::Config("no RM URL given: pass at least one with --rm".to_owned()));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(AgentError::Config("the heartbeat interval must be greater than zero".to_owned()));
        }
        if self.log_retention.is_zero() {
            return Err(AgentError::Config(
                "the log retention must be greater than zero: AMs and users read logs after containers end".to_owned(),
            ));
        }
        if self.max_connections == 0 {
            return Err(AgentError::Config(
                "the connection cap must be at least 1: pass --max-connections N".to_owned(),
            ));
        }
        if self.rack.is_empty() || !self.rack.starts_with('/') {
            return Err(AgentError::Config(format!(
                "rack `{}` must be a path starting with `/`, like /default-rack",
                self.rack
            )));
        }
        Ok(())
    }
}

/// The node id (and address) the agent registers under: `<host>:<port>` of its listener.
pub(crate) fn advertised_node_id(advertise_host: Option<&str>, local: SocketAddr) -> NodeId {
    let port = local.port();
    let host = match advertise_host {
        Some(host) => host.to_owned(),
        None if local.ip().is_unspecified() => sysinfo::System::host_name()
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned()),
        None => return NodeId(local.to_string()),
    };
    // A bare IPv6 literal needs brackets before the port, as in a URL.
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        NodeId(format!("[{host}]:{port}"))
    } else {
        NodeId(format!("{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_the_advertised_address() {
        let local: SocketAddr = "127.0.0.1:8042".parse().unwrap();
        assert_eq!(advertised_node_id(None, local).as_str(), "127.0.0.1:8042");
        assert_eq!(advertised_node_id(Some("worker-3"), local).as_str(), "worker-3:8042");
        assert_eq!(advertised_node_id(Some("::1"), local).as_str(), "[::1]:8042");
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(advertised_node_id(None, v6).as_str(), "[::1]:9000");
        let any: SocketAddr = "0.0.0.0:8042".parse().unwrap();
        assert!(!advertised_node_id(None, any).as_str().starts_with("0.0.0.0"));
    }

    #[test]
    fn defaults_and_validation() {
        let config = AgentConfig::new(vec!["127.0.0.1:8088".into()], None, PathBuf::from("/tmp/x"));
        assert_eq!(config.rack, DEFAULT_RACK);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.memory_enforcement, MemoryEnforcement::Auto);
        assert_eq!(config.log_retention, Duration::from_secs(86_400));
        config.validate().unwrap();

        let mut no_retention = config.clone();
        no_retention.log_retention = Duration::ZERO;
        assert!(no_retention.validate().unwrap_err().to_string().contains("log retention"));

        let mut no_rm = config.clone();
        no_rm.rm_urls = vec![];
        assert!(no_rm.validate().unwrap_err().to_string().contains("--rm"));
        let mut bad_rack = config;
        bad_rack.rack = "rack1".into();
        assert!(bad_rack.validate().is_err());
    }

    #[test]
    fn memory_enforcement_parses() {
        assert_eq!("Sampling".parse::<MemoryEnforcement>(), Ok(MemoryEnforcement::Sampling));
        assert!("swap".parse::<MemoryEnforcement>().is_err());
    }
}
