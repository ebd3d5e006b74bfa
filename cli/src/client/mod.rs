//! The client commands: each turns its arguments into one or two `RmClient` calls and prints
//! the answer as a table (or as the API's JSON with `--json`).

pub mod apps;
pub mod logs;
pub mod nodes;
pub mod progress;
pub mod savepoint;
pub mod stream;
pub mod submit;
pub mod top;

use std::process::ExitCode;

use serde::Serialize;
use spindle_protocol::RmClient;

use crate::args::{Command, GlobalArgs, QueuesAction};
use crate::settings::ClientSettings;

/// What every client command needs: a client of the RM and the output format.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub client: RmClient,
    /// Print the API's JSON instead of tables.
    pub json: bool,
}

impl ClientContext {
    pub fn from_settings(settings: ClientSettings, json: bool) -> Self {
        ClientContext {
            client: RmClient::new(&settings.rm_urls, settings.token),
            json,
        }
    }
}

/// Runs a client command (the roles are dispatched before this).
pub async fn run(command: Command, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let settings = ClientSettings::load(global.rm.as_deref(), global.token.as_deref())?;
    let context = ClientContext::from_settings(settings, global.json);
    match command {
        Command::Submit(args) => submit::submit(&context, &args).await,
        Command::Apps(args) => apps::list(&context, &args).await,
        Command::App { app_id } => apps::show(&context, app_id).await,
        Command::Wait { app_id } => submit::wait(&context, app_id).await,
        Command::Kill { app_id } => apps::kill(&context, app_id).await,
        Command::Scale(args) => stream::scale(&context, &args).await,
        Command::Savepoint(args) => savepoint::savepoint(&context, &args).await,
        Command::Stop(args) => savepoint::stop(&context, &args).await,
        Command::Nodes { all } => nodes::list(&context, all).await,
        Command::Recommission { node_id } => nodes::recommission(&context, &node_id).await,
        Command::Queues { action: None } => nodes::queues(&context).await,
        Command::Queues {
            action: Some(QueuesAction::Reload),
        } => nodes::reload_queues(&context).await,
        Command::Decommission(args) => nodes::decommission(&context, &args).await,
        Command::JoinToken(args) => nodes::join_token(&context, &args).await,
        Command::Logs(args) => logs::print(&context, &args).await,
        Command::Top(args) => top::top(&context, &args).await,
        Command::ResourceManager(_)
        | Command::NodeAgent(_)
        | Command::AppMaster
        | Command::MrTask
        | Command::StreamTask
        | Command::Local(_)
        | Command::Demo
        | Command::Simulate(_)
        | Command::Loadgen(_) => {
            unreachable!("roles and the simulator are dispatched before the client is built")
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
