//! Map output on this node's disk, and how the agent serves and deletes it.
//!
//! The tasks of an app write into `<work_dir>/shuffle/<app_id>` (`SPINDLE_SHUFFLE_DIR`): outside
//! any container's own directory, so a map's output outlives its container. One output is
//! `<name>.data` plus `<name>.index`, the index being (reducers + 1) little-endian u64 offsets
//! into the data: partition p is `data[index[p] .. index[p + 1]]`. The index is written last
//! (by rename), so an output whose index exists is complete. The partition bytes are opaque here.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use spindle_protocol::AppId;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::AgentError;

/// Size of one index entry: a little-endian u64 byte offset.
const INDEX_ENTRY_BYTES: u64 = 8;

/// `<work_dir>/shuffle`: every app's map output on this node.
pub(crate) fn shuffle_root(work_dir: &Path) -> PathBuf {
    work_dir.join("shuffle")
}

/// `<work_dir>/shuffle/<app_id>`: the app's map output on this node.
pub(crate) fn app_shuffle_dir(work_dir: &Path, app_id: AppId) -> PathBuf {
    shuffle_root(work_dir).join(app_id.to_string())
}

/// Refuses output names that are not `[A-Za-z0-9_.-]+`, or that could name something other
/// than a file in the app's directory (`.`, `..`).
pub(crate) fn check_output_name(name: &str) -> Result<(), AgentError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-');
    if name.is_empty() || name.len() > 255 || !name.bytes().all(allowed) || name.contains("..") || name == "." {
        return Err(AgentError::BadRequest(format!(
            "output_name `{name}` is not a map output name: use 1 to 255 of [A-Za-z0-9_.-], without `..`"
        )));
    }
    Ok(())
}

/// An open partition: the data file positioned at its first byte, and its length.
pub(crate) struct PartitionRange {
    pub file: tokio::fs::File,
    pub len: u64,
}

/// Opens partition `partition` of the output `name` (a checked name) in `app_dir`. 404 if the
/// output is not complete (no index) or the app has no output here; 400 if the partition is
/// beyond the output's reducers; 500 if the files contradict each other.
pub(crate) async fn open_partition(app_id: AppId, app_dir: &Path, name: &str, partition: u32) -> Result<PartitionRange, AgentError> {
    let not_found = || AgentError::ShuffleOutputNotFound {
        app_id,
        output: name.to_owned(),
    };
    let index_path = app_dir.join(format!("{name}.index"));
    let data_path = app_dir.join(format!("{name}.data"));
    let corrupt = |what: String| AgentError::io(format!("map output {}", data_path.display()), std::io::Error::other(what));

    let mut index = match crate::served_file::open_served_file(&index_path).await {
        Ok(index) => index,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(err) => return Err(AgentError::io(format!("cannot open {}", index_path.display()), err)),
    };
    let index_len = index
        .metadata()
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", index_path.display()), err))?
        .len();
    if index_len < 2 * INDEX_ENTRY_BYTES || index_len % INDEX_ENTRY_BYTES != 0 {
        return Err(corrupt(format!(
            "its index is {index_len} bytes: expected (reducers + 1) 8-byte offsets"
        )));
    }
    let reducers = index_len / INDEX_ENTRY_BYTES - 1;
    if u64::from(partition) >= reducers {
        return Err(AgentError::BadRequest(format!(
            "partition {partition} is out of range: map output {name} has {reducers} partitions (0 to {})",
            reducers - 1
        )));
    }
    // Only the two offsets this partition needs: an index can have thousands of entries.
    let mut bounds = [0u8; 2 * INDEX_ENTRY_BYTES as usize];
    index
        .seek(SeekFrom::Start(u64::from(partition) * INDEX_ENTRY_BYTES))
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", index_path.display()), err))?;
    index
        .read_exact(&mut bounds)
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", index_path.display()), err))?;
    let start = u64::from_le_bytes(bounds[..8].try_into().expect("8 bytes"));
    let end = u64::from_le_bytes(bounds[8..].try_into().expect("8 bytes"));

    let mut file = match crate::served_file::open_served_file(&data_path).await {
        Ok(file) => file,
        // The index is written last, so a missing data file means the output is being deleted.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(err) => return Err(AgentError::io(format!("cannot open {}", data_path.display()), err)),
    };
    let data_len = file
        .metadata()
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", data_path.display()), err))?
        .len();
    if start > end || end > data_len {
        return Err(corrupt(format!(
            "partition {partition} spans bytes {start}..{end}, but the data file has {data_len} bytes"
        )));
    }
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|err| AgentError::io(format!("cannot read {}", data_path.display()), err))?;
    Ok(PartitionRange { file, len: end - start })
}

/// Deletes an app's shuffle directory; returns the bytes it held (0 if it was not there).
/// Blocking: call on the blocking pool.
pub(crate) fn remove_app_shuffle_dir(dir: &Path) -> std::io::Result<u64> {
    let bytes = dir_size(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        // Another deletion of the same directory may have raced this one: gone is gone.
        Err(_) if !dir.exists() => Ok(bytes),
        Err(err) => Err(err),
    }
}

/// Bytes in the regular files of `dir`, one level deep (map output is flat); 0 if unreadable.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppId {
        AppId { cluster_ts: 1, seq: 7 }
    }

    /// Writes an output of `partitions` (each partition's bytes) as the task runtime does.
    fn write_output(dir: &Path, name: &str, partitions: &[&[u8]]) {
        let mut data = Vec::new();
        let mut index = Vec::new();
        for partition in partitions {
            index.extend_from_slice(&(data.len() as u64).to_le_bytes());
            data.extend_from_slice(partition);
        }
        index.extend_from_slice(&(data.len() as u64).to_le_bytes());
        std::fs::write(dir.join(format!("{name}.data")), data).unwrap();
        std::fs::write(dir.join(format!("{name}.index")), index).unwrap();
    }

    async fn read_partition(dir: &Path, name: &str, partition: u32) -> Result<Vec<u8>, AgentError> {
        let range = open_partition(app(), dir, name, partition).await?;
        let mut bytes = Vec::new();
        range.file.take(range.len).read_to_end(&mut bytes).await.unwrap();
        Ok(bytes)
    }

    #[test]
    fn output_names_are_plain_file_names() {
        for good in ["m_000012_1", "map-3.attempt_2", "a", "A.b-c_d"] {
            check_output_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a..b", "../etc", "a/b", "a b", "m%2F", "é", &"x".repeat(256)] {
            let err = check_output_name(bad).unwrap_err();
            assert!(
                matches!(err, AgentError::BadRequest(ref message) if message.contains("output_name")),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn partitions_are_exact_byte_ranges() {
        let dir = tempfile::tempdir().unwrap();
        write_output(dir.path(), "m_1", &[b"first", b"", b"third partition"]);
        assert_eq!(read_partition(dir.path(), "m_1", 0).await.unwrap(), b"first");
        assert_eq!(read_partition(dir.path(), "m_1", 1).await.unwrap(), b"");
        assert_eq!(read_partition(dir.path(), "m_1", 2).await.unwrap(), b"third partition");
        let err = read_partition(dir.path(), "m_1", 3).await.unwrap_err();
        assert!(
            matches!(err, AgentError::BadRequest(ref message) if message.contains("3 partitions")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn incomplete_or_inconsistent_outputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Data without its index: the map is still writing.
        std::fs::write(dir.path().join("m_2.data"), b"partial").unwrap();
        let err = read_partition(dir.path(), "m_2", 0).await.unwrap_err();
        assert!(matches!(err, AgentError::ShuffleOutputNotFound { .. }), "{err}");
        // An index pointing past the data.
        let index: Vec<u8> = [0u64, 100].iter().flat_map(|offset| offset.to_le_bytes()).collect();
        std::fs::write(dir.path().join("m_2.index"), index).unwrap();
        let err = read_partition(dir.path(), "m_2", 0).await.unwrap_err();
        assert!(matches!(err, AgentError::Io { .. }), "{err}");
        // An index that is not whole offsets.
        std::fs::write(dir.path().join("m_3.index"), [0u8; 12]).unwrap();
        std::fs::write(dir.path().join("m_3.data"), b"").unwrap();
        assert!(matches!(read_partition(dir.path(), "m_3", 0).await, Err(AgentError::Io { .. })));
    }

    #[test]
    fn removing_a_shuffle_dir_is_idempotent() {
        let work = tempfile::tempdir().unwrap();
        let dir = app_shuffle_dir(work.path(), app());
        std::fs::create_dir_all(&dir).unwrap();
        write_output(&dir, "m_1", &[b"0123456789"]);
        assert_eq!(remove_app_shuffle_dir(&dir).unwrap(), 10 + 16);
        assert!(!dir.exists());
        assert_eq!(remove_app_shuffle_dir(&dir).unwrap(), 0);
        assert!(shuffle_root(work.path()).exists(), "only the app's directory goes");
    }
}

#[cfg(test)]
pub(crate) mod api_tests;
