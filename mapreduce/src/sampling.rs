//! Sampling for a total-order sort: the AM reads a few keys from each split, picks
//! `reducers - 1` boundaries, and gives every map task a range partitioner with them.

use spindle_storage::S3Settings;

use super::error::TaskResult;
use super::functions::split_key_value;
use super::input::Split;
use super::split_reader::SplitReader;

/// The keys (first tab-separated field) of the first `keys_per_split` lines of each split,
/// as Hadoop's `SplitSampler` does: cheap, and good enough when splits are alike.
pub fn sample_input_keys(splits: &[Split], s3: &S3Settings, keys_per_split: usize) -> TaskResult<Vec<Vec<u8>>> {
    let mut sample = Vec::new();
    for split in splits {
        let mut reader = SplitReader::open(split, s3)?;
        for _ in 0..keys_per_split {
            let Some(line) = reader.next_line()? else { break };
            sample.push(split_key_value(line).0.to_vec());
        }
    }
    Ok(sample)
}

/// Chooses `reducers - 1` range boundaries from a sample of keys (the AM samples the input of
/// a total-order sort and passes the result to every map task): the sample is sorted and cut
/// into `reducers` equal parts. Fewer distinct keys than reducers leave some partitions empty.
pub fn sample_split_points(mut sample: Vec<Vec<u8>>, reducers: u32) -> Vec<Vec<u8>> {
    let reducers = reducers.max(1) as usize;
    if sample.is_empty() {
        // No sample: every key goes to the last partition, which is still a total order.
        return vec![Vec::new(); reducers - 1];
    }
    sample.sort_unstable();
    (1..reducers)
        .map(|i| sample[(i * sample.len() / reducers).min(sample.len() - 1)].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Partitioner;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn range_partitioner_puts_keys_in_order_across_partitions(
            sample in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 0..50),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 0..100),
            reducers in 1u32..6,
        ) {
            let partitioner = Partitioner::Range { boundaries: sample_split_points(sample, reducers) };
            prop_assert_eq!(partitioner.reducers(), reducers);
            prop_assert!(partitioner.validate().is_ok());
            let mut keys = keys;
            keys.sort();
            let partitions: Vec<u32> = keys.iter().map(|key| partitioner.partition(key)).collect();
            prop_assert!(partitions.windows(2).all(|pair| pair[0] <= pair[1]), "sorted keys got partitions {:?}", partitions);
            prop_assert!(partitions.iter().all(|&p| p < reducers));
        }
    }

    #[test]
    fn input_keys_are_sampled_from_the_start_of_each_split() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("input");
        std::fs::write(&path, "c\t1\nb\t2\na\n").unwrap();
        let split = |start, length| Split {
            path: path.display().to_string(),
            start,
            length,
        };
        let sample = sample_input_keys(&[split(0, 4), split(4, 6)], &S3Settings::default(), 1).unwrap();
        assert_eq!(sample, [b"c".to_vec(), b"b".to_vec()]);
        assert_eq!(sample_split_points(sample, 2), [b"c".to_vec()]);
    }
}
