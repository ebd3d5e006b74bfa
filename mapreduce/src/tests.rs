//! End-to-end tests of the task runtime: map tasks write map outputs, reduce tasks read them
//! back as the shuffle would serve them, and the results match simple in-memory references.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use spindle_protocol::{Builtin, TaskFunction};

use super::collector::MapOutputCollector;
use super::combine::GroupFunction;
use super::functions::BuiltinReducer;
use super::*;

/// Deterministic text: words from a skewed vocabulary, lines of a few words.
pub(super) fn generate_text(bytes: usize, seed: u64) -> String {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<String> = (0..5000)
        .map(|_| {
            let len = 1 + next() % 10;
            (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect()
        })
        .collect();
    let mut text = String::with_capacity(bytes + 100);
    while text.len() < bytes {
        let words = next() % 14;
        for word in 0..words {
            let skew = (next() % 1000) as f64 / 1000.0;
            text.push_str(&vocabulary[(skew * skew * skew * vocabulary.len() as f64) as usize]);
            text.push(if word % 5 == 4 { '\t' } else { ' ' });
        }
        text.push('\n');
    }
    text
}

fn word_count_reference(text: &str) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for word in text.split_ascii_whitespace() {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Runs map tasks over every split of `input`, then one reduce task per partition; returns the
/// part files' contents in partition order.
fn run_job(
    input: &Path,
    split_size: u64,
    mapper: TaskFunction,
    combiner: Option<TaskFunction>,
    reducer: TaskFunction,
    partitioner: Partitioner,
    sort_buffer_bytes: usize,
) -> TaskResult<Vec<String>> {
    let work = tempfile::tempdir().unwrap();
    let files = expand_inputs(&[input.display().to_string()], &Default::default())?;
    let mut outputs = Vec::new();
    for (number, split) in compute_splits(&files, split_size).into_iter().enumerate() {
        let report = run_map_task(MapTaskParams {
            split,
            mapper: mapper.clone(),
            combiner: combiner.clone(),
            partitioner: partitioner.clone(),
            sort_buffer_bytes,
            output_dir: work.path().to_owned(),
            output_name: format!("map-{number:05}"),
            env: BTreeMap::new(),
        })?;
        assert_eq!(report.output.read_index()?, report.index);
        outputs.push(report);
    }
    let mut parts = Vec::new();
    for partition in 0..partitioner.reducers() {
        let mut segments = Vec::new();
        for (number, report) in outputs.iter().enumerate() {
            segments.push(MapSegment {
                name: format!("map {number}"),
                reader: Box::new(report.output.open_segment(&report.index, partition)?),
            });
        }
        let report = run_reduce_task(ReduceTaskParams {
            partition,
            segments,
            reducer: reducer.clone(),
            output_dir: work.path().to_owned(),
            env: BTreeMap::new(),
        })?;
        assert_eq!(report.output.file_name().unwrap().to_str().unwrap(), part_file_name(partition));
        parts.push(fs::read_to_string(&report.output).unwrap());
    }
    Ok(parts)
}

fn parse_counts(parts: &[String]) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for line in parts.iter().flat_map(|part| part.lines()) {
        let (word, count) = line.split_once('\t').expect("key<TAB>value");
        assert!(
            counts.insert(word.to_owned(), count.parse().unwrap()).is_none(),
            "{word} is in two partitions"
        );
    }
    counts
}

pub(super) fn builtin(builtin: Builtin) -> TaskFunction {
    TaskFunction::Builtin(builtin)
}

pub(super) fn write_input(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("input.txt");
    fs::write(&path, text).unwrap();
    (directory, path)
}

#[test]
fn word_count_through_map_and_reduce_equals_a_hashmap_reference() {
    let text = generate_text(200_000, 7);
    let (_directory, input) = write_input(&text);
    let reference = word_count_reference(&text);
    // Tiny sort buffers force many spills and merges, with and without combiners.
    for (combiner, sort_buffer_bytes) in [
        (Some(builtin(Builtin::Sum)), 4096),
        (Some(builtin(Builtin::Sum)), 1 << 20),
        (Some(builtin(Builtin::Count)), 4096),
        (None, 16_384),
    ] {
        let parts = run_job(
            &input,
            50_000,
            builtin(Builtin::Wordcount),
            combiner.clone(),
            builtin(Builtin::Sum),
            Partitioner::Hash { reducers: 3 },
            sort_buffer_bytes,
        )
        .unwrap();
        for part in &parts {
            let keys: Vec<&str> = part.lines().map(|line| line.split('\t').next().unwrap()).collect();
            assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "a part file is sorted by key");
        }
        assert_eq!(parse_counts(&parts), reference, "combiner {combiner:?}, buffer {sort_buffer_bytes}");
    }
}

#[test]
fn streaming_awk_mapper_and_reducer_count_words() {
    let text = generate_text(30_000, 11);
    let (_directory, input) = write_input(&text);
    let parts = run_job(
        &input,
        10_000,
        TaskFunction::Command(r#"awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'"#.into()),
        Some(TaskFunction::Command(
            r#"awk -F'\t' '{ s[$1] += $2 } END { for (k in s) print k "\t" s[k] }'"#.into(),
        )),
        TaskFunction::Command(r#"awk -F'\t' '{ s[$1] += $2 } END { for (k in s) print k "\t" s[k] }'"#.into()),
        Partitioner::Hash { reducers: 2 },
        2048,
    )
    .unwrap();
    assert_eq!(parse_counts(&parts), word_count_reference(&text));
}

#[test]
fn total_order_sort_puts_ranges_in_partition_order() {
    let text = generate_text(40_000, 3);
    let (_directory, input) = write_input(&text);
    let lines: Vec<&str> = text.lines().collect();
    let sample = lines
        .iter()
        .step_by(7)
        .map(|line| line.split('\t').next().unwrap().as_bytes().to_vec())
        .collect();
    let partitioner = Partitioner::Range {
        boundaries: sample_split_points(sample, 4),
    };
    let parts = run_job(
        &input,
        9000,
        builtin(Builtin::Sort),
        None,
        builtin(Builtin::Sort),
        partitioner,
        3000,
    )
    .unwrap();
    assert!(
        parts.iter().filter(|part| !part.is_empty()).count() >= 3,
        "keys spread over reducers"
    );
    let sorted: Vec<&str> = parts.iter().flat_map(|part| part.lines()).collect();
    // Keys (first tab-separated field) are in order across the part files.
    let keys: Vec<&str> = sorted.iter().map(|line| line.split('\t').next().unwrap()).collect();
    assert!(keys.windows(2).all(|pair| pair[0] <= pair[1]));
    // Lines come out unchanged, but for a tab ending the key of an empty value.
    let mut lines: Vec<&str> = lines
        .into_iter()
        .map(|line| match line.split_once('\t') {
            Some((key, "")) => key,
            _ => line,
        })
        .collect();
    let mut got = sorted.clone();
    got.sort_unstable();
    lines.sort_unstable();
    assert!(got == lines, "the sorted output has the input's lines");
}

#[test]
fn grep_keeps_matching_lines_and_counts_them() {
    let (_directory, input) = write_input("a needle\nhay\na needle\nneedles too\n");
    let parts = run_job(
        &input,
        1 << 20,
        builtin(Builtin::Grep("needle".into())),
        Some(builtin(Builtin::Sum)),
        builtin(Builtin::Sum),
        Partitioner::Hash { reducers: 1 },
        1 << 20,
    )
    .unwrap();
    assert_eq!(parts, ["a needle\t2\nneedles too\t1\n"]);
}

#[test]
fn a_bad_sum_value_fails_the_task_naming_the_key() {
    let (_directory, input) = write_input("apple\t3\nbanana\tlots\n");
    for combiner in [Some(builtin(Builtin::Sum)), None] {
        let error = run_job(
            &input,
            1 << 20,
            builtin(Builtin::Identity),
            combiner,
            builtin(Builtin::Sum),
            Partitioner::Hash { reducers: 1 },
            1 << 20,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`banana`") && error.contains("`lots`"), "{error}");
    }
}

#[test]
fn a_failing_streaming_mapper_fails_the_map_task() {
    let (_directory, input) = write_input("x\n");
    let error = run_job(
        &input,
        1 << 20,
        TaskFunction::Command("echo broken >&2; exit 4".into()),
        None,
        builtin(Builtin::Identity),
        Partitioner::Hash { reducers: 1 },
        1 << 20,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("exit status: 4") && error.contains("broken"), "{error}");
}

#[test]
fn map_task_counters_add_up() {
    let (directory, input) = write_input("a b a\n\nc\n");
    let report = run_map_task(MapTaskParams {
        split: Split {
            path: input.display().to_string(),
            start: 0,
            length: 9,
        },
        mapper: builtin(Builtin::Wordcount),
        combiner: Some(builtin(Builtin::Sum)),
        partitioner: Partitioner::Hash { reducers: 2 },
        sort_buffer_bytes: 1 << 20,
        output_dir: directory.path().to_owned(),
        output_name: "m".into(),
        env: BTreeMap::new(),
    })
    .unwrap();
    let counters = report.counters;
    assert_eq!((counters.map_input_records, counters.map_input_bytes), (3, 9));
    assert_eq!(
        (
            counters.map_output_records,
            counters.combine_input_records,
            counters.combine_output_records
        ),
        (4, 4, 3)
    );
    assert_eq!((counters.spilled_records, counters.spills), (3, 0));
    assert_eq!(counters.bytes_written, fs::metadata(&report.output.data).unwrap().len());
    assert_eq!(report.index.len(), 3);
}

#[test]
fn invalid_map_parameters_are_refused() {
    let params = MapTaskParams {
        split: Split {
            path: "/nonexistent".into(),
            start: 0,
            length: 1,
        },
        mapper: builtin(Builtin::Wordcount),
        combiner: None,
        partitioner: Partitioner::Hash { reducers: 1 },
        sort_buffer_bytes: 1,
        output_dir: "/tmp".into(),
        output_name: "../escape".into(),
        env: BTreeMap::new(),
    };
    assert!(run_map_task(params.clone()).unwrap_err().to_string().contains("must match"));
    let missing = run_map_task(MapTaskParams {
        output_name: "ok".into(),
        ..params
    })
    .unwrap_err()
    .to_string();
    assert!(missing.contains("/nonexistent"), "{missing}");
}

/// Reads a map output back through its index: the records of each partition.
fn read_map_output(files: &MapOutputFiles, reducers: u32) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let index = files.read_index().unwrap();
    assert_eq!(index.len(), reducers as usize + 1);
    (0..reducers)
        .map(|partition| {
            let mut reader = FrameReader::new(files.open_segment(&index, partition).unwrap());
            let mut records = Vec::new();
            while reader.advance().unwrap() {
                records.push((reader.key().to_vec(), reader.value().to_vec()));
            }
            records
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn spills_and_merges_equal_an_in_memory_reference(
        records in proptest::collection::vec((proptest::collection::vec(b'a'..=b'd', 0..5), 0i64..100), 0..200),
        memory_bytes in 40usize..400,
        reducers in 1u32..4,
        combine in any::<bool>(),
        merge_factor in 2usize..5,
    ) {
        let directory = tempfile::tempdir().unwrap();
        let partitioner = Partitioner::Hash { reducers };
        let combiner = combine.then_some(GroupFunction::Builtin(BuiltinReducer::Sum));
        let mut collector = MapOutputCollector::new(&partitioner, combiner, memory_bytes, directory.path(), "out").with_merge_factor(merge_factor);
        for (key, value) in &records {
            collector.collect(key, value.to_string().as_bytes()).unwrap();
        }
        let (files, _, counters) = collector.finish().unwrap();
        let got = read_map_output(&files, reducers);

        let mut expected = vec![Vec::new(); reducers as usize];
        if combine {
            let mut sums: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (key, value) in &records {
                *sums.entry(key.clone()).or_default() += value;
            }
            for (key, sum) in sums {
                expected[partitioner.partition(&key) as usize].push((key, sum.to_string().into_bytes()));
            }
        } else {
            let mut sorted = records.clone();
            sorted.sort_by(|a, b| a.0.cmp(&b.0)); // stable: equal keys keep arrival order
            for (key, value) in sorted {
                expected[partitioner.partition(&key) as usize].push((key, value.to_string().into_bytes()));
            }
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(counters.map_output_records, records.len() as u64);
        prop_assert!(combine || records.len() < 20 || counters.spills > 0, "tiny buffers spill");
        // Leftover spill files are removed; only the output remains.
        prop_assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 2);
    }
}
