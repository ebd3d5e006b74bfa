//! Generates Zipf-distributed text for the MapReduce word count benchmark (bench/README.md).
//!
//! `gen_zipf_text OUTPUT BYTES [SEED]`: lines of 8–16 words separated by single spaces, drawn
//! from a vocabulary of 100,000 distinct lowercase words with P(rank r) ∝ 1/r (Zipf, s = 1).
//! The file is cut at the last whole line at or below BYTES. Deterministic for a seed.
//!
//! Standard library only, so the benchmark compiles it with plain `rustc -O` (Python's
//! `random.choices` needs ~6 minutes for the ~150 M words of 1 GiB; this takes seconds).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};

/// Distinct words in the vocabulary (the 100,000).
const VOCABULARY: usize = 100_000;

/// splitmix64: small, fast, good enough for sampling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// 100,000 distinct words of 2–12 letters; rank 0 is the most frequent. Shorter words get the
/// lower ranks, as in natural language.
fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(VOCABULARY);
    while words.len() < VOCABULARY {
        let rank = words.len();
        let length = 2 + (rank as f64).log10().max(0.0) as u64 + rng.below(7);
        let word: Vec<u8> = (0..length).map(|_| b'a' + rng.below(26) as u8).collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen_zipf_text OUTPUT BYTES [SEED]");
        std::process::exit(2);
    }
    let target: u64 = args[2].parse().expect("BYTES must be a number");
    let seed: u64 = args.get(3).map_or(1, |seed| seed.parse().expect("SEED must be a number"));
    let mut rng = Rng(seed);
    let words = vocabulary(&mut rng);
    let mut cumulative = Vec::with_capacity(VOCABULARY);
    let mut total = 0.0;
    for rank in 1..=VOCABULARY {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args[1]).expect("cannot create OUTPUT"));
    let mut written = 0u64;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        for position in 0..8 + rng.below(9) {
            if position > 0 {
                line.push(b' ');
            }
            let draw = rng.unit() * total;
            let rank = cumulative.partition_point(|&weight| weight <= draw).min(VOCABULARY - 1);
            line.extend_from_slice(&words[rank]);
        }
        line.push(b'\n');
        if written + line.len() as u64 > target {
            break;
        }
        out.write_all(&line).expect("write failed");
        written += line.len() as u64;
    }
    out.flush().expect("write failed");
    eprintln!("{written} bytes of Zipf text written to {}", args[1]);
}
