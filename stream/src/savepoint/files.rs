//! Savepoints on disk, as the AM's account (the app's) reads and writes them: the RM never
//! touches them. A savepoint is trusted as checkpoints are: its metadata must be a file of this
//! account that no one else may write (whoever could, could make a job restore their state and
//! run their commits).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use spindle_protocol::{SpecError, storage_path};

use super::{FORMAT_VERSION, FileCopy, METADATA, SavepointMeta};
use crate::checkpoints::effective_uid;
use crate::state::StateReader;

const FIELD: &str = "stream.from_savepoint";

/// The savepoint `from_savepoint` names (its directory or its `_metadata.json`): its directory
/// and metadata, or why it cannot be read, naming the field.
pub fn read(from_savepoint: &str) -> Result<(PathBuf, SavepointMeta), SpecError> {
    let (path, dir, metadata_path) = locate(from_savepoint)?;
    let metadata = std::fs::symlink_metadata(&metadata_path).map_err(|err| {
        refuse(format!(
            "no savepoint at {}: cannot read {}: {err}",
            path.display(),
            metadata_path.display()
        ))
    })?;
    let own_uid = effective_uid();
    if !metadata.is_file() || metadata.uid() != own_uid || metadata.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "{} is not a file of this job's account (uid {own_uid}) that only it may write: a savepoint is trusted only when the job's own account wrote it",
            metadata_path.display()
        )));
    }
    parse(dir, &metadata_path)
}

/// `read` for a client checking a job file before it submits it, which may run on another
/// machine and as another account than the job: `None` when this process cannot read the
/// savepoint (the job's AM decides), and no check of who wrote it.
pub fn inspect(from_savepoint: &str) -> Result<Option<(PathBuf, SavepointMeta)>, SpecError> {
    let (_, dir, metadata_path) = locate(from_savepoint)?;
    if std::fs::File::open(&metadata_path).is_err() {
        return Ok(None);
    }
    parse(dir, &metadata_path).map(Some)
}

fn refuse(reason: String) -> SpecError {
    SpecError {
        field: FIELD.to_owned(),
        reason,
    }
}

/// The path as written, the savepoint's directory and its metadata file.
fn locate(from_savepoint: &str) -> Result<(PathBuf, PathBuf, PathBuf), SpecError> {
    let path = storage_path(FIELD, from_savepoint)?;
    Ok(if path.file_name().is_some_and(|name| name == METADATA) {
        (path.clone(), path.parent().map(Path::to_owned).unwrap_or_default(), path)
    } else {
        (path.clone(), path.clone(), path.join(METADATA))
    })
}

fn parse(dir: PathBuf, metadata_path: &Path) -> Result<(PathBuf, SavepointMeta), SpecError> {
    let bytes = std::fs::read(metadata_path).map_err(|err| refuse(format!("cannot read {}: {err}", metadata_path.display())))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|err| refuse(format!("{} is not JSON: {err}", metadata_path.display())))?;
    // The version first: a newer format may not parse as this one at all.
    let version = value.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        let version = version.map_or("no format_version".to_owned(), |v| format!("format version {v}"));
        return Err(refuse(format!(
            "{}: {version}, which this Spindle does not understand (it reads version {FORMAT_VERSION})",
            metadata_path.display()
        )));
    }
    let meta = serde_json::from_value(value).map_err(|err| refuse(format!("{}: {err}", metadata_path.display())))?;
    Ok((dir, meta))
}

/// Makes savepoint directory `dir` (0700, its parents as needed) when a request arrives, so a
/// directory the job cannot write fails the request before any barrier is sent. `Some`: the
/// savepoint is there already (an earlier AM attempt took it).
pub fn prepare(dir: &Path) -> Result<Option<SavepointMeta>, String> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot create {}: {err}", dir.display())),
    }
    let metadata = std::fs::symlink_metadata(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    if !metadata.is_dir() || metadata.uid() != effective_uid() {
        return Err(format!("{} exists and is not a directory of this job's account", dir.display()));
    }
    if !dir.join(METADATA).exists() {
        return Ok(None);
    }
    read(&dir.display().to_string())
        .map(|(_, meta)| Some(meta))
        .map_err(|err| err.reason)
}

/// Writes savepoint `meta` into `dir` (made by `prepare`): copies each file (a hard link when
/// it is on the same file system: snapshot files are never changed once written), notes how
/// much state each holds, then writes `_metadata.json` (then renamed: a savepoint without it is
/// incomplete). Already there: nothing to do.
pub fn write(dir: &Path, mut meta: SavepointMeta, copies: &[FileCopy]) -> Result<(), String> {
    let metadata_path = dir.join(METADATA);
    if metadata_path.exists() {
        return Ok(());
    }
    for copy in copies {
        let target = dir.join(&copy.name);
        let bytes = StateReader::open(&copy.from)
            .map_err(|err| format!("cannot read snapshot {}: {err}", copy.from.display()))?
            .state_bytes();
        match std::fs::remove_file(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot replace {}: {err}", target.display())),
        }
        if std::fs::hard_link(&copy.from, &target).is_err() {
            std::fs::copy(&copy.from, &target).map_err(|err| format!("cannot copy {} into the savepoint: {err}", copy.from.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .map_err(|err| format!("cannot restrict {}: {err}", target.display()))?;
            std::fs::File::open(&target)
                .and_then(|file| file.sync_all())
                .map_err(|err| format!("cannot sync {}: {err}", target.display()))?;
        }
        for file in meta.operators.iter_mut().flat_map(|op| op.state.iter_mut()) {
            if file.file == copy.name {
                file.bytes = bytes;
            }
        }
    }
    let body = serde_json::to_vec_pretty(&meta).map_err(|err| err.to_string())?;
    let temp = dir.join(format!("{METADATA}.tmp"));
    let _ = std::fs::remove_file(&temp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(&body)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, &metadata_path))
        .and_then(|()| std::fs::File::open(dir)?.sync_all());
    written.map_err(|err| format!("cannot write {}: {err}", metadata_path.display()))
}
