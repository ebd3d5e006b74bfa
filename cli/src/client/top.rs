//! `spindle top`: the cluster at a glance, refreshed every `--interval` seconds — totals, the
//! busiest nodes, and the apps that run or wait to.
//!
//! What is shown is [`render_snapshot`], a pure function of the RM's three reports, the screen's
//! size and `now`; the loops around it only fetch, draw and wait. On a terminal the view is
//! redrawn in place on the alternate screen (given back on Ctrl-C); elsewhere each snapshot is
//! printed whole under a timestamp line, as a log would keep it.

use std::cmp::Reverse;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use spindle_protocol::{AppFilter, AppReport, AppState, ClientError, ClusterReport, NodeReport, NodeState, Resources, RmClient, now_ms};
use tokio::signal::unix::{SignalKind, signal};

use super::{ClientContext, print_json};
use crate::args::TopArgs;
use crate::daemon::shutdown_signal;
use crate::table::{Table, app_progress, key_values, precise_duration, resources, terminal_safe, wire_name};

/// What one refresh fetched: the three reports `render_snapshot` draws, and `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub cluster: ClusterReport,
    pub nodes: Vec<NodeReport>,
    /// RUNNING apps, then ACCEPTED ones.
    pub apps: Vec<AppReport>,
}

/// The apps `top` lists: those that hold or wait for containers.
const LISTED_APP_STATES: [AppState; 2] = [AppState::Running, AppState::Accepted];

pub async fn top(context: &ClientContext, args: &TopArgs) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs(args.interval);
    // The first fetch fails the command (a wrong token, no RM): later ones are retried.
    let first = fetch(&context.client).await.context("cannot read the cluster")?;
    if args.once {
        if context.json {
            print_json(&first)?;
        } else {
            out!("{}", render(&first, usize::MAX, usize::MAX));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stdout = std::io::stdout();
    if context.json {
        // One JSON object per refresh and line, for `jq` and friends.
        let lines = |snapshot: &Snapshot| -> anyhow::Result<String> { Ok(serde_json::to_string(snapshot)? + "\n") };
        return follow(context, first, interval, lines).await;
    }
    if !stdout.is_terminal() {
        let snapshots = |snapshot: &Snapshot| -> anyhow::Result<String> {
            let taken = utc_timestamp(now_ms());
            Ok(format!("=== {taken} ===\n{}\n", render(snapshot, usize::MAX, usize::MAX)))
        };
        return follow(context, first, interval, snapshots).await;
    }
    live(context, first, interval).await
}

/// The RM's reports for one refresh, fetched together.
async fn fetch(client: &RmClient) -> Result<Snapshot, ClientError> {
    let apps_in = |state: AppState| AppFilter {
        state: Some(state.as_str().to_owned()),
        ..AppFilter::default()
    };
    let [running, accepted] = LISTED_APP_STATES.map(apps_in);
    let (cluster, nodes, mut apps, waiting) =
        tokio::try_join!(client.cluster(), client.nodes(), client.apps(&running), client.apps(&accepted))?;
    apps.extend(waiting);
    Ok(Snapshot { cluster, nodes, apps })
}

/// The whole snapshot, not cut to any screen.
fn render(snapshot: &Snapshot, width: usize, height: usize) -> String {
    render_snapshot(&snapshot.cluster, &snapshot.nodes, &snapshot.apps, width, height, now_ms())
}

/// Prints `format(snapshot)` every `interval` until Ctrl-C (or SIGTERM) or until nobody reads
/// stdout (`spindle top | head`). A refresh the RM does not answer is said on stderr and tried
/// again.
async fn follow(
    context: &ClientContext,
    first: Snapshot,
    interval: Duration,
    format: impl Fn(&Snapshot) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    let print_until_unread = async {
        let mut snapshot = Some(first);
        loop {
            if let Some(snapshot) = snapshot.take() {
                let text = format(&snapshot)?;
                let mut stdout = std::io::stdout().lock();
                if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            tokio::time::sleep(interval).await;
            match fetch(&context.client).await {
                Ok(fetched) => snapshot = Some(fetched),
                Err(err) => eprintln!(
                    "{}: cannot read the cluster: {}; trying again",
                    utc_timestamp(now_ms()),
                    terminal_safe(&err.to_string())
                ),
            }
        }
    };
    tokio::select! {
        outcome = print_until_unread => outcome,
        () = shutdown_signal() => Ok(ExitCode::SUCCESS),
    }
}

/// Redraws the view in place, at once when the terminal is resized, until Ctrl-C (or SIGTERM);
/// then gives the screen back.
async fn live(context: &ClientContext, first: Snapshot, interval: Duration) -> anyhow::Result<ExitCode> {
    let screen = FullScreen::enter().context("cannot draw on the terminal")?;
    tokio::select! {
        () = redraw_forever(&screen, context, first, interval) => {}
        () = shutdown_signal() => {}
    }
    drop(screen);
    Ok(ExitCode::SUCCESS)
}

async fn redraw_forever(screen: &FullScreen, context: &ClientContext, first: Snapshot, interval: Duration) {
    let mut resized = signal(SignalKind::window_change()).ok();
    let mut snapshot = first;
    let mut trouble: Option<String> = None;
    loop {
        let next_refresh = tokio::time::Instant::now() + interval;
        loop {
            screen.draw(&frame(&snapshot, trouble.as_deref(), interval));
            let resize = async {
                match resized.as_mut() {
                    Some(resized) => resized.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(next_refresh) => break,
                _ = resize => {}
            }
        }
        match fetch(&context.client).await {
            Ok(fetched) => {
                snapshot = fetched;
                trouble = None;
            }
            Err(err) => trouble = Some(format!("showing the last answer: {err}")),
        }
    }
}

/// One screenful: a header line (time, interval, and `trouble` if the last refresh failed),
/// then the snapshot, fitted to the terminal's size now.
fn frame(snapshot: &Snapshot, trouble: Option<&str>, interval: Duration) -> String {
    let (height, width) = console::Term::stdout().size();
    let (height, width) = (usize::from(height), usize::from(width));
    let header = format!(
        "spindle top  {}  every {}s, Ctrl-C quits{}",
        utc_timestamp(now_ms()),
        interval.as_secs(),
        trouble.map(|text| format!("  ({text})")).unwrap_or_default()
    );
    // `trouble` quotes a server: the header is escaped and cut like the rest.
    let body = render(snapshot, width, height.saturating_sub(1));
    fit(&format!("{}\n{body}", terminal_safe(&header)), width, height)
}

/// The terminal while `top` draws on it: the alternate screen, cursor hidden; given back as it
/// was when dropped (Ctrl-C, an error, a panic), so the shell's screen comes back untouched.
struct FullScreen;

/// ANSI: to the alternate screen, cursor hidden.
const ENTER_ALTERNATE_SCREEN: &str = "\x1b[?1049h\x1b[?25l";
/// ANSI: cursor shown, back to the normal screen.
const LEAVE_ALTERNATE_SCREEN: &str = "\x1b[?25h\x1b[?1049l";

impl FullScreen {
    fn enter() -> std::io::Result<FullScreen> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(ENTER_ALTERNATE_SCREEN.as_bytes())?;
        stdout.flush()?;
        Ok(FullScreen)
    }

    /// Draws `frame` over the last one: each line overwrites and erases the rest of its row,
    /// then what is below the frame is erased, so nothing flickers.
    fn draw(&self, frame: &str) {
        let mut out = String::from("\x1b[H");
        out.push_str(&frame.trim_end_matches('\n').replace('\n', "\x1b[K\r\n"));
        out.push_str("\x1b[K\x1b[J");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush());
    }
}

impl Drop for FullScreen {
    fn drop(&mut self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(LEAVE_ALTERNATE_SCREEN.as_bytes()).and_then(|()| stdout.flush());
    }
}

/// The view of the cluster in at most `height` lines of at most `width` columns: totals, the
/// busiest nodes, then the running and accepted apps (each list cut with `… N more` when the
/// screen is short). Every string a job or agent chose is escaped.
pub fn render_snapshot(
    cluster: &ClusterReport,
    nodes: &[NodeReport],
    apps: &[AppReport],
    width: usize,
    height: usize,
    now_ms: u64,
) -> String {
    let mut lines: Vec<String> = totals(cluster).lines().map(str::to_owned).collect();

    let mut in_cluster: Vec<&NodeReport> = nodes
        .iter()
        .filter(|node| !matches!(node.state, NodeState::Decommissioned | NodeState::Lost))
        .collect();
    // The busiest first: by the fuller of vcores and memory, then by containers.
    in_cluster.sort_by(|a, b| {
        let busy = |node: &NodeReport| (busy_permille(&node.used, &node.capacity), node.containers);
        busy(b).cmp(&busy(a)).then_with(|| a.node_id.0.cmp(&b.node_id.0))
    });
    let mut listed: Vec<&AppReport> = apps.iter().filter(|app| LISTED_APP_STATES.contains(&app.state)).collect();
    listed.sort_by_key(|app| {
        (
            app.state != AppState::Running,
            Reverse((app.allocated.vcores, app.allocated.memory_mb)),
            app.app_id,
        )
    });

    // Totals, a blank line and a header (or a "none" line) for each list are always shown;
    // the lists share the rest, nodes taking at most half unless the apps need less.
    let fixed = lines.len() + 4;
    let room = height.saturating_sub(fixed);
    let node_rows = in_cluster
        .len()
        .min(room / 2)
        .max(room.saturating_sub(listed.len()))
        .min(in_cluster.len());

    lines.push(String::new());
    if in_cluster.is_empty() {
        lines.push("no nodes: start one with `spindle node-agent --rm URL`".to_owned());
    } else {
        push_cut_list(&mut lines, &in_cluster, node_rows, nodes_table, "nodes");
    }
    lines.push(String::new());
    // What the nodes left (all of it if they could not use theirs), less the apps' header.
    let app_rows = height.saturating_sub(lines.len() + 1);
    if listed.is_empty() {
        lines.push("no running or accepted apps".to_owned());
    } else {
        push_cut_list(&mut lines, &listed, app_rows, |apps| apps_table(apps, now_ms), "apps");
    }
    fit(&lines.join("\n"), width, height)
}

/// `text` cut to `height` lines of at most `width` columns (a cut line ends in `…`).
fn fit(text: &str, width: usize, height: usize) -> String {
    text.lines()
        .take(height)
        .map(|line| console::truncate_str(line, width, "…").into_owned() + "\n")
        .collect()
}

/// The table of `items` in `room` lines besides its header: all of them, or as many as fit
/// above a `… N more` line.
fn push_cut_list<T>(lines: &mut Vec<String>, items: &[T], room: usize, table: impl Fn(&[T]) -> Table, noun: &str) {
    let shown = if items.len() <= room { items.len() } else { room.saturating_sub(1) };
    if shown == 0 {
        // A header over no rows says nothing: the count alone, in the header's line.
        lines.push(format!("{} {noun}, the window is too short to list them", items.len()));
        return;
    }
    lines.extend(table(&items[..shown]).render().lines().map(str::to_owned));
    if shown < items.len() {
        lines.push(format!("… {} more {noun}", items.len() - shown));
    }
}

/// `nodes  2 RUNNING, 1 LOST` and the like: what the cluster has and holds.
fn totals(cluster: &ClusterReport) -> String {
    const NODE_STATES: [NodeState; 6] = [
        NodeState::New,
        NodeState::Running,
        NodeState::Unhealthy,
        NodeState::Decommissioning,
        NodeState::Decommissioned,
        NodeState::Lost,
    ];
    let node_order: Vec<String> = NODE_STATES.iter().map(wire_name).collect();
    let app_order: Vec<String> = AppState::ALL.iter().map(|state| state.as_str().to_owned()).collect();
    let used = format!(
        "{} of {}  ({} of vcores, {} of memory)",
        resources(&cluster.used),
        resources(&cluster.capacity),
        share(cluster.used.vcores.into(), cluster.capacity.vcores.into()),
        share(cluster.used.memory_mb, cluster.capacity.memory_mb),
    );
    key_values(&[
        ("nodes", counts_by_state(&cluster.nodes, &node_order)),
        ("used", used),
        ("containers", format!("{} running", cluster.containers_running)),
        ("apps", counts_by_state(&cluster.apps, &app_order)),
    ])
}

/// `2 RUNNING, 1 ACCEPTED` in lifecycle order (states the client does not know last), zeros
/// left out.
fn counts_by_state(counts: &std::collections::BTreeMap<String, u32>, order: &[String]) -> String {
    let rank = |state: &String| order.iter().position(|known| known == state).unwrap_or(order.len());
    let mut present: Vec<(&String, &u32)> = counts.iter().filter(|(_, count)| **count > 0).collect();
    present.sort_by_key(|(state, _)| rank(state));
    if present.is_empty() {
        return "none".to_owned();
    }
    present
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `31%` of `whole`, `-` of nothing.
fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{}%", part.saturating_mul(100) / whole)
}

/// How full a node is, in thousandths of its fuller dimension (vcores or memory).
fn busy_permille(used: &Resources, capacity: &Resources) -> u64 {
    let of = |used: u64, capacity: u64| used.saturating_mul(1000).checked_div(capacity).unwrap_or(0);
    of(used.vcores.into(), capacity.vcores.into()).max(of(used.memory_mb, capacity.memory_mb))
}

fn nodes_table(nodes: &[&NodeReport]) -> Table {
    let mut table = Table::new(&["NODE", "STATE", "CONTAINERS", "USED", "CAPACITY"]).right_align(&[2]);
    for node in nodes {
        table.row(vec![
            node.node_id.to_string(),
            wire_name(&node.state),
            node.containers.to_string(),
            resources(&node.used),
            resources(&node.capacity),
        ]);
    }
    table
}

/// The name last: it is the longest and the one a narrow screen cuts.
fn apps_table(apps: &[&AppReport], now_ms: u64) -> Table {
    let mut table =
        Table::new(&["APP", "USER", "QUEUE", "STATE", "PROGRESS", "CONTAINERS", "USED", "ELAPSED", "NAME"]).right_align(&[4, 5, 7]);
    for app in apps {
        let since = app.started_at_ms.unwrap_or(app.submitted_at_ms);
        table.row(vec![
            app.app_id.to_string(),
            app.user.clone(),
            app.queue.clone(),
            app.state.as_str().to_owned(),
            app_progress(app),
            app.running_containers.to_string(),
            resources(&app.allocated),
            precise_duration(now_ms.saturating_sub(since)),
            app.name.clone(),
        ]);
    }
    table
}

/// `2026-12-03 17:25:10 UTC` for milliseconds since the Unix epoch.
fn utc_timestamp(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
