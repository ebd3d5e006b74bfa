//! The keyed event-time `window` operator: tumbling (`size_ms`) or sliding (`slide_ms`) windows
//! with a `count`/`sum`/`min`/`max` per key.
//!
//! Rules:
//! - a record belongs to every window `[start, start + size)` with `start = k * slide` that
//!   contains its time;
//! - a window fires when the watermark reaches its end (`watermark >= end`: a watermark `w`
//!   promises no more records with time `< w`), and `finish` fires all;
//! - a record is late when one of its windows has fired already: it is dropped from those
//!   windows and counted in `late_records` (tumbling: dropped);
//! - the output of a window is `time = end - 1`, `key`, value `key\tstart\tend\taggregate`,
//!   in (end, key group, key) order, so a run's output is deterministic.
//!
//! State: per key group, its windows by end, each a map key → aggregate. A group's snapshot
//! also carries the watermark, so a record that was late before a restore (or a move to another
//! instance) is still late after it: output does not depend on where recovery happened.
//!
//! Asynchronous snapshots: each window's map is a `SharedMap`. `capture` freezes them (moves each
//! into an `Arc` and shares it: a frozen view of every group, no copy); the snapshot thread
//! serializes them while records go on, and the first update of a map the snapshot still holds
//! copies it (copy on write per window of a key group, where Flink's heap backend copies per
//! entry).

use std::collections::BTreeMap;
use std::sync::Arc;

use spindle_protocol::OperatorSpec;

use super::fields::write_i64;
use super::keyed::{
    Aggregator, Decoder, ENTRY_OVERHEAD, KeyMap, SharedMap, group_slots, put_key_map, put_signed, put_varint, read_key_map, slot,
};
use crate::keys::KeyGroupRange;
use crate::operator::{InstanceContext, Operator, OperatorError};
use crate::record::{Batch, EventTime, Record};
use crate::state::{CapturedState, StateWriter};

const FORMAT_VERSION: u8 = 1;

#[derive(Debug)]
struct GroupWindows {
    /// Watermark this group's state had seen (from a restore): its windows up to here fired.
    watermark: EventTime,
    windows: Windows,
}

/// A key group's windows by end, each shared with a snapshot in flight until updated.
type Windows = BTreeMap<EventTime, SharedMap<i64>>;

impl Default for GroupWindows {
    fn default() -> GroupWindows {
        GroupWindows {
            watermark: EventTime::MIN,
            windows: BTreeMap::new(),
        }
    }
}

/// A `window` instance.
pub struct Window {
    size: i64,
    slide: i64,
    aggregator: Aggregator,
    groups: Vec<Option<GroupWindows>>,
    owned: KeyGroupRange,
    watermark: EventTime,
    /// The smallest window end held (so most watermarks return at once).
    earliest_end: EventTime,
    entries: u64,
    key_bytes: u64,
    late: u64,
    bad: u64,
}

impl Window {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<Window, OperatorError> {
        let failed = |message: &str| OperatorError::failed(format!("operator {}: {message}", spec.name));
        let size = spec.size_ms.ok_or_else(|| failed("window needs `size_ms`"))?;
        let slide = spec.slide_ms.unwrap_or(size);
        if size == 0 || slide == 0 || size > i64::MAX as u64 / 2 || slide > size {
            return Err(failed("size_ms and slide_ms must be at least 1, and slide_ms at most size_ms"));
        }
        Ok(Window {
            size: size as i64,
            slide: slide as i64,
            aggregator: Aggregator::from_spec(spec)?,
            groups: group_slots(context.key_groups),
            owned: context.key_group_range.clone(),
            watermark: EventTime::MIN,
            earliest_end: EventTime::MAX,
            entries: 0,
            key_bytes: 0,
            late: 0,
            bad: 0,
        })
    }

    fn recount(&mut self) {
        self.entries = 0;
        self.key_bytes = 0;
        self.earliest_end = EventTime::MAX;
        for group in self.groups.iter().flatten() {
            if let Some(end) = group.windows.keys().next() {
                self.earliest_end = self.earliest_end.min(*end);
            }
            for map in group.windows.values() {
                self.entries += map.len() as u64;
                self.key_bytes += map.keys().map(|key| key.as_slice().len() as u64).sum::<u64>();
            }
        }
    }

    /// Every group a snapshot writes, sharing the maps (no copy).
    fn frozen(&mut self) -> FrozenWindows {
        let mut groups = Vec::new();
        for (index, group) in self.groups.iter_mut().enumerate() {
            let index = index as u32;
            if group.is_none() && (!self.owned.contains(&index) || self.watermark == EventTime::MIN) {
                continue;
            }
            let watermark = self.watermark.max(group.as_ref().map_or(EventTime::MIN, |group| group.watermark));
            let windows = group.as_mut().map_or_else(BTreeMap::new, |group| {
                group.windows.iter_mut().map(|(end, map)| (*end, map.freeze())).collect()
            });
            groups.push((index, watermark, windows));
        }
        FrozenWindows { groups }
    }

    fn write_output(&self, out: &mut Batch, end: EventTime, key: &[u8], aggregate: i64) {
        let start = end - self.size;
        out.push_with(end - 1, key, |value| {
            value.extend_from_slice(key);
            value.push(b'\t');
            write_i64(value, start);
            value.push(b'\t');
            write_i64(value, end);
            value.push(b'\t');
            write_i64(value, aggregate);
        });
    }
}

impl Operator for Window {
    /// Records skipped because their field is not an integer.
    fn bad_records(&self) -> u64 {
        self.bad
    }

    #[inline]
    fn process(&mut self, record: Record<'_>, key_group: u32, _out: &mut Batch) -> Result<(), OperatorError> {
        let Some(value) = self.aggregator.input(record.value) else {
            self.bad += 1;
            return Ok(());
        };
        let group = slot(&mut self.groups, key_group);
        let fired_up_to = self.watermark.max(group.watermark);
        let time = record.time;
        let mut start = time - time.rem_euclid(self.slide);
        let mut late = false;
        // Windows containing `time`, latest first: start > time - size.
        while start > time.saturating_sub(self.size) {
            let end = start.saturating_add(self.size);
            if end <= fired_up_to {
                late = true;
            } else {
                let map = group.windows.entry(end).or_default().get_mut();
                if self.aggregator.update(map, record.key, value).1 {
                    self.entries += 1;
                    self.key_bytes += record.key.len() as u64;
                }
                self.earliest_end = self.earliest_end.min(end);
            }
            match start.checked_sub(self.slide) {
                Some(earlier) => start = earlier,
                None => break,
            }
        }
        self.late += u64::from(late);
        Ok(())
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Batch) -> Result<(), OperatorError> {
        self.watermark = self.watermark.max(watermark);
        if self.earliest_end > watermark {
            return Ok(());
        }
        // Fired windows by end, then by group (groups are visited in order).
        let mut fired: BTreeMap<EventTime, Vec<SharedMap<i64>>> = BTreeMap::new();
        for group in self.groups.iter_mut().flatten() {
            let keep = match watermark.checked_add(1) {
                Some(after) => group.windows.split_off(&after),
                None => BTreeMap::new(),
            };
            for (end, map) in std::mem::replace(&mut group.windows, keep) {
                fired.entry(end).or_default().push(map);
            }
        }
        let mut sorted: Vec<(&[u8], i64)> = Vec::new();
        for (end, maps) in &fired {
            for map in maps {
                sorted.clear();
                sorted.extend(map.iter().map(|(key, aggregate)| (key.as_slice(), *aggregate)));
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (key, aggregate) in &sorted {
                    self.write_output(out, *end, key, *aggregate);
                    self.key_bytes -= key.len() as u64;
                }
                self.entries -= map.len() as u64;
            }
        }
        drop(sorted);
        // Counted down above rather than recounted: the windows still open may be large.
        self.earliest_end = self
            .groups
            .iter()
            .flatten()
            .filter_map(|group| group.windows.keys().next().copied())
            .min()
            .unwrap_or(EventTime::MAX);
        Ok(())
    }

    fn snapshot(&mut self, state: &mut StateWriter) -> Result<(), OperatorError> {
        self.frozen().write_groups(state)
    }

    fn capture(&mut self) -> Result<Box<dyn CapturedState>, OperatorError> {
        Ok(Box::new(self.frozen()))
    }

    fn restore_key_group(&mut self, group: u32, bytes: &[u8]) -> Result<(), OperatorError> {
        let mut decoder = Decoder::new(bytes, "window state");
        if decoder.byte()? != FORMAT_VERSION {
            return Err(OperatorError::CorruptState(format!(
                "window state of key group {group}: unknown format"
            )));
        }
        let watermark = decoder.signed()?;
        let windows = decoder.count()?;
        let state = slot(&mut self.groups, group);
        state.watermark = state.watermark.max(watermark);
        for _ in 0..windows {
            let end = decoder.signed()?;
            let map = state.windows.entry(end).or_default().get_mut();
            let (added, key_bytes) = read_key_map(&mut decoder, map, &self.aggregator)?;
            self.entries += added;
            self.key_bytes += key_bytes;
            self.earliest_end = self.earliest_end.min(end);
        }
        if !decoder.is_empty() {
            return Err(OperatorError::CorruptState(format!(
                "window state of key group {group}: trailing bytes"
            )));
        }
        // Counted as they came in, not recounted: a rescale restores many groups in a row.
        Ok(())
    }

    fn retain_key_groups(&mut self, keep: &KeyGroupRange) {
        for (index, group) in self.groups.iter_mut().enumerate() {
            if !keep.contains(&(index as u32)) {
                *group = None;
            }
        }
        self.owned = keep.clone();
        self.recount();
    }

    fn state_bytes(&self) -> u64 {
        self.key_bytes + self.entries * ENTRY_OVERHEAD
    }

    fn late_records(&self) -> u64 {
        self.late
    }
}

/// A key group's windows by end, as of a barrier.
type FrozenGroup = BTreeMap<EventTime, Arc<KeyMap<i64>>>;

/// A window operator's state as of a barrier: per key group, its watermark and windows.
struct FrozenWindows {
    /// Per key group: its number, watermark and windows.
    groups: Vec<(u32, EventTime, FrozenGroup)>,
}

impl FrozenWindows {
    /// Writes the groups in order, letting go of each group's maps once written (so the
    /// instance copies only maps not yet written when it updates them).
    fn write_groups(self, state: &mut StateWriter) -> Result<(), OperatorError> {
        for (index, watermark, windows) in self.groups {
            state.key_group(index, |out| {
                out.push(FORMAT_VERSION);
                put_signed(out, watermark);
                put_varint(out, windows.len() as u64);
                for (end, map) in &windows {
                    put_signed(out, *end);
                    put_key_map(out, map);
                }
            })?;
        }
        Ok(())
    }
}

impl CapturedState for FrozenWindows {
    fn write_to(self: Box<Self>, state: &mut StateWriter) -> Result<(), OperatorError> {
        self.write_groups(state)
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
