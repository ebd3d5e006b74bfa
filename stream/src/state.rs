//! Snapshot files: one per instance per checkpoint, written then renamed into place (or, in
//! a checkpoint dir on an object store, written to a scratch file, then uploaded whole).
//!
//! Layout: the sections back to back, then an index (`count: u32`, then per section
//! `group: u32, offset: u64, length: u64`), then the index's offset as `u64`, then the magic.
//! Group `OPERATOR_STATE` holds state that is not keyed. The index lets an instance that owns
//! only some groups (after a rescale) read just those.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use spindle_storage::{ObjectUrl, block_on};

use super::keys::KeyGroupRange;
use super::location::Location;
use super::operator::OperatorError;

const MAGIC: &[u8; 8] = b"SPNDLST1";
/// The section of state that belongs to no key group.
pub const OPERATOR_STATE: u32 = u32::MAX;

/// Writes one snapshot's sections: into its file (`create`, and `finish` renames it into place),
/// or into memory (`in_memory`, and `into_buffered` keeps them for a writer thread).
pub struct StateWriter {
    output: Output,
    offset: u64,
    index: Vec<(u32, u64, u64)>,
    scratch: Vec<u8>,
}

/// Where a `StateWriter`'s sections go.
enum Output {
    File {
        /// Where `temp` goes once whole: renamed to a path, or uploaded as an object.
        target: Target,
        temp: PathBuf,
        file: BufWriter<File>,
    },
    Memory(Vec<u8>),
}

enum Target {
    Path(PathBuf),
    Object(ObjectUrl),
}

impl StateWriter {
    pub fn create(path: &Path) -> Result<StateWriter, OperatorError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Self::to_file(Target::Path(path.to_owned()), path.with_extension("tmp"))
    }

    /// A writer of the snapshot file at `location`; one for an object store is written to a
    /// scratch file in `scratch` first.
    pub fn create_at(location: &Location, scratch: &Path) -> Result<StateWriter, OperatorError> {
        match location {
            Location::Dir(path) => Self::create(path),
            Location::Object(object) => {
                std::fs::create_dir_all(scratch)?;
                let name = object.key().rsplit('/').next().unwrap_or("snapshot");
                Self::to_file(Target::Object(object.clone()), scratch.join(format!("{name}.upload")))
            }
        }
    }

    fn to_file(target: Target, temp: PathBuf) -> Result<StateWriter, OperatorError> {
        let file = BufWriter::with_capacity(1 << 20, File::create(&temp)?);
        Ok(StateWriter {
            output: Output::File { target, temp, file },
            offset: 0,
            index: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// A writer that keeps the sections in memory: an operator's `snapshot` on the instance's
    /// thread, written to the file later by `BufferedState::write_to` on another.
    pub fn in_memory() -> StateWriter {
        StateWriter {
            output: Output::Memory(Vec::new()),
            offset: 0,
            index: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The sections written into an `in_memory` writer.
    pub fn into_buffered(self) -> BufferedState {
        let data = match self.output {
            Output::Memory(data) => data,
            Output::File { .. } => panic!("into_buffered on a writer of a file: use finish"),
        };
        BufferedState { data, index: self.index }
    }

    /// Writes one key group's state, as `write` appends it to the buffer it is given.
    pub fn key_group(&mut self, group: u32, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), OperatorError> {
        self.scratch.clear();
        write(&mut self.scratch);
        let bytes = std::mem::take(&mut self.scratch);
        let result = self.section(group, &bytes);
        self.scratch = bytes;
        result
    }

    /// Writes state that is not keyed.
    pub fn operator_state(&mut self, bytes: &[u8]) -> Result<(), OperatorError> {
        self.section(OPERATOR_STATE, bytes)
    }

    fn section(&mut self, group: u32, bytes: &[u8]) -> Result<(), OperatorError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match &mut self.output {
            Output::File { file, .. } => file.write_all(bytes)?,
            Output::Memory(data) => data.extend_from_slice(bytes),
        }
        self.index.push((group, self.offset, bytes.len() as u64));
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Bytes of state written so far.
    pub fn size(&self) -> u64 {
        self.offset
    }

    /// Writes the index, syncs, and renames the file into place (or uploads it and deletes the
    /// scratch file); returns its size.
    pub fn finish(self) -> Result<u64, OperatorError> {
        let Output::File { target, temp, mut file } = self.output else {
            return Err(OperatorError::failed("finish on an in-memory state writer: use into_buffered"));
        };
        let index_offset = self.offset;
        file.write_all(&(self.index.len() as u32).to_le_bytes())?;
        for (group, offset, length) in &self.index {
            file.write_all(&group.to_le_bytes())?;
            file.write_all(&offset.to_le_bytes())?;
            file.write_all(&length.to_le_bytes())?;
        }
        file.write_all(&index_offset.to_le_bytes())?;
        file.write_all(MAGIC)?;
        let file = file.into_inner().map_err(|error| error.into_error())?;
        match target {
            Target::Path(path) => {
                file.sync_all()?;
                std::fs::rename(&temp, &path)?;
            }
            Target::Object(object) => {
                // The store makes it durable: the scratch copy needs no sync.
                drop(file);
                let uploaded = block_on(object.upload_file(&temp));
                let _ = std::fs::remove_file(&temp);
                uploaded.map_err(|error| OperatorError::failed(format!("uploading a snapshot: {error}")))?;
            }
        }
        Ok(index_offset + 4 + self.index.len() as u64 * 20 + 16)
    }
}

/// A snapshot taken on an instance's thread (`Operator::capture`), written to its file on the
/// instance's snapshot thread while the instance processes on: Flink's asynchronous phase.
pub trait CapturedState: Send {
    /// Writes every section into `state` (a file writer; the caller finishes it).
    fn write_to(self: Box<Self>, state: &mut StateWriter) -> Result<(), OperatorError>;
}

/// Sections already serialized into memory: the capture of an operator without a cheaper one.
pub struct BufferedState {
    data: Vec<u8>,
    index: Vec<(u32, u64, u64)>,
}

impl CapturedState for BufferedState {
    fn write_to(self: Box<Self>, state: &mut StateWriter) -> Result<(), OperatorError> {
        for (group, offset, length) in &self.index {
            state.section(*group, &self.data[*offset as usize..(*offset + *length) as usize])?;
        }
        Ok(())
    }
}

/// Bytes an object-store reader fetches per request at most: neighbouring sections it needs
/// come in one ranged GET, not one each.
const FETCH_BYTES: u64 = 16 << 20;
/// The tail an object-store reader fetches first: the index of most files fits in it.
const TAIL_BYTES: u64 = 64 << 10;

/// Reads sections of a snapshot file.
pub struct StateReader {
    source: Source,
    index: Vec<(u32, u64, u64)>,
}

enum Source {
    File(File),
    Object(ObjectUrl),
}

impl Source {
    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), OperatorError> {
        match self {
            Source::File(file) => {
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(buffer)?;
            }
            Source::Object(object) => {
                let bytes = fetch(object, offset, buffer.len() as u64)?;
                buffer.copy_from_slice(&bytes);
            }
        }
        Ok(())
    }
}

/// Bytes `offset..offset + length` of an object, all of them (a short answer is an error).
fn fetch(object: &ObjectUrl, offset: u64, length: u64) -> Result<bytes::Bytes, OperatorError> {
    let bytes = block_on(object.get_range(offset..offset + length))
        .map_err(|error| OperatorError::failed(format!("reading a snapshot: {error}")))?;
    if bytes.len() as u64 != length {
        return Err(OperatorError::CorruptState(format!(
            "{object}: {} bytes at {offset} where {length} were asked",
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl StateReader {
    pub fn open(path: &Path) -> Result<StateReader, OperatorError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Self::read_index(Source::File(file), len, &path.display().to_string(), None)
    }

    /// Opens the snapshot file at `location`: an object's index costs a HEAD and one GET.
    pub fn open_at(location: &Location) -> Result<StateReader, OperatorError> {
        let object = match location {
            Location::Dir(path) => return Self::open(path),
            Location::Object(object) => object,
        };
        let len = block_on(object.size())
            .map_err(|error| OperatorError::failed(format!("reading a snapshot: {error}")))?
            .ok_or_else(|| OperatorError::failed(format!("the snapshot {object} does not exist")))?;
        let tail_len = len.min(TAIL_BYTES);
        let tail = fetch(object, len - tail_len, tail_len)?;
        Self::read_index(Source::Object(object.clone()), len, &object.to_string(), Some(&tail))
    }

    /// Reads the index of a file of `len` bytes; `tail`: its last bytes, fetched already.
    fn read_index(mut source: Source, len: u64, name: &str, tail: Option<&[u8]>) -> Result<StateReader, OperatorError> {
        let corrupt = |what: &str| OperatorError::CorruptState(format!("{name}: {what}"));
        if len < 20 {
            return Err(corrupt("too short"));
        }
        // Bytes `offset..len - 16`, from the tail when it holds them.
        let read_to_trailer = |source: &mut Source, offset: u64| -> Result<Vec<u8>, OperatorError> {
            let mut bytes = vec![0u8; (len - offset) as usize];
            match tail {
                Some(tail) if len - offset <= tail.len() as u64 => bytes.copy_from_slice(&tail[tail.len() - (len - offset) as usize..]),
                _ => source.read_exact_at(offset, &mut bytes)?,
            }
            bytes.truncate(bytes.len() - 16);
            Ok(bytes)
        };
        let mut trailer = [0u8; 16];
        match tail {
            Some(tail) => trailer.copy_from_slice(&tail[tail.len() - 16..]),
            None => source.read_exact_at(len - 16, &mut trailer)?,
        }
        if &trailer[8..] != MAGIC {
            return Err(corrupt("not a snapshot file"));
        }
        let index_offset = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        if index_offset + 4 > len - 16 {
            return Err(corrupt("index out of bounds"));
        }
        let raw = read_to_trailer(&mut source, index_offset)?;
        let count = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) as usize;
        if raw.len() != 4 + count * 20 {
            return Err(corrupt("index length"));
        }
        let index = raw[4..]
            .chunks_exact(20)
            .map(|entry| {
                (
                    u32::from_le_bytes(entry[..4].try_into().expect("4")),
                    u64::from_le_bytes(entry[4..12].try_into().expect("8")),
                    u64::from_le_bytes(entry[12..].try_into().expect("8")),
                )
            })
            .collect::<Vec<_>>();
        if index.iter().any(|(_, offset, length)| offset + length > index_offset) {
            return Err(corrupt("a section runs past the data"));
        }
        Ok(StateReader { source, index })
    }

    /// Bytes of state the file holds, over all its sections (0: the instance had none).
    pub fn state_bytes(&self) -> u64 {
        self.index.iter().map(|(_, _, length)| length).sum()
    }

    /// The key groups with state in this file.
    pub fn key_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.index
            .iter()
            .map(|(group, _, _)| *group)
            .filter(|group| *group != OPERATOR_STATE)
    }

    /// Calls `each` with every key group in `range` and its bytes, in file order.
    pub fn read_key_groups(
        &mut self,
        range: &KeyGroupRange,
        mut each: impl FnMut(u32, &[u8]) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let wanted: Vec<(u32, u64, u64)> = self
            .index
            .iter()
            .filter(|(group, _, _)| *group != OPERATOR_STATE && range.contains(group))
            .copied()
            .collect();
        if let Source::Object(object) = &self.source {
            // Sections lie in the file in the order of the index: runs of adjacent ones are
            // fetched together, up to FETCH_BYTES per request.
            let mut start = 0;
            while start < wanted.len() {
                let first = wanted[start].1;
                let mut end = start + 1;
                while end < wanted.len() {
                    let (_, offset, length) = wanted[end];
                    let (_, previous, previous_length) = wanted[end - 1];
                    if offset != previous + previous_length || offset + length - first > FETCH_BYTES {
                        break;
                    }
                    end += 1;
                }
                let (_, last, last_length) = wanted[end - 1];
                let bytes = fetch(object, first, last + last_length - first)?;
                for &(group, offset, length) in &wanted[start..end] {
                    let at = (offset - first) as usize;
                    each(group, &bytes[at..at + length as usize])?;
                }
                start = end;
            }
            return Ok(());
        }
        let mut buffer = Vec::new();
        for (group, offset, length) in wanted {
            self.read_section(offset, length, &mut buffer)?;
            each(group, &buffer)?;
        }
        Ok(())
    }

    /// The state that is not keyed, if the file has some.
    pub fn operator_state(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        let Some(&(_, offset, length)) = self.index.iter().find(|(group, _, _)| *group == OPERATOR_STATE) else {
            return Ok(None);
        };
        let mut buffer = Vec::new();
        self.read_section(offset, length, &mut buffer)?;
        Ok(Some(buffer))
    }

    fn read_section(&mut self, offset: u64, length: u64, buffer: &mut Vec<u8>) -> Result<(), OperatorError> {
        buffer.resize(length as usize, 0);
        self.source.read_exact_at(offset, buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_ranges_select_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chk-1/count-0.state");
        let mut writer = StateWriter::create(&path).unwrap();
        for group in 0..10u32 {
            writer
                .key_group(group, |bytes| bytes.extend_from_slice(format!("g{group}").as_bytes()))
                .unwrap();
        }
        writer.key_group(10, |_| {}).unwrap();
        writer.operator_state(b"offsets").unwrap();
        writer.finish().unwrap();
        assert!(!path.with_extension("tmp").exists());

        let mut reader = StateReader::open(&path).unwrap();
        assert_eq!(reader.key_groups().count(), 10, "empty groups are not written");
        let mut seen = Vec::new();
        reader
            .read_key_groups(&(3..6), |group, bytes| {
                seen.push((group, String::from_utf8(bytes.to_vec()).unwrap()));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(3, "g3".into()), (4, "g4".into()), (5, "g5".into())]);
        assert_eq!(reader.operator_state().unwrap().as_deref(), Some(&b"offsets"[..]));
        assert_eq!(reader.state_bytes(), 10 * 2 + 7);
    }

    #[test]
    fn sections_buffered_in_memory_write_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |state: &mut StateWriter| {
            state.key_group(2, |bytes| bytes.extend_from_slice(b"two")).unwrap();
            state.key_group(5, |_| {}).unwrap();
            state.key_group(9, |bytes| bytes.extend_from_slice(b"nine")).unwrap();
            state.operator_state(b"offsets").unwrap();
        };
        let direct = dir.path().join("direct.state");
        let mut writer = StateWriter::create(&direct).unwrap();
        write(&mut writer);
        writer.finish().unwrap();

        let mut memory = StateWriter::in_memory();
        write(&mut memory);
        assert!(memory.finish().is_err(), "an in-memory writer has no file to finish");
        let mut memory = StateWriter::in_memory();
        write(&mut memory);
        let buffered: Box<dyn CapturedState> = Box::new(memory.into_buffered());
        let later = dir.path().join("later.state");
        let mut writer = StateWriter::create(&later).unwrap();
        buffered.write_to(&mut writer).unwrap();
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&direct).unwrap(), std::fs::read(&later).unwrap());
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.state");
        let mut writer = StateWriter::create(&path).unwrap();
        writer.key_group(1, |bytes| bytes.extend_from_slice(b"abc")).unwrap();
        writer.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(StateReader::open(&path), Err(OperatorError::CorruptState(_))));
    }
}
