//! The keyed `reduce` operator: a running `count`/`sum`/`min`/`max` per key, emitted on every
//! update as `key\taggregate` with the input record's time and key.
//!
//! State: per key group, a map key → aggregate; a group's snapshot is its entries. The maps are
//! `SharedMap`s: `capture` freezes them (a view for an asynchronous snapshot, no copy), and the
//! first update of a group the snapshot thread still holds copies its map (copy on write).

use std::sync::Arc;

use spindle_protocol::OperatorSpec;

use super::fields::write_i64;
use super::keyed::{Aggregator, Decoder, ENTRY_OVERHEAD, KeyMap, SharedMap, group_slots, put_key_map, read_key_map, slot};
use crate::keys::KeyGroupRange;
use crate::operator::{InstanceContext, Operator, OperatorError};
use crate::record::{Batch, Record};
use crate::state::{CapturedState, StateWriter};

const FORMAT_VERSION: u8 = 1;

/// A `reduce` instance.
pub struct Reduce {
    aggregator: Aggregator,
    groups: Vec<Option<SharedMap<i64>>>,
    entries: u64,
    key_bytes: u64,
    bad: u64,
}

impl Reduce {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<Reduce, OperatorError> {
        Ok(Reduce {
            aggregator: Aggregator::from_spec(spec)?,
            groups: group_slots(context.key_groups),
            entries: 0,
            key_bytes: 0,
            bad: 0,
        })
    }

    fn recount(&mut self) {
        let maps = self.groups.iter().flatten();
        self.entries = maps.clone().map(|map| map.len() as u64).sum();
        self.key_bytes = maps.flat_map(|map| map.keys()).map(|key| key.as_slice().len() as u64).sum();
    }
}

impl Reduce {
    /// The groups with state, sharing their maps (no copy).
    fn frozen(&mut self) -> FrozenMaps {
        let groups = self.groups.iter_mut().enumerate();
        let groups = groups.filter_map(|(group, map)| Some((group as u32, map.as_mut().filter(|map| !map.is_empty())?.freeze())));
        FrozenMaps { groups: groups.collect() }
    }
}

/// A reduce operator's state as of a barrier.
struct FrozenMaps {
    groups: Vec<(u32, Arc<KeyMap<i64>>)>,
}

impl FrozenMaps {
    /// Writes the groups in order, letting go of each map once written.
    fn write_groups(self, state: &mut StateWriter) -> Result<(), OperatorError> {
        for (group, map) in self.groups {
            state.key_group(group, |out| {
                out.push(FORMAT_VERSION);
                put_key_map(out, &map);
            })?;
        }
        Ok(())
    }
}

impl CapturedState for FrozenMaps {
    fn write_to(self: Box<Self>, state: &mut StateWriter) -> Result<(), OperatorError> {
        self.write_groups(state)
    }
}

impl Operator for Reduce {
    /// Records skipped because their field is not an integer.
    fn bad_records(&self) -> u64 {
        self.bad
    }

    #[inline]
    fn process(&mut self, record: Record<'_>, key_group: u32, out: &mut Batch) -> Result<(), OperatorError> {
        let Some(value) = self.aggregator.input(record.value) else {
            self.bad += 1;
            return Ok(());
        };
        let map = slot(&mut self.groups, key_group).get_mut();
        let (aggregate, new) = self.aggregator.update(map, record.key, value);
        if new {
            self.entries += 1;
            self.key_bytes += record.key.len() as u64;
        }
        out.push_with(record.time, record.key, |line| {
            line.extend_from_slice(record.key);
            line.push(b'\t');
            write_i64(line, aggregate);
        });
        Ok(())
    }

    fn snapshot(&mut self, state: &mut StateWriter) -> Result<(), OperatorError> {
        self.frozen().write_groups(state)
    }

    fn capture(&mut self) -> Result<Box<dyn CapturedState>, OperatorError> {
        Ok(Box::new(self.frozen()))
    }

    fn restore_key_group(&mut self, group: u32, bytes: &[u8]) -> Result<(), OperatorError> {
        let mut decoder = Decoder::new(bytes, "reduce state");
        if decoder.byte()? != FORMAT_VERSION {
            return Err(OperatorError::CorruptState(format!(
                "reduce state of key group {group}: unknown format"
            )));
        }
        let map = slot(&mut self.groups, group).get_mut();
        let (added, key_bytes) = read_key_map(&mut decoder, map, &self.aggregator)?;
        self.entries += added;
        self.key_bytes += key_bytes;
        if !decoder.is_empty() {
            return Err(OperatorError::CorruptState(format!(
                "reduce state of key group {group}: trailing bytes"
            )));
        }
        // Counted as they came in: a rescale restores many groups in a row.
        Ok(())
    }

    fn retain_key_groups(&mut self, keep: &KeyGroupRange) {
        for (group, map) in self.groups.iter_mut().enumerate() {
            if !keep.contains(&(group as u32)) {
                *map = None;
            }
        }
        self.recount();
    }

    fn state_bytes(&self) -> u64 {
        self.key_bytes + self.entries * ENTRY_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{Aggregate, OperatorKind};

    use super::*;
    use crate::keys::key_group;
    use crate::ops::{restore_all, restore_captured, test_context};

    fn spec(aggregate: Aggregate) -> OperatorSpec {
        OperatorSpec {
            name: "totals".into(),
            kind: Some(OperatorKind::Reduce),
            aggregate: Some(aggregate),
            field: Some("$2".into()),
            ..OperatorSpec::default()
        }
    }

    fn feed(reduce: &mut Reduce, key: &str, line: &str, out: &mut Batch) {
        let record = Record {
            time: 3,
            key: key.as_bytes(),
            value: line.as_bytes(),
        };
        reduce.process(record, key_group(key.as_bytes(), 16), out).unwrap();
    }

    fn values(out: &Batch) -> Vec<String> {
        out.iter().map(|record| String::from_utf8(record.value.to_vec()).unwrap()).collect()
    }

    #[test]
    fn running_aggregates_survive_a_restore_and_drop_moved_groups() {
        let mut reduce = Reduce::new(&spec(Aggregate::Sum), &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        feed(&mut reduce, "a", "a 2", &mut out);
        feed(&mut reduce, "b", "b 5", &mut out);
        feed(&mut reduce, "a", "a -7", &mut out);
        feed(&mut reduce, "a", "a seven", &mut out);
        assert_eq!(values(&out), vec!["a\t2", "b\t5", "a\t-5"]);
        assert_eq!(reduce.bad_records(), 1);
        assert_eq!(out.iter().next().unwrap().key, b"a");

        let mut restored = Reduce::new(&spec(Aggregate::Sum), &test_context(0, 1)).unwrap();
        restore_all(&mut reduce, &mut restored, 16);
        assert_eq!(restored.state_bytes(), reduce.state_bytes());
        out.clear();
        feed(&mut restored, "a", "a 1", &mut out);
        feed(&mut restored, "b", "b 1", &mut out);
        assert_eq!(values(&out), vec!["a\t-4", "b\t6"]);

        let group_a = key_group(b"a", 16);
        restored.retain_key_groups(&(group_a..group_a + 1));
        out.clear();
        if key_group(b"b", 16) != group_a {
            feed(&mut restored, "b", "b 1", &mut out);
            assert_eq!(values(&out), vec!["b\t1"]);
        }
    }

    #[test]
    fn count_min_and_max() {
        for (aggregate, expected) in [(Aggregate::Count, "k\t3"), (Aggregate::Min, "k\t-1"), (Aggregate::Max, "k\t9")] {
            let mut reduce = Reduce::new(&spec(aggregate), &test_context(0, 1)).unwrap();
            let mut out = Batch::new();
            for line in ["k 4", "k -1", "k 9"] {
                feed(&mut reduce, "k", line, &mut out);
            }
            assert_eq!(values(&out).last().unwrap(), expected);
        }
        assert!(
            Reduce::new(
                &OperatorSpec {
                    aggregate: None,
                    ..spec(Aggregate::Sum)
                },
                &test_context(0, 1)
            )
            .is_err()
        );
    }

    #[test]
    fn a_capture_is_the_state_at_the_barrier_while_the_instance_goes_on() {
        let mut reduce = Reduce::new(&spec(Aggregate::Sum), &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        feed(&mut reduce, "a", "a 1", &mut out);
        feed(&mut reduce, "b", "b 2", &mut out);
        let captured = reduce.capture().unwrap();
        feed(&mut reduce, "a", "a 10", &mut out);
        feed(&mut reduce, "c", "c 5", &mut out);
        reduce.retain_key_groups(&(0..0));

        let mut restored = Reduce::new(&spec(Aggregate::Sum), &test_context(0, 1)).unwrap();
        restore_captured(captured, &mut restored, 16);
        out.clear();
        for key in ["a", "b", "c"] {
            feed(&mut restored, key, &format!("{key} 0"), &mut out);
        }
        assert_eq!(values(&out), vec!["a\t1", "b\t2", "c\t0"]);
    }
}
