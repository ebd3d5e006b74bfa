use std::collections::BTreeMap;

use proptest::prelude::*;
use spindle_protocol::{Aggregate, OperatorKind, OperatorSpec};

use super::*;
use crate::keys::key_group;
use crate::ops::{restore_all, restore_captured, test_context};

const GROUPS: u32 = 16;

fn spec(size: u64, slide: Option<u64>, aggregate: Aggregate) -> OperatorSpec {
    OperatorSpec {
        name: "count".into(),
        kind: Some(OperatorKind::Window),
        size_ms: Some(size),
        slide_ms: slide,
        aggregate: Some(aggregate),
        field: (aggregate != Aggregate::Count).then(|| "$2".to_string()),
        ..OperatorSpec::default()
    }
}

type Output = Vec<(i64, String, String)>;

fn collect(out: &Batch) -> Output {
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    out.iter()
        .map(|record| (record.time, text(record.key), text(record.value)))
        .collect()
}

fn feed(window: &mut Window, key: &str, time: i64, value: i64, out: &mut Batch) {
    let line = format!("{key} {value}");
    let record = Record {
        time,
        key: key.as_bytes(),
        value: line.as_bytes(),
    };
    window.process(record, key_group(key.as_bytes(), GROUPS), out).unwrap();
}

#[test]
fn tumbling_counts_fire_at_the_watermark() {
    let mut window = Window::new(&spec(1000, None, Aggregate::Count), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    for (key, time) in [("a", 0), ("b", 10), ("a", 999), ("a", 1000)] {
        feed(&mut window, key, time, 0, &mut out);
    }
    window.on_watermark(999, &mut out).unwrap();
    assert!(out.is_empty(), "the window [0, 1000) is complete only at watermark 1000");
    window.on_watermark(1000, &mut out).unwrap();
    assert_eq!(
        collect(&out),
        vec![(999, "a".into(), "a\t0\t1000\t2".into()), (999, "b".into(), "b\t0\t1000\t1".into())]
    );
    feed(&mut window, "c", 500, 0, &mut out);
    assert_eq!(window.late_records(), 1);
    assert!(window.state_bytes() > 0);
    out.clear();
    window.finish(&mut out).unwrap();
    assert_eq!(collect(&out), vec![(1999, "a".into(), "a\t1000\t2000\t1".into())]);
    assert_eq!(window.state_bytes(), 0);
}

#[test]
fn sliding_windows_and_bad_records() {
    let mut window = Window::new(&spec(100, Some(50), Aggregate::Max), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    feed(&mut window, "a", 60, 5, &mut out);
    feed(&mut window, "a", 120, 3, &mut out);
    window
        .process(
            Record {
                time: 70,
                key: b"a",
                value: b"a x",
            },
            0,
            &mut out,
        )
        .unwrap();
    assert_eq!(window.bad_records(), 1);
    window.finish(&mut out).unwrap();
    let values: Vec<String> = collect(&out).into_iter().map(|(_, _, value)| value).collect();
    assert_eq!(values, vec!["a\t0\t100\t5", "a\t50\t150\t5", "a\t100\t200\t3"]);
    assert!(Window::new(&spec(100, Some(200), Aggregate::Count), &test_context(0, 1)).is_err());
    assert!(
        Window::new(
            &OperatorSpec {
                field: None,
                ..spec(100, None, Aggregate::Sum)
            },
            &test_context(0, 1)
        )
        .is_err()
    );
}

#[test]
fn retained_groups_and_moved_groups_keep_their_watermark() {
    let mut window = Window::new(&spec(10, None, Aggregate::Sum), &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    feed(&mut window, "a", 5, 2, &mut out);
    window.on_watermark(20, &mut out).unwrap();
    feed(&mut window, "a", 25, 4, &mut out);
    let mut fresh = Window::new(&spec(10, None, Aggregate::Sum), &test_context(0, 1)).unwrap();
    restore_all(&mut window, &mut fresh, GROUPS);
    feed(&mut fresh, "a", 15, 1, &mut out);
    assert_eq!(fresh.late_records(), 1, "window [10, 20) fired before the snapshot");
    let group = key_group(b"a", GROUPS);
    fresh.retain_key_groups(&(group + 1..GROUPS));
    out.clear();
    fresh.finish(&mut out).unwrap();
    assert!(out.is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    Record { key: u8, advance: i64, jitter: i64, value: i64 },
    Watermark { lag: i64 },
    Snapshot,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..6, 0i64..40, 0i64..60, -50i64..50).prop_map(|(key, advance, jitter, value)| Step::Record { key, advance, jitter, value }),
        2 => (0i64..80).prop_map(|lag| Step::Watermark { lag }),
        1 => Just(Step::Snapshot),
    ]
}

/// Runs the steps; with `restore`, every snapshot step moves the state into a fresh instance.
fn run(spec: &OperatorSpec, steps: &[Step], restore: bool) -> (Output, u64) {
    let mut window = Window::new(spec, &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    let (mut now, mut late) = (0i64, 0u64);
    for step in steps {
        match step {
            Step::Record {
                key,
                advance,
                jitter,
                value,
            } => {
                now += advance;
                feed(&mut window, &format!("k{key}"), now - jitter, *value, &mut out);
            }
            Step::Watermark { lag } => window.on_watermark(now - lag, &mut out).unwrap(),
            Step::Snapshot if restore => {
                let mut fresh = Window::new(spec, &test_context(0, 1)).unwrap();
                restore_all(&mut window, &mut fresh, GROUPS);
                assert_eq!(fresh.state_bytes(), window.state_bytes(), "state is counted as it is restored");
                late += window.late_records();
                window = fresh;
            }
            Step::Snapshot => {}
        }
    }
    window.finish(&mut out).unwrap();
    (collect(&out), late + window.late_records())
}

/// The obvious computation: every window start in range, checked one by one.
fn reference(spec: &OperatorSpec, steps: &[Step]) -> (Output, u64) {
    let (size, slide) = (spec.size_ms.unwrap() as i64, spec.slide_ms.unwrap_or(spec.size_ms.unwrap()) as i64);
    let aggregate = spec.aggregate.unwrap();
    let mut windows: BTreeMap<(i64, u32, String), i64> = BTreeMap::new();
    let (mut now, mut watermark, mut late) = (0i64, i64::MIN, 0u64);
    let mut out = Vec::new();
    let fire = |windows: &mut BTreeMap<(i64, u32, String), i64>, watermark: i64, out: &mut Output| {
        let keep = windows.split_off(&(watermark.saturating_add(1), 0, String::new()));
        for ((end, _, key), value) in std::mem::replace(windows, keep) {
            out.push((end - 1, key.clone(), format!("{key}\t{}\t{end}\t{value}", end - size)));
        }
    };
    for step in steps {
        match step {
            Step::Record {
                key,
                advance,
                jitter,
                value,
            } => {
                now += advance;
                let (time, key) = (now - jitter, format!("k{key}"));
                let input = if aggregate == Aggregate::Count { 1 } else { *value };
                let mut dropped = false;
                for start in (time - size + 1..=time).filter(|start| start.rem_euclid(slide) == 0) {
                    if start + size <= watermark {
                        dropped = true;
                        continue;
                    }
                    let slot = (start + size, key_group(key.as_bytes(), GROUPS), key.clone());
                    windows
                        .entry(slot)
                        .and_modify(|current| {
                            *current = match aggregate {
                                Aggregate::Count | Aggregate::Sum => *current + input,
                                Aggregate::Min => (*current).min(input),
                                Aggregate::Max => (*current).max(input),
                            }
                        })
                        .or_insert(input);
                }
                late += u64::from(dropped);
            }
            Step::Watermark { lag } => {
                watermark = watermark.max(now - lag);
                fire(&mut windows, watermark, &mut out);
            }
            Step::Snapshot => {}
        }
    }
    fire(&mut windows, i64::MAX, &mut out);
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn snapshots_do_not_change_the_output_which_matches_the_reference(
        steps in proptest::collection::vec(step(), 0..150),
        size in 1u64..120,
        slide_divisor in 1u64..4,
        aggregate in prop_oneof![Just(Aggregate::Count), Just(Aggregate::Sum), Just(Aggregate::Min), Just(Aggregate::Max)],
    ) {
        let slide = (size / slide_divisor).max(1);
        let spec = spec(size, (slide != size).then_some(slide), aggregate);
        let straight = run(&spec, &steps, false);
        let restored = run(&spec, &steps, true);
        prop_assert_eq!(&straight, &restored);
        prop_assert_eq!(straight, reference(&spec, &steps));
    }
}

#[test]
fn a_capture_is_the_state_at_the_barrier_while_the_instance_goes_on() {
    let spec = spec(1000, None, Aggregate::Count);
    let mut window = Window::new(&spec, &test_context(0, 1)).unwrap();
    let mut reference = Window::new(&spec, &test_context(0, 1)).unwrap();
    let mut out = Batch::new();
    for (key, time) in [("a", 0), ("b", 10), ("a", 1500), ("c", 2500)] {
        feed(&mut window, key, time, 0, &mut out);
        feed(&mut reference, key, time, 0, &mut out);
    }
    let captured = window.capture().unwrap();
    // Updates, a new window, a fired window and dropped groups after the capture touch only
    // the instance's copy.
    for (key, time) in [("a", 1), ("a", 1600), ("d", 3000)] {
        feed(&mut window, key, time, 0, &mut out);
    }
    window.on_watermark(2000, &mut out).unwrap();
    window.retain_key_groups(&(0..GROUPS / 2));

    let mut restored = Window::new(&spec, &test_context(0, 1)).unwrap();
    restore_captured(captured, &mut restored, GROUPS);
    let (mut expected, mut actual) = (Batch::new(), Batch::new());
    reference.finish(&mut expected).unwrap();
    restored.finish(&mut actual).unwrap();
    assert_eq!(collect(&actual), collect(&expected));
    assert_eq!(collect(&actual).len(), 4, "a, b in [0, 1000), a in [1000, 2000), c in [2000, 3000)");
}
