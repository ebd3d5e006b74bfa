//! The manager's side of the retention sweep (`crate::retention`): which container directories
//! may be deleted, which ids may not be launched while theirs is, which app directories are
//! idle, and what a request for removed logs is told.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spindle_protocol::{AppId, ContainerId, ContainerState};

use super::{ContainerManager, ContainerRecord};
use crate::AgentError;
use crate::retention::ContainerDir;

/// What the agent knows of a directory's container when the sweep looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirOwner {
    /// RUNNING, which includes being launched: the directory is in use.
    Live,
    /// COMPLETE, this long ago.
    Finished(Duration),
    /// No record: left by an earlier agent process, or forgotten after its ack. The directory's
    /// age (its modification time, set when the container finished) stands in for the end.
    Unrecorded(Option<Duration>),
}

impl DirOwner {
    fn of(record: Option<&ContainerRecord>, dir_age: Option<Duration>, now: Instant) -> DirOwner {
        match record {
            None => DirOwner::Unrecorded(dir_age),
            Some(record) => match (record.status.state, record.finished_at) {
                (ContainerState::Complete, Some(finished_at)) => DirOwner::Finished(now.saturating_duration_since(finished_at)),
                _ => DirOwner::Live,
            },
        }
    }

    /// Whether the directory's retention is over.
    fn expired(self, retention: Duration) -> bool {
        match self {
            DirOwner::Live => false,
            DirOwner::Finished(since) => since >= retention,
            DirOwner::Unrecorded(age) => age.is_some_and(|age| age >= retention),
        }
    }
}

impl ContainerManager {
    /// How long a finished container's directory is kept.
    pub(crate) fn log_retention(&self) -> Duration {
        self.log_retention
    }

    /// The work dir containers run under (canonical).
    pub(crate) fn work_dir(&self) -> &Path {
        &self.context.work_dir
    }

    /// Picks the directories whose retention is over and claims them: until
    /// `release_dir_claim`, a launch of their ids is refused, so the sweep can never delete
    /// the directory of a container being launched.
    pub(crate) fn claim_expired_dirs(&self, found: Vec<ContainerDir>) -> Vec<ContainerDir> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut claimed = Vec::new();
        for dir in found {
            let owner = DirOwner::of(state.containers.get(&dir.container_id), dir.age, now);
            if owner.expired(self.log_retention) && state.removing_dirs.insert(dir.container_id) {
                claimed.push(dir);
            }
        }
        claimed
    }

    /// Ends a claim; `removed` records that the container's files are gone.
    pub(crate) fn release_dir_claim(&self, container_id: &ContainerId, removed: bool) {
        let mut state = self.lock();
        state.removing_dirs.remove(container_id);
        if let Some(record) = state.containers.get_mut(container_id) {
            record.files_removed |= removed;
        }
    }

    /// Removes those of `app_dirs` that are empty and have no container running or being
    /// launched; returns how many went. Blocking (one `rmdir` each).
    pub(crate) fn remove_idle_app_dirs(&self, app_dirs: &[(AppId, PathBuf)]) -> usize {
        // Under the lock: a launch records its container before it creates the app directory,
        // so no launch can be between the check and the `rmdir`. An `rmdir` is one quick call.
        let state = self.lock();
        let busy_apps: HashSet<AppId> = state
            .containers
            .iter()
            .filter(|(_, record)| record.status.state == ContainerState::Running)
            .map(|(container_id, _)| container_id.app)
            .collect();
        app_dirs
            .iter()
            .filter(|(app_id, _)| !busy_apps.contains(app_id))
            // Fails on a directory that is not empty (a young container, a foreign file): kept.
            .filter(|(_, path)| std::fs::remove_dir(path).is_ok())
            .count()
    }

    /// The 404 for a log file that is not on disk: removed by the retention sweep, or missing.
    pub(crate) fn missing_log(&self, container_id: ContainerId, stream: String) -> AgentError {
        let removed = self.lock().containers.get(&container_id).is_some_and(|record| record.files_removed);
        if removed {
            AgentError::LogsRemoved {
                container_id,
                retention: self.log_retention,
            }
        } else {
            AgentError::LogNotFound { container_id, stream }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_or_unrecorded_directories_past_retention_expire() {
        let retention = Duration::from_secs(60);
        let long = Duration::from_secs(3600);
        let short = Duration::from_secs(1);
        assert!(!DirOwner::Live.expired(retention));
        assert!(DirOwner::Finished(long).expired(retention));
        assert!(DirOwner::Finished(retention).expired(retention));
        assert!(!DirOwner::Finished(short).expired(retention));
        assert!(DirOwner::Unrecorded(Some(long)).expired(retention));
        assert!(!DirOwner::Unrecorded(Some(short)).expired(retention));
        assert!(!DirOwner::Unrecorded(None).expired(retention));
    }
}
