//! `spindle logs CONTAINER [--stderr]`: the RM fetches the file from the container's node.

use std::process::ExitCode;

use anyhow::Context;

use super::ClientContext;
use crate::args::LogsArgs;

pub async fn print(context: &ClientContext, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let stream = if args.stderr { "stderr" } else { "stdout" };
    let text = context
        .client
        .logs(args.container_id, stream)
        .await
        .with_context(|| format!("cannot get the {stream} of {}", args.container_id))?;
    // Logs are printed as they are, even with --json: they are the program's own output.
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}
