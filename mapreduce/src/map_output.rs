//! The map output format, which the node agent's shuffle server reads. In a directory:
//!
//! - `<name>.data`: for each partition in order, its records sorted by key, each framed as
//!   `u32 LE key length, u32 LE value length, key bytes, value bytes`.
//! - `<name>.index`: `reducers + 1` little-endian `u64` byte offsets into `.data`; partition `p`
//!   is `data[index[p] .. index[p + 1]]`.
//!
//! Both are written under temporary names and renamed, `.data` first, then `.index`: an index
//! present means the output is complete. `<name>` matches `[A-Za-z0-9_.-]+`. Spills use the
//! same `.data` layout, with the index kept in memory.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{TaskError, TaskResult};
use super::records::write_frame;

/// Whether `name` may name a map output (`[A-Za-z0-9_.-]+`, and not `.` or `..`).
pub fn is_valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

/// The paths of a complete map output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutputFiles {
    pub data: PathBuf,
    pub index: PathBuf,
}

impl MapOutputFiles {
    /// Where the output `name` lives in `directory`.
    pub fn at(directory: &Path, name: &str) -> Self {
        MapOutputFiles {
            data: directory.join(format!("{name}.data")),
            index: directory.join(format!("{name}.index")),
        }
    }

    /// Reads and checks the index: `reducers + 1` offsets, non-decreasing, the last at most the
    /// size of `.data`.
    pub fn read_index(&self) -> TaskResult<Vec<u64>> {
        let bytes = fs::read(&self.index).map_err(TaskError::io("read the map output index", &self.index))?;
        let corrupt = |reason: String| TaskError::CorruptMapOutput {
            origin: self.index.display().to_string(),
            reason,
        };
        if bytes.len() < 16 || bytes.len() % 8 != 0 {
            return Err(corrupt(format!("{} bytes is not 8 × (reducers + 1)", bytes.len())));
        }
        let offsets: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
            .collect();
        if offsets.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(corrupt("offsets decrease".into()));
        }
        let data_len = fs::metadata(&self.data)
            .map_err(TaskError::io("read the map output data", &self.data))?
            .len();
        if offsets.last().copied() != Some(data_len) {
            return Err(corrupt(format!("the last offset is not the data size {data_len}")));
        }
        Ok(offsets)
    }

    /// A buffered reader of partition `partition`'s segment, given the index.
    pub fn open_segment(&self, index: &[u64], partition: u32) -> TaskResult<impl Read + Send + use<>> {
        let p = partition as usize;
        if p + 1 >= index.len() {
            return Err(TaskError::InvalidParams(format!(
                "partition {partition} does not exist: the map output has {}",
                index.len() - 1
            )));
        }
        open_range(&self.data, index[p], index[p + 1] - index[p])
    }
}

/// A buffered reader of `length` bytes of a file from `start`.
pub(crate) fn open_range(path: &Path, start: u64, length: u64) -> TaskResult<impl Read + Send + use<>> {
    let mut file = File::open(path).map_err(TaskError::io("open the map output", path))?;
    file.seek(SeekFrom::Start(start))
        .map_err(TaskError::io("seek in the map output", path))?;
    Ok(BufReader::with_capacity(64 * 1024, file.take(length)))
}

/// Writes a `.data` file partition by partition, recording the index as it goes.
pub struct SegmentWriter {
    /// The data file, under its temporary name.
    data: BufWriter<File>,
    /// The temporary path of `data`.
    temporary_data: PathBuf,
    /// Start offsets of the partitions begun so far.
    index: Vec<u64>,
    /// Bytes written so far.
    position: u64,
    /// Partitions in the output.
    reducers: u32,
}

impl SegmentWriter {
    /// Starts writing `path` (under a temporary name next to it).
    pub fn create(path: &Path, reducers: u32) -> TaskResult<Self> {
        let temporary_data = temporary_path(path);
        let file = File::create(&temporary_data).map_err(TaskError::io("create the map output", &temporary_data))?;
        Ok(SegmentWriter {
            data: BufWriter::with_capacity(1 << 20, file),
            temporary_data,
            index: vec![0],
            position: 0,
            reducers,
        })
    }

    /// Ends earlier partitions: the records written next belong to `partition`.
    pub fn start_partition(&mut self, partition: u32) {
        debug_assert!(partition < self.reducers, "partition {partition} of {}", self.reducers);
        // index[p] is the start of partition p; index.len() - 1 partitions have started.
        while self.index.len() <= partition as usize {
            self.index.push(self.position);
        }
    }

    /// Appends a record to the current partition.
    #[inline]
    pub fn write(&mut self, key: &[u8], value: &[u8]) -> TaskResult<()> {
        self.position += write_frame(&mut self.data, key, value).map_err(TaskError::io("write the map output", &self.temporary_data))?;
        Ok(())
    }

    /// Flushes the data and returns the temporary path and the full index (`reducers + 1`).
    fn finish_data(mut self) -> TaskResult<(PathBuf, Vec<u64>)> {
        self.start_partition(self.reducers - 1);
        self.index.push(self.position);
        self.data
            .flush()
            .map_err(TaskError::io("write the map output", &self.temporary_data))?;
        Ok((self.temporary_data, self.index))
    }

    /// Finishes a spill: the data stays under its temporary name; the index stays in memory.
    pub fn finish_spill(self) -> TaskResult<(PathBuf, Vec<u64>)> {
        self.finish_data()
    }

    /// Finishes a map output: writes the index and renames `.data`, then `.index`, into place.
    pub fn finish_output(self, files: &MapOutputFiles) -> TaskResult<Vec<u64>> {
        let (temporary_data, index) = self.finish_data()?;
        publish(files, &temporary_data, &index)?;
        Ok(index)
    }
}

/// Makes a finished `.data` (under a temporary name) and its index the map output `files`:
/// writes the index, renames the data into place, then the index.
pub fn publish(files: &MapOutputFiles, temporary_data: &Path, index: &[u64]) -> TaskResult<()> {
    let temporary_index = temporary_path(&files.index);
    let index_bytes: Vec<u8> = index.iter().flat_map(|offset| offset.to_le_bytes()).collect();
    fs::write(&temporary_index, index_bytes).map_err(TaskError::io("write the map output index", &temporary_index))?;
    fs::rename(temporary_data, &files.data).map_err(TaskError::io("rename the map output into place", &files.data))?;
    fs::rename(&temporary_index, &files.index).map_err(TaskError::io("rename the map output index into place", &files.index))?;
    Ok(())
}

/// `dir/.name.tmp`: hidden, and never mistaken for a finished file.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::FrameReader;

    #[test]
    fn output_names_are_restricted() {
        assert!(is_valid_output_name("map-00003_attempt.1"));
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!is_valid_output_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn written_partitions_read_back_through_the_index() {
        let directory = tempfile::tempdir().unwrap();
        let files = MapOutputFiles::at(directory.path(), "m0");
        let mut writer = SegmentWriter::create(&files.data, 4).unwrap();
        writer.start_partition(1);
        writer.write(b"a", b"1").unwrap();
        writer.write(b"b", b"2").unwrap();
        writer.start_partition(3);
        writer.write(b"z", b"").unwrap();
        let index = writer.finish_output(&files).unwrap();
        assert_eq!(index, [0, 0, 20, 20, 29]);
        assert_eq!(files.read_index().unwrap(), index);
        let leftovers: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        let read_partition = |partition| {
            let mut reader = FrameReader::new(files.open_segment(&index, partition).unwrap());
            let mut records = Vec::new();
            while reader.advance().unwrap() {
                records.push((reader.key().to_vec(), reader.value().to_vec()));
            }
            records
        };
        assert!(read_partition(0).is_empty());
        assert_eq!(read_partition(1), [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(read_partition(3), [(b"z".to_vec(), Vec::new())]);
        assert!(files.open_segment(&index, 4).is_err());
    }
}
