//! The streaming part of `spindle demo`: a bounded window count runs beside the batch jobs,
//! is rescaled while it runs, and its committed windows are shown at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use spindle_protocol::{AppId, FinalStatus, RmClient};

use crate::client::submit::parse_spec;
use crate::local::LocalCluster;

/// How long the streaming job may take before the demo gives up on it.
const STREAM_TIMEOUT: Duration = Duration::from_secs(180);

/// Submits the streaming job: 2 generators (5,000 events/s each, 12 s of events) → key_by →
/// 1 s tumbling count per key → files committed on checkpoints.
pub async fn start(cluster: &LocalCluster, data_dir: &Path) -> anyhow::Result<StreamDemo> {
    let job = format!(
        r#"name = "demo-stream"
kind = "stream"
[stream]
checkpoint_interval_ms = 500
checkpoint_dir = {checkpoints:?}
worker = {{ vcores = 1, memory_mb = 256 }}
[[stream.operators]]
name = "events"
kind = "generator"
parallelism = 2
rate = 5000
keys = 8
limit = 60000
[[stream.operators]]
name = "by_key"
kind = "key_by"
input = ["events"]
expr = "$1"
[[stream.operators]]
name = "count"
kind = "window"
input = ["by_key"]
parallelism = 2
size_ms = 1000
aggregate = "count"
[[stream.operators]]
name = "out"
kind = "file_sink"
input = ["count"]
path = {out:?}
"#,
        checkpoints = data_dir.join("stream-checkpoints").display().to_string(),
        out = data_dir.join("stream-output").display().to_string(),
    );
    let spec = parse_spec("the demo streaming job", &job)?;
    let app_id = cluster
        .client()
        .submit(&spec)
        .await
        .context("cannot submit the demo streaming job")?;
    outln!("\nSubmitted {app_id}: a streaming window count (generator → key_by → 1 s count → files), running beside the batch jobs.");
    // Rescaled as soon as its pipeline runs, while its sources still have seconds of events to
    // go, not after the batch jobs (by then a slow machine may have run the sources dry, and a
    // job whose sources ended rescales nothing).
    let client = cluster.client();
    let rescale = tokio::spawn(async move { rescale_when_running(&client, app_id).await });
    Ok(StreamDemo { app_id, rescale })
}

/// The demo's streaming job and its rescale in progress.
pub struct StreamDemo {
    app_id: AppId,
    rescale: tokio::task::JoinHandle<anyhow::Result<spindle_protocol::ScaleReply>>,
}

/// Waits until every operator has its instances (the pipeline is deployed), then asks for
/// `count` 2 → 3.
async fn rescale_when_running(client: &RmClient, app_id: AppId) -> anyhow::Result<spindle_protocol::ScaleReply> {
    let started = Instant::now();
    loop {
        let report = client.app(app_id).await?;
        if report.state.is_terminal() {
            return Err(anyhow!("it ended before its pipeline was seen running"));
        }
        let deployed = report
            .detail
            .and_then(|detail| detail.stream())
            .is_some_and(|stream| !stream.operators.is_empty() && stream.operators.iter().all(|operator| !operator.instances.is_empty()));
        if deployed {
            return Ok(client.scale_operator(app_id, "count", 3).await?);
        }
        if started.elapsed() > STREAM_TIMEOUT {
            return Err(anyhow!("its pipeline did not start within {}s", STREAM_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rescales the window operator while the job runs, waits for the job to end and shows what it
/// committed.
pub async fn finish(cluster: &LocalCluster, demo: StreamDemo, data_dir: &Path) -> anyhow::Result<bool> {
    let client = cluster.client();
    let StreamDemo { app_id, rescale } = demo;
    match rescale.await.map_err(anyhow::Error::from).and_then(|scaled| scaled) {
        Ok(reply) => outln!(
            "\nThe streaming job's `count` operator was rescaled {} → {} while it ran.",
            reply.previous,
            reply.parallelism
        ),
        Err(err) => outln!("\n(not rescaled: {err:#})"),
    }
    let started = Instant::now();
    let report = loop {
        let report = client.app(app_id).await.context("cannot read the streaming job's report")?;
        if report.state.is_terminal() {
            break report;
        }
        if started.elapsed() > STREAM_TIMEOUT {
            return Err(anyhow!("the demo streaming job did not end within {}s", STREAM_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if report.final_status != FinalStatus::Succeeded {
        eprintln!("\nThe demo streaming job did not succeed: {}", report.diagnostics);
        return Ok(false);
    }
    if let Some(rescale) = report
        .detail
        .as_ref()
        .and_then(|detail| detail.stream())
        .and_then(|s| s.last_rescale)
    {
        outln!(
            "The streaming job rescaled `{}` {} → {} live; the key groups that moved paused {} ms.",
            rescale.operator,
            rescale.from,
            rescale.to,
            rescale.pause_ms.unwrap_or(0)
        );
    }
    show_windows(&client, app_id, &data_dir.join("stream-output")).await
}

async fn show_windows(_client: &RmClient, app_id: AppId, out: &Path) -> anyhow::Result<bool> {
    let mut windows: Vec<(String, i64, u64)> = Vec::new();
    for entry in std::fs::read_dir(out).context("cannot read the streaming job's output")? {
        let path = entry?.path();
        if !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("part-")) {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if let [key, start, _, count] = fields[..] {
                windows.push((key.to_owned(), start.parse().unwrap_or(0), count.parse().unwrap_or(0)));
            }
        }
    }
    windows.sort();
    let events: u64 = windows.iter().map(|(_, _, count)| count).sum();
    outln!(
        "{app_id} committed {} windows counting {events} events exactly once (2 × 60,000 generated); the first second:",
        windows.len()
    );
    for (key, start, count) in windows.iter().filter(|(_, start, _)| *start == 0) {
        outln!("  {key:<4} [{start} ms, {} ms)  {count}", start + 1000);
    }
    Ok(events == 120_000)
}
