//! `spindle savepoint APP [--dir DIR]` and `spindle stop APP --savepoint [--dir DIR]`: ask the RM
//! for a savepoint (it stores the request, the job's AM takes it), then follow the app's report
//! until the AM says it is complete (and, for a stop, until the app ended), and print its path
//! as `flink savepoint` does.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spindle_protocol::{AppId, AppReport, FinalStatus, SavepointRequest, SavepointState, SavepointStatus};

use super::{ClientContext, print_json};
use crate::args::{SavepointArgs, StopArgs};
use crate::error::UsageError;
use crate::table::{terminal_safe, wire_name};

/// How often the app's report is read while waiting.
const POLL: Duration = Duration::from_millis(200);

pub async fn savepoint(context: &ClientContext, args: &SavepointArgs) -> anyhow::Result<ExitCode> {
    let request = SavepointRequest {
        dir: args.dir.clone(),
        stop: false,
    };
    let (status, _) = take(context, args.app_id, &request, args.timeout).await?;
    if context.json {
        print_json(&status)?;
    } else {
        outln!("Savepoint completed. Path: {}", terminal_safe(&status.path));
        outln!(
            "Start a job from it with from_savepoint = \"{}\" in its [stream] section.",
            terminal_safe(&status.path)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stop(context: &ClientContext, args: &StopArgs) -> anyhow::Result<ExitCode> {
    if !args.savepoint {
        return Err(UsageError::new(format!(
            "`spindle stop` takes a final savepoint: add --savepoint (and --dir DIR to choose where); to end {} without one, `spindle kill {}`",
            args.app_id, args.app_id
        ))
        .into());
    }
    let request = SavepointRequest {
        dir: args.dir.clone(),
        stop: true,
    };
    let (status, report) = take(context, args.app_id, &request, args.timeout).await?;
    if context.json {
        print_json(&status)?;
    } else {
        outln!("Savepoint completed. Path: {}", terminal_safe(&status.path));
        outln!(
            "{} stopped: {}/{}",
            args.app_id,
            report.state.as_str(),
            wire_name(&report.final_status)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Requests the savepoint and waits for it (for a stop, also for the app's end); the
/// savepoint and the last report.
async fn take(
    context: &ClientContext,
    app_id: AppId,
    request: &SavepointRequest,
    timeout_s: u64,
) -> anyhow::Result<(SavepointStatus, AppReport)> {
    let what = if request.stop { "stop" } else { "take a savepoint of" };
    let reply = context
        .client
        .request_savepoint(app_id, request)
        .await
        .with_context(|| format!("cannot {what} {app_id}"))?;
    let id = reply.savepoint_id;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let last_error = match context.client.app(app_id).await {
            Ok(report) => {
                if let Some(done) = settled(&report, id, request.stop)? {
                    return Ok((done, report));
                }
                None
            }
            // An RM restart or fail-over: keep asking until the deadline.
            Err(err) => Some(err),
        };
        if Instant::now() >= deadline {
            let why = last_error.map_or(String::new(), |err| format!(" (the RM last answered: {err})"));
            bail!("savepoint {id} of {app_id} did not complete within {timeout_s}s{why}; it may still: `spindle app {app_id}` shows it");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether waiting for savepoint `id` in `report` is over: `Some` when it is complete (and,
/// for a stop, the app ended), an error when it failed or the app ended without it.
fn settled(report: &AppReport, id: u64, stop: bool) -> anyhow::Result<Option<SavepointStatus>> {
    let status = report
        .detail
        .as_ref()
        .and_then(|detail| detail.stream())
        .and_then(|stream| stream.savepoints.into_iter().find(|savepoint| savepoint.id == id));
    let app_id = report.app_id;
    let ended = report.state.is_terminal();
    match status {
        Some(status) if status.state == SavepointState::Failed => bail!(
            "savepoint {id} of {app_id} failed: {}{}",
            terminal_safe(status.error.as_deref().unwrap_or("no reason given")),
            if stop && !ended { "; the job goes on running" } else { "" }
        ),
        Some(status) if status.state == SavepointState::Completed => {
            if !stop || ended && report.final_status == FinalStatus::Succeeded {
                return Ok(Some(status));
            }
            if ended {
                bail!(
                    "savepoint {id} of {app_id} is complete at {}, but the app ended {}/{}: {}",
                    terminal_safe(&status.path),
                    report.state.as_str(),
                    wire_name(&report.final_status),
                    terminal_safe(&report.diagnostics)
                );
            }
            Ok(None)
        }
        _ if ended => bail!(
            "{app_id} ended ({}/{}) before savepoint {id} was complete: {}",
            report.state.as_str(),
            wire_name(&report.final_status),
            terminal_safe(&report.diagnostics)
        ),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::{AppState, JobDetail, STREAM_SECTION, StreamDetail};

    use super::*;

    fn report(state: AppState, final_status: FinalStatus, savepoint: Option<SavepointState>) -> AppReport {
        let savepoints = savepoint
            .map(|state| SavepointStatus {
                id: 3,
                state,
                path: "/sp/savepoint-x-3".into(),
                stop: true,
                checkpoint: Some(9),
                completed_at_ms: None,
                error: (state == SavepointState::Failed).then(|| "disk full".into()),
            })
            .into_iter()
            .collect();
        let mut report: AppReport = serde_json::from_value(serde_json::json!({
            "app_id": "application_1_0001", "name": "s", "user": "u", "queue": "default", "kind": "stream",
            "state": "RUNNING", "final_status": "UNDEFINED", "diagnostics": "stopped with a savepoint", "progress": 0.5,
            "allocated": {"vcores": 1, "memory_mb": 1}, "running_containers": 1, "submitted_at_ms": 1,
            "attempts": [], "priority": 0, "max_attempts": 2
        }))
        .expect("a report");
        report.state = state;
        report.final_status = final_status;
        report.detail = Some(JobDetail::default().with_section(
            STREAM_SECTION,
            &StreamDetail {
                savepoints,
                ..StreamDetail::default()
            },
        ));
        report
    }

    #[test]
    fn waiting_ends_when_the_savepoint_is_complete_and_a_stop_when_the_app_ended_too() {
        use SavepointState::{Completed, Failed, InProgress};
        let running = |savepoint| report(AppState::Running, FinalStatus::Undefined, savepoint);
        assert!(settled(&running(None), 3, false).unwrap().is_none(), "not picked up yet");
        assert!(settled(&running(Some(InProgress)), 3, false).unwrap().is_none());
        assert_eq!(
            settled(&running(Some(Completed)), 3, false).unwrap().unwrap().path,
            "/sp/savepoint-x-3"
        );
        assert!(
            settled(&running(Some(Completed)), 3, true).unwrap().is_none(),
            "a stop waits for the end"
        );
        let finished = report(AppState::Finished, FinalStatus::Succeeded, Some(Completed));
        assert!(settled(&finished, 3, true).unwrap().is_some());

        let failed = settled(&running(Some(Failed)), 3, true).unwrap_err().to_string();
        assert!(failed.contains("disk full") && failed.contains("goes on running"), "{failed}");
        let ended = settled(&report(AppState::Killed, FinalStatus::Killed, Some(InProgress)), 3, false).unwrap_err();
        assert!(ended.to_string().contains("ended (KILLED/KILLED) before savepoint 3"), "{ended}");
    }
}
