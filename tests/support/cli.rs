//! Running the `spindle` client as a process, isolated from the caller's Spindle settings.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::spindle_bin;

/// The output of one client command.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `spindle ARGS` with `home` as SPINDLE_HOME and none of the caller's Spindle variables;
/// kills it after `timeout`.
pub async fn run_spindle(home: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    run_spindle_with_env(home, args, &[], timeout).await
}

/// `run_spindle` with `env` set on top.
pub async fn run_spindle_with_env(home: &Path, args: &[&str], env: &[(&str, &Path)], timeout: Duration) -> CliOutput {
    let mut command = tokio::process::Command::new(spindle_bin());
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    isolate_env(command.as_std_mut(), home);
    command.envs(env.iter().copied());
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("`spindle {}` did not end within {}s", args.join(" "), timeout.as_secs()))
        .expect("run the spindle binary");
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A private SPINDLE_HOME and nothing inherited that would point the binary elsewhere.
pub(super) fn isolate_env(command: &mut Command, home: &Path) {
    command
        .env("SPINDLE_HOME", home)
        .env_remove("SPINDLE_RM")
        .env_remove("SPINDLE_TOKEN")
        .env_remove("SPINDLE_CLUSTER_SECRET")
        .env_remove("SPINDLE_JOIN_TOKEN")
        .env_remove("SPINDLE_CA_FILE")
        .env_remove("SPINDLE_LOG_FORMAT")
        .env("RUST_LOG", "info");
}
