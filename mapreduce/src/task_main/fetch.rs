//! A reducer's input: its partition of every map's output, fetched from the maps' agents into
//! files, and read back with a byte count for progress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spindle_protocol::AgentClient;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::task_protocol::MapOutputLocation;

/// Map outputs a reducer fetches at once: enough to keep every agent busy, few enough not to
/// open hundreds of connections.
const PARALLEL_FETCHES: usize = 8;

/// A reader that adds the bytes it hands out to a shared counter.
pub(super) struct CountingReader<R> {
    pub(super) inner: R,
    pub(super) read: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// How long a fetch from an agent that cannot be reached is retried: an agent restart (which
/// keeps its map output) takes a few seconds; a dead node is declared lost after the RM's
/// node expiry, and its maps run again then.
pub(super) const UNREACHABLE_RETRY_WINDOW: Duration = Duration::from_secs(15);
const UNREACHABLE_FIRST_PAUSE: Duration = Duration::from_millis(100);
const UNREACHABLE_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Fetches this partition of every map into a file each (in map order), a few at a time.
/// Errors: the maps that could not be fetched, and the first error.
pub(super) async fn fetch_all(
    environment: &super::TaskEnvironment,
    partition: u32,
    maps: &[MapOutputLocation],
    fetch_dir: &Path,
    fetched: &AtomicU64,
) -> Result<Vec<PathBuf>, (Vec<u32>, String)> {
    let permits = Arc::new(Semaphore::new(PARALLEL_FETCHES));
    let mut fetches = JoinSet::new();
    let mut clients: BTreeMap<String, AgentClient> = BTreeMap::new();
    let mut files = Vec::with_capacity(maps.len());
    for location in maps {
        let client = clients
            .entry(location.node_address.clone())
            .or_insert_with(|| AgentClient::new(&location.node_address, None))
            .clone();
        let path = fetch_dir.join(format!("map_{:06}", location.map));
        files.push(path.clone());
        let retry_window = environment.unreachable_retry_window;
        let (app_id, token, location, permits) = (
            environment.app_id,
            environment.shuffle_token.clone(),
            location.clone(),
            Arc::clone(&permits),
        );
        fetches.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            // An agent that cannot be reached may be restarting (it keeps its map output): try
            // again with backoff for a while before the map's output is reported lost.
            let give_up_at = tokio::time::Instant::now() + retry_window;
            let mut pause = UNREACHABLE_FIRST_PAUSE;
            let result = loop {
                let attempt = async {
                    let mut file = tokio::fs::File::create(&path).await.map_err(|err| Err(err.to_string()))?;
                    client
                        .fetch_shuffle_to(app_id, &location.output_name, partition, &token, &mut file)
                        .await
                        .map_err(|err| match err {
                            unreachable @ spindle_protocol::ClientError::Unreachable { .. } => Ok(unreachable.to_string()),
                            other => Err(other.to_string()),
                        })?;
                    tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|err| Err(err.to_string()))
                }
                .await;
                match attempt {
                    Ok(()) => break Ok(()),
                    Err(Ok(unreachable)) if tokio::time::Instant::now() + pause < give_up_at => {
                        tracing::warn!(map = location.map, node = %location.node_id, error = %unreachable, "map output unreachable; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(UNREACHABLE_MAX_PAUSE);
                    }
                    Err(Ok(error) | Err(error)) => break Err(error),
                }
            };
            result.map_err(|error| (location.map, format!("map {} on {}: {error}", location.map, location.node_id)))
        });
    }
    let mut failed = Vec::new();
    let mut first_error = None;
    while let Some(joined) = fetches.join_next().await {
        match joined.expect("fetch tasks do not panic") {
            Ok(()) => {
                fetched.fetch_add(1, Ordering::Relaxed);
            }
            Err((map, error)) => {
                failed.push(map);
                first_error.get_or_insert(error);
            }
        }
    }
    if failed.is_empty() {
        return Ok(files);
    }
    failed.sort_unstable();
    Err((failed, first_error.unwrap_or_default()))
}
