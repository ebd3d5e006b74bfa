//! `spindle demo`: a throwaway local cluster, one shell job on it with live progress, then each
//! container's output. It leaves nothing behind: the data dir is temporary and the user's
//! `$SPINDLE_HOME/config.toml` is not touched.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use spindle_protocol::{FinalStatus, Resources};

use crate::client::progress::{ProgressLine, ProgressMode};
use crate::client::submit::{exit_code_of, outcome_line, parse_spec, wait_for_app};
use crate::daemon::shutdown_signal;
use crate::local::{LocalCluster, LocalOptions};

/// How long the demo job may take before the demo gives up on it.
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);

/// Each demo agent offers this much whatever the machine has: the job only echoes, and the
/// demo must show containers spread over both agents even on a two-core laptop.
const DEMO_AGENT_CAPACITY: Resources = Resources {
    vcores: 4,
    memory_mb: 4096,
};

const DEMO_JOB: &str = r#"
name = "demo-hello"
kind = "shell"
[shell]
command = ["sh", "-c", 'echo "hello from $SPINDLE_CONTAINER_ID on $SPINDLE_NODE_ID"']
containers = 4
vcores = 1
memory_mb = 128
"#;

pub async fn demo() -> anyhow::Result<ExitCode> {
    let data_dir = tempfile::Builder::new()
        .prefix("spindle-demo-")
        .tempdir()
        .context("cannot make a temporary data dir")?;
    eprintln!("Starting a throwaway cluster: a resource manager and 2 node agents…");
    let mut options = LocalOptions::new(data_dir.path())?;
    options.agents = 2;
    options.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    options.agent_capacity = Some(DEMO_AGENT_CAPACITY);
    let cluster = LocalCluster::start(options).await?;
    outln!("  RM     {}", cluster.rm_url);
    outln!("  token  {}", cluster.token);
    outln!("  (both vanish when the demo ends; your own config is untouched)");

    let outcome = tokio::select! {
        outcome = run_demo_job(&cluster) => outcome,
        () = shutdown_signal() => Err(anyhow!("interrupted")),
    };
    let stopped = cluster.shutdown().await;
    let exit_code = outcome?;
    stopped.context("the demo cluster did not stop cleanly")?;
    Ok(exit_code)
}

async fn run_demo_job(cluster: &LocalCluster) -> anyhow::Result<ExitCode> {
    let client = cluster.client();
    let spec = parse_spec("the demo job", DEMO_JOB)?;
    let started = Instant::now();
    let app_id = client.submit(&spec).await.context("cannot submit the demo job")?;
    outln!("\nSubmitted {app_id}: 4 containers that each say hello.");

    let mut progress = ProgressLine::on_stderr(ProgressMode::Changes);
    let report = tokio::time::timeout(DEMO_TIMEOUT, wait_for_app(&client, app_id, &mut progress))
        .await
        .map_err(|_| {
            anyhow!(
                "the demo job did not finish within {}s; see `RUST_LOG=info spindle demo`",
                DEMO_TIMEOUT.as_secs()
            )
        })??;
    drop(progress);
    outln!("{}", outcome_line(&report, started.elapsed()));

    let mut tasks: Vec<_> = client
        .containers(app_id)
        .await
        .context("cannot list the demo job's containers")?
        .into_iter()
        .filter(|container| !container.is_am)
        .collect();
    tasks.sort_by_key(|container| container.container_id);
    if !tasks.is_empty() {
        outln!("\nWhat the containers printed:");
    }
    for container in &tasks {
        match client.logs(container.container_id, "stdout").await {
            Ok(stdout) if stdout.trim().is_empty() => outln!("  {}: (nothing)", container.container_id),
            Ok(stdout) => stdout.lines().for_each(|line| outln!("  {line}")),
            Err(err) => outln!("  {}: (no output: {err})", container.container_id),
        }
    }

    if report.final_status == FinalStatus::Succeeded {
        outln!("\nThat was Spindle. Run a cluster that stays with `spindle local`.");
    } else {
        eprintln!("\nThe demo job did not succeed: {}", report.diagnostics);
    }
    Ok(exit_code_of(&report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_job_is_a_valid_four_container_shell_job() {
        let spec = parse_spec("demo", DEMO_JOB).unwrap();
        let shell = spec.shell.as_ref().unwrap();
        assert_eq!(shell.containers, 4);
        assert!(shell.command[2].contains("$SPINDLE_NODE_ID"));
        assert!(spec.largest_container().vcores <= DEMO_AGENT_CAPACITY.vcores);
    }
}
