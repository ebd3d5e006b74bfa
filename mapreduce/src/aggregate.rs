//! In-mapper combining for the built-in `sum` and `count` combiners: a hash table of running
//! totals per key, written out sorted by (partition, key) when full or at the end. Word count
//! never sorts its raw records.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::error::{TaskError, TaskResult, show_bytes};
use super::functions::{BuiltinReducer, format_i64, parse_i64};
use super::map_output::SegmentWriter;
use super::records::Partitioner;

/// Estimated bytes of one hash table entry besides its key (box, total, table slot, allocator).
const AGGREGATE_ENTRY_OVERHEAD: usize = 48;

/// Running totals per key for a built-in `sum` or `count` combiner.
#[derive(Debug)]
pub struct Aggregator {
    /// `Sum` adds values, `Count` adds one per record.
    reducer: BuiltinReducer,
    /// Running total of each key since the last spill.
    totals: HashMap<TableKey, i64, BuildHasherDefault<WordHasher>>,
    /// Estimated memory of `totals`.
    bytes: usize,
    /// Spill when `bytes` reaches this (the task's sort buffer size).
    capacity_bytes: usize,
}

impl Aggregator {
    pub fn new(reducer: BuiltinReducer, capacity_bytes: usize) -> Self {
        Aggregator {
            reducer,
            totals: HashMap::default(),
            bytes: 0,
            capacity_bytes,
        }
    }

    #[inline]
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> TaskResult<()> {
        let delta = match (self.reducer, value) {
            (BuiltinReducer::Count, _) | (_, b"1") => 1,
            _ => parse_i64(key, value)?,
        };
        if let Some(total) = self.totals.get_mut(key) {
            *total = total
                .checked_add(delta)
                .ok_or_else(|| TaskError::SumOverflow { key: show_bytes(key) })?;
        } else {
            self.bytes += AGGREGATE_ENTRY_OVERHEAD + if key.len() > INLINE_KEY_BYTES { key.len() } else { 0 };
            self.totals.insert(TableKey::new(key), delta);
        }
        Ok(())
    }

    pub fn is_full(&self) -> bool {
        self.bytes >= self.capacity_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// Writes the totals sorted by (partition, key) and empties the table; returns the records
    /// written.
    pub fn drain_sorted(&mut self, partitioner: &Partitioner, writer: &mut SegmentWriter) -> TaskResult<u64> {
        let mut entries: Vec<(u32, &[u8], i64)> = self
            .totals
            .iter()
            .map(|(key, total)| (partitioner.partition(key.as_bytes()), key.as_bytes(), *total))
            .collect();
        entries.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for &(partition, key, total) in &entries {
            writer.start_partition(partition);
            writer.write(key, format_i64(total, &mut [0; 20]))?;
        }
        let written = entries.len() as u64;
        drop(entries);
        self.totals.clear();
        self.bytes = 0;
        Ok(written)
    }
}

/// Longest key a `TableKey` holds without a heap allocation.
const INLINE_KEY_BYTES: usize = 22;

/// A key of the totals table: short keys (most words) live in the table's own slot, so a
/// lookup does not chase a pointer to compare them.
#[derive(Debug, Clone)]
enum TableKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Heap(Box<[u8]>),
}

impl TableKey {
    fn new(key: &[u8]) -> Self {
        if key.len() > INLINE_KEY_BYTES {
            return TableKey::Heap(key.into());
        }
        let mut bytes = [0; INLINE_KEY_BYTES];
        bytes[..key.len()].copy_from_slice(key);
        TableKey::Inline {
            len: key.len() as u8,
            bytes,
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            TableKey::Inline { len, bytes } => &bytes[..*len as usize],
            TableKey::Heap(bytes) => bytes,
        }
    }
}

// Hash and equality are those of the bytes, as `Borrow<[u8]>` requires.
impl std::hash::Hash for TableKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for TableKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TableKey {}

impl std::borrow::Borrow<[u8]> for TableKey {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A fast, non-keyed hash for the in-memory table only (a word at a time, FxHash's mixing):
/// table order never reaches the output, which is sorted.
#[derive(Debug, Default, Clone, Copy)]
struct WordHasher {
    /// The hash so far.
    hash: u64,
}

impl WordHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}
