//! `spindle logs CONTAINER [--stderr] [--tail BYTES]`: the RM fetches the file from the
//! container's node; it is streamed to stdout as it arrives, never held whole in memory.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use super::ClientContext;
use crate::args::LogsArgs;

pub async fn print(context: &ClientContext, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let stream = if args.stderr { "stderr" } else { "stdout" };
    let what = || format!("cannot get the {stream} of {}", args.container_id);
    let mut response = context
        .client
        .log_response(args.container_id, stream, args.tail)
        .await
        .with_context(what)?;
    // Logs are printed as they are, even with --json: they are the program's own output.
    while let Some(chunk) = response.chunk().await.with_context(what)? {
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(&chunk).and_then(|()| stdout.flush()).is_err() {
            // The reader has gone (`spindle logs … | head`): nothing more to do.
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
