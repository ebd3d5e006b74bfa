//! `[tls]`: HTTPS on the RM's API, and the CA the RM checks agents against.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// Without `cert_file` and `key_file` the RM serves plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The RM's certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA the RM trusts when it calls agents (launching AMs, fetching logs); agents are then
    /// reached over https. Required with TLS: the cluster speaks TLS everywhere or nowhere.
    pub ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the API is served over TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        match (&self.cert_file, &self.key_file, &self.ca_file) {
            (None, None, None) => Ok(()),
            (Some(_), Some(_), Some(_)) => Ok(()),
            (Some(_), None, _) => invalid("tls.key_file", "is required with tls.cert_file"),
            (None, Some(_), _) => invalid("tls.cert_file", "is required with tls.key_file"),
            (Some(_), Some(_), None) => invalid(
                "tls.ca_file",
                "is required with tls.cert_file: the RM calls agents, which serve TLS too, and checks them against it",
            ),
            (None, None, Some(_)) => invalid(
                "tls.cert_file",
                "and tls.key_file are required with tls.ca_file: TLS is cluster-wide, the RM's API too",
            ),
        }
    }
}
