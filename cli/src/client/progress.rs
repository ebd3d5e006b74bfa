//! A one-line status on stderr that redraws itself on a terminal, so `--wait` and the demo show
//! where an app is without scrolling the screen.

use std::io::{IsTerminal, Write};

/// How progress reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Redraw one line in place (a terminal).
    Refresh,
    /// Print a new line whenever the state changes (a log file, CI).
    Changes,
    /// Print nothing.
    Off,
}

/// The status line itself.
#[derive(Debug)]
pub struct ProgressLine {
    mode: ProgressMode,
    /// The state last printed, so `Changes` mode prints each state once.
    last_key: Option<String>,
    /// Whether a line is on screen that `clear` must erase.
    drawn: bool,
}

/// ANSI: back to the start of the line and erase it.
const ERASE_LINE: &str = "\r\x1b[2K";

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
            last_key: None,
            drawn: false,
        }
    }

    /// Shows `line` (its control characters escaped: it carries job-made names and
    /// diagnostics); `key` is what must change for `Changes` mode to print again.
    pub fn update(&mut self, key: &str, line: &str) {
        let line = crate::table::terminal_safe(line);
        let mut stderr = std::io::stderr().lock();
        match self.mode {
            ProgressMode::Refresh => {
                let _ = write!(stderr, "{ERASE_LINE}{line}");
                let _ = stderr.flush();
                self.drawn = true;
            }
            ProgressMode::Changes if self.last_key.as_deref() != Some(key) => {
                let _ = writeln!(stderr, "{line}");
            }
            ProgressMode::Changes | ProgressMode::Off => {}
        }
        self.last_key = Some(key.to_owned());
    }

    /// Erases the line, so what follows starts on a clean one.
    pub fn clear(&mut self) {
        if self.drawn {
            eprint!("{ERASE_LINE}");
            self.drawn = false;
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.clear();
    }
}
