//! Aggregated logs (`[log_aggregation]`), as YARN's log aggregation: once an app has ended, the
//! RM copies the last bytes of each container's stdout and stderr from its node into
//! `<dir>/<app_id>/<container_id>.<stream>`, so `spindle logs` still reads them after the
//! node's retention deleted the container's directory (or the node left). The copies are
//! bounded per log and per app, private to the RM (0700 dirs, 0600 files), and deleted when the
//! app is purged (`retain_finished`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{AgentClient, AppId, ContainerId, ContainerState, LogOptions, RM_BEARER_VALIDITY, now_ms};

use tokio::io::AsyncWriteExt;

use crate::cluster::ContainerPlace;
use crate::config::LogAggregationConfig;
use crate::service::ResourceManager;

/// The streams every container has.
const STREAMS: [&str; 2] = ["stdout", "stderr"];
/// How long aggregation waits for the app's containers to have ended (agents kill them when the
/// app ends; a lost node never reports).
const CONTAINERS_END_WAIT: Duration = Duration::from_secs(30);

/// Where the copy of one log is (or would be).
pub fn log_copy_path(dir: &Path, container_id: ContainerId, stream: &str) -> PathBuf {
    dir.join(container_id.app.to_string()).join(format!("{container_id}.{stream}"))
}

/// Copies the logs of every container of `app_id` (an app that has just ended). Logs copied
/// before (by an RM that was replaced midway) are kept; what a node cannot give is skipped.
pub async fn aggregate(rm: Arc<ResourceManager>, app_id: AppId) {
    let config = rm.config.log_aggregation.clone();
    let Some(dir) = config.dir.clone() else { return };
    let deadline = tokio::time::Instant::now() + CONTAINERS_END_WAIT;
    let containers = loop {
        let containers = rm.read(|cluster| cluster.app_container_locations(app_id)).await;
        let all_ended = containers.iter().all(|container| container.state == ContainerState::Complete);
        if all_ended || tokio::time::Instant::now() >= deadline || rm.shutdown.is_cancelled() {
            break containers;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let app_dir = dir.join(app_id.to_string());
    if let Err(error) = private_dir(&app_dir) {
        tracing::warn!(app = %app_id, dir = %app_dir.display(), %error, "cannot aggregate the app's logs");
        return;
    }
    let mut budget = config.max_bytes_per_app;
    let mut copied = 0;
    for container in containers {
        for stream in STREAMS {
            if budget == 0 || rm.shutdown.is_cancelled() {
                break;
            }
            let path = log_copy_path(&dir, container.container_id, stream);
            if path.exists() {
                continue;
            }
            match copy_log(&rm, &config, &container, stream, budget, &path).await {
                Ok(bytes) => {
                    budget = budget.saturating_sub(bytes);
                    copied += 1;
                }
                Err(error) => {
                    tracing::debug!(container = %container.container_id, stream, %error, "log not aggregated");
                }
            }
        }
    }
    tracing::info!(app = %app_id, logs = copied, bytes = config.max_bytes_per_app - budget, "aggregated the app's logs");
}

/// Fetches the last bytes of one log from its node into `path` (written, then renamed).
async fn copy_log(
    rm: &ResourceManager,
    config: &LogAggregationConfig,
    container: &ContainerPlace,
    stream: &str,
    budget: u64,
    path: &Path,
) -> Result<u64, String> {
    let bearer = rm
        .authority
        .rm_bearer(&container.node_id, rm.epoch(), now_ms() + RM_BEARER_VALIDITY.as_millis() as u64);
    let agent = AgentClient::new(&container.node_address, Some(bearer));
    let options = LogOptions {
        tail_bytes: Some(config.max_bytes_per_log.min(budget)),
        ..LogOptions::default()
    };
    let mut response = agent
        .log_response(container.container_id, stream, &options)
        .await
        .map_err(|error| error.to_string())?;
    // Streamed to the file as it arrives: many apps ending at once must not each hold their
    // logs in the RM's memory.
    let partial = path.with_extension(format!("{stream}.partial"));
    let failed = |error: std::io::Error| format!("cannot write {}: {error}", partial.display());
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .await
        .map_err(failed)?;
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        // A log that grew since the answer began: keep what fits.
        let take = chunk.len().min(usize::try_from(budget - written).unwrap_or(usize::MAX));
        file.write_all(&chunk[..take]).await.map_err(failed)?;
        written += take as u64;
        if written >= budget {
            break;
        }
    }
    file.sync_all().await.map_err(failed)?;
    tokio::fs::rename(&partial, path).await.map_err(failed)?;
    Ok(written)
}

/// A log's copy, if one was aggregated.
pub async fn read_copy(dir: &Path, container_id: ContainerId, stream: &str) -> Option<Vec<u8>> {
    tokio::fs::read(log_copy_path(dir, container_id, stream)).await.ok()
}

/// The part of a copy `options` ask for (the last bytes or lines).
pub fn tail_of(mut bytes: Vec<u8>, options: &LogOptions) -> Vec<u8> {
    if let Some(tail) = options.tail_bytes {
        let keep = (tail as usize).min(bytes.len());
        bytes.drain(..bytes.len() - keep);
    }
    if let Some(lines) = options.tail_lines {
        let body_end = if bytes.last() == Some(&b'\n') {
            bytes.len() - 1
        } else {
            bytes.len()
        };
        let start = if lines == 0 {
            bytes.len()
        } else {
            bytes[..body_end]
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, byte)| **byte == b'\n')
                .nth(lines as usize - 1)
                .map_or(0, |(index, _)| index + 1)
        };
        bytes.drain(..start);
    }
    bytes
}

/// Deletes the copies of apps purged from the store (those whose directory is older than
/// `cutoff_ms`: it was written when the app ended).
pub fn purge_before(dir: &Path, cutoff_ms: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let cutoff = std::time::UNIX_EPOCH + Duration::from_millis(cutoff_ms);
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified < cutoff);
        let is_app = entry.file_name().to_string_lossy().starts_with("application_");
        if old && is_app && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(text: &str, bytes: Option<u64>, lines: Option<u64>) -> String {
        let options = LogOptions {
            tail_bytes: bytes,
            tail_lines: lines,
            follow: false,
        };
        String::from_utf8(tail_of(text.as_bytes().to_vec(), &options)).unwrap()
    }

    #[test]
    fn tails_of_a_copy_are_its_last_bytes_or_lines() {
        assert_eq!(tail("a\nb\nc\n", None, None), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", Some(4), None), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", None, Some(2)), "b\nc\n");
        assert_eq!(tail("a\nb\nc", None, Some(1)), "c");
        assert_eq!(tail("a\nb\nc\n", None, Some(9)), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", None, Some(0)), "");
    }
}
