//! The map side's bounded in-memory sort buffer: record bytes in one arena, plus a compact
//! entry per record (partition, key prefix, offsets), sorted by (partition, key) when full.

use super::error::TaskResult;
use super::records::SortedRecords;

/// Where one record's bytes are, and what it sorts by. 24 bytes; no heap allocation of its own.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The first 8 key bytes, big-endian, zero-padded: most comparisons end here.
    prefix: u64,
    /// Offset of the key in the arena (below 4 GiB, see `new`); the value follows it.
    offset: u32,
    /// The reducer the record goes to: the first sort key.
    partition: u32,
    /// Byte lengths of key and value in the arena.
    key_len: u32,
    value_len: u32,
}

/// Records of one map task waiting to be sorted and spilled.
#[derive(Debug)]
pub struct SortBuffer {
    /// Keys and values back to back, in the order they were added.
    arena: Vec<u8>,
    /// One entry per record; sorted in place by `sort`.
    entries: Vec<Entry>,
    /// Bytes the arena and entries may use together before the buffer counts as full.
    capacity_bytes: usize,
}

impl SortBuffer {
    /// A buffer that is full at about `capacity_bytes` (memory grows as records come), at
    /// most 4 GiB so that 32-bit offsets keep entries small.
    pub fn new(capacity_bytes: usize) -> Self {
        SortBuffer {
            arena: Vec::new(),
            entries: Vec::new(),
            capacity_bytes: capacity_bytes.min(u32::MAX as usize),
        }
    }

    /// Whether a record of these sizes would not fit; an empty buffer takes any record.
    #[inline]
    pub fn is_full_for(&self, key_len: usize, value_len: usize) -> bool {
        let used = self.arena.len() + self.entries.len() * size_of::<Entry>();
        !self.entries.is_empty() && used + key_len + value_len + size_of::<Entry>() > self.capacity_bytes
    }

    /// Adds a record (check `is_full_for` first to stay within the bound; keys and values
    /// are below 4 GiB).
    #[inline]
    pub fn push(&mut self, partition: u32, key: &[u8], value: &[u8]) {
        debug_assert!(self.arena.len() <= u32::MAX as usize, "is_full_for keeps the arena below 4 GiB");
        let offset = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.entries.push(Entry {
            prefix: key_prefix(key),
            offset,
            partition,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
        });
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sorts by (partition, key); equal keys keep the order they were added in.
    pub fn sort(&mut self) {
        let arena = &self.arena;
        self.entries.sort_unstable_by(|a, b| compare_entries(arena, a, b));
    }

    /// The sorted records of one partition (after `sort`), as a stream.
    pub fn partition(&self, partition: u32) -> PartitionRecords<'_> {
        let start = self.entries.partition_point(|entry| entry.partition < partition);
        let end = self.entries.partition_point(|entry| entry.partition <= partition);
        PartitionRecords {
            buffer: self,
            next: start,
            end,
        }
    }

    /// Empties the buffer, keeping its memory for the next round.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
    }
}

/// Orders entries by (partition, key, arrival); nearly always decided by one `u128`
/// comparison of partition and key prefix, without touching the arena.
#[inline(always)]
fn compare_entries(arena: &[u8], a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let head_a = (u128::from(a.partition) << 64) | u128::from(a.prefix);
    let head_b = (u128::from(b.partition) << 64) | u128::from(b.prefix);
    head_a.cmp(&head_b).then_with(|| {
        // Equal zero-padded prefixes: unless both keys are longer than 8 bytes, the shorter
        // key is a prefix of the longer, so lengths decide.
        let tails = if a.key_len > 8 && b.key_len > 8 {
            key_of(arena, a)[8..].cmp(&key_of(arena, b)[8..])
        } else {
            a.key_len.cmp(&b.key_len)
        };
        tails.then_with(|| a.offset.cmp(&b.offset))
    })
}

#[inline]
fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = key.len().min(8);
    bytes[..len].copy_from_slice(&key[..len]);
    u64::from_be_bytes(bytes)
}

#[inline]
fn key_of<'a>(arena: &'a [u8], entry: &Entry) -> &'a [u8] {
    let start = entry.offset as usize;
    &arena[start..start + entry.key_len as usize]
}

/// The sorted records of one partition of a `SortBuffer`.
pub struct PartitionRecords<'a> {
    /// The sorted buffer.
    buffer: &'a SortBuffer,
    /// Entries `next..end` of the buffer are this partition's records still to return.
    next: usize,
    end: usize,
}

impl SortedRecords for PartitionRecords<'_> {
    #[inline]
    fn next_record(&mut self) -> TaskResult<Option<(&[u8], &[u8])>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let entry = &self.buffer.entries[self.next];
        self.next += 1;
        let key_start = entry.offset as usize;
        let key_end = key_start + entry.key_len as usize;
        let arena = &self.buffer.arena;
        Ok(Some((
            &arena[key_start..key_end],
            &arena[key_end..key_end + entry.value_len as usize],
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sorting_orders_by_partition_then_key_then_arrival(
            records in proptest::collection::vec((0u32..3, proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..12)), 0..60),
        ) {
            let mut buffer = SortBuffer::new(usize::MAX);
            for (index, (partition, key)) in records.iter().enumerate() {
                buffer.push(*partition, key, &(index as u32).to_le_bytes());
            }
            buffer.sort();
            let mut expected: Vec<(u32, Vec<u8>, usize)> = records.iter().enumerate().map(|(index, (p, key))| (*p, key.clone(), index)).collect();
            expected.sort();
            for partition in 0..3 {
                let mut got = Vec::new();
                let mut stream = buffer.partition(partition);
                while let Some((key, value)) = stream.next_record().unwrap() {
                    got.push((partition, key.to_vec(), u32::from_le_bytes(value.try_into().unwrap()) as usize));
                }
                let want: Vec<_> = expected.iter().filter(|record| record.0 == partition).cloned().collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn the_buffer_is_full_at_its_capacity_but_takes_one_record_when_empty() {
        let mut buffer = SortBuffer::new(100);
        assert!(!buffer.is_full_for(1000, 0));
        buffer.push(0, &[1; 1000], b"");
        assert!(buffer.is_full_for(1, 0));
        buffer.clear();
        buffer.push(0, b"k", b"v");
        assert!(!buffer.is_full_for(10, 10));
        assert!(buffer.is_full_for(60, 0));
    }
}
