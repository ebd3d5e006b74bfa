//! How a container ended: its exit status, the agent's own kill, the kernel's OOM kill and
//! the end of its stderr become an exit code, a reason and diagnostics.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use spindle_protocol::ExitReason;

/// How much of the end of stderr goes into a failed container's diagnostics.
const STDERR_TAIL_BYTES: u64 = 2048;
const STDERR_TAIL_LINES: usize = 20;

/// How the container's leader process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessExit {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for ProcessExit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => ProcessExit::Code(code),
            (None, Some(signal)) => ProcessExit::Signal(signal),
            // Neither code nor signal cannot happen for a waited-for child on Unix.
            (None, None) => ProcessExit::Code(-1),
        }
    }
}

impl ProcessExit {
    /// The exit code as shells report it: 128 + signal number for a killed process.
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            ProcessExit::Code(code) => code,
            ProcessExit::Signal(signal) => 128 + signal,
        }
    }
}

/// The agent's own reason for stopping a container, when it stopped it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KillRequest {
    pub reason: ExitReason,
    /// Why, for people; becomes the diagnostics.
    pub detail: String,
}

/// What a completed container's status says about its end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExitOutcome {
    pub exit_code: i32,
    pub reason: ExitReason,
    pub diagnostics: String,
}

/// Decides the reason and diagnostics of an ended container. The agent's own kill wins (it
/// explains the signal), then the kernel's OOM kill, then the exit itself.
pub(crate) fn classify_exit(
    exit: ProcessExit,
    kill: Option<&KillRequest>,
    oom_killed: bool,
    memory_limit_mb: u64,
    stderr_tail: &str,
) -> ExitOutcome {
    let exit_code = exit.exit_code();
    let (reason, mut diagnostics) = if let Some(kill) = kill {
        (kill.reason, kill.detail.clone())
    } else if oom_killed {
        (
            ExitReason::ExceededMemory,
            format!("container used more than its {memory_limit_mb} MB memory limit and was killed by the kernel (cgroup OOM)"),
        )
    } else {
        match exit {
            ProcessExit::Code(0) => (ExitReason::Success, String::new()),
            ProcessExit::Code(code) => (ExitReason::Failed, format!("exited with code {code}")),
            ProcessExit::Signal(signal) => (ExitReason::Failed, format!("killed by signal {signal} ({})", signal_name(signal))),
        }
    };
    if reason == ExitReason::Failed && !stderr_tail.is_empty() {
        diagnostics.push_str("; end of stderr:\n");
        diagnostics.push_str(stderr_tail);
    }
    ExitOutcome {
        exit_code,
        reason,
        diagnostics,
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

/// The last lines (at most 20 lines, 2 KiB) of a file, trimmed; empty if there is none. Blocking.
pub(crate) fn read_tail(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    // The container owns its dir and may have swapped its stderr for a symlink (the agent,
    // root, would put the tail of any file into diagnostics its user reads), a FIFO (the open
    // would wait for a writer for ever) or a hard link: only a plain file of one link is read.
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    let Ok(metadata) = file.metadata() else {
        return String::new();
    };
    if !metadata.is_file() || metadata.nlink() != 1 {
        return String::new();
    }
    let length = metadata.len();
    let start = length.saturating_sub(STDERR_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity((length - start) as usize);
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // A cut in the middle of the file leaves a partial first line: drop it.
    let text = match (start > 0, text.find('\n')) {
        (true, Some(newline)) => &text[newline + 1..],
        _ => &text[..],
    };
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(reason: ExitReason, detail: &str) -> KillRequest {
        KillRequest {
            reason,
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn exits_are_classified() {
        let success = classify_exit(ProcessExit::Code(0), None, false, 64, "noise");
        assert_eq!(success.reason, ExitReason::Success);
        assert_eq!(success.exit_code, 0);
        assert_eq!(success.diagnostics, "");

        let failed = classify_exit(ProcessExit::Code(3), None, false, 64, "boom");
        assert_eq!(failed.reason, ExitReason::Failed);
        assert_eq!(failed.exit_code, 3);
        assert!(failed.diagnostics.starts_with("exited with code 3"));
        assert!(failed.diagnostics.ends_with("boom"));

        let segv = classify_exit(ProcessExit::Signal(libc::SIGSEGV), None, false, 64, "");
        assert_eq!(segv.exit_code, 128 + libc::SIGSEGV);
        assert_eq!(segv.reason, ExitReason::Failed);
        assert!(segv.diagnostics.contains("SIGSEGV"));
    }

    #[test]
    fn the_agents_own_kill_explains_the_signal() {
        let by_app = kill(ExitReason::KilledByApp, "stopped by its application");
        let outcome = classify_exit(ProcessExit::Signal(libc::SIGTERM), Some(&by_app), false, 64, "tail");
        assert_eq!(outcome.reason, ExitReason::KilledByApp);
        assert_eq!(outcome.exit_code, 143);
        assert_eq!(outcome.diagnostics, "stopped by its application");

        let oom = classify_exit(ProcessExit::Signal(libc::SIGKILL), None, true, 64, "tail");
        assert_eq!(oom.reason, ExitReason::ExceededMemory);
        assert!(oom.diagnostics.contains("more than its 64 MB memory limit"));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        assert_eq!(read_tail(&path), "");
        let text: String = (0..100).map(|line| format!("line {line}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = read_tail(&path);
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("line 80\n"));
        assert!(tail.ends_with("line 99"));

        let long_line = "x".repeat(5000);
        std::fs::write(&path, format!("{long_line}\nlast\n")).unwrap();
        assert_eq!(read_tail(&path), "last");
    }

    #[test]
    fn tails_are_read_only_from_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let link = dir.path().join("stderr");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read_tail(&link), "", "never through a symlink");
        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert_eq!(read_tail(&hard), "", "never a file with other links");
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert_eq!(read_tail(&fifo), "", "a FIFO without a writer neither blocks nor is read");
    }
}
