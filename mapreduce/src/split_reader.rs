//! Reading a split's lines with Hadoop's rule, so every line of a file is read by exactly one
//! split even though splits are cut at arbitrary byte offsets.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};

use spindle_storage::{DataUrl, ObjectReader, ObjectUrl, S3Settings, block_on};

use super::error::{TaskError, TaskResult};
use super::input::Split;

/// Size of each read from an input file.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Reads the lines of one split. A split not starting at 0 skips everything up to and
/// including the first `\n` at or after `start - 1` (that line belongs to the previous split);
/// a line is read if it starts before `start + length`, even if it ends after it. So every
/// line of a file is read by exactly one split. Lines exclude their `\n` (and a `\r` before it).
pub struct SplitReader {
    /// Where the file's bytes come from, in large sequential blocks.
    source: BlockSource,
    /// The file's path, for errors.
    path: PathBuf,
    /// Read buffer; `buffer[low..high]` is read but not yet consumed.
    buffer: Vec<u8>,
    /// Start of the unconsumed bytes in `buffer`.
    low: usize,
    /// End of the bytes read into `buffer`.
    high: usize,
    /// File offset of `buffer[low]`: the start of the next line once the first is skipped.
    offset: u64,
    /// Lines starting at or after this offset belong to the next split.
    end: u64,
    /// Whether the partial first line has been skipped (or needs no skipping).
    positioned: bool,
    /// The file has no more bytes.
    at_eof: bool,
    /// Bytes of the lines returned so far, newlines included.
    bytes_read: u64,
}

impl SplitReader {
    /// Opens the split's file and seeks to just before the split; reads on this thread.
    pub fn open(split: &Split, s3: &S3Settings) -> TaskResult<Self> {
        Self::open_with(split, s3, None)
    }

    /// Like `open`, but a thread reads blocks of `block_bytes` ahead while the caller works on
    /// the lines already read: reading overlaps mapping (worth it for large splits).
    pub fn open_read_ahead(split: &Split, s3: &S3Settings, block_bytes: usize) -> TaskResult<Self> {
        Self::open_with(split, s3, Some(block_bytes))
    }

    fn open_with(split: &Split, s3: &S3Settings, read_ahead_block_bytes: Option<usize>) -> TaskResult<Self> {
        let path = PathBuf::from(&split.path);
        let offset = split.start.saturating_sub(1);
        let reader = open_at(split, s3, offset, read_ahead_block_bytes)?;
        let source = match read_ahead_block_bytes {
            None => BlockSource::Direct(reader),
            Some(block_bytes) => {
                BlockSource::read_ahead(reader, block_bytes.max(1)).map_err(TaskError::io("start reading ahead in", &path))?
            }
        };
        let buffer_len = READ_BUFFER_BYTES.min(usize::try_from(split.length).unwrap_or(usize::MAX).saturating_add(4096));
        Ok(SplitReader {
            source,
            path,
            buffer: vec![0; buffer_len.max(4096)],
            low: 0,
            high: 0,
            offset,
            end: split.start + split.length,
            positioned: split.start == 0,
            at_eof: false,
            bytes_read: 0,
        })
    }

    /// Bytes of the lines returned so far, newlines included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next line of the split, or `None` after its last.
    pub fn next_line(&mut self) -> TaskResult<Option<&[u8]>> {
        if !self.positioned {
            loop {
                if let Some(newline) = memchr::memchr(b'\n', &self.buffer[self.low..self.high]) {
                    self.consume(newline + 1);
                    self.positioned = true;
                    break;
                }
                self.consume(self.high - self.low);
                if !self.fill()? {
                    return Ok(None);
                }
            }
        }
        if self.offset >= self.end {
            return Ok(None);
        }
        let mut searched = 0;
        loop {
            if let Some(newline) = memchr::memchr(b'\n', &self.buffer[self.low + searched..self.high]) {
                let start = self.low;
                let newline = start + searched + newline;
                self.consume(newline + 1 - start);
                self.bytes_read += (newline + 1 - start) as u64;
                let line_end = if newline > start && self.buffer[newline - 1] == b'\r' {
                    newline - 1
                } else {
                    newline
                };
                return Ok(Some(&self.buffer[start..line_end]));
            }
            searched = self.high - self.low;
            if !self.fill()? {
                if self.low == self.high {
                    return Ok(None);
                }
                // The file's last line has no newline.
                let (start, end) = (self.low, self.high);
                self.consume(end - start);
                self.bytes_read += (end - start) as u64;
                return Ok(Some(&self.buffer[start..end]));
            }
        }
    }

    fn consume(&mut self, bytes: usize) {
        self.low += bytes;
        self.offset += bytes as u64;
    }

    /// Reads more bytes after `buffer[high]`, keeping `buffer[low..high]`; `false` at the end.
    fn fill(&mut self) -> TaskResult<bool> {
        if self.at_eof {
            return Ok(false);
        }
        if self.low > 0 {
            self.buffer.copy_within(self.low..self.high, 0);
            self.high -= self.low;
            self.low = 0;
        }
        match self.source.read_at(&mut self.buffer, self.high) {
            Ok(0) => {
                self.at_eof = true;
                Ok(false)
            }
            Ok(read) => {
                self.high += read;
                Ok(true)
            }
            Err(error) => Err(TaskError::io("read the input split", &self.path)(error)),
        }
    }
}

/// The split's file or object, positioned at `offset`.
fn open_at(split: &Split, s3: &S3Settings, offset: u64, read_ahead: Option<usize>) -> TaskResult<Box<dyn Read + Send>> {
    let path = std::path::Path::new(&split.path);
    let url = DataUrl::parse(&split.path).map_err(|error| TaskError::Input {
        path: split.path.clone(),
        reason: error.reason,
    })?;
    let object_error = |error: spindle_storage::StorageError| TaskError::Input {
        path: split.path.clone(),
        reason: error.to_string(),
    };
    match ObjectUrl::open(&url, s3).map_err(object_error)? {
        Some(object) => {
            // Read to the object's end: the split's last line may run past its range.
            let lookup = object.clone();
            let size = block_on(async move { lookup.size().await })
                .map_err(object_error)?
                .ok_or_else(|| TaskError::Input {
                    path: split.path.clone(),
                    reason: "the object is gone".into(),
                })?;
            let chunk = read_ahead.unwrap_or(READ_BUFFER_BYTES).max(OBJECT_READ_BYTES);
            Ok(Box::new(ObjectReader::new(object, offset, size, chunk)))
        }
        None => {
            let mut file = File::open(path).map_err(TaskError::io("open the input split", path))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(TaskError::io("seek in the input split", path))?;
            Ok(Box::new(file))
        }
    }
}

/// Bytes per ranged GET of an object: requests cost ~1 ms each, so a few MB amortize them.
const OBJECT_READ_BYTES: usize = 8 << 20;

/// Where a `SplitReader`'s bytes come from.
enum BlockSource {
    /// Read on the caller's thread.
    Direct(Box<dyn Read + Send>),
    /// Blocks read by a thread of their own (which ends when this is dropped), and the way
    /// back for used blocks, so reading ahead allocates a few blocks in all.
    ReadAhead {
        blocks: Receiver<io::Result<Vec<u8>>>,
        spare: SyncSender<Vec<u8>>,
    },
}

/// Blocks read ahead and not yet used, at most.
const READ_AHEAD_BLOCKS: usize = 2;

impl BlockSource {
    fn read_ahead(mut file: Box<dyn Read + Send>, block_bytes: usize) -> io::Result<Self> {
        let (block_sender, blocks) = mpsc::sync_channel(READ_AHEAD_BLOCKS);
        let (spare, spare_blocks) = mpsc::sync_channel::<Vec<u8>>(READ_AHEAD_BLOCKS + 2);
        std::thread::Builder::new().name("split-read-ahead".into()).spawn(move || {
            loop {
                let mut block = spare_blocks.try_recv().unwrap_or_default();
                block.resize(block_bytes, 0);
                let read = loop {
                    match file.read(&mut block) {
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        other => break other,
                    }
                };
                let (message, done) = match read {
                    Ok(0) => return,
                    Ok(read) => {
                        block.truncate(read);
                        (Ok(block), false)
                    }
                    Err(error) => (Err(error), true),
                };
                // A send fails once the reader is dropped: nobody needs more.
                if block_sender.send(message).is_err() || done {
                    return;
                }
            }
        })?;
        Ok(BlockSource::ReadAhead { blocks, spare })
    }

    /// Reads more bytes into `buffer[at..]`, growing it if needed; 0 at the end of the file.
    fn read_at(&mut self, buffer: &mut Vec<u8>, at: usize) -> io::Result<usize> {
        match self {
            BlockSource::Direct(file) => {
                if at == buffer.len() {
                    // A line longer than the buffer: grow it.
                    buffer.resize(buffer.len() * 2, 0);
                }
                loop {
                    match file.read(&mut buffer[at..]) {
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        other => return other,
                    }
                }
            }
            BlockSource::ReadAhead { blocks, spare } => {
                let Ok(block) = blocks.recv() else { return Ok(0) };
                let block = block?;
                if buffer.len() < at + block.len() {
                    buffer.resize(at + block.len(), 0);
                }
                buffer[at..at + block.len()].copy_from_slice(&block);
                let read = block.len();
                let _ = spare.try_send(block);
                Ok(read)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{InputFile, compute_splits};
    use proptest::prelude::*;
    use std::fs;

    fn lines_of_split(split: &Split, read_ahead_block_bytes: Option<usize>) -> Vec<Vec<u8>> {
        let mut reader = SplitReader::open_with(split, &S3Settings::default(), read_ahead_block_bytes).unwrap();
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            lines.push(line.to_vec());
        }
        lines
    }

    fn reference_lines(contents: &[u8]) -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = contents.split(|&byte| byte == b'\n').map(<[u8]>::to_vec).collect();
        let last = lines.pop().expect("split yields at least one piece");
        for line in &mut lines {
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        // A last line without a newline keeps a trailing `\r`: it ends no line.
        if !last.is_empty() {
            lines.push(last);
        }
        lines
    }

    proptest! {
        #[test]
        fn every_line_is_read_by_exactly_one_split(
            contents in proptest::collection::vec(prop_oneof![4 => b'a'..=b'c', 2 => Just(b'\n'), 1 => Just(b'\r')], 0..300),
            split_size in 1u64..40,
            read_ahead_block_bytes in prop_oneof![Just(None), (1usize..9).prop_map(Some)],
        ) {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("input.txt");
            fs::write(&path, &contents).unwrap();
            let files = vec![InputFile { path: path.display().to_string(), size: contents.len() as u64 }];
            let splits = compute_splits(&files, split_size);
            prop_assert_eq!(splits.iter().map(|split| split.length).sum::<u64>(), contents.len() as u64);
            let mut read = Vec::new();
            let mut bytes = 0;
            for split in &splits {
                let mut reader = SplitReader::open_with(split, &S3Settings::default(), read_ahead_block_bytes).unwrap();
                while let Some(line) = reader.next_line().unwrap() {
                    read.push(line.to_vec());
                }
                bytes += reader.bytes_read();
            }
            prop_assert_eq!(read, reference_lines(&contents));
            prop_assert_eq!(bytes, contents.len() as u64);
        }
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_read_whole() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("long.txt");
        let long_line = vec![b'x'; 3 * READ_BUFFER_BYTES];
        fs::write(&path, [long_line.as_slice(), b"\nshort\n"].concat()).unwrap();
        let split = Split {
            path: path.display().to_string(),
            start: 0,
            length: 10,
        };
        assert_eq!(lines_of_split(&split, None), vec![long_line.clone()]);
        assert_eq!(lines_of_split(&split, Some(4096)), vec![long_line]);
    }
}
