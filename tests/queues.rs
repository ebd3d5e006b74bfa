//! Two teams on one local cluster (real RM, agents, AM and task processes): a long-running job
//! in queue `streaming` and a stream of short batch jobs in queue `batch`. `streaming` gets its
//! guarantee within the preemption grace period and keeps it; `batch` uses the idle rest.
//! Also: the submit ACL answers 403, and a reload that would orphan running apps is refused.

mod support;

use std::time::{Duration, Instant};

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppId, AppState, ExitReason, FinalStatus, QueueReport, Resources, RmClient};
use support::{shell_job, task_containers, wait_for_app_end, wait_until};

const ALICE_TOKEN: &str = "alice-token-0123456789";
const BOB_TOKEN: &str = "bob-token-0123456789ab";
/// Short, so the test is quick; the RM's default is 15 s.
const GRACE: Duration = Duration::from_secs(3);

fn rm_config(with_batch: bool) -> String {
    let batch = if with_batch {
        "[[queues.children]]\nname = \"batch\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"bob\"]\n"
    } else {
        ""
    };
    format!(
        "[scheduler]\npreemption_grace = {}\n\
         [[users]]\nname = \"alice\"\ntoken = \"{ALICE_TOKEN}\"\n\
         [[users]]\nname = \"bob\"\ntoken = \"{BOB_TOKEN}\"\n\
         [queues]\nname = \"root\"\n\
         [[queues.children]]\nname = \"streaming\"\nguaranteed_percent = 50\nam_share_percent = 50\nsubmit_users = [\"alice\"]\n\
         {batch}",
        GRACE.as_secs()
    )
}

fn leaf<'a>(root: &'a QueueReport, name: &str) -> &'a QueueReport {
    root.children
        .iter()
        .find(|queue| queue.name == format!("root.{name}"))
        .unwrap_or_else(|| panic!("queue {name} in {root:#?}"))
}

/// Keeps two batch jobs of 6 tasks of 10 s in flight, as bob, until `stop`; returns their ids.
/// The tasks outlast the grace period, so streaming needs preemption to get its guarantee.
async fn batch_stream(bob: RmClient, stop: tokio_util::sync::CancellationToken) -> Vec<AppId> {
    let mut submitted: Vec<AppId> = Vec::new();
    while !stop.is_cancelled() {
        let mut live = 0;
        for &app in &submitted {
            if !bob.app(app).await.map(|report| report.state.is_terminal()).unwrap_or(true) {
                live += 1;
            }
        }
        if live < 2 {
            let mut spec = shell_job("etl", "sleep 10", 6, 128, 3);
            spec.queue = "batch".to_owned();
            submitted.push(bob.submit(&spec).await.expect("bob may submit to batch"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    submitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_gets_its_guarantee_within_the_grace_period_and_batch_uses_the_rest() {
    let dir = support::shared_tempdir("spindle-queues-");
    let _cleanup = support::CleanupDir(dir.path());
    let config_path = dir.path().join("rm.toml");
    // A copy of a deployment's config may carry [tls]: a local cluster stays plain HTTP anyway.
    for pem in ["rm.crt", "rm.key", "ca.crt"] {
        std::fs::write(dir.path().join(pem), "").unwrap();
    }
    let tls = format!(
        "\n[tls]\ncert_file = \"{0}/rm.crt\"\nkey_file = \"{0}/rm.key\"\nca_file = \"{0}/ca.crt\"\n",
        dir.path().display()
    );
    std::fs::write(&config_path, rm_config(true) + &tls).unwrap();
    let mut options = LocalOptions::new(dir.path().join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 4096));
    options.spindle_bin = support::spindle_bin();
    options.rm_config = Some(config_path.clone());
    let cluster = LocalCluster::start(options).await.expect("the local cluster starts");
    let urls = std::slice::from_ref(&cluster.rm_url);
    let alice = RmClient::new(urls, Some(ALICE_TOKEN.to_owned()));
    let bob = RmClient::new(urls, Some(BOB_TOKEN.to_owned()));

    // The submit ACL: batch is bob's.
    let mut wrong_queue = shell_job("sneaky", "true", 1, 64, 0);
    wrong_queue.queue = "batch".to_owned();
    let refused = alice.submit(&wrong_queue).await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");

    // Batch alone borrows the whole cluster (8 vcores, guarantee 4).
    let stop = tokio_util::sync::CancellationToken::new();
    let stream = tokio::spawn(batch_stream(bob.clone(), stop.clone()));
    wait_until(Duration::from_secs(30), "batch to borrow past its guarantee", || async {
        let root = bob.queues().await.ok()?;
        (leaf(&root, "batch").used.vcores > 4).then_some(())
    })
    .await;

    // The streaming job: AM + 3 tasks = 4 vcores, its guarantee. Its demand comes in two steps
    // (the AM, then the AM's asks), each served by preemption within the grace period plus the
    // time to tick and launch; no stretch of "below guarantee with demand pending" may be longer.
    let mut streaming = shell_job("events", "sleep 600", 3, 128, 0);
    streaming.queue = "streaming".to_owned();
    let submitted_at = Instant::now();
    let streaming_app = alice.submit(&streaming).await.unwrap();
    let mut starved_since: Option<Instant> = None;
    let mut longest_starved = Duration::ZERO;
    let reached_at = loop {
        let root = alice.queues().await.unwrap();
        let queue = leaf(&root, "streaming");
        if queue.used.vcores >= 4 {
            break Instant::now();
        }
        let starved = !queue.pending.is_zero();
        match (starved, starved_since) {
            (true, None) => starved_since = Some(Instant::now()),
            (false, Some(since)) => {
                longest_starved = longest_starved.max(since.elapsed());
                starved_since = None;
            }
            _ => {}
        }
        assert!(
            submitted_at.elapsed() < Duration::from_secs(40),
            "streaming never reached its guarantee: {root:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(since) = starved_since {
        longest_starved = longest_starved.max(reached_at - since);
    }
    eprintln!(
        "streaming reached its guarantee {:?} after submit; longest starved stretch {longest_starved:?} (grace {GRACE:?})",
        reached_at - submitted_at
    );
    assert!(longest_starved <= GRACE + Duration::from_secs(3), "starved for {longest_starved:?}");

    // From then on streaming keeps its guarantee, and batch keeps using the rest.
    let mut batch_peak = 0;
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        let root = alice.queues().await.unwrap();
        assert!(
            leaf(&root, "streaming").used.vcores >= 4,
            "streaming fell below its guarantee: {root:#?}"
        );
        batch_peak = batch_peak.max(leaf(&root, "batch").used.vcores);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(batch_peak, 4, "batch used the idle rest");

    // A reload that drops `batch` while its apps run is refused; the tree stays.
    std::fs::write(&config_path, rm_config(false)).unwrap();
    let refused = cluster.client().reload_queues().await.unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    assert!(refused.to_string().contains("queue `batch` holds"), "{refused}");
    std::fs::write(&config_path, rm_config(true)).unwrap();
    cluster.client().reload_queues().await.expect("an unchanged tree reloads");

    // Preempted tasks run again and do not count as failures: their apps succeed.
    stop.cancel();
    let batch_apps = stream.await.unwrap();
    let mut preempted = 0;
    for app in batch_apps {
        let lost = task_containers(&bob, app)
            .await
            .iter()
            .filter(|task| task.exit_reason == Some(ExitReason::Preempted))
            .count();
        if lost == 0 {
            let _ = bob.kill(app).await;
            continue;
        }
        preempted += lost;
        let report = wait_for_app_end(&bob, app, Duration::from_secs(90)).await;
        assert_eq!(
            (report.state, report.final_status),
            (AppState::Finished, FinalStatus::Succeeded),
            "preempted tasks do not count as failures: {report:#?}"
        );
    }
    assert!(preempted > 0, "batch tasks outlast the grace period: streaming needed preemption");
    eprintln!("{preempted} batch tasks were preempted");
    alice.kill(streaming_app).await.unwrap();
    cluster.shutdown().await.expect("the local cluster stops cleanly");
}
