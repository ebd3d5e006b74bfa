//! What the agent keeps on disk so that a restarted agent adopts its containers instead of
//! losing them (YARN's NodeManager recovery): one small file per container the RM has not yet
//! acknowledged as ended, and one per app with the app's shuffle token (its map output stays
//! servable after its containers ended). Files live in `<work dir>/recovery/` (0700, files
//! 0600): they hold the containers' token signatures and the apps' shuffle tokens.
//!
//! Written at a container's start and end, removed at the RM's acknowledgement; not synced:
//! they must survive the agent's death, not the machine's (its containers die with it).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spindle_protocol::{AppId, ContainerId, ContainerStatus, Resources};

const DIR: &str = "recovery";
const APPS_DIR: &str = "apps";
const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// The `pid` of a container recorded just before its process was spawned.
pub(crate) const STARTING: i32 = 0;

/// One container as a restarted agent needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedContainer {
    pub container_id: ContainerId,
    /// The leader's pid, which is also its process group's id; `STARTING` until it is known.
    pub pid: i32,
    /// The leader's start time (clock ticks since boot, `/proc/PID/stat` field 22): tells
    /// the container from a later process that was given the same pid.
    pub start_ticks: u64,
    pub resources: Resources,
    /// The launch token's signature: its AM's bearer for it.
    pub token_signature: String,
    /// No cgroup limits it: the memory monitor samples it.
    pub sampled: bool,
    pub started_at_ms: u64,
    /// Its end, once it ended (and until the RM acknowledges it).
    pub completed: Option<ContainerStatus>,
}

fn dir(work_dir: &Path) -> PathBuf {
    work_dir.join(DIR)
}

fn container_path(work_dir: &Path, container_id: &ContainerId) -> PathBuf {
    dir(work_dir).join(format!("{container_id}.json"))
}

fn app_path(work_dir: &Path, app_id: AppId) -> PathBuf {
    dir(work_dir).join(APPS_DIR).join(format!("{app_id}.token"))
}

/// Creates the directories, owner-only.
pub(crate) fn prepare(work_dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let apps = dir(work_dir).join(APPS_DIR);
    std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(&apps)?;
    for path in [dir(work_dir), apps] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Writes `content` to `path` whole (a rename), owner-only.
fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&temporary)?;
    file.write_all(content)?;
    std::fs::rename(&temporary, path)
}

pub(crate) fn save(work_dir: &Path, container: &SavedContainer) -> io::Result<()> {
    let json = serde_json::to_vec(container).map_err(io::Error::other)?;
    write_private(&container_path(work_dir, &container.container_id), &json)
}

pub(crate) fn forget(work_dir: &Path, container_id: &ContainerId) {
    let _ = std::fs::remove_file(container_path(work_dir, container_id));
}

pub(crate) fn save_shuffle_token(work_dir: &Path, app_id: AppId, token: &str) -> io::Result<()> {
    write_private(&app_path(work_dir, app_id), token.as_bytes())
}

pub(crate) fn forget_shuffle_token(work_dir: &Path, app_id: AppId) {
    let _ = std::fs::remove_file(app_path(work_dir, app_id));
}

/// Every saved container and shuffle token; a file that does not read back is logged and
/// removed (a torn write cannot happen, but a foreign file can).
pub(crate) fn load(work_dir: &Path) -> (Vec<SavedContainer>, Vec<(AppId, String)>) {
    let mut containers = Vec::new();
    let mut tokens = Vec::new();
    let containers_files = list(&dir(work_dir), false).into_iter().map(|path| (path, false));
    let app_files = list(&dir(work_dir).join(APPS_DIR), true).into_iter().map(|path| (path, true));
    for (path, is_app) in containers_files.chain(app_files) {
        let parsed = std::fs::read(&path).ok().and_then(|bytes| {
            if is_app {
                let app_id = path.file_stem()?.to_str()?.parse::<AppId>().ok()?;
                tokens.push((app_id, String::from_utf8(bytes).ok()?));
            } else {
                containers.push(serde_json::from_slice::<SavedContainer>(&bytes).ok()?);
            }
            Some(())
        });
        if parsed.is_none() {
            tracing::warn!(path = %path.display(), "ignoring an unreadable recovery file");
            let _ = std::fs::remove_file(&path);
        }
    }
    containers.sort_by_key(|container| container.container_id);
    (containers, tokens)
}

/// The regular files of `dir` with the extension its kind of record has.
fn list(dir: &Path, apps: bool) -> Vec<PathBuf> {
    let extension = if apps { "token" } else { "json" };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|found| found == extension))
        .collect()
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it exists.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the container's leader still runs: its pid exists with the start time it had.
pub(crate) fn still_running(container: &SavedContainer) -> bool {
    container.pid != STARTING && start_ticks(container.pid) == Some(container.start_ticks)
}

/// The process-group leaders whose working directory is `dir`: what a launch interrupted by
/// the agent's death left running in a container's directory.
pub(crate) fn leaders_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        // SAFETY: getpgid only reads another process's group id.
        .filter(|pid| unsafe { libc::getpgid(*pid) } == *pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use spindle_protocol::ContainerState;

    use super::*;

    fn saved(seq: u64) -> SavedContainer {
        let container_id: ContainerId = format!("container_e01_1700000000000_0001_01_{seq:06}").parse().unwrap();
        SavedContainer {
            container_id,
            pid: std::process::id() as i32,
            start_ticks: start_ticks(std::process::id() as i32).unwrap(),
            resources: Resources::new(1, 128),
            token_signature: "sig".to_owned(),
            sampled: false,
            started_at_ms: 1,
            completed: None,
        }
    }

    #[test]
    fn records_round_trip_and_only_a_live_process_with_its_start_time_counts_as_running() {
        let work_dir = tempfile::tempdir().unwrap();
        prepare(work_dir.path()).unwrap();
        let running = saved(1);
        assert!(still_running(&running), "this very process");
        let mut ended = saved(2);
        ended.completed = Some(ContainerStatus {
            container_id: ended.container_id,
            state: ContainerState::Complete,
            exit_code: Some(0),
            exit_reason: None,
            diagnostics: String::new(),
            started_at_ms: Some(1),
            finished_at_ms: Some(2),
        });
        save(work_dir.path(), &running).unwrap();
        save(work_dir.path(), &ended).unwrap();
        save_shuffle_token(work_dir.path(), running.container_id.app, "shuffle-token").unwrap();
        std::fs::write(dir(work_dir.path()).join("junk.json"), b"{").unwrap();
        let (containers, tokens) = load(work_dir.path());
        assert_eq!(containers, [running.clone(), ended.clone()]);
        assert_eq!(tokens, [(running.container_id.app, "shuffle-token".to_owned())]);
        assert!(!dir(work_dir.path()).join("junk.json").exists(), "a foreign file is removed");

        let mut reused = running.clone();
        reused.start_ticks += 1;
        assert!(!still_running(&reused), "the same pid, started later: another process");
        forget(work_dir.path(), &ended.container_id);
        forget_shuffle_token(work_dir.path(), running.container_id.app);
        assert_eq!(load(work_dir.path()), (vec![running], Vec::new()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir(work_dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    /// What a launch cut short by the agent's death left running is found by its directory.
    #[test]
    fn leaders_are_found_by_their_working_directory() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let dir_path = std::fs::canonicalize(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&dir_path)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(leaders_in(&dir_path), [pid]);
        assert!(leaders_in(&dir_path.join("elsewhere")).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(leaders_in(&dir_path).is_empty());
    }
}
