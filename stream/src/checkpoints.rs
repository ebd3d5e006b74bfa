//! Checkpoint storage: `<checkpoint_dir>/<app_id>/chk-<n>/` holds the instances' snapshot
//! files and, once every instance acknowledged, `_metadata.json` (written then renamed, or put
//! in one request on an object store: a checkpoint without it never completed). The AM is its
//! only writer of metadata.
//!
//! Whom to trust: in a directory, metadata only this job's account can have written (the uid,
//! no write bits for others); on an object store, whoever holds the job's credentials, as the
//! store's own access control decides (no uid exists there).

use serde::{Deserialize, Serialize};
use spindle_storage::{S3Settings, block_on};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

use super::control::Range;
use super::counts::RecordCounts;
use super::location::Location;
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
    /// A path, or an `s3://` URL (see `Location`).
    pub path: String,
    /// Its size, checked before recovering from it (0 in metadata written before it was kept:
    /// only that it exists is checked).
    #[serde(default)]
    pub bytes: u64,
}

/// The checkpoint directory of one job.
#[derive(Debug, Clone)]
pub struct Storage {
    root: Location,
    /// The job's settings, for snapshot files elsewhere (a savepoint's, in another bucket).
    s3: S3Settings,
}

impl Storage {
    pub fn new(checkpoint_dir: &Location, app_id: &str, s3: S3Settings) -> Storage {
        Storage {
            root: checkpoint_dir.child(app_id),
            s3,
        }
    }

    pub fn root(&self) -> &Location {
        &self.root
    }

    /// A directory: creates the job's dir 0700 (as the job's account, which the AM runs as)
    /// and refuses one that is not a directory of that account: whoever else could write there
    /// could plant checkpoint metadata the next attempt would recover from. An object store:
    /// lists the prefix, so wrong credentials or a missing bucket fail the attempt at once.
    pub fn prepare(&self) -> std::io::Result<()> {
        let root = match &self.root {
            Location::Dir(root) => root,
            Location::Object(object) => return block_on(object.list()).map(drop).map_err(std::io::Error::other),
        };
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let metadata = std::fs::symlink_metadata(root)?;
        let own_uid = effective_uid();
        if !metadata.is_dir() || metadata.uid() != own_uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the checkpoint dir {} is not a directory of this job's account (uid {own_uid}): refusing to recover from what someone else wrote",
                    root.display()
                ),
            ));
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
    }

    pub fn dir(&self, id: u64) -> Location {
        self.root.child(&format!("chk-{id}"))
    }

    /// Writes a complete checkpoint's metadata (then it counts as complete).
    pub fn complete(&self, meta: &CheckpointMeta) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        let dir = match self.dir(meta.id) {
            Location::Dir(dir) => dir,
            // One PUT: the object appears whole or not at all.
            Location::Object(dir) => return block_on(dir.child(METADATA).put(body)).map_err(std::io::Error::other),
        };
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!("{METADATA}.tmp"));
        let _ = std::fs::remove_file(&temp);
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
        let names: Vec<String> = match &self.root {
            Location::Dir(root) => match std::fs::read_dir(root) {
                Ok(entries) => entries.flatten().filter_map(|entry| entry.file_name().into_string().ok()).collect(),
                Err(_) => Vec::new(),
            },
            Location::Object(root) => match block_on(root.list()) {
                // Keys are `<root>/chk-<n>/<file>`: the component after the root.
                Ok(entries) => entries
                    .iter()
                    .filter_map(|entry| entry.key.strip_prefix(root.key())?.trim_start_matches('/').split('/').next())
                    .map(str::to_owned)
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, "cannot list the checkpoints");
                    Vec::new()
                }
            },
        };
        let mut ids: Vec<u64> = names.iter().filter_map(|name| name.strip_prefix("chk-")?.parse().ok()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Complete checkpoints, oldest first. Unreadable metadata counts as incomplete, and so
    /// does metadata in a directory this account did not write (another owner, or writable by
    /// others).
    pub fn complete_checkpoints(&self) -> Vec<CheckpointMeta> {
        self.ids()
            .into_iter()
            .filter_map(|id| {
                let bytes = read_metadata(&self.dir(id).child(METADATA))?;
                serde_json::from_slice(&bytes).ok()
            })
            .collect()
    }

    /// The newest complete checkpoint whose every snapshot file is there at its size: the one
    /// to recover from (a file lost or cut short makes the one before it the latest).
    pub fn latest_whole(&self) -> Option<CheckpointMeta> {
        let mut complete = self.complete_checkpoints();
        while let Some(meta) = complete.pop() {
            match self.missing_file(&meta) {
                None => return Some(meta),
                Some(reason) => tracing::warn!(checkpoint = meta.id, %reason, "not recovering from an incomplete checkpoint"),
            }
        }
        None
    }

    /// Why one of `meta`'s snapshot files cannot be read whole, if one cannot.
    fn missing_file(&self, meta: &CheckpointMeta) -> Option<String> {
        for file in meta.stages.values().flatten() {
            let size = self.root.resolve(&file.path, &self.s3).and_then(|location| location.size());
            match size {
                Ok(Some(size)) if file.bytes == 0 || size == file.bytes => {}
                Ok(Some(size)) => return Some(format!("{} has {size} bytes, not {}", file.path, file.bytes)),
                Ok(None) => return Some(format!("{} is missing", file.path)),
                Err(error) => return Some(format!("{}: {error}", file.path)),
            }
        }
        None
    }

    /// Deletes all but the newest `keep` complete checkpoints, and incomplete ones older than
    /// the newest complete one.
    pub fn prune(&self, keep: usize) {
        let complete: Vec<u64> = self.complete_checkpoints().iter().map(|meta| meta.id).collect();
        let Some(&newest) = complete.last() else { return };
        let kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).copied().collect();
        for id in self.ids() {
            if id < newest && !kept.contains(&id) {
                match self.dir(id) {
                    Location::Dir(dir) => {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    Location::Object(dir) => {
                        if let Err(error) = block_on(dir.delete_all()) {
                            tracing::warn!(checkpoint = id, %error, "cannot delete an old checkpoint");
                        }
                    }
                }
            }
        }
    }
}

/// A checkpoint's metadata, if it is there and trusted (see the module's comment).
fn read_metadata(location: &Location) -> Option<Vec<u8>> {
    match location {
        Location::Dir(path) => {
            let metadata = std::fs::symlink_metadata(path).ok()?;
            if !metadata.is_file() || metadata.uid() != effective_uid() || metadata.mode() & 0o022 != 0 {
                tracing::warn!(path = %path.display(), "ignoring checkpoint metadata this job did not write");
                return None;
            }
            std::fs::read(path).ok()
        }
        // A checkpoint that never completed has none: a failed read is not worth a warning.
        Location::Object(object) => block_on(object.get()).ok().map(|bytes| bytes.to_vec()),
    }
}

/// The account this process runs as: the only one whose checkpoint files it trusts.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn local(location: &Location) -> PathBuf {
        match location {
            Location::Dir(path) => path.clone(),
            Location::Object(_) => unreachable!("a test of directories"),
        }
    }

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
        let storage = Storage::new(&Location::Dir(dir.path().to_owned()), "app-1", S3Settings::default());
        for id in 1..=5 {
            std::fs::create_dir_all(local(&storage.dir(id))).unwrap();
            if id != 4 {
                storage.complete(&meta(id)).unwrap();
            }
        }
        std::fs::create_dir_all(local(&storage.dir(6))).unwrap();
        assert_eq!(
            storage.complete_checkpoints().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
        storage.prune(2);
        assert_eq!(storage.ids(), vec![3, 5, 6], "the in-flight 6 stays; 4 never completed");
        assert_eq!(storage.complete_checkpoints().last().unwrap(), &meta(5));
    }

    #[test]
    fn recovery_skips_a_checkpoint_whose_snapshot_file_is_missing_or_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(&Location::Dir(dir.path().to_owned()), "app-1", S3Settings::default());
        for id in 1..=3 {
            let file = local(&storage.dir(id)).join("count-1.state");
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, b"0123456789").unwrap();
            let mut meta = meta(id);
            meta.stages.insert(
                "count".to_owned(),
                vec![SnapshotFile {
                    index: 0,
                    range: (0, 128),
                    path: file.display().to_string(),
                    bytes: 10,
                }],
            );
            storage.complete(&meta).unwrap();
        }
        assert_eq!(storage.latest_whole().unwrap().id, 3);
        std::fs::write(local(&storage.dir(3)).join("count-1.state"), b"01234").unwrap();
        assert_eq!(storage.latest_whole().unwrap().id, 2, "3's file was cut short");
        std::fs::remove_file(local(&storage.dir(2)).join("count-1.state")).unwrap();
        assert_eq!(storage.latest_whole().unwrap().id, 1, "2's file is gone");
    }

    #[test]
    fn metadata_written_before_counters_were_kept_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(&Location::Dir(dir.path().to_owned()), "app-1", S3Settings::default());
        std::fs::create_dir_all(local(&storage.dir(3))).unwrap();
        let old = r#"{"id": 3, "completed_at_ms": 1, "duration_ms": 2, "size_bytes": 3,
            "parallelism": {"count": 2}, "stages": {}, "commits": []}"#;
        let path = local(&storage.dir(3)).join(METADATA);
        std::fs::write(&path, old).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = storage.complete_checkpoints();
        assert_eq!(read.len(), 1, "the old checkpoint still counts");
        assert!(read[0].counters.is_empty() && !read[0].last);
    }
}
