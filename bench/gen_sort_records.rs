//! Generates 100-byte records for the MapReduce sort benchmark (bench/README.md), TeraSort's
//! shape as text: a 10-byte random key, 89 bytes of payload, `\n`.
//!
//! `gen_sort_records OUTPUT BYTES [SEED]`: BYTES / 100 records. Keys are printable ASCII
//! `!`..`~` (no space, no tab, so the whole line is the sort key and the key decides the order);
//! the payload is the record number in decimal followed by filler letters.
//!
//! Standard library only, so the benchmark compiles it with plain `rustc -O`.

use std::fs::File;
use std::io::{BufWriter, Write};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen_sort_records OUTPUT BYTES [SEED]");
        std::process::exit(2);
    }
    let records = args[2].parse::<u64>().expect("BYTES must be a number") / 100;
    let seed: u64 = args.get(3).map_or(1, |seed| seed.parse().expect("SEED must be a number"));
    let mut rng = Rng(seed);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args[1]).expect("cannot create OUTPUT"));
    let mut record = [0u8; 100];
    for number in 0..records {
        for byte in &mut record[..10] {
            *byte = b'!' + (rng.next() % 94) as u8;
        }
        let payload = format!("{number:020}");
        record[10..30].copy_from_slice(payload.as_bytes());
        for (index, byte) in record[30..99].iter_mut().enumerate() {
            *byte = b'A' + ((number as usize + index) % 26) as u8;
        }
        record[99] = b'\n';
        out.write_all(&record).expect("write failed");
    }
    out.flush().expect("write failed");
    eprintln!("{records} records ({} bytes) written to {}", records * 100, args[1]);
}
