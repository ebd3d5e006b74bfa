//! Snapshot files: one per instance per checkpoint, written then renamed into place.
//!
//! Layout: the sections back to back, then an index (`count: u32`, then per section
//! `group: u32, offset: u64, length: u64`), then the index's offset as `u64`, then the magic.
//! Group `OPERATOR_STATE` holds state that is not keyed. The index lets an instance that owns
//! only some groups (after a rescale) read just those.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::keys::KeyGroupRange;
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
        path: PathBuf,
        temp: PathBuf,
        file: BufWriter<File>,
    },
    Memory(Vec<u8>),
}

impl StateWriter {
    pub fn create(path: &Path) -> Result<StateWriter, OperatorError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temp = path.with_extension("tmp");
        let file = BufWriter::with_capacity(1 << 20, File::create(&temp)?);
        Ok(StateWriter {
            output: Output::File {
                path: path.to_owned(),
                temp,
                file,
            },
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

    /// Writes the index, syncs, and renames the file into place; returns its size.
    pub fn finish(self) -> Result<u64, OperatorError> {
        let Output::File { path, temp, mut file } = self.output else {
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
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
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

/// Reads sections of a snapshot file.
pub struct StateReader {
    file: File,
    index: Vec<(u32, u64, u64)>,
}

impl StateReader {
    pub fn open(path: &Path) -> Result<StateReader, OperatorError> {
        let mut file = File::open(path)?;
        let corrupt = |what: &str| OperatorError::CorruptState(format!("{}: {what}", path.display()));
        let len = file.metadata()?.len();
        if len < 20 {
            return Err(corrupt("too short"));
        }
        let mut tail = [0u8; 16];
        file.seek(SeekFrom::End(-16))?;
        file.read_exact(&mut tail)?;
        if &tail[8..] != MAGIC {
            return Err(corrupt("not a snapshot file"));
        }
        let index_offset = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        if index_offset + 4 > len - 16 {
            return Err(corrupt("index out of bounds"));
        }
        file.seek(SeekFrom::Start(index_offset))?;
        let mut raw = vec![0u8; (len - 16 - index_offset) as usize];
        file.read_exact(&mut raw)?;
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
        Ok(StateReader { file, index })
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
        let mut buffer = Vec::new();
        for (group, offset, length) in self.index.clone() {
            if group == OPERATOR_STATE || !range.contains(&group) {
                continue;
            }
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
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(buffer)?;
        Ok(())
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
