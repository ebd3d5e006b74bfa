//! How errors leave the binary: one message on stderr, a hint where one helps, and an exit code
//! scripts can rely on (0 ok, 1 failed app or API error, 2 usage or configuration error).

use std::process::ExitCode;

use spindle_protocol::ClientError;

/// Exit code of an app that did not succeed, or of an error from a server.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a bad command line, config file or job file (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

/// The user asked for something that cannot work as written: fix the command or a file.
#[derive(Debug)]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError(message.into())
    }
}

/// A hint for errors whose fix is not in their message.
fn hint_for(error: &anyhow::Error) -> Option<&'static str> {
    let client_error = error.chain().find_map(|cause| cause.downcast_ref::<ClientError>())?;
    match client_error.status() {
        Some(401) => Some("check --token / SPINDLE_TOKEN or $SPINDLE_HOME/config.toml"),
        Some(403) => Some("this token may not do that: check --token / SPINDLE_TOKEN or $SPINDLE_HOME/config.toml"),
        _ => None,
    }
}

/// The exit code an error stands for.
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<UsageError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

/// Prints `error` (with its causes and any hint) and returns its exit code. A server's message
/// may quote what a job wrote, so control characters are escaped.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", crate::table::terminal_safe_lines(&format!("{error:#}")));
    if let Some(hint) = hint_for(error) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(exit_code_for(error))
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_exit_2_even_under_context() {
        let error = anyhow::Error::new(UsageError::new("bad")).context("reading job.toml");
        assert_eq!(exit_code_for(&error), EXIT_USAGE);
        assert_eq!(exit_code_for(&anyhow::anyhow!("boom")), EXIT_FAILURE);
    }

    #[test]
    fn auth_errors_get_a_token_hint() {
        let unauthorized = ClientError::Api {
            status: 401,
            code: "unauthorized".into(),
            message: "no token".into(),
        };
        let error = Err::<(), _>(unauthorized).context("listing apps").unwrap_err();
        assert!(hint_for(&error).unwrap().contains("SPINDLE_TOKEN"));
        let not_found = ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "no app".into(),
        };
        assert!(hint_for(&anyhow::Error::new(not_found)).is_none());
    }
}
