//! A PostgreSQL server of the test's own (initdb in a temporary directory, on a free port),
//! which the test may stop, restart and start again without disturbing the shared server
//! other tests use. Runs as the `postgres` account with Debian's server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

/// Where Debian puts the server's binaries (`/usr/lib/postgresql/<major>/bin`).
fn server_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A private PostgreSQL server; stopped and deleted when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a server, or `None` (with the reason printed) where no server
    /// binaries or no `postgres` account exist.
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = server_bin_dir() else {
            eprintln!("no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = super::shared_tempdir("spindle-pg-");
        // The server runs as `postgres`, which must own its directory.
        let chowned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        if !chowned.is_ok_and(|status| status.success()) {
            eprintln!("cannot give {} to the postgres account", dir.path().display());
            return None;
        }
        let server = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
        };
        let initdb = server.as_postgres(
            &server.bin.join("initdb"),
            &["-D", &server.data(), "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(initdb, "initdb failed");
        server.start_again();
        Some(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `program ARGS` as the `postgres` account; whether it succeeded.
    fn as_postgres(&self, program: &Path, args: &[&str]) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
            self.port
        );
        let started = self.as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-l", &self.log(), "-o", &options, "-w", "start"],
        );
        assert!(
            started,
            "the private PostgreSQL did not start: {}",
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    /// Stops the server at once (`-m immediate`: as a crash; clients' connections break).
    pub fn stop(&self) {
        let stopped = self.as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        assert!(stopped, "the private PostgreSQL did not stop");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}
