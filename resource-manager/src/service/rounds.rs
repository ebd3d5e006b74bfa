//! The round task: scheduling rounds run here, not inside the heartbeats and allocate calls
//! whose changes make them due (see `Cluster::defer_rounds`).
//!
//! A change that frees room or asks for containers notifies `round_wanted`; the task then
//! takes the state lock and runs one round for every change made since the last. Rounds are
//! at least `ROUND_GAP` apart, so at 10,000 nodes and hundreds of such changes a second the
//! walk over every node is paid a bounded number of times. Grants reach AMs as before: the
//! round's outbox wakes their long polls once its writes are durable.

use std::sync::Arc;
use std::time::Duration;

use super::{Pending, ResourceManager};

/// Least time from the start of one round to the start of the next. A grant waits at most
/// this long for its round (plus the lock), against the long poll's seconds; and rounds cost
/// at most 1/ROUND_GAP of their walks per second.
const ROUND_GAP: Duration = Duration::from_millis(5);

impl ResourceManager {
    /// Runs a round whenever one is due, until the term ends.
    pub(super) async fn run_rounds(self: Arc<Self>) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = self.round_wanted.notified() => {}
            }
            let started = tokio::time::Instant::now();
            let ((), pending) = self.apply(|cluster, now| cluster.schedule(now)).await;
            match pending {
                // The committer tells the round's grants once they are durable; waiting here
                // for that would hold the next round back by a commit.
                Pending::Queued(_) => {}
                // A round that placed nothing may still have metrics to record.
                unwritten @ Pending::Unwritten { .. } => {
                    let rm = Arc::clone(&self);
                    self.tasks.spawn(async move {
                        let _ = rm.settle(unwritten).await;
                    });
                }
                Pending::Stopped => return,
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(started + ROUND_GAP) => {}
            }
        }
    }
}
