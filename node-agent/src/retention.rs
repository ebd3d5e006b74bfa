//! Retention of finished containers' directories, as YARN's NodeManager deletes them after a
//! delay. One task sweeps `<work_dir>/apps` at start and then every quarter of `log_retention`
//! (at least every 10 minutes): it deletes the directories whose retention is over, then the app
//! directories left empty. Which directories may go is the manager's decision, since it knows
//! which containers live; the disk work here runs on the blocking pool.

use std::collections::HashSet;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spindle_protocol::{AppId, ContainerId};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::manager::ContainerManager;

/// The longest time between two sweeps, whatever the retention.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// The shortest, so that a tiny retention (in tests) does not make the sweep spin.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// One `<work_dir>/apps/<app_id>/<container_id>` directory found by a sweep.
#[derive(Debug, Clone)]
pub(crate) struct ContainerDir {
    pub container_id: ContainerId,
    pub path: PathBuf,
    /// Time since its last modification, which the agent sets when the container finishes;
    /// `None` when the file system cannot say.
    pub age: Option<Duration>,
}

/// One `<work_dir>/apps/<app_id>` directory and the container directories in it.
#[derive(Debug)]
struct AppDir {
    app_id: AppId,
    path: PathBuf,
    containers: Vec<ContainerDir>,
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SweepOutcome {
    containers_removed: usize,
    /// Sizes of the files deleted.
    bytes_freed: u64,
    apps_removed: usize,
}

/// How often the sweep runs for a given retention: a quarter of it, between 10 ms and 10 min, so
/// a directory goes at most a quarter of the retention (or 10 minutes) late.
pub(crate) fn sweep_interval(log_retention: Duration) -> Duration {
    (log_retention / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL)
}

/// Sweeps at once, then every `sweep_interval`, until `stop` is cancelled.
pub(crate) async fn run_retention_sweeper(manager: Arc<ContainerManager>, stop: CancellationToken) {
    let retention = manager.log_retention();
    let mut ticks = tokio::time::interval(sweep_interval(retention));
    // A slow sweep (a huge directory) postpones the next one rather than causing a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (sweep_manager, sweep_stop) = (manager.clone(), stop.clone());
        let outcome = match tokio::task::spawn_blocking(move || sweep_once(&sweep_manager, &sweep_stop)).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(error = %err, "the container directory sweep failed; trying again at the next one");
                continue;
            }
        };
        if outcome != SweepOutcome::default() {
            tracing::info!(
                containers = outcome.containers_removed,
                bytes_freed = outcome.bytes_freed,
                apps = outcome.apps_removed,
                retention_s = retention.as_secs_f64(),
                "removed the directories of containers that finished longer than the log retention ago"
            );
        }
    }
}

/// One pass over `<work_dir>/apps`. Blocking.
fn sweep_once(manager: &ContainerManager, stop: &CancellationToken) -> SweepOutcome {
    let apps_dir = manager.work_dir().join("apps");
    let apps = match list_app_dirs(&apps_dir) {
        Ok(apps) => apps,
        Err(err) => {
            tracing::warn!(dir = %apps_dir.display(), error = %err, "cannot list container directories; nothing removed this sweep");
            return SweepOutcome::default();
        }
    };
    let found: Vec<ContainerDir> = apps.iter().flat_map(|app| app.containers.iter().cloned()).collect();
    let mut claimed = manager.claim_expired_dirs(found).into_iter();
    let mut outcome = SweepOutcome::default();
    let mut removed: HashSet<ContainerId> = HashSet::new();
    for dir in claimed.by_ref() {
        let result = remove_container_dir(&dir.path);
        manager.release_dir_claim(&dir.container_id, result.is_ok());
        match result {
            Ok(bytes) => {
                outcome.containers_removed += 1;
                outcome.bytes_freed += bytes;
                removed.insert(dir.container_id);
            }
            Err(err) => {
                tracing::warn!(dir = %dir.path.display(), error = %err, "cannot remove a finished container's directory; trying again at the next sweep");
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Stopped early: what is left waits for the next agent.
    for dir in claimed {
        manager.release_dir_claim(&dir.container_id, false);
    }
    let emptied: Vec<(AppId, PathBuf)> = apps
        .into_iter()
        .filter(|app| app.containers.iter().all(|dir| removed.contains(&dir.container_id)))
        .map(|app| (app.app_id, app.path))
        .collect();
    if !emptied.is_empty() {
        outcome.apps_removed = manager.remove_idle_app_dirs(&emptied);
    }
    outcome
}

/// The app directories under `apps_dir` and the container directories in each. Entries whose
/// names are not the agent's own (an id as the agent writes it), and symlinks, are left alone.
fn list_app_dirs(apps_dir: &Path) -> std::io::Result<Vec<AppDir>> {
    let now = SystemTime::now();
    let mut apps = Vec::new();
    for entry in std::fs::read_dir(apps_dir)? {
        let entry = entry?;
        let Some(app_id) = own_dir_name::<AppId>(&entry) else {
            continue;
        };
        let entries = match std::fs::read_dir(entry.path()) {
            Ok(entries) => entries,
            // Removed since it was listed (by an earlier sweep's race, or by hand).
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let mut containers = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(container_id) = own_dir_name::<ContainerId>(&entry).filter(|id| id.app == app_id) else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                // A modification time in the future (the clock went back) counts as just now.
                .map(|modified| now.duration_since(modified).unwrap_or_default());
            containers.push(ContainerDir {
                container_id,
                path: entry.path(),
                age,
            });
        }
        apps.push(AppDir {
            app_id,
            path: entry.path(),
            containers,
        });
    }
    Ok(apps)
}

/// The id a directory entry is named after, if it is a real directory named exactly as the
/// agent names them (`Display` of the id; the parsers accept other spellings too).
fn own_dir_name<Id: std::str::FromStr + ToString>(entry: &std::fs::DirEntry) -> Option<Id> {
    // `file_type` does not follow symlinks: a link is never taken for a container directory.
    if !entry.file_type().ok()?.is_dir() {
        return None;
    }
    let name = entry.file_name();
    let name = name.to_str()?;
    let id: Id = name.parse().ok()?;
    (id.to_string() == name).then_some(id)
}

/// Deletes a container's directory; returns the sizes of the files it held. A directory that
/// is already gone counts as removed. Blocking.
fn remove_container_dir(dir: &Path) -> std::io::Result<u64> {
    let bytes = tree_size(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(bytes),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err),
    }
}

/// The sum of the sizes of the regular files under `dir`, without following symlinks. Unreadable parts
/// count as empty: this is only for the log line.
fn tree_size(dir: &Path) -> u64 {
    let mut bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow symlinks either.
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) if meta.is_file() => bytes += meta.len(),
                _ => {}
            }
        }
    }
    bytes
}

/// Sets a finished container's directory's modification time to now, so that the retention of
/// a directory no record describes (after an agent restart, or once an acknowledged container
/// is forgotten) counts from the container's end, not from its start. Blocking.
pub(crate) fn mark_finished(container_dir: &Path) {
    let marked = File::open(container_dir).and_then(|dir| dir.set_modified(SystemTime::now()));
    if let Err(err) = marked {
        tracing::debug!(dir = %container_dir.display(), error = %err, "cannot mark a finished container's directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_run_every_quarter_of_the_retention_within_bounds() {
        assert_eq!(sweep_interval(Duration::from_millis(300)), Duration::from_millis(75));
        assert_eq!(sweep_interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(sweep_interval(Duration::from_secs(24 * 3600)), MAX_SWEEP_INTERVAL);
        assert_eq!(sweep_interval(Duration::from_nanos(1)), MIN_SWEEP_INTERVAL);
    }

    #[test]
    fn only_the_agents_own_directories_are_listed() {
        let work_dir = tempfile::tempdir().unwrap();
        let apps = work_dir.path().join("apps");
        let app = apps.join("application_1_0001");
        std::fs::create_dir_all(app.join("container_e01_1_0001_01_000001")).unwrap();
        std::fs::write(app.join("container_e01_1_0001_01_000001").join("stdout"), "12345").unwrap();
        // Another spelling of the same id, another app's container, a file, a foreign dir.
        std::fs::create_dir_all(app.join("container_e1_1_1_1_1")).unwrap();
        std::fs::create_dir_all(app.join("container_e01_1_0002_01_000001")).unwrap();
        std::fs::write(app.join("container_e01_1_0001_01_000002"), "").unwrap();
        std::fs::create_dir_all(apps.join("lost+found")).unwrap();
        std::os::unix::fs::symlink(&app, apps.join("application_1_0003")).unwrap();

        let listed = list_app_dirs(&apps).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].app_id.to_string(), "application_1_0001");
        let names: Vec<String> = listed[0].containers.iter().map(|dir| dir.container_id.to_string()).collect();
        assert_eq!(names, ["container_e01_1_0001_01_000001"]);
        assert!(listed[0].containers[0].age.is_some_and(|age| age < Duration::from_secs(60)));
    }

    #[test]
    fn removing_a_directory_counts_its_bytes_and_spares_symlink_targets() {
        let work_dir = tempfile::tempdir().unwrap();
        let outside = work_dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "not the container's").unwrap();
        let dir = work_dir.path().join("container");
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        std::fs::write(dir.join("stdout"), "hello").unwrap();
        std::fs::write(dir.join("nested").join("data"), "12345678").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        assert_eq!(remove_container_dir(&dir).unwrap(), 13);
        assert!(!dir.exists());
        assert!(outside.join("keep").exists());
        assert_eq!(remove_container_dir(&dir).unwrap(), 0, "an absent directory counts as removed");
    }

    #[test]
    fn marking_a_finished_directory_makes_it_young() {
        let work_dir = tempfile::tempdir().unwrap();
        let dir = work_dir.path().join("container");
        std::fs::create_dir(&dir).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        File::open(&dir).unwrap().set_modified(long_ago).unwrap();
        mark_finished(&dir);
        let modified = std::fs::metadata(&dir).unwrap().modified().unwrap();
        assert!(SystemTime::now().duration_since(modified).unwrap_or_default() < Duration::from_secs(60));
    }
}
