//! Savepoints in storage, as the AM's account (the app's) reads and writes them: the RM never
//! touches them. A savepoint is trusted as checkpoints are: in a directory, its metadata must
//! be a file of this account that no one else may write (whoever could, could make a job
//! restore their state and run their commits); on an object store, whoever holds the job's
//! credentials could have written it, as the store's access control decides.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use spindle_protocol::{SpecError, savepoint_location};
use spindle_storage::{ObjectReader, ObjectUrl, S3Settings, block_on};

use super::{FORMAT_VERSION, FileCopy, METADATA, SavepointMeta};
use crate::checkpoints::effective_uid;
use crate::location::Location;
use crate::state::StateReader;

const FIELD: &str = "stream.from_savepoint";

/// The savepoint `from_savepoint` names (its directory or its `_metadata.json`): its directory
/// and metadata, or why it cannot be read, naming the field.
pub fn read(from_savepoint: &str, s3: &S3Settings) -> Result<(Location, SavepointMeta), SpecError> {
    let (dir, metadata) = locate(from_savepoint, s3)?;
    let bytes = match &metadata {
        Location::Dir(metadata_path) => {
            let found = std::fs::symlink_metadata(metadata_path).map_err(|err| {
                refuse(format!(
                    "no savepoint at {from_savepoint}: cannot read {}: {err}",
                    metadata_path.display()
                ))
            })?;
            let own_uid = effective_uid();
            if !found.is_file() || found.uid() != own_uid || found.mode() & 0o022 != 0 {
                return Err(refuse(format!(
                    "{} is not a file of this job's account (uid {own_uid}) that only it may write: a savepoint is trusted only when the job's own account wrote it",
                    metadata_path.display()
                )));
            }
            std::fs::read(metadata_path).map_err(|err| refuse(format!("cannot read {}: {err}", metadata_path.display())))?
        }
        Location::Object(object) => get(object).map_err(|err| refuse(format!("no savepoint at {from_savepoint}: {err}")))?,
    };
    parse(dir, &metadata, &bytes)
}

/// `read` for a client checking a job file before it submits it, which may run on another
/// machine and as another account than the job: `None` when this process cannot read the
/// savepoint (the job's AM decides: it alone has the job's credentials for an object store),
/// and no check of who wrote it.
pub fn inspect(from_savepoint: &str) -> Result<Option<(Location, SavepointMeta)>, SpecError> {
    if savepoint_location(FIELD, from_savepoint)?.starts_with("s3://") {
        return Ok(None);
    }
    let (dir, metadata) = locate(from_savepoint, &S3Settings::default())?;
    let Location::Dir(metadata_path) = &metadata else {
        return Ok(None);
    };
    let Ok(bytes) = std::fs::read(metadata_path) else {
        return Ok(None);
    };
    parse(dir, &metadata, &bytes).map(Some)
}

fn refuse(reason: String) -> SpecError {
    SpecError {
        field: FIELD.to_owned(),
        reason,
    }
}

/// The savepoint's directory and its metadata file.
fn locate(from_savepoint: &str, s3: &S3Settings) -> Result<(Location, Location), SpecError> {
    let text = savepoint_location(FIELD, from_savepoint)?;
    let location = Location::open(&text, s3).map_err(|err| refuse(err.to_string()))?;
    Ok(match text.strip_suffix(&format!("/{METADATA}")) {
        Some(dir) => (Location::open(dir, s3).map_err(|err| refuse(err.to_string()))?, location),
        None => (location.clone(), location.child(METADATA)),
    })
}

fn parse(dir: Location, metadata: &Location, bytes: &[u8]) -> Result<(Location, SavepointMeta), SpecError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|err| refuse(format!("{metadata} is not JSON: {err}")))?;
    // The version first: a newer format may not parse as this one at all.
    let version = value.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        let version = version.map_or("no format_version".to_owned(), |v| format!("format version {v}"));
        return Err(refuse(format!(
            "{metadata}: {version}, which this Spindle does not understand (it reads version {FORMAT_VERSION})"
        )));
    }
    let meta = serde_json::from_value(value).map_err(|err| refuse(format!("{metadata}: {err}")))?;
    Ok((dir, meta))
}

fn get(object: &ObjectUrl) -> Result<Vec<u8>, String> {
    block_on(object.get()).map(|bytes| bytes.to_vec()).map_err(|err| err.to_string())
}

/// Makes savepoint directory `dir` (0700, its parents as needed) when a request arrives, so a
/// directory the job cannot write fails the request before any barrier is sent (on an object
/// store: lists it, so credentials that cannot fail it likewise). `Some`: the savepoint is
/// there already (an earlier AM attempt took it).
pub fn prepare(dir: &Location, s3: &S3Settings) -> Result<Option<SavepointMeta>, String> {
    let path = match dir {
        Location::Dir(path) => path,
        Location::Object(object) => {
            block_on(object.list()).map_err(|err| err.to_string())?;
            if block_on(object.child(METADATA).size()).map_err(|err| err.to_string())?.is_none() {
                return Ok(None);
            }
            return read(&dir.to_string(), s3).map(|(_, meta)| Some(meta)).map_err(|err| err.reason);
        }
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot create {}: {err}", path.display())),
    }
    let metadata = std::fs::symlink_metadata(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if !metadata.is_dir() || metadata.uid() != effective_uid() {
        return Err(format!("{} exists and is not a directory of this job's account", path.display()));
    }
    if !path.join(METADATA).exists() {
        return Ok(None);
    }
    read(&path.display().to_string(), s3)
        .map(|(_, meta)| Some(meta))
        .map_err(|err| err.reason)
}

/// Writes savepoint `meta` into `dir` (made by `prepare`): copies each file (a hard link when
/// it is on the same file system, a copy on the server within one bucket: snapshot files are
/// never changed once written), notes how much state each holds, then writes `_metadata.json`
/// (renamed into place, or put in one request: a savepoint without it is incomplete). Already
/// there: nothing to do.
pub fn write(dir: &Location, mut meta: SavepointMeta, copies: &[FileCopy], s3: &S3Settings) -> Result<(), String> {
    if dir.child(METADATA).size().map_err(|err| err.to_string())?.is_some() {
        return Ok(());
    }
    for copy in copies {
        let from = dir
            .resolve(&copy.from, s3)
            .map_err(|err| format!("snapshot {}: {err}", copy.from))?;
        let bytes = StateReader::open_at(&from)
            .map_err(|err| format!("cannot read snapshot {from}: {err}"))?
            .state_bytes();
        copy_file(&from, &dir.child(&copy.name))?;
        for file in meta.operators.iter_mut().flat_map(|op| op.state.iter_mut()) {
            if file.file == copy.name {
                file.bytes = bytes;
            }
        }
    }
    let body = serde_json::to_vec_pretty(&meta).map_err(|err| err.to_string())?;
    let path = match dir {
        Location::Dir(path) => path,
        Location::Object(object) => {
            return block_on(object.child(METADATA).put(body)).map_err(|err| err.to_string());
        }
    };
    let metadata_path = path.join(METADATA);
    let temp = path.join(format!("{METADATA}.tmp"));
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
        .and_then(|()| std::fs::File::open(path)?.sync_all());
    written.map_err(|err| format!("cannot write {}: {err}", metadata_path.display()))
}

/// Copies one snapshot file into a savepoint.
fn copy_file(from: &Location, to: &Location) -> Result<(), String> {
    match (from, to) {
        (Location::Dir(from), Location::Dir(target)) => {
            match std::fs::remove_file(target) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(format!("cannot replace {}: {err}", target.display())),
            }
            if std::fs::hard_link(from, target).is_err() {
                std::fs::copy(from, target).map_err(|err| format!("cannot copy {} into the savepoint: {err}", from.display()))?;
                std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o600))
                    .map_err(|err| format!("cannot restrict {}: {err}", target.display()))?;
                std::fs::File::open(target)
                    .and_then(|file| file.sync_all())
                    .map_err(|err| format!("cannot sync {}: {err}", target.display()))?;
            }
            Ok(())
        }
        (Location::Object(from), Location::Object(target)) if from.bucket() == target.bucket() => {
            block_on(from.copy_to(target)).map_err(|err| err.to_string())
        }
        (Location::Object(from), Location::Object(target)) => Err(format!(
            "cannot copy {from} to {target}: a savepoint on an object store must be in the checkpoints' bucket (its files are copied on the server)"
        )),
        (Location::Dir(from), Location::Object(target)) => block_on(target.upload_file(from)).map(drop).map_err(|err| err.to_string()),
        (Location::Object(from), Location::Dir(target)) => {
            let size = block_on(from.size())
                .map_err(|err| err.to_string())?
                .ok_or_else(|| format!("the snapshot {from} does not exist"))?;
            let mut reader = ObjectReader::new(from.clone(), 0, size, 8 << 20);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(target)
                .map_err(|err| format!("cannot create {}: {err}", target.display()))?;
            std::io::copy(&mut reader, &mut file)
                .and_then(|_| file.sync_all())
                .map_err(|err| format!("cannot write {}: {err}", target.display()))
        }
    }
}
