//! Microbenchmarks of the hot paths (ignored by default):
//! `cargo test -p spindle-app-master --release --lib stream::ops::bench -- --ignored --nocapture`

use std::time::Instant;

use spindle_protocol::{Aggregate, OperatorKind, OperatorSpec};

use super::generator::Generator;
use super::transform::{Chain, Transform};
use super::window::Window;
use crate::keys::key_group;
use crate::operator::{InstanceContext, Operator, Source};
use crate::record::Batch;

const KEY_GROUPS: u32 = 128;

fn context() -> InstanceContext {
    InstanceContext {
        key_groups: KEY_GROUPS,
        key_group_range: 0..KEY_GROUPS,
        ..super::test_context(0, 1)
    }
}

fn generator(keys: u64) -> Generator {
    let spec = OperatorSpec {
        name: "events".into(),
        kind: Some(OperatorKind::Generator),
        keys: Some(keys),
        ..OperatorSpec::default()
    };
    Generator::new(&spec, &context()).unwrap()
}

fn key_by() -> Chain {
    let spec = OperatorSpec {
        name: "by-key".into(),
        kind: Some(OperatorKind::KeyBy),
        expr: Some("$1".into()),
        ..OperatorSpec::default()
    };
    Chain::new(vec![Transform::build(&spec).unwrap()])
}

fn report(what: &str, records: u64, start: Instant) {
    let elapsed = start.elapsed();
    println!(
        "{what}: {:.1} ns/record ({:.1} M records/s)",
        elapsed.as_nanos() as f64 / records as f64,
        records as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
#[ignore]
fn generator_and_key_by() {
    const RECORDS: u64 = 20_000_000;
    const BATCH: usize = 1024;
    let mut source = generator(100_000);
    let chain = key_by();
    let (mut generated, mut keyed) = (Batch::with_capacity(64 << 10), Batch::with_capacity(64 << 10));

    let start = Instant::now();
    for _ in 0..RECORDS / BATCH as u64 {
        generated.clear();
        source.poll(&mut generated, BATCH).unwrap();
    }
    report("generator poll", RECORDS, start);

    let start = Instant::now();
    let mut checksum = 0usize;
    for _ in 0..RECORDS / BATCH as u64 {
        generated.clear();
        keyed.clear();
        source.poll(&mut generated, BATCH).unwrap();
        for record in &generated {
            chain.apply(record, &mut keyed);
        }
        checksum += keyed.byte_len();
    }
    report("generator poll + chain(key_by $1)", RECORDS, start);

    source.poll(&mut generated, BATCH).unwrap();
    let start = Instant::now();
    for _ in 0..RECORDS / BATCH as u64 {
        keyed.clear();
        for record in &generated {
            chain.apply(record, &mut keyed);
        }
        checksum += keyed.len();
    }
    report("chain(key_by $1) alone", RECORDS, start);

    // Baseline: what copying a record into a batch costs by itself (Batch::push).
    let start = Instant::now();
    for _ in 0..RECORDS / BATCH as u64 {
        keyed.clear();
        for record in &generated {
            keyed.push_record(record);
        }
        checksum += keyed.len();
    }
    report("baseline: Batch::push_record alone", RECORDS, start);

    // Floor: the key slicing written inline by hand.
    let start = Instant::now();
    for _ in 0..RECORDS / BATCH as u64 {
        keyed.clear();
        for record in &generated {
            let key = super::fields::whitespace_field(record.value, 1).unwrap_or_default();
            keyed.push(record.time, key, record.value);
        }
        checksum += keyed.len();
    }
    report("floor: whitespace_field + Batch::push by hand", RECORDS, start);
    assert!(checksum > 0);
}

#[test]
#[ignore]
fn window_on_100k_keys() {
    const RECORDS: u64 = 20_000_000;
    const BATCH: usize = 1024;
    let spec = OperatorSpec {
        name: "count".into(),
        kind: Some(OperatorKind::Window),
        size_ms: Some(1000),
        aggregate: Some(Aggregate::Count),
        ..OperatorSpec::default()
    };
    let mut window = Window::new(&spec, &context()).unwrap();
    let mut source = generator(100_000);
    let chain = key_by();
    // Pre-key the input so only the window (and the key group hash the runtime computes) is timed.
    let mut batches = Vec::new();
    for _ in 0..RECORDS / BATCH as u64 {
        let (mut generated, mut keyed) = (Batch::new(), Batch::new());
        source.poll(&mut generated, BATCH).unwrap();
        chain.apply_batch(&generated, &mut keyed);
        batches.push(keyed);
    }
    let mut out = Batch::new();
    let mut fired = 0;
    let mut peak_state = 0;
    let start = Instant::now();
    for batch in &batches {
        let mut last = 0;
        for record in batch {
            window.process(record, key_group(record.key, KEY_GROUPS), &mut out).unwrap();
            last = record.time;
        }
        peak_state = peak_state.max(window.state_bytes());
        window.on_watermark(last, &mut out).unwrap();
        fired += out.len();
        out.clear();
    }
    report(
        "window count (100,000 keys, 1 s windows, incl. key group hash and firing)",
        RECORDS,
        start,
    );
    println!("windows fired: {fired} rows; peak state ≈ {} MB", peak_state >> 20);
    assert!(fired > 0);
}

#[test]
#[ignore]
fn window_snapshot_and_restore_of_big_state() {
    const KEYS: u64 = 2_000_000;
    let spec = OperatorSpec {
        name: "count".into(),
        kind: Some(OperatorKind::Window),
        size_ms: Some(1000),
        aggregate: Some(Aggregate::Count),
        ..OperatorSpec::default()
    };
    let mut window = Window::new(&spec, &context()).unwrap();
    let mut out = Batch::new();
    let mut key = Vec::new();
    for id in 0..KEYS {
        key.clear();
        key.push(b'k');
        super::fields::write_u64(&mut key, id);
        let record = crate::record::Record {
            time: 5,
            key: &key,
            value: &key,
        };
        window.process(record, key_group(&key, KEY_GROUPS), &mut out).unwrap();
    }
    println!("state ≈ {} MB for {KEYS} keys", window.state_bytes() >> 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let start = Instant::now();
    let mut writer = crate::state::StateWriter::create(&path).unwrap();
    window.snapshot(&mut writer).unwrap();
    let size = writer.finish().unwrap();
    println!("snapshot: {:?} ({} MB file)", start.elapsed(), size >> 20);
    let start = Instant::now();
    let mut fresh = Window::new(&spec, &context()).unwrap();
    let mut reader = crate::state::StateReader::open(&path).unwrap();
    reader
        .read_key_groups(&(0..KEY_GROUPS), |group, bytes| fresh.restore_key_group(group, bytes))
        .unwrap();
    println!("restore of every group: {:?}", start.elapsed());
    assert_eq!(fresh.state_bytes(), window.state_bytes());
}
