//! The agent on a TLS cluster: its API over HTTPS, its clients checking the cluster's CA, and a
//! copy of that CA its containers can read (`SPINDLE_CA_FILE`), whatever their account.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use spindle_http_server::tls::TlsAcceptor;

use crate::{AgentError, AgentTls};

/// Where containers find the CA: in the work dir (0711), readable by every account.
const CONTAINER_CA_FILE: &str = "ca.pem";

/// Trusts the CA for this process's clients, loads the certificate and key, and publishes the CA
/// for containers. Returns the acceptor and the published copy.
pub(crate) fn prepare(files: &AgentTls, work_dir: &Path) -> Result<(TlsAcceptor, PathBuf), AgentError> {
    let config_error = |err: spindle_protocol::tls::TlsFileError| AgentError::Config(format!("TLS: {err}"));
    spindle_protocol::tls::trust_ca_file(&files.ca_file).map_err(config_error)?;
    let acceptor = spindle_http_server::tls::acceptor(&files.cert_file, &files.key_file).map_err(config_error)?;
    let pem = std::fs::read(&files.ca_file).map_err(|err| AgentError::io(format!("cannot read {}", files.ca_file.display()), err))?;
    let published = work_dir.join(CONTAINER_CA_FILE);
    let staging = work_dir.join(format!(".{CONTAINER_CA_FILE}.tmp"));
    let _ = std::fs::remove_file(&staging);
    let write = || -> std::io::Result<()> {
        // A certificate is public; 0644 so every container account can read it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staging)?;
        file.write_all(&pem)?;
        std::fs::rename(&staging, &published)
    };
    write().map_err(|err| AgentError::io(format!("cannot publish the CA for containers at {}", published.display()), err))?;
    Ok((acceptor, published))
}
