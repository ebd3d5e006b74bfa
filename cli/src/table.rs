//! Human output: aligned tables, key/value reports, and the small formatters they share
//! (ages, durations, sizes). Tables are drawn by `comfy-table`, which measures cells by their
//! display width (so `ünïcode` and wide characters line up), in the borderless look of
//! `kubectl get` and `yarn application -list`.
//!
//! Every cell and value goes through [`terminal_safe`]: names, users and diagnostics come from
//! jobs, and a job must not be able to write escape sequences to the terminal of whoever runs
//! `spindle apps`.

use std::borrow::Cow;

use comfy_table::{CellAlignment, presets};

/// Columns of text under a header row, aligned on their widest cell, two spaces apart.
#[derive(Debug, Clone)]
pub struct Table {
    /// The drawn table: borderless, every column but the last followed by a [`GAP`].
    inner: comfy_table::Table,
    /// How many columns the header has: rows are cut or padded to it.
    columns: usize,
}

/// Spaces between two columns.
const GAP: u16 = 2;

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        let mut inner = comfy_table::Table::new();
        inner.load_style(presets::NOTHING);
        inner.set_header(headers.iter().map(|header| terminal_safe(header).into_owned()));
        let last = headers.len().saturating_sub(1);
        for (index, column) in inner.column_iter_mut().enumerate() {
            column.set_padding((0, if index < last { GAP } else { 0 }));
        }
        Table {
            inner,
            columns: headers.len(),
        }
    }

    /// Aligns the given columns (by index) on the right, header included.
    pub fn right_align(mut self, columns: &[usize]) -> Self {
        for &index in columns {
            if let Some(column) = self.inner.column_mut(index) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        self
    }

    /// Adds a row; missing cells are blank, extra cells are dropped, control characters are
    /// escaped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells
            .into_iter()
            .map(|cell| match terminal_safe(&cell) {
                Cow::Borrowed(_) => cell,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        cells.resize(self.columns, String::new());
        self.inner.add_row(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The table as lines, each ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        self.inner.lines().map(|line| line.trim_end().to_owned() + "\n").collect()
    }
}

/// `key  value` lines with the values lined up (and their control characters escaped).
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.chars().count()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| {
            let value = terminal_safe(value);
            format!("{key:<width$}  {value}").trim_end().to_owned() + "\n"
        })
        .collect()
}

/// `text` safe to print on a terminal as one line: control characters (ESC, CR, backspace,
/// newline, tab, DEL, the C1 controls) and the Unicode bidirectional controls are written as
/// escapes (`\x1b`, `\r`, `\n`, `\u{202e}`), so a string a job chose cannot move the cursor,
/// recolour or erase the screen, forge a line, or reorder what is shown.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape_controls(text, false)
}

/// [`terminal_safe`] for messages of several lines (errors): newlines are kept.
pub fn terminal_safe_lines(text: &str) -> Cow<'_, str> {
    escape_controls(text, true)
}

fn escape_controls(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| (c.is_control() && !(keep_newlines && c == '\n')) || is_bidi_control(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            _ if !unsafe_char(c) => escaped.push(c),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if u32::from(c) < 0x100 => escaped.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(escaped)
}

/// The invisible characters that reorder text around them (the "Trojan Source" ones).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// How long ago `then_ms` was: `3s ago`, `5m ago`, `2h ago`, `4d ago`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".to_owned();
    }
    format!("{} ago", compact_duration(now_ms.saturating_sub(then_ms)))
}

/// A duration in its largest whole unit: `850ms`, `42s`, `5m`, `2h`, `4d` (hours up to two days).
pub fn compact_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 if ms > 0 => format!("{ms}ms"),
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A duration to the second: `1.3s`, `1m05s`, `2h03m`.
pub fn precise_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        // Jobs on an idle local cluster end in tens of milliseconds: "0.0s" would hide that.
        0 if ms < 100 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// Memory in the unit people read fastest: `512 MB`, `2 GB`, `1.5 GB`.
pub fn memory(mb: u64) -> String {
    if mb < 1024 {
        return format!("{mb} MB");
    }
    let gb = mb as f64 / 1024.0;
    if mb.is_multiple_of(1024) {
        format!("{} GB", mb / 1024)
    } else {
        format!("{gb:.1} GB")
    }
}

/// A container size or a use of capacity as it reads: `1 vcore / 512 MB`, `4 vcores / 3.2 GB`.
pub fn resources(resources: &spindle_protocol::Resources) -> String {
    let plural = if resources.vcores == 1 { "" } else { "s" };
    format!("{} vcore{plural} / {}", resources.vcores, memory(resources.memory_mb))
}

/// `0.456` → `46%`.
pub fn percent(fraction: f32) -> String {
    format!("{:.0}%", (fraction.clamp(0.0, 1.0) * 100.0))
}

/// How far an app is, when that means something: a stream has no end to be a share of (its AM
/// reports a placeholder), so it has none.
pub fn progress_fraction(app: &spindle_protocol::AppReport) -> Option<f32> {
    (app.kind != spindle_protocol::JobKind::Stream).then_some(app.progress)
}

/// An app's progress as it reads: `46%`, or `running` for a stream that runs (`-` before and
/// after), never a percentage that would mean it is half done.
pub fn app_progress(app: &spindle_protocol::AppReport) -> String {
    match progress_fraction(app) {
        Some(fraction) => percent(fraction),
        None if app.state == spindle_protocol::AppState::Running => "running".to_owned(),
        None => "-".to_owned(),
    }
}

pub use spindle_protocol::wire_name;

/// `Some(text)` or `-`.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map(|value| value.to_string()).unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "STATE", "PROGRESS"]).right_align(&[2]);
        table.row(vec!["a".into(), "RUNNING".into(), "5%".into()]);
        table.row(vec!["longer-id".into(), "NEW".into(), "100%".into()]);
        assert_eq!(
            table.render(),
            "ID         STATE    PROGRESS\n\
             a          RUNNING        5%\n\
             longer-id  NEW          100%\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_the_last_column_is_not() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x".into()]);
        assert_eq!(table.render(), "A  B\nx\n");
        assert!(!table.is_empty());
    }

    #[test]
    fn cells_line_up_by_their_display_width() {
        let mut table = Table::new(&["NAME", "USER", "N"]).right_align(&[2]);
        table.row(vec!["日本".into(), "ünï".into(), "7".into()]);
        table.row(vec!["ab".into(), "x".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME  USER   N\n\
             日本  ünï    7\n\
             ab    x     12\n"
        );
    }

    #[test]
    fn no_line_ends_in_spaces() {
        let mut table = Table::new(&["ID", "NOTE", ""]).right_align(&[0]);
        table.row(vec!["1".into(), "".into(), "".into()]);
        table.row(vec!["22".into(), "a long note".into()]);
        let rendered = table.render();
        assert!(rendered.ends_with('\n'));
        for line in rendered.lines() {
            assert_eq!(line, line.trim_end(), "{rendered:?}");
        }
        assert_eq!(rendered, "ID  NOTE\n 1\n22  a long note\n");
    }

    #[test]
    fn headers_are_escaped_too() {
        let table = Table::new(&["A\x1b[1m"]);
        assert_eq!(table.render(), "A\\x1b[1m\n");
        assert!(table.is_empty());
    }

    #[test]
    fn a_stream_runs_and_a_batch_job_is_a_share_done() {
        let app = |kind: &str, state: &str| -> spindle_protocol::AppReport {
            serde_json::from_value(serde_json::json!({
                "app_id": "application_1700000000000_0001", "name": "n", "queue": "default", "user": "u",
                "kind": kind, "priority": 0, "state": state, "final_status": "UNDEFINED", "diagnostics": "",
                "progress": 0.5, "max_attempts": 1, "attempts": [], "allocated": { "vcores": 1, "memory_mb": 128 },
                "running_containers": 1, "submitted_at_ms": 1, "started_at_ms": 2, "finished_at_ms": null,
            }))
            .unwrap()
        };
        assert_eq!(app_progress(&app("shell", "RUNNING")), "50%");
        assert_eq!(progress_fraction(&app("mapreduce", "RUNNING")), Some(0.5));
        assert_eq!(app_progress(&app("stream", "RUNNING")), "running");
        assert_eq!(progress_fraction(&app("stream", "RUNNING")), None);
        assert_eq!(app_progress(&app("stream", "ACCEPTED")), "-");
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(terminal_safe("plain name, ünïcode → ok"), "plain name, ünïcode → ok");
        assert!(matches!(terminal_safe("plain"), Cow::Borrowed(_)));
        assert_eq!(terminal_safe("red\x1b[31mtext\x1b[0m"), "red\\x1b[31mtext\\x1b[0m");
        assert_eq!(
            terminal_safe("ok\rFAILED\nforged\tline\x08\x7f"),
            "ok\\rFAILED\\nforged\\tline\\x08\\x7f"
        );
        assert_eq!(terminal_safe("csi\u{9b}2J"), "csi\\x9b2J");
        assert_eq!(terminal_safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            terminal_safe_lines("line one\nline\x1b]0;title\x07 two"),
            "line one\nline\\x1b]0;title\\x07 two"
        );
    }

    #[test]
    fn tables_and_key_values_escape_what_jobs_wrote() {
        let mut table = Table::new(&["NAME", "STATE"]);
        table.row(vec!["evil\x1b[2J\rname".into(), "RUNNING".into()]);
        let rendered = table.render();
        assert!(!rendered.contains('\x1b') && !rendered.contains('\r'), "{rendered:?}");
        assert_eq!(rendered.lines().nth(1).unwrap(), "evil\\x1b[2J\\rname  RUNNING");
        let pairs = key_values(&[("diagnostics", "exit 1\n\x1b[32mSUCCEEDED".into())]);
        assert_eq!(pairs, "diagnostics  exit 1\\n\\x1b[32mSUCCEEDED\n");
    }

    #[test]
    fn key_values_line_up() {
        assert_eq!(
            key_values(&[("id", "1".into()), ("state", "RUNNING".into())]),
            "id     1\nstate  RUNNING\n"
        );
    }

    #[test]
    fn ages_and_sizes_read_like_people_say_them() {
        assert_eq!(age(10_000, 7_000), "3s ago");
        assert_eq!(age(10_000, 0), "never");
        assert_eq!(age(1_000, 5_000), "0s ago");
        assert_eq!(compact_duration(5 * 60_000 + 30_000), "5m");
        assert_eq!(compact_duration(3 * 86_400_000), "3d");
        assert_eq!(precise_duration(42), "42ms");
        assert_eq!(precise_duration(1_300), "1.3s");
        assert_eq!(precise_duration(65_000), "1m05s");
        assert_eq!(memory(512), "512 MB");
        assert_eq!(memory(2048), "2 GB");
        assert_eq!(memory(1536), "1.5 GB");
        assert_eq!(resources(&spindle_protocol::Resources::new(1, 512)), "1 vcore / 512 MB");
        assert_eq!(resources(&spindle_protocol::Resources::new(4, 3277)), "4 vcores / 3.2 GB");
        assert_eq!(percent(0.456), "46%");
        assert_eq!(percent(7.0), "100%");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(wire_name(&spindle_protocol::ExitReason::NodeLost), "NODE_LOST");
    }
}
