//! The map task throughput benchmark (ignored in normal runs; run it in release):
//! `cargo test --release -p spindle-app-master --lib mapreduce::bench_tests -- --ignored --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use spindle_protocol::Builtin;

use super::tests::{builtin, generate_text, write_input};
use super::*;

#[test]
#[ignore = "benchmark: cargo test --release -p spindle-app-master --lib mapreduce::bench_tests -- --ignored --nocapture"]
fn bench_word_count_map_task_throughput() {
    let text = generate_text(100 << 20, 42);
    let (directory, input) = write_input(&text);
    let bytes = text.len() as f64;
    drop(text);
    let _ = fs::read(&input).unwrap(); // warm the page cache

    // Best of three runs each: other work on the machine makes single runs noisy.
    let mut map_seconds = f64::MAX;
    let mut baseline_seconds = f64::MAX;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let report = run_map_task(MapTaskParams {
            split: Split {
                path: input.display().to_string(),
                start: 0,
                length: bytes as u64,
            },
            mapper: builtin(Builtin::Wordcount),
            combiner: Some(builtin(Builtin::Sum)),
            partitioner: Partitioner::Hash { reducers: 2 },
            sort_buffer_bytes: 64 << 20,
            output_dir: directory.path().to_owned(),
            output_name: "bench".into(),
            env: BTreeMap::new(),
        })
        .unwrap();
        map_seconds = map_seconds.min(started.elapsed().as_secs_f64());

        let started = std::time::Instant::now();
        let distinct = hand_written_word_count(&input, &directory.path().join("baseline.txt"));
        baseline_seconds = baseline_seconds.min(started.elapsed().as_secs_f64());
        assert_eq!(distinct as u64, report.counters.combine_output_records);
    }
    // The general path for comparison: no combiner, so every word is sorted and spilled.
    let started = std::time::Instant::now();
    let sorted = run_map_task(MapTaskParams {
        split: Split {
            path: input.display().to_string(),
            start: 0,
            length: bytes as u64,
        },
        mapper: builtin(Builtin::Wordcount),
        combiner: None,
        partitioner: Partitioner::Hash { reducers: 2 },
        sort_buffer_bytes: 64 << 20,
        output_dir: directory.path().to_owned(),
        output_name: "bench-no-combiner".into(),
        env: BTreeMap::new(),
    })
    .unwrap();
    println!(
        "map task (wordcount, no combiner, 2 reducers, {} spills): {:.0} MB/s",
        sorted.counters.spills,
        bytes / 1e6 / started.elapsed().as_secs_f64()
    );
    println!(
        "map task (wordcount + sum combiner, 2 reducers): {:.0} MB/s; hand-written two-thread word count: {:.0} MB/s; ratio {:.2}",
        bytes / 1e6 / map_seconds,
        bytes / 1e6 / baseline_seconds,
        baseline_seconds / map_seconds
    );
}

/// The benchmark's yardstick: one thread reads 1 MiB blocks (cut after the last whitespace),
/// another counts words in a `HashMap` and writes `word<TAB>count` lines sorted.
fn hand_written_word_count(input: &Path, output: &Path) -> usize {
    use std::io::{Read, Write};
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let input = input.to_owned();
    let reader = std::thread::spawn(move || {
        let mut file = fs::File::open(input).unwrap();
        let mut carry = Vec::new();
        loop {
            let mut block = std::mem::take(&mut carry);
            let start = block.len();
            block.resize(start + (1 << 20), 0);
            let read = file.read(&mut block[start..]).unwrap();
            block.truncate(start + read);
            if read == 0 {
                if !block.is_empty() {
                    sender.send(block).unwrap();
                }
                return;
            }
            let cut = block.iter().rposition(|byte| byte.is_ascii_whitespace()).map_or(0, |at| at + 1);
            carry = block.split_off(cut);
            sender.send(block).unwrap();
        }
    });
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    for block in receiver {
        for word in block.split(|byte| byte.is_ascii_whitespace()).filter(|word| !word.is_empty()) {
            match counts.get_mut(word) {
                Some(count) => *count += 1,
                None => {
                    counts.insert(word.to_vec(), 1);
                }
            }
        }
    }
    reader.join().unwrap();
    let mut words: Vec<_> = counts.into_iter().collect();
    words.sort_unstable();
    let mut out = std::io::BufWriter::new(fs::File::create(output).unwrap());
    for (word, count) in &words {
        out.write_all(word).unwrap();
        writeln!(out, "\t{count}").unwrap();
    }
    out.flush().unwrap();
    words.len()
}
