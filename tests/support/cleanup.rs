//! What a test leaves behind: the logs to print when it fails, the processes to kill when it ends.

use std::path::{Path, PathBuf};

/// How much of each log file a failing test prints.
const LOG_TAIL_LINES: usize = 150;

/// Prints the tail of every log under `dir`: daemons' (`logs/`) and containers' (`stdout`, `stderr`).
pub fn dump_logs_under(dir: &Path) {
    let mut files = Vec::new();
    collect_log_files(dir, &mut files);
    files.sort();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if text.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "===== {} (last {} of {} lines)\n{}",
            path.display(),
            tail.len(),
            lines.len(),
            tail.join("\n")
        );
    }
}

fn collect_log_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            collect_log_files(&path, files);
        } else if !kind.is_file() {
            // A FIFO a container planted as its stderr would block the read; a symlink could
            // point anywhere.
            continue;
        } else if path.extension().is_some_and(|ext| ext == "log")
            || path.file_name().is_some_and(|name| name == "stdout" || name == "stderr")
        {
            files.push(path);
        }
    }
}

/// SIGKILLs every process whose working directory is under `dir`: the daemons of a test and
/// the containers its agents started (they run in `<work-dir>/apps/…` as process groups of
/// their own, so they outlive a killed agent).
pub fn kill_processes_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let own_pid = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)) {
            // SAFETY: kill(2) on a pid read from /proc; no memory is involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Kills what a cluster's agents left running under a directory when dropped, and prints its
/// logs first if the test is failing.
pub struct CleanupDir<'a>(pub &'a Path);

impl Drop for CleanupDir<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs_under(self.0);
        }
        kill_processes_under(self.0);
    }
}
