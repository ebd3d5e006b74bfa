//! TLS for every client a process makes (`RmClient`, `AgentClient`).
//!
//! TLS is a property of the whole cluster: either every daemon serves HTTPS or none does. A
//! process that trusts a CA (`trust_ca_file`, from `--ca-file` / `SPINDLE_CA_FILE`) checks every
//! server against that CA alone and reaches addresses given without a scheme — agents'
//! `host:port`, a bare `SPINDLE_RM` — over `https://`. Without one, bare addresses are
//! `http://` and an `https://` URL fails (no CA is trusted; for a server with a publicly
//! trusted certificate, pass the system's bundle, e.g. `/etc/ssl/certs/ca-certificates.crt`).
//!
//! Every client is built with a preconfigured rustls configuration: reqwest's own default would
//! load the system's root store each time a client is made (milliseconds, in every AM and task
//! process start), for clusters that mostly speak plain HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The CA file this process trusts, once set, and the client configuration made from it.
static TRUST: OnceLock<(PathBuf, Arc<rustls::ClientConfig>)> = OnceLock::new();

/// A CA or certificate file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsFileError {
    pub path: String,
    pub reason: String,
}

impl TlsFileError {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        TlsFileError {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Makes ring rustls's crypto provider for this process (idempotent). reqwest and the servers
/// use rustls without a provider of their own.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file, at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| TlsFileError::new(path, format!("cannot read it as PEM: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsFileError::new(path, format!("a certificate in it is not valid PEM: {err}")))?;
    if certificates.is_empty() {
        return Err(TlsFileError::new(path, "it holds no certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certificates)
}

/// A client configuration that trusts the CAs in `ca_file` and nothing else.
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, TlsFileError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca_file)? {
        roots
            .add(certificate)
            .map_err(|err| TlsFileError::new(ca_file, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// Makes this process trust `ca_file` for every client it builds from now on, and reach bare
/// addresses over HTTPS. Call at start, before any client is made. Trusting the same file
/// again is fine (the CLI and the daemon it runs may both ask); another file is refused.
pub fn trust_ca_file(ca_file: &Path) -> Result<(), TlsFileError> {
    if let Some((trusted, _)) = TRUST.get() {
        return match trusted == ca_file {
            true => Ok(()),
            false => Err(TlsFileError::new(
                ca_file,
                format!("this process already trusts another CA file, {}", trusted.display()),
            )),
        };
    }
    let config = Arc::new(client_config(ca_file)?);
    let _ = TRUST.set((ca_file.to_owned(), config));
    trust_ca_file(ca_file)
}

/// Whether this process talks TLS to the cluster.
pub fn enabled() -> bool {
    TRUST.get().is_some()
}

/// The scheme for an address given without one.
pub(crate) fn default_scheme() -> &'static str {
    if enabled() { "https" } else { "http" }
}

/// A reqwest builder with this process's trust (none: no server certificate is accepted).
pub fn client_builder() -> reqwest::ClientBuilder {
    static TRUST_NOTHING: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    install_crypto_provider();
    let config = match TRUST.get() {
        Some((_, config)) => config,
        None => TRUST_NOTHING.get_or_init(|| {
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }),
    };
    reqwest::Client::builder().tls_backend_preconfigured(rustls::ClientConfig::clone(config))
}
