//! The one error enum of the crate: what stopped a map or reduce task, or the job's output
//! commit, and where.

use std::io;
use std::path::PathBuf;

/// Why a map or reduce task failed, or the output could not be set up or published. Every
/// message names the file, key or command involved.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("input `{path}`: {reason}")]
    Input { path: String, reason: String },

    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{what}: {source}")]
    Stream { what: String, source: io::Error },

    #[error("key `{key}` has value `{value}`, which is not an integer: `sum` needs integer values")]
    NotAnInteger { key: String, value: String },

    #[error("the sum of the values of key `{key}` overflows a 64-bit integer")]
    SumOverflow { key: String },

    #[error("command `{command}` could not be started: {source}")]
    CommandStart { command: String, source: io::Error },

    #[error("command `{command}` failed ({status}); the last lines of its stderr:\n{stderr_tail}")]
    CommandFailed {
        command: String,
        status: String,
        stderr_tail: String,
    },

    #[error("a record with key `{key}` has {bytes} bytes of key or value: at most 4 GiB - 1 each")]
    RecordTooLarge { key: String, bytes: usize },

    #[error("map output is corrupt in {origin}: {reason}")]
    CorruptMapOutput { origin: String, reason: String },

    #[error("invalid task parameters: {0}")]
    InvalidParams(String),

    #[error("output `{0}` already exists: remove it, choose another, or set overwrite = true")]
    OutputExists(String),

    /// The object store refused or failed a request about the output.
    #[error("output: {0}")]
    Output(String),

    #[error("output `{}`: its parent directory does not exist", .0.display())]
    NoOutputParent(PathBuf),
}

impl TaskError {
    /// An I/O error on a file, saying what was being done to which path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TaskError {
        let path = path.into();
        move |source| TaskError::Io { action, path, source }
    }
}

/// Byte strings in messages: lossy UTF-8, cut to a readable length.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX { format!("{shown}…") } else { shown }
}

/// The result type of the task runtime.
pub type TaskResult<T> = Result<T, TaskError>;
