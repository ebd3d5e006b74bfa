//! `spindle demo`: a throwaway local cluster, one shell job on it with live progress, then each
//! container's output, then a MapReduce word count and its most frequent words while a
//! streaming job runs beside them (`demo_stream.rs`), rescaled live. It leaves
//! nothing behind: the data dir is temporary and the user's `$SPINDLE_HOME/config.toml` is not
//! touched.

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
    outln!("  data   {}  (its local.toml holds the admin token)", cluster.data_dir.display());
    outln!("  (both vanish when the demo ends; your own config is untouched)");

    // The jobs' input and output: not in the data dir (private to this user), but in a dir
    // that the account jobs run as (nobody, when the demo runs as root) may write, as /tmp.
    let jobs_dir = tempfile::Builder::new()
        .prefix("spindle-demo-jobs-")
        .tempdir()
        .context("cannot make a temporary dir for the jobs' files")?;
    std::fs::set_permissions(jobs_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    let demo = async {
        let stream = crate::demo_stream::start(&cluster, jobs_dir.path()).await?;
        let shell = run_demo_job(&cluster).await?;
        if shell != ExitCode::SUCCESS {
            return Ok(shell);
        }
        let wordcount = run_demo_wordcount(&cluster, jobs_dir.path()).await?;
        if wordcount != ExitCode::SUCCESS {
            return Ok(wordcount);
        }
        let exact = crate::demo_stream::finish(&cluster, stream, jobs_dir.path()).await?;
        outln!("\nThat was Spindle. Run a cluster that stays with `spindle local`.");
        Ok(if exact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    };
    let outcome = tokio::select! {
        outcome = demo => outcome,
        () = shutdown_signal() => Err(anyhow!("interrupted")),
    };
    let work_root = cluster.work_root.clone();
    let stopped = cluster.shutdown().await;
    // The containers' dirs (and, as root, the copy of the binary they ran) are outside the
    // temporary data dir: a throwaway cluster removes them too.
    if let Err(err) = std::fs::remove_dir_all(&work_root) {
        eprintln!("warning: cannot remove the demo's container dir {}: {err}", work_root.display());
    }
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

    if report.final_status != FinalStatus::Succeeded {
        eprintln!("\nThe demo job did not succeed: {}", report.diagnostics);
    }
    Ok(exit_code_of(&report))
}

/// A text for the word count: a few sentences, many times, in four files.
fn write_demo_text(dir: &std::path::Path) -> anyhow::Result<()> {
    const SENTENCES: [&str; 4] = [
        "the resource manager grants containers to the application master",
        "the application master runs map and reduce tasks in the containers",
        "map tasks count the words and reduce tasks add the counts",
        "the node agents serve map output to the reduce tasks",
    ];
    std::fs::create_dir_all(dir)?;
    for (index, sentence) in SENTENCES.iter().enumerate() {
        let text = format!("{sentence}\n").repeat(5_000 * (index + 1));
        std::fs::write(dir.join(format!("text-{index}.txt")), text)?;
    }
    Ok(())
}

/// The MapReduce part of the demo: a word count over generated text, with a bar per stage,
/// then the most frequent words.
async fn run_demo_wordcount(cluster: &LocalCluster, data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (input, output) = (data_dir.join("wordcount-input"), data_dir.join("wordcount-output"));
    write_demo_text(&input).context("cannot write the demo's input text")?;
    let job = format!(
        "name = \"demo-wordcount\"\nkind = \"mapreduce\"\n[mapreduce]\ninput = [{:?}]\noutput = {:?}\n\
         mapper = \"wordcount\"\ncombiner = \"sum\"\nreducer = \"sum\"\nreducers = 2\nsplit_size_mb = 1\n\
         map = {{ vcores = 1, memory_mb = 256 }}\nreduce = {{ vcores = 1, memory_mb = 256 }}\nsort_buffer_mb = 32\n",
        input.display().to_string(),
        output.display().to_string()
    );
    let spec = parse_spec("the demo word count", &job)?;
    let client = cluster.client();
    let started = Instant::now();
    let app_id = client.submit(&spec).await.context("cannot submit the demo word count")?;
    outln!("\nSubmitted {app_id}: a MapReduce word count over 50,000 lines.");
    let mut progress = ProgressLine::on_stderr(ProgressMode::Changes);
    let report = tokio::time::timeout(DEMO_TIMEOUT, wait_for_app(&client, app_id, &mut progress))
        .await
        .map_err(|_| anyhow!("the demo word count did not finish within {}s", DEMO_TIMEOUT.as_secs()))??;
    drop(progress);
    outln!("{}", outcome_line(&report, started.elapsed()));
    if report.final_status != FinalStatus::Succeeded {
        eprintln!("\nThe demo word count did not succeed: {}", report.diagnostics);
        return Ok(exit_code_of(&report));
    }
    let mut counts: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(&output).context("cannot read the word count's output")? {
        let path = entry?.path();
        if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("part-r-")) {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some((word, count)) = line.split_once('\t') {
                    counts.push((count.parse().unwrap_or(0), word.to_owned()));
                }
            }
        }
    }
    counts.sort_by(|a, b| b.cmp(a));
    outln!("\nThe most frequent words ({} part files in {}):", 2, output.display());
    for (count, word) in counts.iter().take(5) {
        outln!("  {word:<12} {count}");
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
