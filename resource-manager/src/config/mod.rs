//! The RM's configuration file (TOML). Every field has a default except the secrets, which
//! `spindle local` generates and a real install writes once (see deploy/).

mod tls;

pub use tls::TlsConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::scheduler::queues::{QueueConfig, QueueConfigError, QueueTree};
use crate::store::{SqliteSynchronous, StoreOptions};

/// An API user: the bearer token a client presents and the user name it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    pub name: String,
    pub token: String,
    /// May act on every app and node (kill others' apps, decommission nodes).
    #[serde(default)]
    pub admin: bool,
    /// The Unix account this user's containers run as on agents running as root; without
    /// one, `default_unix_user`.
    #[serde(default)]
    pub unix_user: Option<String>,
}

/// How deploy/rm.toml's values that must be replaced begin.
const PLACEHOLDER_PREFIX: &str = "CHANGE-ME";

/// The account containers of users without a `unix_user` run as: unprivileged everywhere.
pub const DEFAULT_UNIX_USER: &str = "nobody";

/// Everything the RM reads at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RmConfig {
    /// Where the REST API listens (`--listen` overrides).
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…` (`--db` overrides).
    pub db: String,
    /// The URL other RMs, agents, AMs and clients reach this RM at (`--advertise` overrides):
    /// what a standby redirects to while this one is active. Default: `http://` (`https://`
    /// with `[tls]`) and the listen address, the host's name in place of `0.0.0.0`.
    pub advertise: Option<String>,
    /// How long the active RM's lease lasts (seconds, fractions allowed) on PostgreSQL: it
    /// renews it every quarter of that; a standby takes over once it runs out, and an active
    /// that cannot renew it in time stops acting. Also how long a commit is retried while
    /// the database cannot be reached.
    #[serde(with = "seconds")]
    pub leader_lease: Duration,
    /// How hard SQLite syncs a commit: `"full"` (default) survives power loss, `"normal"` only
    /// an RM crash. Not used with PostgreSQL.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Known to the RM only: every token and node credential derives from it. Required.
    pub cluster_secret: String,
    /// How often node credentials rotate: agents get the new keys in a heartbeat reply.
    #[serde(with = "seconds")]
    pub node_credential_rotation: Duration,
    /// How long a node credential that was not rotated stays valid: an agent down longer
    /// than this needs a new join token.
    #[serde(with = "seconds")]
    pub node_credential_lifetime: Duration,
    /// API tokens. No token, no access: there is no anonymous user.
    pub users: Vec<ApiUser>,
    /// The Unix account containers of users without their own `unix_user` run as (default
    /// `nobody`). Empty: such users' submissions are refused.
    pub default_unix_user: String,
    /// A node silent this long is LOST.
    #[serde(with = "seconds")]
    pub node_expiry: Duration,
    /// A departed node (DECOMMISSIONED or LOST) is forgotten this long after it departed (and
    /// once silent for `node_expiry`): dropped from memory and the node list, its last state
    /// kept in the store as history (YARN's `node-removal-untracked.timeout-ms`). 0 keeps
    /// departed nodes for ever; otherwise at least `MIN_DEPARTED_NODE_EXPIRY`.
    #[serde(with = "seconds")]
    pub departed_node_expiry: Duration,
    /// How often agents heartbeat (they also report at once when a container ends).
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// A granted container not running this long after the grant is reclaimed as EXPIRED.
    #[serde(with = "seconds")]
    pub container_launch_expiry: Duration,
    /// Largest request body the API accepts.
    pub max_body_bytes: usize,
    /// Finished apps older than this are purged from the store (0 keeps them forever).
    #[serde(with = "seconds")]
    pub retain_finished: Duration,
    /// How many ended apps (with their containers) stay in memory, the latest to end; older
    /// ones are read from the store until `retain_finished` purges them. YARN's
    /// `max-completed-applications`.
    pub finished_apps_in_memory: usize,
    /// Copies of finished apps' logs (`[log_aggregation]`; off unless `dir` is set).
    pub log_aggregation: LogAggregationConfig,
    /// The HTTP server's limits against slow and misbehaving clients.
    pub http: HttpConfig,
    /// HTTPS for the API and towards agents (off by default).
    pub tls: TlsConfig,
    /// Preemption and locality; reloaded with the queues.
    pub scheduler: SchedulerConfig,
    /// The queue tree (`root` and its children); reloaded by `spindle queues reload` or SIGHUP.
    pub queues: QueueConfig,
    /// The file this config was read from, if any: what a reload reads again.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Aggregation of finished apps' logs, as YARN's: once an app has ended, the RM copies the last
/// bytes of every container's stdout and stderr from its node, so they stay readable after the
/// node's retention deleted the container's directory, until the app itself is purged
/// (`retain_finished`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogAggregationConfig {
    /// Where the copies go (`<dir>/<app_id>/<container_id>.<stdout|stderr>`, mode 0600); none:
    /// no aggregation. With several RMs, a directory every RM host mounts.
    pub dir: Option<PathBuf>,
    /// At most this many bytes per app (the containers in id order; later ones are cut).
    pub max_bytes_per_app: u64,
    /// At most this many bytes of one log: its last bytes.
    pub max_bytes_per_log: u64,
}

impl Default for LogAggregationConfig {
    fn default() -> Self {
        LogAggregationConfig {
            dir: None,
            max_bytes_per_app: 256 * 1024 * 1024,
            max_bytes_per_log: 16 * 1024 * 1024,
        }
    }
}

/// How the scheduler takes capacity back and waits for locality.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Take lent capacity back from queues above their guarantee when a queue below its
    /// guarantee has pending asks.
    pub preemption: bool,
    /// How long a container under a preemption notice may run on (seconds) before it is
    /// killed as PREEMPTED; its AM may release other containers of its own meanwhile.
    #[serde(with = "seconds")]
    pub preemption_grace: Duration,
    /// Scheduling rounds an ask with preferred nodes waits for one of them before it takes a
    /// node of a preferred rack.
    pub node_locality_delay: u32,
    /// Further rounds it waits for a preferred rack before it takes any node.
    pub rack_locality_delay: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            preemption: true,
            preemption_grace: Duration::from_secs(15),
            node_locality_delay: 4,
            rack_locality_delay: 4,
        }
    }
}

/// The HTTP server's timeouts and connection cap (`[http]`): what keeps slow or misbehaving
/// clients from tying the RM up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head this long (seconds) after it opened,
    /// or after its previous response, is closed: idle and slowly dribbling clients alike.
    #[serde(with = "seconds")]
    pub header_read_timeout: Duration,
    /// A request not answered this long (seconds) after its head gets 503, so a slow body or a
    /// stuck handler cannot hold a connection; an `allocate` long poll gets this on top of its wait.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// At shutdown, how long (seconds) requests in flight may take before their connections are
    /// closed and the RM stops anyway.
    #[serde(with = "seconds")]
    pub shutdown_timeout: Duration,
}

/// More connections than this would exhaust file descriptors long before it protected anything.
const MAX_HTTP_CONNECTIONS: usize = 1_000_000;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: spindle_http_server::DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: spindle_http_server::DEFAULT_REQUEST_TIMEOUT,
            // 10,000 agents (a big YARN cluster) with room for AMs and clients.
            max_connections: 20_000,
            shutdown_timeout: spindle_http_server::DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl HttpConfig {
    /// The limits the server loop enforces (the request timeout is applied by the router).
    pub fn server_limits(&self) -> spindle_http_server::ServerLimits {
        spindle_http_server::ServerLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.request_timeout", self.request_timeout),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be positive (seconds)".to_owned(),
                });
            }
        }
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::Invalid {
                field: "http.max_connections",
                reason: format!("must be between 1 and {MAX_HTTP_CONNECTIONS}, not {}", self.max_connections),
            });
        }
        Ok(())
    }
}

impl Default for RmConfig {
    fn default() -> Self {
        RmConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8088)),
            db: "sqlite://spindle.db".to_owned(),
            advertise: None,
            leader_lease: Duration::from_secs(5),
            sqlite_synchronous: SqliteSynchronous::default(),
            cluster_secret: String::new(),
            node_credential_rotation: Duration::from_secs(3600),
            node_credential_lifetime: Duration::from_secs(7 * 24 * 3600),
            users: Vec::new(),
            default_unix_user: DEFAULT_UNIX_USER.to_owned(),
            node_expiry: Duration::from_secs(10),
            departed_node_expiry: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_millis(1000),
            container_launch_expiry: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            retain_finished: Duration::from_secs(7 * 24 * 3600),
            finished_apps_in_memory: 1_000,
            log_aggregation: LogAggregationConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            scheduler: SchedulerConfig::default(),
            queues: QueueConfig::default(),
            path: None,
        }
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config field `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config section [queues]: {0}")]
    Queues(#[from] QueueConfigError),
}

impl RmConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<RmConfig, ConfigError> {
        let config = RmConfig::parse_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file without checking it (the CLI applies its flags first), remembering
    /// the path for reloads.
    pub fn parse_file(path: &Path) -> Result<RmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.display().to_string(),
            message: message.trim_end().to_owned(),
        };
        let document = toml::Deserializer::parse(&text).map_err(|err| parse_error(err.to_string()))?;
        // The path names the field even when the value's own error cannot (durations, enums).
        let mut config: RmConfig = serde_path_to_error::deserialize(document).map_err(|err| {
            let field = err.path().to_string();
            let message = err.into_inner().to_string();
            parse_error(if field == "." {
                message
            } else {
                format!("field `{field}`: {message}")
            })
        })?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Refuses the `CHANGE-ME…` placeholders of deploy/rm.toml: a cluster started with them
    /// would share its secret and tokens with everyone who read the example.
    fn check_placeholders(&self) -> Result<(), ConfigError> {
        let placeholder = |value: &str| value.starts_with(PLACEHOLDER_PREFIX);
        if placeholder(&self.cluster_secret) {
            return Err(ConfigError::Invalid {
                field: "cluster_secret",
                reason: "is still the example's placeholder: set your own (e.g. `openssl rand -hex 32`)".to_owned(),
            });
        }
        if let Some(user) = self.users.iter().find(|user| placeholder(&user.token)) {
            return Err(ConfigError::Invalid {
                field: "users.token",
                reason: format!(
                    "of user {} is still the example's placeholder: set your own (e.g. `openssl rand -hex 32`)",
                    user.name
                ),
            });
        }
        Ok(())
    }

    /// The Unix account `user`'s containers run as: their own `unix_user`, else
    /// `default_unix_user`; `None` when neither is set (their submissions are refused).
    pub fn unix_account(&self, user: &ApiUser) -> Option<String> {
        user.unix_user
            .clone()
            .or_else(|| Some(self.default_unix_user.clone()).filter(|account| !account.is_empty()))
    }

    /// How the store is opened.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            sqlite_synchronous: self.sqlite_synchronous,
        }
    }

    /// Issues and checks node credentials and tokens.
    pub fn node_authority(&self) -> spindle_protocol::NodeAuthority {
        spindle_protocol::NodeAuthority::new(
            spindle_protocol::ClusterSecret::new(&self.cluster_secret),
            self.node_credential_rotation,
            self.node_credential_lifetime,
        )
    }

    /// `departed_node_expiry` as the state machine takes it: `None` keeps departed nodes.
    pub fn departed_node_expiry_ms(&self) -> Option<u64> {
        (!self.departed_node_expiry.is_zero()).then_some(self.departed_node_expiry.as_millis() as u64)
    }

    /// The validated queue tree of this config.
    pub fn queue_tree(&self) -> Result<QueueTree, ConfigError> {
        Ok(QueueTree::from_config(&self.queues)?)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_placeholders()?;
        if self.cluster_secret.len() < 16 {
            return Err(ConfigError::Invalid {
                field: "cluster_secret",
                reason: "must be at least 16 characters (e.g. `openssl rand -hex 32`)".to_owned(),
            });
        }
        for (index, user) in self.users.iter().enumerate() {
            if user.token.len() < 16 {
                return Err(ConfigError::Invalid {
                    field: "users.token",
                    reason: format!("of user #{index} ({}) must be at least 16 characters", user.name),
                });
            }
            if user.name.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "users.name",
                    reason: format!("of user #{index} is empty"),
                });
            }
            if let Some(account) = &user.unix_user {
                spindle_protocol::check_account_name(account).map_err(|reason| ConfigError::Invalid {
                    field: "users.unix_user",
                    reason: format!("of user {}: {reason}", user.name),
                })?;
            }
        }
        if !self.default_unix_user.is_empty() {
            spindle_protocol::check_account_name(&self.default_unix_user).map_err(|reason| ConfigError::Invalid {
                field: "default_unix_user",
                reason,
            })?;
        }
        if self.node_expiry < self.heartbeat_interval * 2 {
            return Err(ConfigError::Invalid {
                field: "node_expiry",
                reason: "must be at least twice heartbeat_interval".to_owned(),
            });
        }
        if !self.departed_node_expiry.is_zero() && self.departed_node_expiry < MIN_DEPARTED_NODE_EXPIRY {
            return Err(ConfigError::Invalid {
                field: "departed_node_expiry",
                reason: format!(
                    "must be 0 (keep departed nodes) or at least {} seconds, not {}",
                    MIN_DEPARTED_NODE_EXPIRY.as_secs(),
                    self.departed_node_expiry.as_secs_f64()
                ),
            });
        }
        if self.heartbeat_interval.is_zero() || self.container_launch_expiry.is_zero() {
            return Err(ConfigError::Invalid {
                field: "heartbeat_interval",
                reason: "and container_launch_expiry must be positive".to_owned(),
            });
        }
        // A container token is signed with the key of the generation its launch deadline
        // falls in; agents hold the current and the next.
        if self.node_credential_rotation < self.container_launch_expiry * 2 {
            return Err(ConfigError::Invalid {
                field: "node_credential_rotation",
                reason: "must be at least twice container_launch_expiry".to_owned(),
            });
        }
        if self.node_credential_lifetime < self.node_credential_rotation {
            return Err(ConfigError::Invalid {
                field: "node_credential_lifetime",
                reason: "must be at least node_credential_rotation".to_owned(),
            });
        }
        if !(MIN_LEADER_LEASE..=MAX_LEADER_LEASE).contains(&self.leader_lease) {
            return Err(ConfigError::Invalid {
                field: "leader_lease",
                reason: format!(
                    "must be from {} to {} seconds, not {}",
                    MIN_LEADER_LEASE.as_secs_f64(),
                    MAX_LEADER_LEASE.as_secs(),
                    self.leader_lease.as_secs_f64()
                ),
            });
        }
        if let Some(url) = &self.advertise {
            check_advertise(url)?;
        }
        self.http.validate()?;
        self.tls.validate()?;
        self.queue_tree()?;
        Ok(())
    }

    /// The URL this RM advertises (see `advertise`), given the address it is bound to.
    pub fn advertise_url(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.advertise {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.tls.cert_file.is_some() { "https" } else { "http" };
        if bound.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_default();
            if !host.is_empty() {
                return format!("{scheme}://{host}:{}", bound.port());
            }
        }
        format!("{scheme}://{bound}")
    }
}

/// Departed nodes stay listed at least this long, so that people and scripts polling the node
/// list get to see that a node went.
const MIN_DEPARTED_NODE_EXPIRY: Duration = Duration::from_secs(60);

/// Shorter leases would be renewed more often than a database round trip under load allows.
const MIN_LEADER_LEASE: Duration = Duration::from_millis(100);
/// Longer ones would leave a cluster without a scheduler for minutes after a crash.
const MAX_LEADER_LEASE: Duration = Duration::from_secs(300);

/// An advertised URL is `http(s)://HOST:PORT`, nothing after: standbys append request paths.
fn check_advertise(url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        field: "advertise",
        reason: format!("is `{url}`: {reason} (e.g. http://rm1.example:8088)"),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid("must be a scheme, a host and a port, without a path"));
    }
    Ok(())
}

/// The longest duration a config field takes: longer ones are surely typos, and they would
/// overflow the clock arithmetic done with them.
const MAX_DURATION_SECS: u64 = 10 * 365 * 24 * 3600;

/// `value` in a `unit` of which a second holds `per_second`, as a duration, if it is a finite
/// number from 0 to ten years; else why not, in the field's own unit.
fn duration_in_units(value: f64, per_second: f64, unit: &str) -> Result<Duration, String> {
    let max_value = MAX_DURATION_SECS as f64 * per_second;
    if value.is_finite() && (0.0..=max_value).contains(&value) {
        // Rounded to the nanosecond, so `333` milliseconds are 333 ms, not 332.999999 ms.
        return Ok(Duration::from_nanos((value * (1e9 / per_second)).round() as u64));
    }
    Err(format!("must be a number of {unit} from 0 to {max_value} (ten years), not {value}"))
}

/// Durations in config files are plain numbers with the unit in the field's doc; `inf`, `nan`,
/// negative or absurdly large values are refused (`RmConfig::parse_file` adds the field's name).
mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::duration_in_units(f64::deserialize(deserializer)?, 1.0, "seconds").map_err(serde::de::Error::custom)
    }
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::duration_in_units(f64::deserialize(deserializer)?, 1000.0, "milliseconds").map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
