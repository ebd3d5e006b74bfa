//! A job binary with operators of its own, written in Rust:
//!
//! * `distinct`, a keyed operator that counts the distinct values seen per key and emits
//!   `key<TAB>distinct` when a new one arrives. Its state is checkpointed and moved between
//!   instances by key group like a built-in's.
//! * `paced`, a stand-in for an operator whose records each cost a fixed time (a call to a
//!   model or a remote service): it waits `PACED_US_PER_RECORD` µs (job env, default 100) per
//!   record and passes records on. Waiting, not computing, so its speed is the same on a busy
//!   machine: the autoscaling test knows from it which parallelism an input rate needs.
//!
//! Build it (`cargo build --release -p spindle-cli --example stream_user_operator`), then name it
//! in the job: `worker_command = ["/path/to/stream_user_operator"]`, and the operator as
//! `kind = "user"`, `class = "distinct"`, `keyed = true`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use spindle_protocol::OperatorSpec;
use spindle_stream::{Batch, InstanceContext, Operator, OperatorError, OperatorRegistry, Record, StateWriter, key_group};

/// Distinct values per key, kept per key group so a group's state can move on its own.
struct Distinct {
    key_groups: u32,
    groups: BTreeMap<u32, HashMap<Vec<u8>, BTreeSet<Vec<u8>>>>,
}

impl Operator for Distinct {
    fn process(&mut self, record: Record<'_>, key_group: u32, out: &mut Batch) -> Result<(), OperatorError> {
        let values = self.groups.entry(key_group).or_default().entry(record.key.to_vec()).or_default();
        if values.insert(record.value.to_vec()) {
            let line = format!("{}\t{}", String::from_utf8_lossy(record.key), values.len());
            out.push(record.time, record.key, line.as_bytes());
        }
        Ok(())
    }

    fn snapshot(&mut self, state: &mut StateWriter) -> Result<(), OperatorError> {
        for (group, keys) in &self.groups {
            // JSON keeps the example short; a real operator would pick a compact encoding.
            let encoded: Vec<(String, Vec<String>)> = keys
                .iter()
                .map(|(key, values)| {
                    let values = values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                    (String::from_utf8_lossy(key).into_owned(), values)
                })
                .collect();
            state.key_group(*group, |bytes| serde_json::to_writer(bytes, &encoded).expect("serializable"))?;
        }
        Ok(())
    }

    fn restore_key_group(&mut self, group: u32, bytes: &[u8]) -> Result<(), OperatorError> {
        let decoded: Vec<(String, Vec<String>)> =
            serde_json::from_slice(bytes).map_err(|error| OperatorError::CorruptState(error.to_string()))?;
        let keys = self.groups.entry(group).or_default();
        for (key, values) in decoded {
            debug_assert_eq!(key_group(key.as_bytes(), self.key_groups), group);
            keys.insert(key.into_bytes(), values.into_iter().map(String::into_bytes).collect());
        }
        Ok(())
    }

    fn retain_key_groups(&mut self, keep: &std::ops::Range<u32>) {
        self.groups.retain(|group, _| keep.contains(group));
    }

    fn state_bytes(&self) -> u64 {
        self.groups
            .values()
            .flat_map(|keys| keys.iter())
            .map(|(key, values)| (key.len() + values.iter().map(Vec::len).sum::<usize>()) as u64)
            .sum()
    }
}

/// Costs `per_record` of wall time per record, paid in sleeps of at least a millisecond (a
/// sleep per record would cost the timer's slack each time); what a sleep overshoots is
/// credited to the next records, so the mean cost is exact.
struct Paced {
    per_record: Duration,
    /// Owed (positive) or overpaid (negative) time, in ns.
    owed_ns: i64,
}

impl Operator for Paced {
    fn process(&mut self, record: Record<'_>, _key_group: u32, out: &mut Batch) -> Result<(), OperatorError> {
        self.owed_ns += self.per_record.as_nanos() as i64;
        if self.owed_ns >= 1_000_000 {
            let started = Instant::now();
            std::thread::sleep(Duration::from_nanos(self.owed_ns as u64));
            self.owed_ns -= started.elapsed().as_nanos() as i64;
        }
        out.push(record.time, record.key, record.value);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut registry = OperatorRegistry::new();
    registry.register("distinct", |_spec: &OperatorSpec, context: &InstanceContext| {
        Ok(Box::new(Distinct {
            key_groups: context.key_groups,
            groups: BTreeMap::new(),
        }) as Box<dyn Operator>)
    });
    registry.register("paced", |_spec: &OperatorSpec, context: &InstanceContext| {
        let per_record_us = match context.env.get("PACED_US_PER_RECORD") {
            Some(text) => text
                .parse()
                .map_err(|_| OperatorError::failed(format!("PACED_US_PER_RECORD: not a number of µs: {text:?}")))?,
            None => 100,
        };
        Ok(Box::new(Paced {
            per_record: Duration::from_micros(per_record_us),
            owed_ns: 0,
        }) as Box<dyn Operator>)
    });
    spindle_stream::runtime::worker::run_worker(registry)
}
