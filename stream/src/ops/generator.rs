//! The `generator` source: deterministic events, each a pure function of (seed, instance,
//! event number), so a replay from any offset reproduces the same records and tests can compute
//! a pipeline's exact output (`expected_window_counts`) without running it.
//!
//! Event `n` (0-based) of instance `i`: `h = splitmix64(seed ^ (i << 40) ^ n)`; key id
//! `h % keys`; value `(h >> 32) % 1000`; time `n * 1000 / event_rate` ms; the record has an
//! empty key and the line `k{key id}\t{value}`. Splitmix64 (Steele et al.) is a bijection with
//! full avalanche, so consecutive `n` give independent-looking keys.

use std::collections::BTreeMap;
use std::time::Instant;

use spindle_protocol::OperatorSpec;

use super::fields::write_u64;
use crate::operator::{InstanceContext, OperatorError, Source, SourceStatus};
use crate::record::{Batch, EventTime};

/// Keys when the spec does not say.
pub const DEFAULT_KEYS: u64 = 1000;
/// Event rate (events per second of event time) of an unthrottled generator.
pub const DEFAULT_EVENT_RATE: u64 = 1_000_000;

/// The splitmix64 output function.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key id and value of event `n` of instance `instance`.
#[inline]
pub fn event(seed: u64, instance: u32, n: u64, keys: u64) -> (u64, u64) {
    let h = splitmix64(seed ^ (u64::from(instance) << 40) ^ n);
    (h % keys, (h >> 32) % 1000)
}

/// Event time (ms) of event `n`.
#[inline]
pub fn event_time(n: u64, event_rate: u64) -> EventTime {
    if n <= u64::MAX / 1000 {
        (n * 1000 / event_rate) as EventTime
    } else {
        (u128::from(n) * 1000 / u128::from(event_rate)) as EventTime
    }
}

/// Writes the line of an event: `k{key}\t{value}`.
#[inline]
pub fn write_line(out: &mut Vec<u8>, key: u64, value: u64) {
    out.push(b'k');
    write_u64(out, key);
    out.push(b'\t');
    write_u64(out, value);
}

/// The exact output of generator → key_by `$1` → tumbling `count` window of `size_ms` when
/// each of `instances` instances emits its events `0..limit`: (key, window start) → count.
pub fn expected_window_counts(
    seed: u64,
    instances: u32,
    keys: u64,
    limit: u64,
    event_rate: u64,
    size_ms: u64,
) -> BTreeMap<(String, i64), u64> {
    let size = size_ms as i64;
    let mut counts = BTreeMap::new();
    for instance in 0..instances {
        for n in 0..limit {
            let (key, _) = event(seed, instance, n, keys);
            let time = event_time(n, event_rate);
            *counts.entry((format!("k{key}"), time - time.rem_euclid(size))).or_insert(0) += 1;
        }
    }
    counts
}

/// A running generator instance.
#[derive(Debug)]
pub struct Generator {
    seed: u64,
    instance: u32,
    keys: u64,
    event_rate: u64,
    rate: Option<u64>,
    limit: Option<u64>,
    /// The next event number.
    next: u64,
    /// When pacing started (first poll after build or restore) and the event number then.
    pace_start: Option<(Instant, u64)>,
}

impl Generator {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<Generator, OperatorError> {
        let failed = |what: &str| OperatorError::failed(format!("operator {}: {what} must be at least 1", spec.name));
        let keys = spec.keys.unwrap_or(DEFAULT_KEYS);
        if keys == 0 {
            return Err(failed("keys"));
        }
        if spec.rate == Some(0) {
            return Err(failed("rate"));
        }
        let event_rate = spec.event_rate.or(spec.rate).unwrap_or(DEFAULT_EVENT_RATE);
        if event_rate == 0 {
            return Err(failed("event_rate"));
        }
        Ok(Generator {
            seed: spec.seed.unwrap_or(0),
            instance: context.index,
            keys,
            event_rate,
            rate: spec.rate,
            limit: spec.limit,
            next: 0,
            pace_start: None,
        })
    }

    /// The next event number (the offset a snapshot saves).
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Source for Generator {
    fn poll(&mut self, out: &mut Batch, max_records: usize) -> Result<SourceStatus, OperatorError> {
        let mut end = self.next.saturating_add(max_records as u64);
        if let Some(limit) = self.limit {
            if self.next >= limit {
                return Ok(SourceStatus::Finished);
            }
            end = end.min(limit);
        }
        if let Some(rate) = self.rate {
            let (start, base) = *self.pace_start.get_or_insert_with(|| (Instant::now(), self.next));
            let due = base.saturating_add((start.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000).min(u128::from(u64::MAX)) as u64);
            if self.next >= due {
                return Ok(SourceStatus::Idle);
            }
            end = end.min(due);
        }
        let (seed, instance, keys, event_rate) = (self.seed, self.instance, self.keys, self.event_rate);
        // `event_time` stepped without a division per event: 1000 (n + 1) = 1000 n + q·rate + r.
        let (step, remainder_step) = (1000 / event_rate, 1000 % event_rate);
        let mut time = event_time(self.next, event_rate);
        let mut remainder = (u128::from(self.next) * 1000 % u128::from(event_rate)) as u64;
        for n in self.next..end {
            let (key, value) = event(seed, instance, n, keys);
            out.push_with(time, b"", |line| write_line(line, key, value));
            time += step as EventTime;
            remainder += remainder_step;
            if remainder >= event_rate {
                remainder -= event_rate;
                time += 1;
            }
        }
        self.next = end;
        Ok(SourceStatus::Ready)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(self.next.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| OperatorError::CorruptState(format!("generator offset of {} bytes (expected 8)", state.len())))?;
        self.next = u64::from_le_bytes(bytes);
        self.pace_start = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::OperatorKind;

    use super::*;
    use crate::ops::test_context;

    fn spec(rate: Option<u64>, limit: Option<u64>) -> OperatorSpec {
        OperatorSpec {
            name: "gen".into(),
            kind: Some(OperatorKind::Generator),
            rate,
            limit,
            keys: Some(50),
            seed: Some(7),
            ..OperatorSpec::default()
        }
    }

    fn drain(source: &mut Generator, max: usize) -> Vec<(i64, String)> {
        let mut out = Batch::new();
        while source.poll(&mut out, max).unwrap() == SourceStatus::Ready {}
        out.iter()
            .map(|record| (record.time, String::from_utf8(record.value.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn events_are_deterministic_and_limited() {
        let context = test_context(1, 2);
        let mut generator = Generator::new(&spec(None, Some(2500)), &context).unwrap();
        let events = drain(&mut generator, 1000);
        assert_eq!(events.len(), 2500);
        let (key, value) = event(7, 1, 3, 50);
        assert_eq!(events[3], (0, format!("k{key}\t{value}")));
        assert_eq!(events[2499].0, 2, "1,000,000 events per second of event time by default");
        let other = drain(&mut Generator::new(&spec(None, Some(2500)), &test_context(0, 2)).unwrap(), 1000);
        assert_ne!(events, other, "instances differ");
    }

    #[test]
    fn stepped_times_equal_the_formula() {
        for event_rate in [1, 3, 999, 1000, 1001, 7919, 1_000_000] {
            let mut generator = Generator::new(
                &OperatorSpec {
                    event_rate: Some(event_rate),
                    ..spec(None, Some(5000))
                },
                &test_context(0, 1),
            )
            .unwrap();
            generator.restore(&1234u64.to_le_bytes()).unwrap();
            let events = drain(&mut generator, 333);
            for (offset, (time, _)) in events.iter().enumerate() {
                assert_eq!(
                    *time,
                    event_time(1234 + offset as u64, event_rate),
                    "rate {event_rate}, event {offset}"
                );
            }
        }
    }

    #[test]
    fn restore_resumes_at_the_offset() {
        let context = test_context(0, 1);
        let all = drain(&mut Generator::new(&spec(None, Some(300)), &context).unwrap(), 64);
        let mut first = Generator::new(&spec(None, Some(300)), &context).unwrap();
        let mut out = Batch::new();
        first.poll(&mut out, 100).unwrap();
        let offsets = first.snapshot().unwrap();
        let mut second = Generator::new(&spec(None, Some(300)), &context).unwrap();
        second.restore(&offsets).unwrap();
        assert_eq!(drain(&mut second, 64), all[100..]);
        assert!(second.restore(b"short").is_err());
    }

    #[test]
    fn a_rate_throttles() {
        let mut generator = Generator::new(&spec(Some(2000), None), &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        let start = Instant::now();
        while start.elapsed().as_millis() < 100 {
            generator.poll(&mut out, 10_000).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!((150..=260).contains(&out.len()), "{} events in 100 ms at 2000/s", out.len());
        assert_eq!(out.iter().nth(2).unwrap().time, 1, "event time follows the rate");
    }

    #[test]
    fn expected_counts_match_the_events() {
        let counts = expected_window_counts(7, 2, 50, 3000, 1000, 1000);
        assert_eq!(counts.values().sum::<u64>(), 6000);
        assert_eq!(counts.keys().map(|(_, start)| *start).max(), Some(2000));
        let mut generator = Generator::new(
            &OperatorSpec {
                event_rate: Some(1000),
                ..spec(None, Some(3000))
            },
            &test_context(1, 2),
        )
        .unwrap();
        let events = drain(&mut generator, 500);
        let in_first_window = events
            .iter()
            .filter(|(time, line)| *time < 1000 && line.starts_with("k3\t"))
            .count() as u64;
        let first_instance = expected_window_counts(7, 1, 50, 3000, 1000, 1000);
        let both = counts.get(&("k3".to_string(), 0)).copied().unwrap_or(0);
        assert_eq!(
            both,
            in_first_window + first_instance.get(&("k3".to_string(), 0)).copied().unwrap_or(0)
        );
    }
}
