//! Records on the wire and on disk: the frame every map output segment uses, the reader of a
//! stream of frames, and the partitioners that send a key to its reducer.
//!
//! A frame is `u32 LE key length, u32 LE value length, key bytes, value bytes`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::error::TaskResult;

/// Bytes of a frame header (two little-endian `u32` lengths).
pub const FRAME_HEADER_LEN: usize = 8;

/// Writes one framed record; returns the bytes written.
pub fn write_frame(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<u64> {
    let key_len = u32::try_from(key.len()).map_err(|_| io::Error::other("a key is larger than 4 GiB"))?;
    let value_len = u32::try_from(value.len()).map_err(|_| io::Error::other("a value is larger than 4 GiB"))?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&key_len.to_le_bytes());
    header[4..].copy_from_slice(&value_len.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(key)?;
    out.write_all(value)?;
    Ok((FRAME_HEADER_LEN + key.len() + value.len()) as u64)
}

/// Reads framed records one at a time into reused buffers (no allocation per record).
pub struct FrameReader<R> {
    /// The underlying stream, buffered by the caller if it is a file or socket.
    input: R,
    /// Key of the current record; its capacity is reused.
    key: Vec<u8>,
    /// Value of the current record; its capacity is reused.
    value: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `input` (wrap files in a `BufReader`).
    pub fn new(input: R) -> Self {
        FrameReader {
            input,
            key: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Advances to the next record; `false` at a clean end of stream. A stream that ends inside a
    /// frame is an `UnexpectedEof` error.
    pub fn advance(&mut self) -> io::Result<bool> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let mut filled = 0;
        while filled < FRAME_HEADER_LEN {
            match self.input.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ends inside a frame header",
                    ));
                }
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let key_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        read_exactly(&mut self.input, &mut self.key, key_len)?;
        read_exactly(&mut self.input, &mut self.value, value_len)?;
        Ok(true)
    }

    /// The key of the record `advance` moved to.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The value of the record `advance` moved to.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

fn read_exactly(input: &mut impl Read, buffer: &mut Vec<u8>, len: usize) -> io::Result<()> {
    /// Larger records are read in pieces, so a corrupt length cannot allocate gigabytes up front.
    const DIRECT_READ_MAX: usize = 1 << 20;
    buffer.clear();
    if len <= DIRECT_READ_MAX {
        buffer.resize(len, 0);
        return input.read_exact(buffer).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ends inside a record of {len} bytes"),
                )
            } else {
                error
            }
        });
    }
    let read = input.by_ref().take(len as u64).read_to_end(buffer)?;
    if read < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ends inside a record ({read} of {len} bytes)"),
        ));
    }
    Ok(())
}

/// A stream of records in key order, each borrowed until the next call: the input of
/// combiners, reducers and output writers, whether it comes from memory or from a merge.
pub trait SortedRecords {
    /// The next record, or `None` after the last.
    fn next_record(&mut self) -> TaskResult<Option<(&[u8], &[u8])>>;
}

/// Sorted records held in memory (tests, and the output of streaming combiners).
#[derive(Debug, Default)]
pub struct VecRecords {
    /// The records, sorted by key.
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index of the record `next_record` returns next.
    next: usize,
}

impl VecRecords {
    /// Sorts the records by key, keeping the order of equal keys.
    pub fn sorted(mut records: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        records.sort_by(|a, b| a.0.cmp(&b.0));
        VecRecords { records, next: 0 }
    }
}

impl SortedRecords for VecRecords {
    fn next_record(&mut self) -> TaskResult<Option<(&[u8], &[u8])>> {
        let Some((key, value)) = self.records.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        Ok(Some((key, value)))
    }
}

/// FNV-1a, 64-bit: the key hash of the hash partitioner. Fixed (not `RandomState`) because
/// every map task, on every machine, must send a key to the same reducer.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Sends each key to one of `reducers` partitions (serializable, for the AM to hand to tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// `fnv1a_64(key) % reducers`: spreads keys evenly, in no order.
    Hash { reducers: u32 },
    /// Key ranges in order (total-order sort): a key below `boundaries[i]` (and not below an
    /// earlier one) goes to partition `i`; keys at or above the last boundary go to the last.
    /// `boundaries` is sorted and has `reducers - 1` entries.
    Range { boundaries: Vec<Vec<u8>> },
}

impl Partitioner {
    /// How many partitions (reducers) keys are spread over.
    pub fn reducers(&self) -> u32 {
        match self {
            Partitioner::Hash { reducers } => *reducers,
            Partitioner::Range { boundaries } => boundaries.len() as u32 + 1,
        }
    }

    /// The partition of `key`.
    pub fn partition(&self, key: &[u8]) -> u32 {
        match self {
            Partitioner::Hash { reducers: 1 } => 0,
            Partitioner::Hash { reducers } => (fnv1a_64(key) % u64::from(*reducers)) as u32,
            Partitioner::Range { boundaries } => boundaries.partition_point(|boundary| boundary.as_slice() <= key) as u32,
        }
    }

    /// Checks the partitioner is usable: at least one reducer, boundaries sorted.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Partitioner::Hash { reducers: 0 } => Err("the hash partitioner needs at least one reducer".into()),
            Partitioner::Hash { .. } => Ok(()),
            Partitioner::Range { boundaries } if boundaries.windows(2).any(|pair| pair[0] > pair[1]) => {
                Err("the range partitioner's boundaries must be sorted".into())
            }
            Partitioner::Range { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, b"key", b"value").unwrap();
        write_frame(&mut bytes, b"", b"").unwrap();
        let mut reader = FrameReader::new(bytes.as_slice());
        assert!(reader.advance().unwrap());
        assert_eq!((reader.key(), reader.value()), (&b"key"[..], &b"value"[..]));
        assert!(reader.advance().unwrap());
        assert_eq!((reader.key(), reader.value()), (&b""[..], &b""[..]));
        assert!(!reader.advance().unwrap());
        let mut truncated = FrameReader::new(&bytes[..10]);
        assert_eq!(truncated.advance().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn hash_partitioner_is_fixed_and_in_range() {
        let partitioner = Partitioner::Hash { reducers: 7 };
        assert_eq!(partitioner.partition(b"foobar"), (0x8594_4171_f739_67e8u64 % 7) as u32);
        assert!((0..1000).all(|i| partitioner.partition(format!("k{i}").as_bytes()) < 7));
    }
}
