//! Checkpoint storage: `<checkpoint_dir>/<app_id>/chk-<n>/` holds the instances' snapshot
//! files and, once every instance acknowledged, `_metadata.json` (written then renamed: a
//! checkpoint without it never completed). The AM is its only writer.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::control::Range;
use super::counts::RecordCounts;
use super::operator::Commit;

const METADATA: &str = "_metadata.json";

/// What a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub id: u64,
    pub completed_at_ms: u64,
    pub duration_ms: u64,
    pub size_bytes: u64,
    /// Parallelism of every stage from this checkpoint on (a rescale's target included).
    pub parallelism: BTreeMap<String, u32>,
    /// Snapshot files by stage, with the groups each covers.
    pub stages: BTreeMap<String, Vec<SnapshotFile>>,
    /// What sinks committed with this checkpoint, in order.
    pub commits: Vec<Commit>,
    /// The job's last: its sources ended and this commits the rest.
    #[serde(default)]
    pub last: bool,
    /// Every operator's totals since the job started, counting exactly the records before this
    /// checkpoint's barrier (empty in checkpoints written before counters were kept: their
    /// counting starts again from 0).
    #[serde(default)]
    pub counters: BTreeMap<String, RecordCounts>,
    /// The deployment epoch it was taken in (0 in metadata written before it was kept): a
    /// later AM attempt stages sink files under higher epochs.
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub index: u32,
    pub range: Range,
    pub path: PathBuf,
}

/// The checkpoint directory of one job.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn new(checkpoint_dir: &Path, app_id: &str) -> Storage {
        Storage {
            root: checkpoint_dir.join(app_id),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the job's dir 0700 (as the job's account, which the AM runs as) and refuses one
    /// that is not a directory of that account: whoever else could write there could plant
    /// checkpoint metadata the next attempt would recover from.
    pub fn prepare(&self) -> std::io::Result<()> {
        if let Some(parent) = self.root.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let metadata = std::fs::symlink_metadata(&self.root)?;
        let own_uid = effective_uid();
        if !metadata.is_dir() || metadata.uid() != own_uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the checkpoint dir {} is not a directory of this job's account (uid {own_uid}): refusing to recover from what someone else wrote",
                    self.root.display()
                ),
            ));
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("chk-{id}"))
    }

    /// Writes a complete checkpoint's metadata (then it counts as complete).
    pub fn complete(&self, meta: &CheckpointMeta) -> std::io::Result<()> {
        let dir = self.dir(meta.id);
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!("{METADATA}.tmp"));
        let _ = std::fs::remove_file(&temp);
        let body = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
            file.write_all(&body)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, dir.join(METADATA))?;
        if let Ok(handle) = std::fs::File::open(&dir) {
            let _ = handle.sync_all();
        }
        Ok(())
    }

    /// Ids of every checkpoint directory, complete or not, ascending.
    pub fn ids(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ids: Vec<u64> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Complete checkpoints, oldest first. Unreadable metadata counts as incomplete, and so
    /// does metadata this account did not write (another owner, or writable by others).
    pub fn complete_checkpoints(&self) -> Vec<CheckpointMeta> {
        let own_uid = effective_uid();
        self.ids()
            .into_iter()
            .filter_map(|id| {
                let path = self.dir(id).join(METADATA);
                let metadata = std::fs::symlink_metadata(&path).ok()?;
                if !metadata.is_file() || metadata.uid() != own_uid || metadata.mode() & 0o022 != 0 {
                    tracing::warn!(path = %path.display(), "ignoring checkpoint metadata this job did not write");
                    return None;
                }
                let bytes = std::fs::read(&path).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
            .collect()
    }

    /// Deletes all but the newest `keep` complete checkpoints, and incomplete ones older than
    /// the newest complete one.
    pub fn prune(&self, keep: usize) {
        let complete: Vec<u64> = self.complete_checkpoints().iter().map(|meta| meta.id).collect();
        let Some(&newest) = complete.last() else { return };
        let kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).copied().collect();
        for id in self.ids() {
            if id < newest && !kept.contains(&id) {
                let _ = std::fs::remove_dir_all(self.dir(id));
            }
        }
    }
}

/// The account this process runs as: the only one whose checkpoint files it trusts.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> CheckpointMeta {
        CheckpointMeta {
            id,
            completed_at_ms: 1,
            duration_ms: 2,
            size_bytes: 3,
            parallelism: BTreeMap::from([("count".to_owned(), 2)]),
            stages: BTreeMap::new(),
            commits: Vec::new(),
            last: false,
            counters: BTreeMap::from([(
                "count".to_owned(),
                RecordCounts {
                    records_in: 40,
                    ..RecordCounts::default()
                },
            )]),
            epoch: 1 << 32,
        }
    }

    #[test]
    fn only_checkpoints_with_metadata_are_complete_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path(), "app-1");
        for id in 1..=5 {
            std::fs::create_dir_all(storage.dir(id)).unwrap();
            if id != 4 {
                storage.complete(&meta(id)).unwrap();
            }
        }
        std::fs::create_dir_all(storage.dir(6)).unwrap();
        assert_eq!(
            storage.complete_checkpoints().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
        storage.prune(2);
        assert_eq!(storage.ids(), vec![3, 5, 6], "the in-flight 6 stays; 4 never completed");
        assert_eq!(storage.complete_checkpoints().last().unwrap(), &meta(5));
    }

    #[test]
    fn metadata_written_before_counters_were_kept_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path(), "app-1");
        std::fs::create_dir_all(storage.dir(3)).unwrap();
        let old = r#"{"id": 3, "completed_at_ms": 1, "duration_ms": 2, "size_bytes": 3,
            "parallelism": {"count": 2}, "stages": {}, "commits": []}"#;
        let path = storage.dir(3).join(METADATA);
        std::fs::write(&path, old).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = storage.complete_checkpoints();
        assert_eq!(read.len(), 1, "the old checkpoint still counts");
        assert!(read[0].counters.is_empty() && !read[0].last);
    }
}
