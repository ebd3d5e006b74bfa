//! The application-master driver every job kind runs on (register, the long-polling allocate
//! loop, finish, riding through RM restarts and fail-overs, concurrent container launches; see
//! `driver`) and the `shell` job kind, YARN's DistributedShell. MapReduce (`spindle-mapreduce`)
//! and stream jobs (`spindle-stream`) are frameworks on the same driver, in their own crates.

mod context;
pub mod driver;
mod error;
mod launch;
mod rm;
pub mod shell;

use spindle_protocol::FinalStatus;

pub use context::AmContext;
pub use error::AmError;
pub use launch::{
    AgentLauncher, ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchFailure, LaunchFailureKind, LaunchPool, LaunchResult,
};
pub use rm::{Heartbeat, RetryPolicy, RmConnection};
pub use shell::ShellMaster;

/// How an application master ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmExit {
    /// The job ended and the RM recorded its final status.
    Finished { final_status: FinalStatus, diagnostics: String },
    /// The RM said stop (app killed or this attempt superseded): exited without `finish`.
    ShutdownByRm,
    /// The process was asked to stop (`shutdown` fired): exited without `finish`.
    Cancelled,
}
