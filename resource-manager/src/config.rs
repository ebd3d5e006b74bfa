//! The RM's configuration file (TOML). Every field has a default except the secrets, which
//! `spindle local` generates and a real install writes once (see deploy/).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::scheduler::queues::{QueueConfig, QueueConfigError, QueueTree};

/// An API user: the bearer token a client presents and the user name it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    pub name: String,
    pub token: String,
    /// May act on every app and node (kill others' apps, decommission nodes).
    #[serde(default)]
    pub admin: bool,
}

/// Everything the RM reads at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RmConfig {
    /// Where the REST API listens (`--listen` overrides).
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…` (`--db` overrides).
    pub db: String,
    /// Shared with every agent; signs container and AM tokens. Required.
    pub cluster_secret: String,
    /// API tokens. No token, no access: there is no anonymous user.
    pub users: Vec<ApiUser>,
    /// A node silent this long is LOST.
    #[serde(with = "seconds")]
    pub node_expiry: Duration,
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
    /// Preemption and locality; reloaded with the queues.
    pub scheduler: SchedulerConfig,
    /// The queue tree (`root` and its children); reloaded by `spindle queues reload` or SIGHUP.
    pub queues: QueueConfig,
    /// The file this config was read from, if any: what a reload reads again.
    #[serde(skip)]
    pub path: Option<PathBuf>,
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

impl Default for RmConfig {
    fn default() -> Self {
        RmConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8088)),
            db: "sqlite://spindle.db".to_owned(),
            cluster_secret: String::new(),
            users: Vec::new(),
            node_expiry: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(1000),
            container_launch_expiry: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            retain_finished: Duration::from_secs(7 * 24 * 3600),
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
        let mut config: RmConfig = toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.display().to_string(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// The validated queue tree of this config.
    pub fn queue_tree(&self) -> Result<QueueTree, ConfigError> {
        Ok(QueueTree::from_config(&self.queues)?)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        }
        if self.node_expiry < self.heartbeat_interval * 2 {
            return Err(ConfigError::Invalid {
                field: "node_expiry",
                reason: "must be at least twice heartbeat_interval".to_owned(),
            });
        }
        if self.heartbeat_interval.is_zero() || self.container_launch_expiry.is_zero() {
            return Err(ConfigError::Invalid {
                field: "heartbeat_interval",
                reason: "and container_launch_expiry must be positive".to_owned(),
            });
        }
        self.queue_tree()?;
        Ok(())
    }
}

/// Durations in config files are plain numbers with the unit in the field's doc.
mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(deserializer)?.max(0.0)))
    }
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_full_file() {
        let config: RmConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            db = "postgres://localhost/spindle"
            cluster_secret = "0123456789abcdef0123"
            node_expiry = 5
            heartbeat_interval = 500
            [[users]]
            name = "alice"
            token = "alice-token-0123456789"
            admin = true
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.node_expiry, Duration::from_secs(5));
        assert_eq!(config.users[0].name, "alice");
    }

    #[test]
    fn short_secrets_are_refused() {
        let config = RmConfig {
            cluster_secret: "short".into(),
            ..RmConfig::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("cluster_secret"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<RmConfig>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"));
    }
}
