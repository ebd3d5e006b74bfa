//! A task's reports to its AM: progress every second while it runs, the outcome at the end.

use crate::TaskCounters;
use crate::task_protocol::{TaskAttemptId, TaskReport};

/// How often a running task tells the AM its progress (what speculation estimates from).
const PROGRESS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reports `progress()` to the AM every second until aborted; a lost report is not retried
/// (the next one carries newer progress).
pub(super) fn report_progress_while_running(
    am_url: String,
    token: String,
    attempt: TaskAttemptId,
    progress: impl Fn() -> f32 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_REPORT_INTERVAL).await;
            let report = TaskReport {
                attempt,
                progress: progress(),
                counters: TaskCounters::default(),
                outcome: None,
            };
            if let Err(err) = send_report_once(&am_url, &token, &report).await {
                tracing::debug!(error = %err, "progress report not delivered");
            }
        }
    })
}

pub(super) async fn send_report_once(am_url: &str, token: &str, report: &TaskReport) -> anyhow::Result<()> {
    let url = format!("{}/v1/tasks/{}", am_url.trim_end_matches('/'), report.attempt);
    let response = spindle_protocol::tls::client_builder()
        .build()
        .expect("an HTTP client")
        .post(&url)
        .timeout(std::time::Duration::from_secs(2))
        .bearer_auth(token)
        .json(report)
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    Ok(())
}

/// `POST {am_url}/v1/tasks/{attempt}` with the app's shuffle token; a few tries.
pub(super) async fn send_report(am_url: &str, token: &str, report: &TaskReport) -> anyhow::Result<()> {
    let mut last_error = None;
    for delay_ms in [0, 200, 1_000] {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        match send_report_once(am_url, token, report).await {
            Ok(()) => return Ok(()),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.expect("at least one try"))
}
