//! The `spindle` binary as a library: argument parsing, the wiring of every role, and the client
//! commands. `LocalCluster` is public so tests can start a whole cluster in one process.

#[macro_use]
mod output;

mod app_master;
pub mod args;
pub mod client;
pub mod daemon;
pub mod demo;
mod demo_stream;
pub mod error;
pub mod loadgen;
pub mod local;
pub mod local_capacity;
pub mod local_work;
pub mod roles;
pub mod settings;
pub mod simulate;
pub mod table;

use std::process::ExitCode;
use std::time::Duration;

use crate::args::{Cli, Command};
use crate::daemon::init_tracing;

/// How long, after the command is done, background work may take to wind down.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse_args();
    settings::take_secrets_from_env();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Loadgen(args) = &cli.command {
        // It shares the machine with the RM it measures: its CPU is bounded by its threads.
        runtime.worker_threads(args.workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return error::report(&anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    outcome.unwrap_or_else(|err| error::report(&err))
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.global.log_format;
    // Before any client exists: every client of this process (and of the daemon it may run)
    // checks servers against the cluster's CA.
    if let Some(ca_file) = &cli.global.ca_file {
        if matches!(cli.command, Command::Local(_) | Command::Demo) {
            return Err(error::UsageError::new(
                "a local cluster speaks plain HTTP on 127.0.0.1: unset SPINDLE_CA_FILE (or drop --ca-file) to run it",
            )
            .into());
        }
        spindle_protocol::tls::trust_ca_file(ca_file).map_err(|err| error::UsageError::new(format!("--ca-file: {err}")))?;
    }
    match cli.command {
        Command::ResourceManager(args) => {
            init_tracing(log_format, "info");
            roles::resource_manager(args).await
        }
        Command::NodeAgent(args) => {
            init_tracing(log_format, "info");
            roles::node_agent(args, cli.global.rm.as_deref(), cli.global.ca_file.as_deref()).await
        }
        Command::AppMaster => {
            init_tracing(log_format, "info");
            roles::app_master().await
        }
        Command::MrTask => {
            init_tracing(log_format, "info");
            let code = spindle_mapreduce::task_main::run_from_env().await?;
            Ok(ExitCode::from(code))
        }
        Command::StreamTask => {
            init_tracing(log_format, "info");
            let registry = spindle_stream::OperatorRegistry::new();
            spindle_stream::runtime::worker::serve(registry).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Local(args) => {
            init_tracing(log_format, "info");
            roles::local(args).await
        }
        Command::Demo => {
            // The demo's own output tells the story; daemon logs would drown it.
            init_tracing(log_format, "warn");
            demo::demo().await
        }
        Command::Simulate(args) => simulate::simulate(&args, cli.global.json),
        Command::Loadgen(args) => {
            // Its JSON line is the output; daemon-style logs only for what goes wrong.
            init_tracing(log_format, "warn");
            loadgen::loadgen(&args, &cli.global).await
        }
        command => client::run(command, &cli.global).await,
    }
}
