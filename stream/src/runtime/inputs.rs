//! An instance's input channels: barrier alignment, watermarks, ends.
//!
//! Aligned checkpoints (Chandy-Lamport as Flink does it): once barrier `n` arrives on a
//! channel, that channel's later events wait until `n` has arrived on every other live
//! channel; then the instance snapshots and the held events are processed. A channel added by
//! a rescale at barrier `n` carries only data after `n`, so it waits until `n` is done here.

use std::collections::{BTreeMap, VecDeque};

use super::net::CreditReturn;
use crate::record::EventTime;
use crate::wire::{DataEvent, InstanceId};

#[derive(Default)]
struct Channel {
    credits: Option<CreditReturn>,
    /// A barrier delivered on it that is not aligned yet: it is blocked.
    barrier: Option<u64>,
    ended: bool,
    watermark: EventTime,
    starts_after: Option<u64>,
}

/// The input side of one instance.
pub struct Inputs {
    channels: BTreeMap<InstanceId, Channel>,
    /// Events of blocked channels, in arrival order.
    held: VecDeque<(InstanceId, DataEvent)>,
    /// The latest checkpoint this instance has taken.
    pub last_checkpoint: u64,
    /// Waiting for state (a rescale gave it key groups not loaded yet): process nothing.
    pub paused: bool,
    watermark: EventTime,
}

/// What happened to the instance's combined input.
#[derive(Debug, PartialEq, Eq)]
pub enum InputChange {
    Nothing,
    /// Every live channel delivered barrier `n`: snapshot now.
    Aligned(u64),
    /// The combined watermark advanced.
    Watermark(EventTime),
    /// Every channel ended for good.
    Ended,
}

impl Inputs {
    pub fn new(expected: impl IntoIterator<Item = (InstanceId, Option<u64>)>, last_checkpoint: u64) -> Inputs {
        let channels = expected
            .into_iter()
            .map(|(from, starts_after)| {
                (
                    from,
                    Channel {
                        watermark: EventTime::MIN,
                        starts_after,
                        ..Channel::default()
                    },
                )
            })
            .collect();
        Inputs {
            channels,
            held: VecDeque::new(),
            last_checkpoint,
            paused: false,
            watermark: EventTime::MIN,
        }
    }

    /// A rescale adds channels whose data starts after barrier `starts_after`.
    pub fn expect(&mut self, from: InstanceId, starts_after: Option<u64>) {
        let channel = self.channels.entry(from).or_insert(Channel {
            watermark: EventTime::MIN,
            ..Channel::default()
        });
        if starts_after.is_some() {
            channel.starts_after = starts_after;
        }
    }

    /// A sender connected; one added by a rescale says after which barrier its data starts
    /// (it may connect before the AM's note saying so arrives).
    pub fn connected(&mut self, from: InstanceId, credits: CreditReturn, starts_after: Option<u64>) {
        let channel = self.channels.entry(from).or_insert(Channel {
            watermark: EventTime::MIN,
            ..Channel::default()
        });
        channel.credits = Some(credits);
        if starts_after.is_some() {
            channel.starts_after = starts_after;
        }
    }

    fn blocked(&self, from: InstanceId) -> bool {
        self.paused
            || self
                .channels
                .get(&from)
                .is_some_and(|channel| channel.barrier.is_some() || channel.starts_after.is_some_and(|after| after > self.last_checkpoint))
    }

    /// An event arrived: returns it if it may be handled now, else holds it.
    pub fn admit(&mut self, from: InstanceId, event: DataEvent) -> Option<(InstanceId, DataEvent)> {
        if self.blocked(from) || self.held.iter().any(|(held_from, _)| *held_from == from) {
            self.held.push_back((from, event));
            None
        } else {
            Some((from, event))
        }
    }

    /// The first held event whose channel is no longer blocked.
    pub fn next_ready(&mut self) -> Option<(InstanceId, DataEvent)> {
        if self.paused || self.held.is_empty() {
            return None;
        }
        let position = self.held.iter().position(|(from, _)| !self.blocked(*from))?;
        // Keep each channel's order: an earlier held event of the same channel goes first
        // (it is, since `position` is the first unblocked one).
        self.held.remove(position)
    }

    /// Gives a processed batch's credit back to its sender.
    pub fn processed_batch(&self, from: InstanceId) {
        if let Some(credits) = self.channels.get(&from).and_then(|channel| channel.credits.as_ref()) {
            credits.grant(1);
        }
    }

    pub fn on_barrier(&mut self, from: InstanceId, checkpoint: u64) -> InputChange {
        if let Some(channel) = self.channels.get_mut(&from) {
            channel.barrier = Some(checkpoint);
        }
        self.check_aligned()
    }

    fn check_aligned(&self) -> InputChange {
        let Some(checkpoint) = self.channels.values().find_map(|channel| channel.barrier) else {
            return InputChange::Nothing;
        };
        let aligned = self.channels.values().all(|channel| {
            channel.ended || channel.barrier == Some(checkpoint) || channel.starts_after.is_some_and(|after| after >= checkpoint)
        });
        if aligned {
            InputChange::Aligned(checkpoint)
        } else {
            InputChange::Nothing
        }
    }

    /// The snapshot of `checkpoint` is taken: unblock.
    pub fn checkpoint_done(&mut self, checkpoint: u64) {
        self.last_checkpoint = self.last_checkpoint.max(checkpoint);
        for channel in self.channels.values_mut() {
            if channel.barrier == Some(checkpoint) {
                channel.barrier = None;
            }
        }
    }

    pub fn on_watermark(&mut self, from: InstanceId, watermark: EventTime) -> InputChange {
        if let Some(channel) = self.channels.get_mut(&from) {
            channel.watermark = channel.watermark.max(watermark);
        }
        self.recompute_watermark()
    }

    fn recompute_watermark(&mut self) -> InputChange {
        let combined = self
            .channels
            .values()
            .filter(|channel| !channel.ended)
            .map(|channel| channel.watermark)
            .min()
            .unwrap_or(EventTime::MAX);
        if combined > self.watermark {
            self.watermark = combined;
            InputChange::Watermark(combined)
        } else {
            InputChange::Nothing
        }
    }

    /// A channel ended: for good (`last`), or its sender was retired by a rescale.
    pub fn on_end(&mut self, from: InstanceId, last: bool) -> Vec<InputChange> {
        if last {
            if let Some(channel) = self.channels.get_mut(&from) {
                channel.ended = true;
            }
        } else {
            self.channels.remove(&from);
        }
        let mut changes = vec![self.check_aligned()];
        if last && self.channels.values().all(|channel| channel.ended) {
            // No watermark first: `finish` emits what is left, and only then may the final
            // watermark pass (records after it would be late downstream).
            changes.push(InputChange::Ended);
        } else {
            changes.push(self.recompute_watermark());
        }
        changes.retain(|change| *change != InputChange::Nothing);
        changes
    }

    pub fn watermark(&self) -> EventTime {
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Batch;

    fn batch() -> DataEvent {
        DataEvent::Batch(Batch::new())
    }

    #[test]
    fn a_channel_past_its_barrier_waits_for_the_others() {
        let mut inputs = Inputs::new([(1, None), (2, None)], 0);
        assert!(inputs.admit(1, batch()).is_some());
        assert_eq!(inputs.on_barrier(1, 5), InputChange::Nothing);
        assert!(inputs.admit(1, batch()).is_none(), "held after its barrier");
        assert!(inputs.admit(2, batch()).is_some(), "the other channel flows");
        assert_eq!(inputs.on_barrier(2, 5), InputChange::Aligned(5));
        assert!(inputs.next_ready().is_none(), "still held until the snapshot is done");
        inputs.checkpoint_done(5);
        assert!(inputs.next_ready().is_some());
        assert!(inputs.next_ready().is_none());
    }

    #[test]
    fn channels_added_by_a_rescale_wait_for_their_barrier_and_do_not_join_its_alignment() {
        let mut inputs = Inputs::new([(1, None)], 3);
        inputs.expect(9, Some(4));
        assert!(inputs.admit(9, batch()).is_none());
        assert_eq!(inputs.on_barrier(1, 4), InputChange::Aligned(4));
        inputs.checkpoint_done(4);
        assert!(inputs.next_ready().is_some());
    }

    #[test]
    fn watermarks_are_the_minimum_of_live_channels_and_ends_are_reported() {
        let mut inputs = Inputs::new([(1, None), (2, None)], 0);
        assert_eq!(inputs.on_watermark(1, 10), InputChange::Nothing);
        assert_eq!(inputs.on_watermark(2, 7), InputChange::Watermark(7));
        assert_eq!(inputs.on_end(2, true), vec![InputChange::Watermark(10)]);
        assert_eq!(
            inputs.on_end(1, true),
            vec![InputChange::Ended],
            "the end passes on only after the last output"
        );
    }

    #[test]
    fn a_retired_sender_leaves_the_alignment() {
        let mut inputs = Inputs::new([(1, None), (2, None)], 0);
        assert_eq!(inputs.on_barrier(1, 2), InputChange::Nothing);
        assert_eq!(inputs.on_end(2, false), vec![InputChange::Aligned(2)]);
    }
}
