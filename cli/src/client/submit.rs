//! `spindle submit JOB.toml [--wait]`: read and check the job file here, so mistakes are named
//! with the file before anything reaches the RM; then submit and optionally follow the app.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use spindle_protocol::{AppId, AppReport, AppState, ClientError, FinalStatus, JobSpec, RmClient};

use super::progress::{ProgressLine, ProgressMode, Status};
use super::{ClientContext, print_json};
use crate::args::SubmitArgs;
use crate::error::{EXIT_FAILURE, UsageError};
use crate::table::{app_progress, precise_duration, progress_fraction, wire_name};

/// First poll interval of `--wait`: short apps finish within a few of these.
const FIRST_POLL: Duration = Duration::from_millis(50);
/// Poll interval once the app has been running a while.
const STEADY_POLL: Duration = Duration::from_millis(200);
/// How long `--wait` keeps trying while no RM answers (a restart or failover takes seconds).
const RM_OUTAGE_TOLERANCE: Duration = Duration::from_secs(60);

/// Reads, parses and checks a job file; every error names the file and the field.
pub fn load_spec(path: &Path) -> Result<JobSpec, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|err| UsageError::new(format!("cannot read job file {}: {err}", path.display())))?;
    parse_spec(&path.display().to_string(), &text)
}

/// Parses and checks a job spec; `source` names it in errors.
pub fn parse_spec(source: &str, text: &str) -> Result<JobSpec, UsageError> {
    let spec: JobSpec = toml::from_str(text).map_err(|err| UsageError::new(format!("{source}: {}", err.to_string().trim_end())))?;
    spec.validate().map_err(|err| UsageError::new(format!("{source}: {err}")))?;
    Ok(spec)
}

/// A job file's `from_savepoint`, checked where this process can read it: a savepoint of a
/// format this build does not know, or one the job cannot start from (its state would be
/// dropped, key groups differ, …), is named before anything is submitted. The RM reads no
/// user's files; the AM checks again, as the job's account, when it starts.
fn check_savepoint(path: &Path, spec: &JobSpec) -> Result<(), UsageError> {
    let Some(stream) = &spec.stream else { return Ok(()) };
    let Some(from) = &stream.from_savepoint else {
        return Ok(());
    };
    let checked = spindle_stream::savepoint::inspect(from).and_then(|found| match found {
        Some((dir, meta)) => meta.restore_point(&dir, stream).map(|_| ()),
        None => Ok(()),
    });
    checked.map_err(|err| UsageError::new(format!("{}: {err}", path.display())))
}

pub async fn submit(context: &ClientContext, args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let spec = load_spec(&args.job_file)?;
    check_savepoint(&args.job_file, &spec)?;
    let app_id = context
        .client
        .submit(&spec)
        .await
        .with_context(|| format!("cannot submit {}", args.job_file.display()))?;
    if !args.wait {
        if context.json {
            print_json(&serde_json::json!({ "app_id": app_id }))?;
        } else {
            outln!("{app_id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !context.json {
        outln!("{app_id}");
    }
    wait(context, app_id).await
}

/// `spindle wait APP` and `submit --wait`: follows the app to its end and prints how it ended;
/// 0 only if it SUCCEEDED. Ctrl-C stops the waiting, not the app, and says so.
pub async fn wait(context: &ClientContext, app_id: AppId) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Off a terminal (CI, a log), a plain line per change of state on stderr: stdout keeps
    // only the outcome (or the JSON report).
    let mut progress = ProgressLine::on_stderr(ProgressMode::Changes);
    let report = tokio::select! {
        report = wait_for_app(&context.client, app_id, &mut progress) => report?,
        _ = tokio::signal::ctrl_c() => {
            progress.clear();
            eprintln!("stopped waiting: {app_id} keeps running; `spindle wait {app_id}` follows it again, `spindle kill {app_id}` stops it");
            return Ok(ExitCode::from(130));
        }
    };
    drop(progress);
    if context.json {
        print_json(&report)?;
    } else {
        outln!("{}", outcome_line(&report, started.elapsed()));
        if report.final_status != FinalStatus::Succeeded && !report.diagnostics.is_empty() {
            eprintln!("diagnostics: {}", crate::table::terminal_safe(&report.diagnostics));
        }
    }
    Ok(exit_code_of(&report))
}

/// 0 only for an app that SUCCEEDED.
pub fn exit_code_of(report: &AppReport) -> ExitCode {
    if report.final_status == FinalStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// `application_…  FINISHED  SUCCEEDED  in 3.2s`
pub fn outcome_line(report: &AppReport, waited: Duration) -> String {
    let took = match (report.started_at_ms, report.finished_at_ms) {
        (_, Some(finished)) => finished.saturating_sub(report.submitted_at_ms),
        _ => waited.as_millis() as u64,
    };
    format!(
        "{}  {}  {}  in {}",
        report.app_id,
        report.state.as_str(),
        wire_name(&report.final_status),
        precise_duration(took)
    )
}

/// The status of a live app: state, progress (a bar for a batch job, `running` for a stream),
/// containers, time so far, and its stages or why it waits.
pub fn app_status(report: &AppReport, elapsed: Duration) -> Status {
    let mut detail = format!(
        "{} running container{}  {}",
        report.running_containers,
        if report.running_containers == 1 { "" } else { "s" },
        precise_duration(elapsed.as_millis() as u64)
    );
    if report.state == AppState::Accepted && !report.diagnostics.is_empty() {
        // An app that has not started says why it waits (AM share, queue maximum, full cluster…).
        detail.push_str(&format!("  ({})", report.diagnostics));
    } else {
        // Stages with a bar each: `map [####----] 12/30  reduce [--------] 0/2`.
        for stage in report.detail.iter().flat_map(|detail| &detail.stages) {
            detail.push_str(&format!(
                "  {} {} {}/{}",
                stage.name,
                super::apps::progress_bar(stage.succeeded, stage.total),
                stage.succeeded,
                stage.total
            ));
        }
    }
    Status {
        key: report.state.as_str().to_owned(),
        // The state padded, so the plain lines of ACCEPTED and RUNNING line up.
        subject: format!("{}  {:<9}", report.app_id, report.state.as_str()),
        fraction: progress_fraction(report),
        progress: app_progress(report),
        detail,
    }
}

/// Polls the app until it ends, showing its progress; rides out short RM outages.
pub async fn wait_for_app(client: &RmClient, app_id: AppId, progress: &mut ProgressLine) -> anyhow::Result<AppReport> {
    let started = Instant::now();
    let mut poll_interval = FIRST_POLL;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match client.app(app_id).await {
            Ok(report) if report.state.is_terminal() => {
                progress.clear();
                return Ok(report);
            }
            Ok(report) => {
                unreachable_since = None;
                progress.update(&app_status(&report, started.elapsed()));
            }
            Err(err @ ClientError::Unreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RM_OUTAGE_TOLERANCE {
                    progress.clear();
                    return Err(err).with_context(|| format!("gave up following {app_id}"));
                }
                progress.update(&Status::message(
                    "unreachable",
                    format!("{app_id}  the RM does not answer; retrying…"),
                ));
            }
            Err(err) => {
                progress.clear();
                return Err(err).with_context(|| format!("cannot follow {app_id}"));
            }
        }
        tokio::time::sleep(poll_interval).await;
        poll_interval = (poll_interval * 2).min(STEADY_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name = "hello"
kind = "shell"
[shell]
command = ["sh", "-c", "echo hello"]
containers = 4
vcores = 1
memory_mb = 128
"#;

    fn live_app(kind: spindle_protocol::JobKind) -> AppReport {
        AppReport {
            app_id: AppId {
                cluster_ts: 1_700_000_000_000,
                seq: 7,
            },
            name: "job".into(),
            queue: "default".into(),
            user: "ann".into(),
            kind,
            priority: 0,
            state: AppState::Running,
            final_status: FinalStatus::Undefined,
            diagnostics: String::new(),
            // What a stream's AM reports: a placeholder, not half of anything.
            progress: 0.5,
            max_attempts: 2,
            attempts: Vec::new(),
            allocated: spindle_protocol::Resources::new(3, 768),
            running_containers: 3,
            submitted_at_ms: 1_000,
            started_at_ms: Some(2_000),
            finished_at_ms: None,
            detail: None,
        }
    }

    #[test]
    fn a_batch_app_shows_its_share_done() {
        let status = app_status(&live_app(spindle_protocol::JobKind::Shell), Duration::from_millis(1_300));
        assert_eq!(status.fraction, Some(0.5));
        assert_eq!(
            status.plain(),
            "application_1700000000000_0007  RUNNING     50%  3 running containers  1.3s"
        );
        assert!(status.on_terminal().contains("[##########----------]  50%"), "{status:?}");
    }

    #[test]
    fn a_stream_reads_as_running_never_as_a_percentage() {
        let status = app_status(&live_app(spindle_protocol::JobKind::Stream), Duration::from_secs(65));
        assert_eq!(status.fraction, None);
        assert_eq!(
            status.plain(),
            "application_1700000000000_0007  RUNNING    running  3 running containers  1m05s"
        );
        assert!(
            !status.on_terminal().contains('%') && !status.on_terminal().contains('['),
            "{status:?}"
        );
        let mut waiting = live_app(spindle_protocol::JobKind::Stream);
        waiting.state = AppState::Accepted;
        waiting.diagnostics = "waiting for an AM container".into();
        let status = app_status(&waiting, Duration::from_secs(1));
        assert_eq!(
            status.plain(),
            "application_1700000000000_0007  ACCEPTED      -  3 running containers  1.0s  (waiting for an AM container)"
        );
    }

    #[test]
    fn a_good_spec_parses_with_defaults() {
        let spec = parse_spec("job.toml", HELLO).unwrap();
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.shell.unwrap().containers, 4);
    }

    #[test]
    fn type_errors_name_the_file_and_the_field() {
        let err = parse_spec("job.toml", &HELLO.replace("vcores = 1", "vcores = -1"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("job.toml: "), "{err}");
        assert!(err.contains("vcores"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse_spec("job.toml", &HELLO.replace("containers = 4", "contaners = 4"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("contaners"), "{err}");
    }

    #[test]
    fn invalid_values_are_named_like_the_api_does() {
        let err = parse_spec("job.toml", &HELLO.replace("vcores = 1", "vcores = 0"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "job.toml: shell.vcores: must be at least 1");
    }

    #[test]
    fn the_example_job_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-shell.toml");
        let spec = load_spec(&path).unwrap();
        assert_eq!((spec.name.as_str(), spec.shell.unwrap().containers), ("hello", 4));
    }

    #[test]
    fn a_missing_file_is_a_usage_error_naming_it() {
        let err = load_spec(Path::new("no/such/job.toml")).unwrap_err().to_string();
        assert!(err.contains("no/such/job.toml"), "{err}");
    }
}
