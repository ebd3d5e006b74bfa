//! Spindle's application masters: the AM runtime every job kind shares (register, the
//! long-polling allocate loop, finish, riding through RM restarts, concurrent container launches)
//! and the `shell` job kind, YARN's DistributedShell.

mod context;
mod error;
mod launch;
pub mod mapreduce;
mod rm;
pub mod shell;
pub mod stream;

use spindle_protocol::{FinalStatus, JobKind};
use tokio_util::sync::CancellationToken;

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

/// Runs the built-in AM of the context's job kind.
pub async fn run(context: AmContext, shutdown: CancellationToken) -> Result<AmExit, AmError> {
    match context.spec.kind {
        JobKind::Shell => ShellMaster::new(context)?.run(shutdown).await,
        JobKind::Mapreduce => mapreduce::master::MapReduceMaster::new(context)?.run(shutdown).await,
        JobKind::Stream => stream::master::StreamMaster::new(context)?.run(shutdown).await,
        other => Err(AmError::UnsupportedKind {
            kind: format!("{other:?}").to_lowercase(),
        }),
    }
}

/// The entry point of `spindle app-master`: reads the AM container's environment (see
/// `spindle_protocol::env`) and runs the job's AM. `Ok` once the job's end is recorded, or the
/// RM or `shutdown` said stop; an error makes the attempt fail, so the RM may start another.
pub async fn run_from_env(shutdown: CancellationToken) -> anyhow::Result<()> {
    let context = AmContext::from_env()?;
    let exit = run(context, shutdown).await?;
    tracing::debug!(?exit, "application master exiting");
    Ok(())
}
