//! Timers: the cluster's tick (node and launch expiry, decommission deadlines, preemption,
//! a scheduling round), the allocator's trim, and the hourly purge of old ended apps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use spindle_protocol::now_ms;

use super::{ResourceManager, TICK_INTERVAL};

/// How often the allocator is asked to give freed memory back (`memory.rs`).
const TRIM_INTERVAL: Duration = Duration::from_secs(30);

impl ResourceManager {
    /// Runs `tick` every TICK_INTERVAL, trims every TRIM_INTERVAL and purges old ended apps
    /// hourly, until the term ends.
    pub async fn run_timers(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = now_ms();
        let mut last_trim = now_ms();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.mutate(|cluster, now| cluster.tick(now)).await.is_err() {
                return;
            }
            if now_ms().saturating_sub(last_trim) > TRIM_INTERVAL.as_millis() as u64 {
                last_trim = now_ms();
                crate::memory::return_free_memory().await;
            }
            let retain_ms = self.config.retain_finished.as_millis() as u64;
            // The wall clock may step back: that must not underflow (and kill the timers).
            if retain_ms > 0 && now_ms().saturating_sub(last_purge) > 3_600_000 {
                last_purge = now_ms();
                self.purge(last_purge.saturating_sub(retain_ms)).await;
            }
        }
    }

    async fn purge(&self, cutoff_ms: u64) {
        // Hold the state lock, once every change queued is durable, so no write of a purged
        // app races the delete.
        let mut cluster = self.cluster.lock().await;
        if self.wait_durable(self.queued.load(Ordering::Acquire)).await.is_err() {
            return;
        }
        match self.store.purge_finished_before(cutoff_ms).await {
            Ok(purged) => {
                let forgotten = cluster.forget_finished_before(cutoff_ms);
                let logs = match &self.config.log_aggregation.dir {
                    Some(dir) => crate::app_logs::purge_before(dir, cutoff_ms),
                    None => 0,
                };
                tracing::info!(purged, forgotten, logs, "purged finished applications");
            }
            Err(err) => tracing::warn!(error = %err, "purging finished applications failed"),
        }
        // The history of forgotten nodes is kept as long as finished apps.
        match self.store.purge_forgotten_nodes_before(cutoff_ms).await {
            Ok(nodes) => tracing::info!(nodes, "purged the history of forgotten nodes"),
            Err(err) => tracing::warn!(error = %err, "purging the history of forgotten nodes failed"),
        }
        self.wakers
            .lock()
            .expect("waker map is never poisoned")
            .retain(|app_id, _| cluster.app_owner(*app_id).is_some());
    }
}
