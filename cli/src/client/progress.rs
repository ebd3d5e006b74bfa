//! The status of an app that `--wait`, `spindle wait` and the demo follow, on stderr. On a
//! terminal it is one `indicatif` line redrawn in place and cut to the terminal's width (never
//! wrapped): a spinner, then a bar for a job whose progress means something, none for a stream.
//! Elsewhere (a log file, CI) it is a plain line each time the state changes, and now and then
//! while it does not, so a long job still shows signs of life.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::table::terminal_safe;

/// How progress reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Redraw one line in place (a terminal).
    Refresh,
    /// Print a new line whenever the state changes, and every [`PLAIN_REPEAT`] (a log file, CI).
    Changes,
    /// Print nothing.
    Off,
}

/// How often `Changes` mode repeats a line whose state has not changed.
pub const PLAIN_REPEAT: Duration = Duration::from_secs(60);

/// How often the spinner turns, whether or not the app has news.
const SPINNER_TICK: Duration = Duration::from_millis(120);

/// Width of the bar of a job with progress.
const BAR_WIDTH: u32 = 20;

/// What the status line shows at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// What must change for `Changes` mode to print a line before [`PLAIN_REPEAT`] (the state).
    pub key: String,
    /// What is followed, and where it is: `application_…  RUNNING`.
    pub subject: String,
    /// How far it is, 0.0 to 1.0, when that means something: drawn as a bar on a terminal.
    /// `None` for a stream (it has no end to be a share of) or an app that has not started.
    pub fraction: Option<f32>,
    /// The progress as a word: `50%`, or `running` for a stream; empty for none.
    pub progress: String,
    /// The rest: containers, time so far, stages, why it waits.
    pub detail: String,
}

impl Status {
    /// A status with no progress: a spinner and `text` (the RM does not answer…).
    pub fn message(key: &str, text: String) -> Self {
        Status {
            key: key.to_owned(),
            subject: text,
            fraction: None,
            progress: String::new(),
            detail: String::new(),
        }
    }

    /// The line of `Changes` mode: `application_…  RUNNING     50%  2 running containers  1.3s`.
    pub fn plain(&self) -> String {
        join_parts(&[&self.subject, &format!("{:>4}", self.progress), &self.detail])
    }

    /// The text after the spinner on a terminal, the bar (if any) before the progress word.
    pub fn on_terminal(&self) -> String {
        let bar = self
            .fraction
            .map(|fraction| super::apps::progress_bar((fraction.clamp(0.0, 1.0) * BAR_WIDTH as f32) as u32, BAR_WIDTH))
            .unwrap_or_default();
        join_parts(&[&self.subject, &bar, &self.progress, &self.detail])
    }
}

/// The non-empty parts, two spaces apart.
fn join_parts(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|part| !part.trim().is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("  ")
}

/// The status line itself.
#[derive(Debug)]
pub struct ProgressLine {
    mode: ProgressMode,
    /// The state last printed and when, so `Changes` mode prints each state once (and repeats it
    /// only every [`PLAIN_REPEAT`]).
    last_printed: Option<(String, Instant)>,
    /// The line on the terminal (`Refresh` mode), made on the first update; where it draws
    /// (stderr, or a fake terminal in tests).
    bar: Option<ProgressBar>,
    /// Where `bar` draws, until it is made.
    target: Option<ProgressDrawTarget>,
}

impl ProgressLine {
    /// `Refresh` when stderr is a terminal, else `otherwise`.
    pub fn on_stderr(otherwise: ProgressMode) -> Self {
        ProgressLine::new(if std::io::stderr().is_terminal() {
            ProgressMode::Refresh
        } else {
            otherwise
        })
    }

    pub fn new(mode: ProgressMode) -> Self {
        ProgressLine {
            mode,
            last_printed: None,
            bar: None,
            target: None,
        }
    }

    /// A `Refresh` line drawn on `target` instead of stderr.
    #[cfg(test)]
    fn drawn_on(target: ProgressDrawTarget) -> Self {
        let mut line = ProgressLine::new(ProgressMode::Refresh);
        line.target = Some(target);
        line
    }

    /// Shows `status` (its control characters escaped: it carries job-made names and
    /// diagnostics).
    pub fn update(&mut self, status: &Status) {
        match self.mode {
            ProgressMode::Refresh => {
                let line = escaped(status.on_terminal());
                let bar = self.bar.get_or_insert_with(|| {
                    let target = self.target.take().unwrap_or_else(|| {
                        ProgressDrawTarget::term_like_with_hz(Box::new(StderrRoomForCtrlC(console::Term::stderr())), 20)
                    });
                    let bar = ProgressBar::with_draw_target(None, target);
                    // `wide_msg` is cut to what the terminal has left: the line never wraps.
                    let style = ProgressStyle::with_template("{spinner} {wide_msg}").expect("the template parses");
                    bar.set_style(style);
                    bar.enable_steady_tick(SPINNER_TICK);
                    bar
                });
                bar.set_message(line);
            }
            ProgressMode::Changes => {
                let now = Instant::now();
                if plain_line_due(self.last_printed.as_ref(), &status.key, now) {
                    eprintln!("{}", escaped(status.plain()));
                    self.last_printed = Some((status.key.clone(), now));
                }
            }
            ProgressMode::Off => {}
        }
    }

    /// Erases the line, so what follows starts on a clean one.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Stderr, two columns narrower than it is: the terminal echoes Ctrl-C as `^C` after the status
/// line, and on a line too full for it the `^C` would wrap to a new line, from where the status
/// line could no longer be erased before saying that the app keeps running.
#[derive(Debug)]
struct StderrRoomForCtrlC(console::Term);

impl indicatif::TermLike for StderrRoomForCtrlC {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(2).max(1)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.0.write_line(line)
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        self.0.write_str(text)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Whether `Changes` mode prints a line for state `key` at `now`, the last one having been
/// `last` (its state and when).
fn plain_line_due(last: Option<&(String, Instant)>, key: &str, now: Instant) -> bool {
    match last {
        None => true,
        Some((last_key, at)) => last_key != key || now.saturating_duration_since(*at) >= PLAIN_REPEAT,
    }
}

fn escaped(line: String) -> String {
    match terminal_safe(&line) {
        Cow::Borrowed(_) => line,
        Cow::Owned(escaped) => escaped,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    fn batch() -> Status {
        Status {
            key: "RUNNING".into(),
            subject: "application_1700000000000_0001  RUNNING".into(),
            fraction: Some(0.5),
            progress: "50%".into(),
            detail: "2 running containers  1.3s".into(),
        }
    }

    #[test]
    fn a_batch_job_has_a_bar_and_a_percentage() {
        assert_eq!(
            batch().plain(),
            "application_1700000000000_0001  RUNNING   50%  2 running containers  1.3s"
        );
        assert_eq!(
            batch().on_terminal(),
            "application_1700000000000_0001  RUNNING  [##########----------]  50%  2 running containers  1.3s"
        );
    }

    #[test]
    fn a_stream_reads_as_running_without_a_bar() {
        let stream = Status {
            fraction: None,
            progress: "running".into(),
            ..batch()
        };
        assert_eq!(
            stream.on_terminal(),
            "application_1700000000000_0001  RUNNING  running  2 running containers  1.3s"
        );
        assert!(!stream.plain().contains('%'));
    }

    #[test]
    fn plain_lines_come_on_a_change_of_state_and_now_and_then() {
        let start = Instant::now();
        let last = ("RUNNING".to_owned(), start);
        assert!(plain_line_due(None, "RUNNING", start));
        assert!(!plain_line_due(Some(&last), "RUNNING", start + Duration::from_secs(5)));
        assert!(plain_line_due(Some(&last), "FINISHING", start + Duration::from_secs(5)));
        assert!(plain_line_due(Some(&last), "RUNNING", start + PLAIN_REPEAT));
    }

    /// A terminal 40 columns wide that keeps what is written on it.
    #[derive(Debug, Clone, Default)]
    struct NarrowTerminal {
        written: Arc<Mutex<Vec<String>>>,
    }

    impl TermLike for NarrowTerminal {
        fn width(&self) -> u16 {
            40
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, line: &str) -> std::io::Result<()> {
            self.write_str(line)
        }
        fn write_str(&self, text: &str) -> std::io::Result<()> {
            self.written.lock().unwrap().push(text.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_terminal_line_is_cut_to_the_width_and_escaped() {
        let terminal = NarrowTerminal::default();
        let mut line = ProgressLine::drawn_on(ProgressDrawTarget::term_like(Box::new(terminal.clone())));
        let status = Status {
            subject: "job\x1b[2Jname  RUNNING".into(),
            ..batch()
        };
        line.update(&status);
        line.bar.as_ref().unwrap().force_draw();
        line.clear();
        let written = terminal.written.lock().unwrap();
        let drawn: Vec<&String> = written.iter().filter(|text| text.contains("job")).collect();
        assert!(!drawn.is_empty(), "{written:?}");
        for text in drawn {
            assert!(text.chars().count() <= 40, "{text:?} is wider than the terminal");
            assert!(text.contains("job\\x1b[2Jname  RUNNING  [#") && !text.contains('\x1b'), "{text:?}");
        }
    }
}
