//! The `file` source: the lines of the regular files in a directory, followed as they grow.
//!
//! - Files: every regular file of `path` whose name does not start with `.`, in name order;
//!   instance `i` of `p` reads those with `stable_hash(name) % p == i`.
//! - Offsets: per file, the byte offset after the last complete line emitted (a JSON object
//!   name → offset). A last line without its newline waits for it, except when `follow = false`
//!   and the file has ended (then it is the last line). A trailing `\r` is dropped (CRLF files).
//! - `follow` (default true) looks for appended lines and new files (at most every 100 ms while
//!   idle); `follow = false` reads the files there at the first poll to their end, then finishes.
//! - Time: `time_field` (`$N`, integer ms); a line whose field is missing or not an integer is a
//!   bad record (counted in `bad_records`, skipped). Without `time_field`: the time it was read.
//! - On an object store (`path = "s3://bucket/prefix"`): the objects below the prefix (names
//!   relative to it; a name with a `.` component is skipped), listed again at most every
//!   second while following; offsets per object as for files. Objects do not grow, so an
//!   object's last line needs no newline.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spindle_protocol::{DataUrl, OperatorSpec};
use spindle_storage::{ObjectUrl, S3Settings, block_on};

use super::fields::{Fields, parse_i64};
use crate::keys::stable_hash;
use crate::operator::{InstanceContext, OperatorError, Source, SourceStatus};
use crate::record::{Batch, EventTime};

const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Listing a bucket costs a request (and money on S3): at most once a second.
const OBJECT_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read per file per step (doubled for a line longer than this).
const CHUNK: usize = 256 * 1024;

/// How records get their event time (shared with the other line sources).
#[derive(Debug, Clone)]
pub struct LineTime {
    fields: Fields,
    field: Option<usize>,
}

impl LineTime {
    pub fn from_spec(spec: &OperatorSpec) -> Result<LineTime, OperatorError> {
        let field = match spec.time_field.as_deref() {
            None => None,
            Some(field) => Some(
                super::expr::parse_field_ref(field)
                    .map_err(|error| OperatorError::failed(format!("operator {}: time_field: {error}", spec.name)))?,
            ),
        };
        Ok(LineTime {
            fields: Fields::new(spec.delimiter.as_deref()),
            field,
        })
    }

    /// The time of `line`: its time field, or `now` without one; `None` for a bad record.
    #[inline]
    pub fn time(&self, line: &[u8], now: EventTime) -> Option<EventTime> {
        match self.field {
            None => Some(now),
            Some(n) => parse_i64(self.fields.field(line, n)?),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as EventTime)
}

/// Where the lines are: a directory of files, or a prefix of objects.
enum Location {
    Dir(PathBuf),
    Objects(ObjectUrl),
}

/// Bytes per ranged GET of an object: a poll reads a few thousand lines, a request costs ~1 ms.
const OBJECT_CHUNK: u64 = 8 << 20;

/// An input being read: an open file, or an object (immutable, so complete when listed) with
/// the bytes of its latest GET.
enum Input {
    File(File),
    Object {
        object: ObjectUrl,
        size: u64,
        fetched_at: u64,
        fetched: bytes::Bytes,
    },
}

impl Input {
    fn object(object: ObjectUrl, size: u64) -> Input {
        Input::Object {
            object,
            size,
            fetched_at: 0,
            fetched: bytes::Bytes::new(),
        }
    }

    fn read_exact_at(&mut self, buffer: &mut [u8], offset: u64) -> Result<(), OperatorError> {
        match self {
            Input::File(file) => Ok(file.read_exact_at(buffer, offset)?),
            Input::Object {
                object,
                size,
                fetched_at,
                fetched,
            } => {
                let end = offset + buffer.len() as u64;
                if offset < *fetched_at || end > *fetched_at + fetched.len() as u64 {
                    let range = offset..(offset + OBJECT_CHUNK.max(buffer.len() as u64)).min(*size);
                    let object = object.clone();
                    *fetched = block_on(async move { object.get_range(range).await })
                        .map_err(|error| OperatorError::failed(format!("file source: {error}")))?;
                    *fetched_at = offset;
                    if (fetched.len() as u64) < buffer.len() as u64 {
                        return Err(OperatorError::failed(format!("file source: a short read of {}", fetched.len())));
                    }
                }
                let start = (offset - *fetched_at) as usize;
                buffer.copy_from_slice(&fetched[start..start + buffer.len()]);
                Ok(())
            }
        }
    }
}

/// A `file` source instance.
pub struct FileSource {
    location: Location,
    index: u32,
    parallelism: u32,
    follow: bool,
    time: LineTime,
    /// Every file of this instance seen so far (or restored) → offset.
    offsets: BTreeMap<String, u64>,
    /// Open files (or listed objects) and their size when last looked at.
    open: BTreeMap<String, (Input, u64)>,
    last_scan: Option<Instant>,
    buffer: Vec<u8>,
    bad: u64,
    /// Lines and bytes consumed so far: the mean line length turns unread bytes into records.
    lines_read: u64,
    bytes_read: u64,
}

impl FileSource {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<FileSource, OperatorError> {
        let path = spec
            .path
            .as_deref()
            .ok_or_else(|| OperatorError::failed(format!("operator {}: file source needs `path`", spec.name)))?;
        let url = DataUrl::parse(path).map_err(|error| OperatorError::failed(format!("operator {}: path: {error}", spec.name)))?;
        let location = match ObjectUrl::open(&url, &S3Settings::from_env(&context.env))
            .map_err(|error| OperatorError::failed(format!("operator {}: {error}", spec.name)))?
        {
            Some(prefix) => Location::Objects(prefix),
            None => Location::Dir(PathBuf::from(url.to_string())),
        };
        Ok(FileSource {
            location,
            index: context.index,
            parallelism: context.parallelism.max(1),
            follow: spec.follow.unwrap_or(true),
            time: LineTime::from_spec(spec)?,
            offsets: BTreeMap::new(),
            open: BTreeMap::new(),
            last_scan: None,
            buffer: Vec::new(),
            bad: 0,
            lines_read: 0,
            bytes_read: 0,
        })
    }

    /// Finds this instance's files (new ones start at offset 0).
    fn scan(&mut self) -> Result<(), OperatorError> {
        self.last_scan = Some(Instant::now());
        let dir = match &self.location {
            Location::Dir(dir) => dir.clone(),
            Location::Objects(prefix) => return self.scan_objects(prefix.clone()),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A directory that does not exist yet is empty (a producer may create it later).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && self.follow => return Ok(()),
            Err(error) => return Err(OperatorError::failed(format!("file source {}: {error}", dir.display()))),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            if stable_hash(name.as_bytes()) % u64::from(self.parallelism) != u64::from(self.index) {
                continue;
            }
            if !self.open.contains_key(&name) {
                let file = File::open(entry.path())?;
                let size = file.metadata()?.len();
                self.offsets.entry(name.clone()).or_insert(0);
                self.open.insert(name, (Input::File(file), size));
            }
        }
        Ok(())
    }

    /// Lists the objects below the prefix; this instance's new ones start at offset 0.
    fn scan_objects(&mut self, prefix: ObjectUrl) -> Result<(), OperatorError> {
        let listing = prefix.clone();
        let found =
            block_on(async move { listing.list().await }).map_err(|error| OperatorError::failed(format!("file source: {error}")))?;
        for entry in found {
            let name = entry
                .key
                .strip_prefix(prefix.key())
                .unwrap_or(&entry.key)
                .trim_start_matches('/')
                .to_owned();
            if name.split('/').any(|part| part.starts_with('.')) || self.open.contains_key(&name) {
                continue;
            }
            if stable_hash(name.as_bytes()) % u64::from(self.parallelism) != u64::from(self.index) {
                continue;
            }
            self.offsets.entry(name.clone()).or_insert(0);
            self.open
                .insert(name, (Input::object(prefix.at(&entry.key), entry.size), entry.size));
        }
        Ok(())
    }

    /// Emits up to `budget` lines of one file; returns how many.
    fn read_file(&mut self, name: &str, out: &mut Batch, budget: usize, now: EventTime) -> Result<usize, OperatorError> {
        let Some((file, size)) = self.open.get_mut(name) else {
            return Ok(0);
        };
        let offset = self.offsets.entry(name.to_owned()).or_insert(0);
        let complete = match file {
            Input::File(open) => {
                *size = open.metadata()?.len();
                !self.follow
            }
            Input::Object { .. } => true,
        };
        let mut emitted = 0;
        let mut chunk = CHUNK;
        while emitted < budget && *offset < *size {
            let want = (*size - *offset).min(chunk as u64) as usize;
            self.buffer.resize(want, 0);
            file.read_exact_at(&mut self.buffer, *offset)?;
            let at_end = *offset + want as u64 == *size;
            let mut consumed = 0;
            while emitted < budget {
                let rest = &self.buffer[consumed..];
                let (line, next) = match memchr::memchr(b'\n', rest) {
                    Some(at) => (&rest[..at], consumed + at + 1),
                    None if at_end && complete && !rest.is_empty() => (rest, want),
                    None => break,
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                match self.time.time(line, now) {
                    Some(time) => {
                        out.push(time, b"", line);
                        emitted += 1;
                    }
                    None => self.bad += 1,
                }
                consumed = next;
                self.lines_read += 1;
            }
            if consumed == 0 {
                if at_end {
                    break;
                }
                // One line longer than the chunk: read more of it at once.
                chunk *= 2;
                continue;
            }
            *offset += consumed as u64;
            self.bytes_read += consumed as u64;
        }
        Ok(emitted)
    }
}

impl Source for FileSource {
    /// Lines skipped because their time field is not an integer.
    fn bad_records(&self) -> u64 {
        self.bad
    }

    fn poll(&mut self, out: &mut Batch, max_records: usize) -> Result<SourceStatus, OperatorError> {
        let interval = match self.location {
            Location::Dir(_) => RESCAN_INTERVAL,
            Location::Objects(_) => OBJECT_RESCAN_INTERVAL,
        };
        let due = match self.last_scan {
            None => true,
            Some(at) => self.follow && at.elapsed() >= interval,
        };
        if due {
            self.scan()?;
        }
        let now = now_ms();
        let mut emitted = 0;
        let names: Vec<String> = self.open.keys().cloned().collect();
        for name in &names {
            if emitted >= max_records {
                break;
            }
            emitted += self.read_file(name, out, max_records - emitted, now)?;
        }
        if emitted > 0 {
            return Ok(SourceStatus::Ready);
        }
        if self.follow {
            return Ok(SourceStatus::Idle);
        }
        let done = self
            .open
            .iter()
            .all(|(name, (_, size))| self.offsets.get(name).is_some_and(|offset| offset >= size));
        Ok(if done { SourceStatus::Finished } else { SourceStatus::Ready })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(serde_json::to_vec(&self.offsets).expect("a map of strings to integers serializes"))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        if state.is_empty() {
            return Ok(());
        }
        let offsets: BTreeMap<String, u64> =
            serde_json::from_slice(state).map_err(|error| OperatorError::CorruptState(format!("file source offsets: {error}")))?;
        // Offsets of files another instance reads now (after a change of parallelism) are kept
        // too: harmless, and they come back if the files do.
        self.offsets = offsets;
        Ok(())
    }

    /// Records, estimated from the unread bytes and the mean length of the lines read so far
    /// (the autoscaler adds the lag's growth to records read: bytes would overstate it by the
    /// line length). Before any line was read, the bytes themselves: an upper bound.
    fn lag(&self) -> Option<u64> {
        let unread: u64 = self
            .open
            .iter()
            .map(|(name, (_, size))| size.saturating_sub(self.offsets.get(name).copied().unwrap_or(0)))
            .sum();
        if self.lines_read == 0 || unread == 0 {
            return Some(unread);
        }
        Some((unread as u128 * u128::from(self.lines_read)).div_ceil(u128::from(self.bytes_read)) as u64)
    }
}

#[cfg(test)]
#[path = "file_source_tests.rs"]
mod tests;
