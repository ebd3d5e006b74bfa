//! Records and the batches they travel in, on the wire and between operators.
//!
//! A batch is one contiguous buffer (no allocation per record): each record is framed as
//! `time: i64 LE, key length: u32 LE, value length: u32 LE, key bytes, value bytes`. The same
//! bytes are what a data connection carries, so sending a batch is one write and receiving it
//! one read; `Batch::from_bytes` checks the framing once so iteration needs no checks.

use thiserror::Error;

/// Event time: milliseconds since the Unix epoch (or since a generator's start).
pub type EventTime = i64;

/// Bytes of framing per record.
pub const RECORD_HEADER: usize = 16;

/// One record, borrowed from a batch. `key` is empty until a `key_by` sets it; `value` is the
/// record's line (fields are `$1`, `$2`, … of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: EventTime,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Records in wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    len: usize,
}

/// The bytes are not a sequence of well-framed records.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed batch: {0}")]
pub struct BatchError(pub &'static str);

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn with_capacity(bytes: usize) -> Batch {
        Batch {
            bytes: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    /// Appends a record.
    #[inline]
    pub fn push(&mut self, time: EventTime, key: &[u8], value: &[u8]) {
        self.bytes.reserve(RECORD_HEADER + key.len() + value.len());
        // One 16-byte copy for the header: this is on the path of every record.
        let mut header = [0u8; RECORD_HEADER];
        header[..8].copy_from_slice(&time.to_le_bytes());
        header[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        header[12..].copy_from_slice(&(value.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.len += 1;
    }

    /// Appends a record whose value is written by `write` straight into the batch (no
    /// intermediate buffer): `write` appends the value's bytes to the vector it is given.
    #[inline]
    pub fn push_with(&mut self, time: EventTime, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&time.to_le_bytes());
        self.bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes.extend_from_slice(key);
        let value_start = self.bytes.len();
        write(&mut self.bytes);
        let value_len = (self.bytes.len() - value_start) as u32;
        self.bytes[start + 12..start + 16].copy_from_slice(&value_len.to_le_bytes());
        self.len += 1;
    }

    pub fn push_record(&mut self, record: Record<'_>) {
        self.push(record.time, record.key, record.value);
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in wire format.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
    }

    /// The wire format.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Takes the records out, leaving an empty batch with the same capacity reserved.
    pub fn take(&mut self) -> Batch {
        let capacity = self.bytes.capacity();
        std::mem::replace(self, Batch::with_capacity(capacity))
    }

    /// A batch of wire bytes, checked once.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Batch, BatchError> {
        let mut position = 0;
        let mut len = 0;
        while position < bytes.len() {
            if bytes.len() - position < RECORD_HEADER {
                return Err(BatchError("truncated record header"));
            }
            let key_len = read_u32(&bytes, position + 8) as usize;
            let value_len = read_u32(&bytes, position + 12) as usize;
            let end = (position + RECORD_HEADER)
                .checked_add(key_len)
                .and_then(|at| at.checked_add(value_len))
                .ok_or(BatchError("record length overflows"))?;
            if end > bytes.len() {
                return Err(BatchError("record runs past the end of the batch"));
            }
            position = end;
            len += 1;
        }
        Ok(Batch { bytes, len })
    }

    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            bytes: &self.bytes,
            position: 0,
        }
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = Record<'a>;
    type IntoIter = BatchIter<'a>;

    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// Iterates the records of a batch.
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Record<'a>;

    #[inline]
    fn next(&mut self) -> Option<Record<'a>> {
        if self.position >= self.bytes.len() {
            return None;
        }
        let at = self.position;
        let time = i64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"));
        let key_len = read_u32(self.bytes, at + 8) as usize;
        let value_len = read_u32(self.bytes, at + 12) as usize;
        let key_start = at + RECORD_HEADER;
        let value_start = key_start + key_len;
        let end = value_start + value_len;
        self.position = end;
        Some(Record {
            time,
            key: &self.bytes[key_start..value_start],
            value: &self.bytes[value_start..end],
        })
    }
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_wire_format() {
        let mut batch = Batch::new();
        batch.push(5, b"k1", b"k1\t3");
        batch.push(-1, b"", b"");
        batch.push_with(7, b"k2", |value| value.extend_from_slice(b"written in place"));
        assert_eq!(batch.len(), 3);
        let decoded = Batch::from_bytes(batch.clone().into_bytes()).unwrap();
        let records: Vec<Record<'_>> = decoded.iter().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            Record {
                time: 5,
                key: b"k1",
                value: b"k1\t3"
            }
        );
        assert_eq!(
            records[1],
            Record {
                time: -1,
                key: b"",
                value: b""
            }
        );
        assert_eq!(records[2].value, b"written in place");
        assert_eq!(decoded, batch);
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let mut batch = Batch::new();
        batch.push(1, b"key", b"value");
        let mut bytes = batch.into_bytes();
        bytes.pop();
        assert!(Batch::from_bytes(bytes.clone()).is_err());
        bytes.truncate(10);
        assert!(Batch::from_bytes(bytes).is_err());
        assert!(Batch::from_bytes(Vec::new()).unwrap().is_empty());
    }
}
