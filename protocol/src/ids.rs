//! Newtype ids. They print and parse the way YARN's do, so people and tools recognise them:
//! `application_<rm-start-ms>_<seq>` and `container_e<epoch>_<rm-start-ms>_<app-seq>_<attempt>_<seq>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The reason an id string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} id `{input}` is malformed: expected {expected}")]
pub struct IdParseError {
    kind: &'static str,
    input: String,
    expected: &'static str,
}

/// An application: the RM start time (ms) when it was submitted and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId {
    /// Milliseconds since the epoch at which the RM that accepted the app started.
    pub cluster_ts: u64,
    /// Sequence number within that RM run, from 1.
    pub seq: u32,
}

/// A container: the app it belongs to, the AM attempt that owns it, the RM epoch that granted it
/// (so ids never repeat after an RM restart) and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId {
    pub app: AppId,
    pub attempt: u32,
    pub epoch: u64,
    pub seq: u64,
}

/// A node agent, named by the address it serves on (`host:port`), as YARN names NodeManagers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "application_{}_{:04}", self.cluster_ts, self.seq)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container_e{:02}_{}_{:04}_{:02}_{:06}",
            self.epoch, self.app.cluster_ts, self.app.seq, self.attempt, self.seq
        )
    }
}

impl FromStr for AppId {
    type Err = IdParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            kind: "application",
            input: input.to_owned(),
            expected: "application_<cluster-ts>_<seq>",
        };
        let rest = input.strip_prefix("application_").ok_or_else(err)?;
        let (ts, seq) = rest.split_once('_').ok_or_else(err)?;
        Ok(AppId {
            cluster_ts: ts.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

impl FromStr for ContainerId {
    type Err = IdParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            kind: "container",
            input: input.to_owned(),
            expected: "container_e<epoch>_<cluster-ts>_<app-seq>_<attempt>_<seq>",
        };
        let rest = input.strip_prefix("container_e").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [epoch, ts, app_seq, attempt, seq] = parts.as_slice() else {
            return Err(err());
        };
        Ok(ContainerId {
            app: AppId {
                cluster_ts: ts.parse().map_err(|_| err())?,
                seq: app_seq.parse().map_err(|_| err())?,
            },
            attempt: attempt.parse().map_err(|_| err())?,
            epoch: epoch.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

/// Ids travel as their display strings in JSON, in URLs and in the store.
macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

string_serde!(AppId);
string_serde!(ContainerId);

impl utoipa::PartialSchema for NodeId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        String::schema()
    }
}

impl utoipa::ToSchema for NodeId {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_read_like_yarn() {
        let app = AppId {
            cluster_ts: 1_700_000_000_000,
            seq: 7,
        };
        assert_eq!(app.to_string(), "application_1700000000000_0007");
        let container = ContainerId {
            app,
            attempt: 1,
            epoch: 3,
            seq: 42,
        };
        assert_eq!(container.to_string(), "container_e03_1700000000000_0007_01_000042");
    }

    #[test]
    fn malformed_ids_say_what_was_expected() {
        let err = "app_1".parse::<AppId>().unwrap_err();
        assert!(err.to_string().contains("application_<cluster-ts>_<seq>"));
        assert!("container_e1_2_3".parse::<ContainerId>().is_err());
    }

    proptest! {
        #[test]
        fn ids_round_trip(ts in 0u64..u64::MAX, seq in 0u32..u32::MAX, attempt in 0u32..1000, epoch in 0u64..1_000_000, cseq in 0u64..u64::MAX) {
            let app = AppId { cluster_ts: ts, seq };
            prop_assert_eq!(app.to_string().parse::<AppId>().unwrap(), app);
            let container = ContainerId { app, attempt, epoch, seq: cseq };
            prop_assert_eq!(container.to_string().parse::<ContainerId>().unwrap(), container);
        }
    }
}
