//! What an instance counts (records and bytes in and out, late and bad records), on the wire
//! from workers and, summed per operator, in every checkpoint's metadata.

use serde::{Deserialize, Serialize};

/// Counts of one instance since it started, or totals of one operator since the job started.
/// Every field defaults to 0, so metadata and messages written before a field existed still
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordCounts {
    /// Records taken from inputs and processed (sources: none).
    pub records_in: u64,
    /// Records sent on, after the fused transforms of each outgoing edge (sinks: none).
    pub records_out: u64,
    /// Bytes of the records taken in, in the batch format they travel in.
    pub bytes_in: u64,
    /// Bytes of the records sent on, in the batch format.
    pub bytes_out: u64,
    /// Records dropped because the watermark had passed their window.
    pub late_records: u64,
    /// Records skipped because a field they need does not parse.
    pub bad_records: u64,
}

impl RecordCounts {
    /// Each figure of `self` and `other` added.
    pub fn plus(self, other: RecordCounts) -> RecordCounts {
        self.zip(other, u64::saturating_add)
    }

    /// Each figure of `self` less `other`, at least 0 (what was counted since `other`).
    pub fn since(self, other: RecordCounts) -> RecordCounts {
        self.zip(other, u64::saturating_sub)
    }

    /// The larger of each figure (counters only grow, so this is the newer of two readings
    /// that may arrive out of order).
    pub fn newest(self, other: RecordCounts) -> RecordCounts {
        self.zip(other, u64::max)
    }

    fn zip(self, other: RecordCounts, op: fn(u64, u64) -> u64) -> RecordCounts {
        RecordCounts {
            records_in: op(self.records_in, other.records_in),
            records_out: op(self.records_out, other.records_out),
            bytes_in: op(self.bytes_in, other.bytes_in),
            bytes_out: op(self.bytes_out, other.bytes_out),
            late_records: op(self.late_records, other.late_records),
            bad_records: op(self.bad_records, other.bad_records),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_per_figure_and_never_below_zero() {
        let a = RecordCounts {
            records_in: 10,
            bytes_out: 5,
            ..RecordCounts::default()
        };
        let b = RecordCounts {
            records_in: 4,
            bytes_out: 9,
            late_records: 1,
            ..RecordCounts::default()
        };
        assert_eq!(a.plus(b).records_in, 14);
        assert_eq!((a.since(b).records_in, a.since(b).bytes_out), (6, 0));
        assert_eq!(
            a.newest(b),
            RecordCounts {
                records_in: 10,
                bytes_out: 9,
                late_records: 1,
                ..RecordCounts::default()
            }
        );
        let old: RecordCounts = serde_json::from_str(r#"{"records_in": 3}"#).unwrap();
        assert_eq!(
            old,
            RecordCounts {
                records_in: 3,
                ..RecordCounts::default()
            },
            "missing figures read as 0"
        );
    }
}
