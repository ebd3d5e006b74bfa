//! The committer: the one task that writes to the store. Changes queued while a transaction
//! runs go into the next one, in the order they were made, so the state lock is never held
//! across the store's I/O; each change's outbox is done and its caller told only once its
//! transaction has committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Fatal, ResourceManager};
use crate::cluster::Outbox;
use crate::error::RmError;
use crate::records::WriteBatch;
use crate::store::StoreError;

/// A change applied in memory, queued for the committer: its writes, what to do once they
/// are durable, and whom to tell. The committer owns it from then on, so a caller that goes
/// away (axum drops a handler's future when its client hangs up) loses nothing.
pub(super) struct Queued {
    /// Its place in the order of changes (1, 2, …).
    pub(super) seq: u64,
    pub(super) batch: WriteBatch,
    pub(super) outbox: Outbox,
    /// Told once the change is durable and its outbox done.
    pub(super) done: oneshot::Sender<()>,
}

/// Changes committed in one transaction at most: bounds a transaction's size and the wait of
/// the first change of a long queue.
const MAX_GROUP: usize = 512;

/// The first pause before a commit is retried; it doubles up to `COMMIT_RETRY_MAX_PAUSE`.
const COMMIT_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(50);
const COMMIT_RETRY_MAX_PAUSE: Duration = Duration::from_secs(1);

impl ResourceManager {
    /// The committer: commits the queued changes in order, as many per transaction as were
    /// queued while the previous one ran, then does their outboxes and tells their callers.
    /// A failed commit stops the term (and with it the queue: nothing after it is told).
    pub(super) async fn run_committer(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut group: Vec<Queued> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                next = queue.recv() => next,
                () = self.shutdown.cancelled() => None,
            };
            let Some(first) = first else { return };
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let changes = group.len();
            let batch = WriteBatch::merge(group.iter_mut().map(|queued| std::mem::take(&mut queued.batch)));
            if let Err(err) = self.commit(self.epoch, &batch, changes).await {
                self.fail_stop(err);
                return;
            }
            let last = group.last().map_or(0, |queued| queued.seq);
            for queued in group.drain(..) {
                self.dispatch(queued.outbox);
                let _ = queued.done.send(());
            }
            self.durable.send_replace(last);
        }
    }

    /// Commits `batch` in `epoch`, retrying while the database cannot be reached (a restart
    /// of PostgreSQL, a network blip) for up to one `leader_lease`: by then an RM that cannot
    /// renew its lease has stepped down anyway. Committing a batch again is harmless (whole
    /// records, upserted), so a commit whose answer was lost may be retried.
    async fn commit(&self, epoch: u64, batch: &WriteBatch, changes: usize) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "store_commit",
            epoch,
            changes,
            apps = batch.apps.len(),
            containers = batch.containers.len(),
            nodes = batch.nodes.len()
        );
        let committed = self.commit_with_retries(epoch, batch).instrument(span).await;
        if committed.is_ok() {
            self.metrics.record_commit(started.elapsed(), changes);
        }
        committed
    }

    async fn commit_with_retries(&self, epoch: u64, batch: &WriteBatch) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.leader_lease;
        let mut pause = COMMIT_RETRY_FIRST_PAUSE;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.store.commit(epoch, batch)).await;
            let err = match attempt {
                Ok(result) => match result {
                    Err(err) if err.is_unavailable() => err,
                    other => return other,
                },
                Err(_) => return Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
            };
            if self.shutdown.is_cancelled() || tokio::time::Instant::now() + pause >= deadline {
                return Err(err);
            }
            tracing::warn!(error = %err, retry_in_ms = pause.as_millis() as u64, "the store cannot be reached; retrying the commit");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(COMMIT_RETRY_MAX_PAUSE);
        }
    }

    /// A commit failed: memory now holds changes the store does not. Stop this term: on
    /// PostgreSQL a lost leadership (fenced, or the database gone past the lease) makes the RM
    /// a standby again; any other failure stops it, so a supervisor restarts it and it
    /// recovers from the store.
    fn fail_stop(&self, err: StoreError) -> RmError {
        let steps_down = matches!(err, StoreError::Fenced { .. }) || err.is_unavailable();
        tracing::error!(error = %err, steps_down, "store commit failed; this resource manager stops acting");
        self.fatal
            .lock()
            .expect("fatal slot is never poisoned")
            .get_or_insert_with(|| Fatal {
                reason: err.to_string(),
                steps_down,
            });
        self.shutdown.cancel();
        RmError::Store(err)
    }
}
