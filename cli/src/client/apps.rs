//! `spindle apps`, `spindle app ID`, `spindle kill ID`.

use std::process::ExitCode;

use anyhow::Context;
use spindle_protocol::{AppFilter, AppId, AppReport, ContainerReport, now_ms};

use super::{ClientContext, print_json};
use crate::args::AppsArgs;
use crate::table::{Table, age, key_values, or_dash, precise_duration, wire_name};

pub async fn list(context: &ClientContext, args: &AppsArgs) -> anyhow::Result<ExitCode> {
    let filter = AppFilter {
        state: args.state.map(|state| state.as_str().to_owned()),
        queue: args.queue.clone(),
        user: args.user.clone(),
        limit: args.limit,
    };
    let apps = context.client.apps(&filter).await.context("cannot list apps")?;
    if context.json {
        print_json(&apps)?;
    } else if apps.is_empty() {
        let filtered = args.state.is_some() || args.queue.is_some() || args.user.is_some();
        if filtered {
            eprintln!("no apps match");
        } else {
            eprintln!("no apps yet: submit one with `spindle submit JOB.toml`");
        }
    } else {
        out!("{}", apps_table(&apps, now_ms()).render());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn apps_table(apps: &[AppReport], now_ms: u64) -> Table {
    let mut table = Table::new(&["ID", "NAME", "USER", "QUEUE", "STATE", "FINAL", "PROGRESS", "SUBMITTED"]).right_align(&[6]);
    for app in apps {
        table.row(vec![
            app.app_id.to_string(),
            app.name.clone(),
            app.user.clone(),
            app.queue.clone(),
            app.state.as_str().to_owned(),
            wire_name(&app.final_status),
            crate::table::app_progress(app),
            age(now_ms, app.submitted_at_ms),
        ]);
    }
    table
}

pub async fn show(context: &ClientContext, app_id: AppId) -> anyhow::Result<ExitCode> {
    let app = context.client.app(app_id).await.with_context(|| format!("cannot get {app_id}"))?;
    let containers = context
        .client
        .containers(app_id)
        .await
        .with_context(|| format!("cannot list the containers of {app_id}"))?;
    if context.json {
        // The API's app report, with its containers added under "containers".
        let mut value = serde_json::to_value(&app)?;
        value["containers"] = serde_json::to_value(&containers)?;
        print_json(&value)?;
    } else {
        out!("{}", app_report(&app, &containers, now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of `spindle app ID`: key/values, then attempts, then containers.
pub fn app_report(app: &AppReport, containers: &[ContainerReport], now_ms: u64) -> String {
    let when = |at: Option<u64>| at.map(|at| age(now_ms, at)).unwrap_or_else(|| "-".to_owned());
    let runtime = app
        .started_at_ms
        .map(|started| precise_duration(app.finished_at_ms.unwrap_or(now_ms).saturating_sub(started)));
    let mut out = key_values(&[
        ("id", app.app_id.to_string()),
        ("name", app.name.clone()),
        ("user", app.user.clone()),
        ("queue", app.queue.clone()),
        ("kind", wire_name(&app.kind)),
        ("priority", app.priority.to_string()),
        ("state", app.state.as_str().to_owned()),
        ("final status", wire_name(&app.final_status)),
        ("progress", crate::table::app_progress(app)),
        (
            "containers",
            format!("{} running, holding {}", app.running_containers, resources(&app.allocated)),
        ),
        ("submitted", age(now_ms, app.submitted_at_ms)),
        ("started", when(app.started_at_ms)),
        ("finished", when(app.finished_at_ms)),
        ("run time", or_dash(runtime)),
        ("diagnostics", or_dash(Some(&app.diagnostics).filter(|text| !text.is_empty()))),
    ]);

    let mut attempts = Table::new(&["ATTEMPT", "AM CONTAINER", "NODE", "STARTED", "FINISHED", "DIAGNOSTICS"]);
    for attempt in &app.attempts {
        attempts.row(vec![
            format!("{}/{}", attempt.attempt, app.max_attempts),
            or_dash(attempt.am_container),
            or_dash(attempt.node_id.as_ref()),
            age(now_ms, attempt.started_at_ms),
            when(attempt.finished_at_ms),
            attempt.diagnostics.clone(),
        ]);
    }
    if let Some(detail) = &app.detail {
        out.push_str(&detail_tables(detail));
        if let Some(stream) = detail.stream() {
            out.push_str(&super::stream::stream_section(&stream, now_ms));
        }
    }
    if !attempts.is_empty() {
        out.push_str("\nAttempts\n");
        out.push_str(&attempts.render());
    }
    if !containers.is_empty() {
        out.push_str("\nContainers\n");
        out.push_str(&containers_table(containers).render());
    }
    out
}

/// A job's stages (with a bar each) and counters, as its AM reports them.
fn detail_tables(detail: &spindle_protocol::JobDetail) -> String {
    let mut out = String::new();
    let mut stages = Table::new(&["STAGE", "DONE", "RUNNING", "TOTAL", ""]).right_align(&[1, 2, 3]);
    for stage in &detail.stages {
        stages.row(vec![
            stage.name.clone(),
            stage.succeeded.to_string(),
            stage.running.to_string(),
            stage.total.to_string(),
            progress_bar(stage.succeeded, stage.total),
        ]);
    }
    if !stages.is_empty() {
        out.push_str("\nStages\n");
        out.push_str(&stages.render());
    }
    let mut counters = Table::new(&["COUNTER", "VALUE"]).right_align(&[1]);
    for (name, value) in &detail.counters {
        counters.row(vec![name.clone(), value.to_string()]);
    }
    if !counters.is_empty() {
        out.push_str("\nCounters\n");
        out.push_str(&counters.render());
    }
    out
}

/// `[#######-------------]` for `done` of `total`, 20 wide.
pub fn progress_bar(done: u32, total: u32) -> String {
    const WIDTH: usize = 20;
    let filled = if total == 0 {
        WIDTH
    } else {
        (done as usize * WIDTH / total as usize).min(WIDTH)
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

pub fn containers_table(containers: &[ContainerReport]) -> Table {
    let mut table = Table::new(&["ID", "ROLE", "NODE", "STATE", "RESOURCES", "EXIT", "REASON", "DIAGNOSTICS"]);
    for container in containers {
        table.row(vec![
            container.container_id.to_string(),
            if container.is_am { "am" } else { "task" }.to_owned(),
            container.node_id.to_string(),
            wire_name(&container.state),
            resources(&container.resources),
            or_dash(container.exit_code),
            container
                .exit_reason
                .map(|reason| wire_name(&reason))
                .unwrap_or_else(|| "-".to_owned()),
            container.diagnostics.clone(),
        ]);
    }
    table
}

/// `2 vcores / 512 MB`
fn resources(resources: &spindle_protocol::Resources) -> String {
    crate::table::resources(resources)
}

pub async fn kill(context: &ClientContext, app_id: AppId) -> anyhow::Result<ExitCode> {
    let app = context.client.kill(app_id).await.with_context(|| format!("cannot kill {app_id}"))?;
    if context.json {
        print_json(&app)?;
    } else {
        outln!("{app_id}  {}  {}", app.state.as_str(), wire_name(&app.final_status));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::{AppState, FinalStatus, JobKind, Resources};

    fn app(seq: u32, state: AppState) -> AppReport {
        AppReport {
            app_id: AppId {
                cluster_ts: 1_700_000_000_000,
                seq,
            },
            name: "hello".into(),
            queue: "default".into(),
            user: "ann".into(),
            kind: JobKind::Shell,
            priority: 0,
            state,
            final_status: FinalStatus::Undefined,
            diagnostics: String::new(),
            progress: 0.5,
            max_attempts: 2,
            attempts: Vec::new(),
            allocated: Resources::new(2, 384),
            running_containers: 2,
            submitted_at_ms: 1_000,
            started_at_ms: Some(2_000),
            finished_at_ms: None,
            detail: None,
        }
    }

    #[test]
    fn the_apps_table_has_one_aligned_row_per_app() {
        let table = apps_table(&[app(1, AppState::Running), app(12, AppState::Accepted)], 4_000).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID                              NAME   USER  QUEUE    STATE     FINAL      PROGRESS  SUBMITTED"
        );
        assert_eq!(
            lines[1],
            "application_1700000000000_0001  hello  ann   default  RUNNING   UNDEFINED       50%  3s ago"
        );
        assert!(lines[2].starts_with("application_1700000000000_0012  hello  ann   default  ACCEPTED"));
    }

    #[test]
    fn the_app_report_shows_state_and_resources() {
        let report = app_report(&app(1, AppState::Running), &[], 4_000);
        assert!(report.contains("state         RUNNING\n"), "{report}");
        assert!(report.contains("2 running, holding 2 vcores / 384 MB"), "{report}");
        assert!(report.contains("run time      2.0s"), "{report}");
        assert!(!report.contains("Containers"));
    }
}
