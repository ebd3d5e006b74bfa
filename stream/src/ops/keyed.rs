//! What the keyed operators (`window`, `reduce`) share: a fast hash map from key bytes, the
//! aggregates, and the compact encoding of their snapshots.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use spindle_protocol::{Aggregate, OperatorSpec};

use super::expr::parse_field_ref;
use super::fields::{Fields, parse_i64};
use crate::operator::OperatorError;

/// The Fx hash (rustc's): one multiply per 8 bytes. Keys are short and not attacker-chosen
/// (a job's own data, in its own process), so a DoS-resistant hasher buys nothing and SipHash
/// would cost several times more on the hottest path of keyed operators.
#[derive(Debug, Clone, Copy, Default)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiplies leave the low bits weak, and the table indexes by the low bits and
        // tags by the top 7: a murmur3-style finalizer mixes both ends (one more multiply, no
        // slower on the 100,000-key benchmark than a bare rotate, and safe for any key shape).
        let mut hash = self.hash ^ (self.hash >> 33);
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^ (hash >> 33)
    }
}

pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// Key bytes → value. Looked up by `&[u8]`; a key is stored when first inserted.
pub type KeyMap<V> = HashMap<CompactKey, V, FxBuildHasher>;

/// Longest key stored inside the table entry itself.
const INLINE: usize = 22;

/// A key stored inline in the hash table when short (the common case: ids, words), else on the
/// heap. Keeping short keys out of separate allocations saves one cache miss per lookup, the
/// dominant cost of a keyed operator with 100,000 keys. Hashes and compares as its bytes, so
/// maps are looked up by `&[u8]`.
#[derive(Clone)]
pub enum CompactKey {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl CompactKey {
    #[inline]
    pub fn new(key: &[u8]) -> CompactKey {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            CompactKey::Inline(key.len() as u8, bytes)
        } else {
            CompactKey::Heap(key.into())
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            CompactKey::Inline(len, bytes) => &bytes[..*len as usize],
            CompactKey::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for CompactKey {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for CompactKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for CompactKey {
    #[inline]
    fn eq(&self, other: &CompactKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for CompactKey {}

impl std::fmt::Debug for CompactKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// A key map an asynchronous snapshot may share: copy on write, with no atomic operation on
/// the hot path while no snapshot holds it. `freeze` (at a capture) moves the map into an `Arc`
/// and shares it; the first `get_mut` after takes it back, copying only if the snapshot thread
/// still holds it.
#[derive(Debug)]
pub enum SharedMap<V> {
    Owned(KeyMap<V>),
    Frozen(Arc<KeyMap<V>>),
}

impl<V: Clone> SharedMap<V> {
    /// The map to update.
    #[inline]
    pub fn get_mut(&mut self) -> &mut KeyMap<V> {
        if let SharedMap::Frozen(_) = self {
            self.thaw();
        }
        match self {
            SharedMap::Owned(map) => map,
            SharedMap::Frozen(_) => unreachable!("thawed above"),
        }
    }

    #[cold]
    fn thaw(&mut self) {
        if let SharedMap::Frozen(shared) = std::mem::replace(self, SharedMap::Owned(KeyMap::default())) {
            *self = SharedMap::Owned(Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone()));
        }
    }

    /// The map as it is now, shared with the caller (no copy).
    pub fn freeze(&mut self) -> Arc<KeyMap<V>> {
        if let SharedMap::Owned(map) = self {
            *self = SharedMap::Frozen(Arc::new(std::mem::take(map)));
        }
        match self {
            SharedMap::Frozen(shared) => shared.clone(),
            SharedMap::Owned(_) => unreachable!("frozen above"),
        }
    }
}

impl<V> Default for SharedMap<V> {
    fn default() -> SharedMap<V> {
        SharedMap::Owned(KeyMap::default())
    }
}

impl<V> std::ops::Deref for SharedMap<V> {
    type Target = KeyMap<V>;

    fn deref(&self) -> &KeyMap<V> {
        match self {
            SharedMap::Owned(map) => map,
            SharedMap::Frozen(shared) => shared,
        }
    }
}

/// Bytes a map entry costs beyond its key (for `state_bytes`: the value, the box, the table).
pub const ENTRY_OVERHEAD: u64 = 40;

/// What `reduce` and `window` compute, and from which field. Values are i64: a `sum`, `min` or
/// `max` input whose field does not parse as an integer is a bad record (counted, skipped);
/// `sum` wraps on overflow.
#[derive(Debug, Clone)]
pub struct Aggregator {
    kind: Aggregate,
    field: usize,
    fields: Fields,
}

impl Aggregator {
    pub fn from_spec(spec: &OperatorSpec) -> Result<Aggregator, OperatorError> {
        let failed = |message: String| OperatorError::failed(format!("operator {}: {message}", spec.name));
        let kind = spec
            .aggregate
            .ok_or_else(|| failed("needs `aggregate` (count, sum, min or max)".into()))?;
        let field = match (kind, spec.field.as_deref()) {
            (Aggregate::Count, _) => 0,
            (_, None) => return Err(failed("sum, min and max need `field` (e.g. `$2`)".into())),
            (_, Some(field)) => parse_field_ref(field).map_err(|error| failed(error.to_string()))?,
        };
        Ok(Aggregator {
            kind,
            field,
            fields: Fields::new(spec.delimiter.as_deref()),
        })
    }

    /// The input value of a record's line; `None` for a bad record.
    #[inline]
    pub fn input(&self, line: &[u8]) -> Option<i64> {
        match self.kind {
            Aggregate::Count => Some(1),
            _ => parse_i64(self.fields.field(line, self.field)?),
        }
    }

    /// Folds an input value (or a partial aggregate being merged) into an aggregate.
    #[inline]
    pub fn combine(&self, aggregate: i64, value: i64) -> i64 {
        match self.kind {
            Aggregate::Count | Aggregate::Sum => aggregate.wrapping_add(value),
            Aggregate::Min => aggregate.min(value),
            Aggregate::Max => aggregate.max(value),
        }
    }

    /// Adds `value` to `key`'s aggregate; returns the new aggregate and whether the key is new.
    #[inline]
    pub fn update(&self, map: &mut KeyMap<i64>, key: &[u8], value: i64) -> (i64, bool) {
        if let Some(aggregate) = map.get_mut(key) {
            *aggregate = self.combine(*aggregate, value);
            return (*aggregate, false);
        }
        map.insert(CompactKey::new(key), value);
        (value, true)
    }
}

/// Appends a key map: its length, then each key and aggregate (the state of `reduce`, and of
/// each of `window`'s windows).
pub fn put_key_map(out: &mut Vec<u8>, map: &KeyMap<i64>) {
    put_varint(out, map.len() as u64);
    for (key, aggregate) in map {
        put_bytes(out, key.as_slice());
        put_signed(out, *aggregate);
    }
}

/// Reads a key map `put_key_map` wrote, combining into `map`; returns the entries it added and
/// their key bytes.
pub fn read_key_map(decoder: &mut Decoder<'_>, map: &mut KeyMap<i64>, aggregator: &Aggregator) -> Result<(u64, u64), OperatorError> {
    let entries = decoder.count()?;
    map.reserve(entries);
    let (mut added, mut key_bytes) = (0, 0);
    for _ in 0..entries {
        let key = decoder.bytes()?;
        let aggregate = decoder.signed()?;
        if aggregator.update(map, key, aggregate).1 {
            added += 1;
            key_bytes += key.len() as u64;
        }
    }
    Ok((added, key_bytes))
}

/// Appends an unsigned LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a signed integer zigzag-encoded as a varint (small magnitudes stay small).
#[inline]
pub fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Appends bytes with their length.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads what the `put_*` functions wrote; any inconsistency is corrupt state.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Decoder<'a> {
        Decoder { bytes, what }
    }

    fn corrupt(&self, detail: &str) -> OperatorError {
        OperatorError::CorruptState(format!("{}: {detail}", self.what))
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn byte(&mut self) -> Result<u8, OperatorError> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(|| self.corrupt("truncated"))?;
        self.bytes = rest;
        Ok(first)
    }

    pub fn varint(&mut self) -> Result<u64, OperatorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.corrupt("varint too long"))
    }

    pub fn signed(&mut self) -> Result<i64, OperatorError> {
        let raw = self.varint()?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], OperatorError> {
        let len = self.varint()?;
        if len > self.bytes.len() as u64 {
            return Err(self.corrupt("length past the end"));
        }
        let (taken, rest) = self.bytes.split_at(len as usize);
        self.bytes = rest;
        Ok(taken)
    }

    /// A count of items that each take at least one byte (so a corrupt count cannot make the
    /// reader reserve absurd memory).
    pub fn count(&mut self) -> Result<usize, OperatorError> {
        let count = self.varint()?;
        if count > self.bytes.len() as u64 {
            return Err(self.corrupt("count past the end"));
        }
        Ok(count as usize)
    }
}

/// Per-key-group slots, indexed by group number.
pub fn group_slots<T>(key_groups: u32) -> Vec<Option<T>> {
    std::iter::repeat_with(|| None).take(key_groups as usize).collect()
}

/// The slot of `group`, growing the table if a group beyond the job's count shows up.
#[inline]
pub fn slot<T: Default>(slots: &mut Vec<Option<T>>, group: u32) -> &mut T {
    let index = group as usize;
    if index >= slots.len() {
        slots.resize_with(index + 1, || None);
    }
    slots[index].get_or_insert_with(T::default)
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn varints_round_trip() {
        let mut out = Vec::new();
        for value in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            put_signed(&mut out, value);
        }
        put_bytes(&mut out, b"key");
        let mut decoder = Decoder::new(&out, "test");
        for value in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            assert_eq!(decoder.signed().unwrap(), value);
        }
        assert_eq!(decoder.bytes().unwrap(), b"key");
        assert!(decoder.is_empty());
        assert!(decoder.byte().is_err());
        assert!(Decoder::new(&[5, 1], "test").bytes().is_err());
    }

    #[test]
    fn the_hasher_spreads_short_keys_over_low_bits() {
        let build = FxBuildHasher::default();
        let buckets: std::collections::BTreeSet<u64> = (0..1000).map(|key| build.hash_one(format!("k{key}").as_bytes()) & 1023).collect();
        assert!(buckets.len() > 550, "{} of 1024 buckets used", buckets.len());
    }

    #[test]
    fn a_frozen_map_is_copied_on_write_only_while_shared() {
        let mut map: SharedMap<i64> = SharedMap::default();
        map.get_mut().insert(CompactKey::new(b"a"), 1);
        let frozen = map.freeze();
        map.get_mut().insert(CompactKey::new(b"b"), 2);
        assert_eq!(frozen.len(), 1, "the snapshot's view does not change");
        assert_eq!(map.len(), 2);

        let frozen = map.freeze();
        let address = Arc::as_ptr(&frozen);
        drop(frozen);
        let thawed: *const KeyMap<i64> = map.get_mut();
        assert_eq!(map.len(), 2);
        assert_ne!(thawed, address, "taken back out of the Arc");
        assert!(
            matches!(map, SharedMap::Owned(_)),
            "owned again, without a copy once the snapshot let go"
        );
    }

    #[test]
    fn compact_keys_look_up_by_bytes() {
        let mut map: KeyMap<i64> = KeyMap::default();
        let long = [b'x'; 40];
        for key in [&b""[..], b"k1", &long[..INLINE], &long[..INLINE + 1], &long] {
            map.insert(CompactKey::new(key), key.len() as i64);
        }
        assert_eq!(map.len(), 5);
        assert_eq!(map.get(&long[..INLINE + 1]), Some(&(INLINE as i64 + 1)));
        assert_eq!(map.get(&b"k1"[..]), Some(&2));
        assert_eq!(map.get(&b"k2"[..]), None);
        assert_eq!(std::mem::size_of::<CompactKey>(), 24);
    }
}
