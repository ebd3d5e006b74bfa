//! Checkpoint storage: `<checkpoint_dir>/<app_id>/chk-<n>/` holds the instances' snapshot
//! files and, once every instance acknowledged, `_metadata.json` (written then renamed: a
//! checkpoint without it never completed). The AM is its only writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::control::Range;
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

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("chk-{id}"))
    }

    /// Writes a complete checkpoint's metadata (then it counts as complete).
    pub fn complete(&self, meta: &CheckpointMeta) -> std::io::Result<()> {
        let dir = self.dir(meta.id);
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!("{METADATA}.tmp"));
        let body = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
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

    /// Complete checkpoints, oldest first (unreadable metadata counts as incomplete).
    pub fn complete_checkpoints(&self) -> Vec<CheckpointMeta> {
        self.ids()
            .into_iter()
            .filter_map(|id| {
                let bytes = std::fs::read(self.dir(id).join(METADATA)).ok()?;
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
}
