//! K-way merge of framed, key-sorted segments (map spills, or one partition's segments from
//! every map): streaming, one record per source in memory, stable (equal keys come out in the
//! order of their sources).

use std::io::Read;

use super::error::{TaskError, TaskResult};
use super::records::{FrameReader, SortedRecords};

/// Merges sorted sources with a binary min-heap of source indices ordered by (key, index).
pub struct MergedRecords<R> {
    /// One reader per source, each positioned on its current record.
    sources: Vec<FrameReader<R>>,
    /// Names of the sources, for errors ("spill 3", "map 12").
    names: Vec<String>,
    /// Indices of the sources that still have a record, as a heap: `heap[0]` has the least key.
    heap: Vec<usize>,
    /// Whether the sources were read for their first record.
    primed: bool,
    /// Whether `heap[0]`'s record was returned and must be advanced past first.
    top_returned: bool,
}

impl<R: Read> MergedRecords<R> {
    /// A merge of named sources, each a stream of frames sorted by key.
    pub fn new(sources: Vec<(String, R)>) -> Self {
        let (names, readers) = sources.into_iter().map(|(name, reader)| (name, FrameReader::new(reader))).unzip();
        MergedRecords {
            sources: readers,
            names,
            heap: Vec::new(),
            primed: false,
            top_returned: false,
        }
    }

    fn advance(&mut self, source: usize) -> TaskResult<bool> {
        self.sources[source].advance().map_err(|error| TaskError::CorruptMapOutput {
            origin: self.names[source].clone(),
            reason: error.to_string(),
        })
    }

    fn less(&self, a: usize, b: usize) -> bool {
        (self.sources[a].key(), a) < (self.sources[b].key(), b)
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            if left < self.heap.len() && self.less(self.heap[left], self.heap[least]) {
                least = left;
            }
            if right < self.heap.len() && self.less(self.heap[right], self.heap[least]) {
                least = right;
            }
            if least == at {
                return;
            }
            self.heap.swap(at, least);
            at = least;
        }
    }
}

impl<R: Read> SortedRecords for MergedRecords<R> {
    fn next_record(&mut self) -> TaskResult<Option<(&[u8], &[u8])>> {
        if !self.primed {
            self.primed = true;
            for source in 0..self.sources.len() {
                if self.advance(source)? {
                    self.heap.push(source);
                }
            }
            for at in (0..self.heap.len() / 2).rev() {
                self.sift_down(at);
            }
        } else if self.top_returned {
            let top = self.heap[0];
            if !self.advance(top)? {
                let last = self.heap.pop().expect("the heap has the top");
                if !self.heap.is_empty() {
                    self.heap[0] = last;
                }
            }
            self.sift_down(0);
        }
        let Some(&top) = self.heap.first() else {
            self.top_returned = false;
            return Ok(None);
        };
        self.top_returned = true;
        let source = &self.sources[top];
        Ok(Some((source.key(), source.value())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::write_frame;
    use proptest::prelude::*;

    fn framed(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (key, value) in records {
            write_frame(&mut bytes, key, value).unwrap();
        }
        bytes
    }

    proptest! {
        #[test]
        fn merging_sorted_sources_is_a_stable_sort(
            sources in proptest::collection::vec(
                proptest::collection::vec((proptest::collection::vec(b'a'..=b'c', 0..3), any::<u8>()), 0..20),
                0..6,
            ),
        ) {
            let mut expected = Vec::new();
            let mut inputs = Vec::new();
            for (index, source) in sources.iter().enumerate() {
                let mut records: Vec<(Vec<u8>, Vec<u8>)> = source.iter().map(|(key, value)| (key.clone(), vec![index as u8, *value])).collect();
                records.sort_by(|a, b| a.0.cmp(&b.0));
                expected.extend(records.iter().cloned().map(|record| (record, index)));
                inputs.push((format!("source {index}"), std::io::Cursor::new(framed(&records))));
            }
            // Stable: by key, then source, then position in the source.
            expected.sort_by(|a, b| (&a.0.0, a.1).cmp(&(&b.0.0, b.1)));
            let expected: Vec<_> = expected.into_iter().map(|(record, _)| record).collect();
            let mut merged = MergedRecords::new(inputs);
            let mut got = Vec::new();
            while let Some((key, value)) = merged.next_record().unwrap() {
                got.push((key.to_vec(), value.to_vec()));
            }
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_truncated_source_is_named_in_the_error() {
        let bytes = framed(&[(b"key".to_vec(), b"value".to_vec())]);
        let mut merged = MergedRecords::new(vec![("map 7".to_owned(), &bytes[..bytes.len() - 1])]);
        let message = merged.next_record().unwrap_err().to_string();
        assert!(message.contains("map 7"), "{message}");
    }
}
