//! `spindle logs ID [--stderr] [--tail N] [--tail-bytes B] [--follow]`. A container id prints
//! that container's log; an app id prints every container of the app, each under a header, in
//! id order (the AM first). `--follow` keeps printing what is appended: for an app, the lines
//! of every container (new ones included, as they start), each prefixed with its container,
//! until the app has ended. The RM fetches from the container's node and streams it through;
//! nothing is held whole in memory.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use spindle_protocol::{AppId, ContainerId, ContainerReport, LogOptions, RmClient};

use super::ClientContext;
use crate::args::LogsArgs;

/// How often `--follow` of an app looks for containers that started since.
const NEW_CONTAINERS_POLL: Duration = Duration::from_secs(1);

/// What `spindle logs` was given: an app or one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    App(AppId),
    Container(ContainerId),
}

impl FromStr for LogTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("container_") {
            return text
                .parse()
                .map(LogTarget::Container)
                .map_err(|err: spindle_protocol::IdParseError| err.to_string());
        }
        text.parse().map(LogTarget::App).map_err(|err: spindle_protocol::IdParseError| {
            format!("{err}; expected an app id (application_…) or a container id (container_…)")
        })
    }
}

pub async fn print(context: &ClientContext, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let stream = if args.stderr { "stderr" } else { "stdout" };
    let options = LogOptions {
        tail_bytes: args.tail_bytes,
        tail_lines: args.tail,
        follow: args.follow,
    };
    // Logs are printed as they are, even with --json: they are the programs' own output.
    match args.target {
        LogTarget::Container(container_id) => {
            copy_log(&context.client, container_id, stream, &options, &mut RawOut::default()).await?;
        }
        LogTarget::App(app_id) if args.follow => follow_app(&context.client, app_id, stream, &options).await?,
        LogTarget::App(app_id) => print_app(&context.client, app_id, stream, &options).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Every container of the app, one after the other, each under a header.
async fn print_app(client: &RmClient, app_id: AppId, stream: &str, options: &LogOptions) -> anyhow::Result<()> {
    let containers = client
        .containers(app_id)
        .await
        .with_context(|| format!("cannot list the containers of {app_id}"))?;
    for container in sorted(containers) {
        if !write_out(format!("==> {} <==\n", header(&container, stream)).as_bytes()) {
            return Ok(());
        }
        let mut out = RawOut::default();
        if let Err(error) = copy_log(client, container.container_id, stream, options, &mut out).await {
            // One container's log gone (its node left, retention) must not hide the others'.
            write_out(format!("(no {stream}: {error:#})\n").as_bytes());
        }
        out.end_line();
    }
    Ok(())
}

/// Follows every container of the app, new ones as they start, until the app has ended and
/// every followed log has ended; each line is prefixed with its container.
async fn follow_app(client: &RmClient, app_id: AppId, stream: &str, options: &LogOptions) -> anyhow::Result<()> {
    let mut followed = BTreeSet::new();
    let mut followers = tokio::task::JoinSet::new();
    let stdout = Arc::new(Mutex::new(()));
    loop {
        let ended = client
            .app(app_id)
            .await
            .with_context(|| format!("cannot follow {app_id}"))?
            .state
            .is_terminal();
        let containers = client
            .containers(app_id)
            .await
            .with_context(|| format!("cannot list the containers of {app_id}"))?;
        for container in sorted(containers) {
            if !followed.insert(container.container_id) {
                continue;
            }
            let (client, stream, options, stdout) = (client.clone(), stream.to_owned(), *options, Arc::clone(&stdout));
            let prefix = format!("[{}] ", short_id(container.container_id));
            followers.spawn(async move {
                let mut out = PrefixedLines::new(prefix, stdout);
                let _ = copy_log(&client, container.container_id, &stream, &options, &mut out).await;
                out.end_line();
            });
        }
        if ended {
            break;
        }
        tokio::time::sleep(NEW_CONTAINERS_POLL).await;
    }
    while followers.join_next().await.is_some() {}
    Ok(())
}

/// Streams one log into `out` as it arrives.
async fn copy_log(
    client: &RmClient,
    container_id: ContainerId,
    stream: &str,
    options: &LogOptions,
    out: &mut impl LogSink,
) -> anyhow::Result<()> {
    let what = || format!("cannot get the {stream} of {container_id}");
    let mut response = client.log_response(container_id, stream, options).await.with_context(what)?;
    while let Some(chunk) = response.chunk().await.with_context(what)? {
        if !out.write(&chunk) {
            // The reader has gone (`spindle logs … | head`): nothing more to do.
            break;
        }
    }
    Ok(())
}

/// The AM first, then the task containers, in id order.
fn sorted(mut containers: Vec<ContainerReport>) -> Vec<ContainerReport> {
    containers.sort_by_key(|container| (!container.is_am, container.container_id));
    containers
}

fn header(container: &ContainerReport, stream: &str) -> String {
    let role = if container.is_am { "AM, " } else { "" };
    format!(
        "{} on {} ({role}{}) {stream}",
        container.container_id,
        container.node_id,
        crate::table::wire_name(&container.state)
    )
}

/// `<attempt>_<seq>`: unique within an app, short enough for a prefix.
fn short_id(container_id: ContainerId) -> String {
    format!("{:02}_{:06}", container_id.attempt, container_id.seq)
}

/// Where log bytes go; `false` once the reader has gone.
trait LogSink {
    fn write(&mut self, bytes: &[u8]) -> bool;
}

/// Bytes as they are, remembering whether the last one ended a line.
#[derive(Default)]
struct RawOut {
    last: Option<u8>,
}

impl RawOut {
    /// Ends the output with a newline if the log did not (so the next header starts a line).
    fn end_line(&mut self) {
        if self.last.is_some_and(|byte| byte != b'\n') {
            write_out(b"\n");
        }
    }
}

impl LogSink for RawOut {
    fn write(&mut self, bytes: &[u8]) -> bool {
        if let Some(&last) = bytes.last() {
            self.last = Some(last);
        }
        write_out(bytes)
    }
}

fn write_out(bytes: &[u8]) -> bool {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).is_ok()
}

/// Whole lines, each with the container's prefix, written under a lock shared by every
/// followed container so lines never interleave mid-line.
struct PrefixedLines {
    prefix: String,
    partial: Vec<u8>,
    stdout: Arc<Mutex<()>>,
}

impl PrefixedLines {
    fn new(prefix: String, stdout: Arc<Mutex<()>>) -> Self {
        PrefixedLines {
            prefix,
            partial: Vec::new(),
            stdout,
        }
    }

    /// Writes a last line that had no newline.
    fn end_line(&mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) -> bool {
        let _guard = self.stdout.lock().expect("the stdout lock is never poisoned");
        let mut text = Vec::with_capacity(self.prefix.len() + line.len());
        text.extend_from_slice(self.prefix.as_bytes());
        text.extend_from_slice(line);
        write_out(&text)
    }
}

impl LogSink for PrefixedLines {
    fn write(&mut self, bytes: &[u8]) -> bool {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if !self.emit(&line) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_apps_or_containers_and_other_text_is_named() {
        assert!(matches!("application_1700000000000_0003".parse(), Ok(LogTarget::App(_))));
        assert!(matches!(
            "container_e01_1700000000000_0003_01_000002".parse(),
            Ok(LogTarget::Container(_))
        ));
        let err = "app_3".parse::<LogTarget>().unwrap_err();
        assert!(err.contains("container id"), "{err}");
    }
}
