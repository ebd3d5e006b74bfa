//! A certificate authority made for one test with the `openssl` command, and a server
//! certificate it signed for 127.0.0.1 that every daemon of the test cluster serves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PEM files of a test CA and of the daemons' certificate.
#[derive(Debug, Clone)]
pub struct TestCa {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// Makes a CA and a 127.0.0.1 server certificate (P-256 keys) under `dir`. The key is 0600,
    /// as an operator keeps it; the certificates are public.
    pub fn create(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("create the CA's dir");
        let ca = TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("node.pem"),
            key_file: dir.join("node.key"),
        };
        let path = |name: &str| dir.join(name).display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=spindle test CA",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &path("node.key"),
            "-out",
            &path("node.csr"),
        ]);
        std::fs::write(
            dir.join("node.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the certificate's extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("node.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("node.ext"),
            "-out",
            &path("node.pem"),
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ca.key_file, std::fs::Permissions::from_mode(0o600)).expect("make the key private");
        ca
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (Debian's openssl package)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
