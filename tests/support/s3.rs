//! The S3-compatible server of the object-store tests: `s3s-fs` (installed and started by
//! `.ci/run` at 127.0.0.1:8014 with the bucket `spindle-test`), or one a test starts on an
//! address of its own (a netns bridge), with a data directory of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const S3_ACCESS_KEY: &str = "spindle-test";
pub const S3_SECRET: &str = "spindle-test-secret";
/// The bucket every test server has.
pub const S3_BUCKET: &str = "spindle-test";

/// A job's env for the server at `endpoint`.
pub fn s3_env(endpoint: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), S3_ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), S3_SECRET.to_owned()),
    ])
}

/// The env for the shared test server (`SPINDLE_TEST_S3`, default `http://127.0.0.1:8014`), or
/// `None` (the test skips) when it does not answer.
pub fn shared_s3_env() -> Option<BTreeMap<String, String>> {
    let endpoint = std::env::var("SPINDLE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8014".to_owned());
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    if std::net::TcpStream::connect(&address).is_err() {
        super::skip_unless_required("SPINDLE_REQUIRE_S3", &format!("no S3-compatible server at {endpoint}"));
        return None;
    }
    Some(s3_env(&endpoint))
}

/// A prefix no other test run uses, in the test bucket.
pub fn unique_s3_root(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{S3_BUCKET}/{name}-{nanos}")
}

/// An `s3s-fs` process of a test's own; killed on drop.
pub struct S3Server {
    child: Child,
    _root: tempfile::TempDir,
    pub endpoint: String,
}

fn s3s_fs_binary() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .chain(home)
        .find(|candidate| candidate.is_file())
}

impl S3Server {
    /// Starts one listening on `host:port`, or `None` (the test skips) without the binary.
    pub fn start(host: &str, port: u16) -> Option<S3Server> {
        let Some(binary) = s3s_fs_binary() else {
            super::skip_unless_required(
                "SPINDLE_REQUIRE_S3",
                "no s3s-fs binary (cargo install s3s-fs@0.14.1 --locked --features binary)",
            );
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(S3_BUCKET)).unwrap();
        let child = Command::new(binary)
            .args(["--host", host, "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server {
            child,
            _root: root,
            endpoint: format!("http://{host}:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect((host, port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3s-fs did not listen on {host}:{port}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
