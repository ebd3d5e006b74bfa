//! The one error enum of the crate: what stopped an application master, and what to do about it.

use std::time::Duration;

use spindle_protocol::{ClientError, SpecError};

/// Why an application master could not start or had to stop before finishing its job.
#[derive(Debug, thiserror::Error)]
pub enum AmError {
    #[error(
        "environment variable {name} is not set: `spindle app-master` runs inside an AM container, \
         whose node agent sets it; do not start it by hand"
    )]
    MissingEnv { name: &'static str },

    #[error("environment variable {name} is invalid: {reason}")]
    InvalidEnv { name: &'static str, reason: String },

    #[error("the job spec is invalid: {0}")]
    InvalidSpec(#[from] SpecError),

    #[error(
        "job kind `{kind}` has no built-in application master yet: use kind = \"shell\", \
         or kind = \"custom\" with your own AM command"
    )]
    UnsupportedKind { kind: String },

    #[error(
        "the RM did not answer the {call} call for {:.0} s; giving up: {source}",
        waited.as_secs_f64()
    )]
    RmUnreachable {
        call: &'static str,
        waited: Duration,
        source: ClientError,
    },

    #[error(
        "the RM refused the {call} call of this AM attempt: {source}. The app was killed, \
         finished, or a newer attempt took over; this attempt stops"
    )]
    AttemptInvalid { call: &'static str, source: ClientError },

    #[error("the RM rejected the {call} call: {source}")]
    Rejected { call: &'static str, source: ClientError },

    #[error("the application master was asked to stop")]
    Cancelled,

    /// A framework cannot prepare what it needs before it registers (such as a stream job's
    /// checkpoint dir that is not safe to use): the attempt fails, the message says why.
    #[error("{0}")]
    Setup(String),
}
