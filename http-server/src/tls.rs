//! The daemons' side of TLS: a certificate chain and its key, read once at start.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use spindle_protocol::tls::{TlsFileError, install_crypto_provider, read_certificates};
pub use tokio_rustls::TlsAcceptor;

/// Serves TLS with the chain in `cert_file` (leaf first) and the key in `key_file` (PKCS#8,
/// PKCS#1 or SEC1 PEM). HTTP/1.1 only, as the plain server.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsFileError> {
    install_crypto_provider();
    let chain = read_certificates(cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|err| TlsFileError::new(key_file, format!("holds no usable private key: {err}")))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            TlsFileError::new(
                cert_file,
                format!("the certificate and key {} do not go together: {err}", key_file.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
