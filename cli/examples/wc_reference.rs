//! The yardstick of the MapReduce word count benchmark (bench/README.md): a plain hand-written
//! two-thread word count, as someone would write it without a framework.
//!
//! `wc_reference [--fx] INPUT [COUNTS_OUT]`: two threads each count the words of one half of the file
//! (the halves meet at a line boundary), reading 1 MiB blocks cut after their last newline and
//! splitting on ASCII whitespace — the built-in `wordcount` mapper's definition of a word —
//! into a std `HashMap`; the smaller map is then merged into the larger. With COUNTS_OUT it
//! writes `word<TAB>count` lines (unsorted), inside the timed region, as the job writes its
//! output. Prints one JSON line: bytes, words, distinct words, seconds, MB/s, words/s.
//!
//! The std `HashMap` hashes with SipHash (DoS-resistant, not fast); `--fx` swaps in a
//! hand-written multiply-rotate hash in the style of rustc's FxHash, the first thing a
//! performance-minded author would reach for: a harder yardstick.
//!
//! Build: `cargo build --release -p spindle-cli --example wc_reference`

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes read per `read` call.
const BLOCK: usize = 1 << 20;

type Counts<S> = HashMap<Vec<u8>, u64, S>;

/// FxHash's mixing step over 8-byte chunks (std only, so no crate).
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
        let mut tail = 0u64;
        for (index, &byte) in chunks.remainder().iter().enumerate() {
            tail |= (byte as u64) << (8 * index);
        }
        self.add(tail);
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(byte as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The first byte after the newline at or after `offset` (a line start), or the file's end.
fn next_line_start(path: &Path, offset: u64, length: u64) -> u64 {
    if offset == 0 {
        return 0;
    }
    let mut file = File::open(path).expect("cannot open INPUT");
    file.seek(SeekFrom::Start(offset - 1)).expect("seek failed");
    let mut position = offset - 1;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = file.read(&mut buffer).expect("read failed");
        if read == 0 {
            return length;
        }
        if let Some(newline) = buffer[..read].iter().position(|&byte| byte == b'\n') {
            return position + newline as u64 + 1;
        }
        position += read as u64;
    }
}

fn count_words<S: BuildHasher>(text: &[u8], counts: &mut Counts<S>) -> u64 {
    let mut words = 0;
    for word in text.split(|byte| byte.is_ascii_whitespace()).filter(|word| !word.is_empty()) {
        words += 1;
        match counts.get_mut(word) {
            Some(count) => *count += 1,
            None => {
                counts.insert(word.to_vec(), 1);
            }
        }
    }
    words
}

/// Counts the words of the lines in `[start, end)`; returns the counts and the word total.
fn count_range<S: BuildHasher + Default>(path: &Path, start: u64, end: u64) -> (Counts<S>, u64) {
    let mut file = File::open(path).expect("cannot open INPUT");
    file.seek(SeekFrom::Start(start)).expect("seek failed");
    let mut remaining = end - start;
    let mut counts = Counts::<S>::default();
    let mut words = 0;
    let mut block = vec![0u8; BLOCK];
    let mut carried = 0; // bytes of an unfinished line at the front of `block`
    while remaining > 0 {
        if carried == block.len() {
            block.resize(block.len() * 2, 0); // a line longer than a block
        }
        let want = (block.len() - carried).min(remaining as usize);
        let read = file.read(&mut block[carried..carried + want]).expect("read failed");
        if read == 0 {
            break;
        }
        remaining -= read as u64;
        let filled = carried + read;
        let complete = if remaining == 0 {
            filled
        } else {
            block[..filled]
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |newline| newline + 1)
        };
        words += count_words(&block[..complete], &mut counts);
        block.copy_within(complete..filled, 0);
        carried = filled - complete;
    }
    words += count_words(&block[..carried], &mut counts);
    (counts, words)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let fx = args.first().is_some_and(|arg| arg == "--fx");
    if fx {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("usage: wc_reference [--fx] INPUT [COUNTS_OUT]");
        std::process::exit(2);
    }
    if fx {
        run::<BuildHasherDefault<FxHasher>>(&args, "fx");
    } else {
        run::<std::collections::hash_map::RandomState>(&args, "std");
    }
}

fn run<S: BuildHasher + Default + Send + 'static>(args: &[String], hasher: &str) {
    let input = PathBuf::from(&args[0]);
    let started = Instant::now();
    let length = std::fs::metadata(&input).expect("cannot stat INPUT").len();
    let middle = next_line_start(&input, length / 2, length);
    let second_half = {
        let input = input.clone();
        std::thread::spawn(move || count_range::<S>(&input, middle, length))
    };
    let (first, first_words) = count_range::<S>(&input, 0, middle);
    let (second, second_words) = second_half.join().expect("the counting thread panicked");
    let (mut counts, smaller) = if first.len() >= second.len() {
        (first, second)
    } else {
        (second, first)
    };
    for (word, count) in smaller {
        *counts.entry(word).or_insert(0) += count;
    }
    if let Some(output) = args.get(1) {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(output).expect("cannot create COUNTS_OUT"));
        for (word, count) in &counts {
            out.write_all(word).expect("write failed");
            writeln!(out, "\t{count}").expect("write failed");
        }
        out.flush().expect("write failed");
    }
    let seconds = started.elapsed().as_secs_f64();
    let words = first_words + second_words;
    println!(
        "{{\"hasher\": \"{hasher}\", \"bytes\": {length}, \"words\": {words}, \"distinct\": {}, \"seconds\": {seconds:.4}, \"mb_per_s\": {:.1}, \"words_per_s\": {:.0}}}",
        counts.len(),
        length as f64 / 1e6 / seconds,
        words as f64 / seconds
    );
}
