//! Several RMs on one PostgreSQL database, as real processes: one active and the others
//! standby; the active killed (-9) or paused mid-job; the standby takes over, the job goes on
//! without re-running anything, and clients, agents and AMs follow it by themselves.

mod support;

use std::time::{Duration, Instant};

use spindle_protocol::{AppState, ExitReason, FinalStatus, HealthReport, RmRole};
use support::{PgSchema, TestCluster, shell_job, task_lines, wait_for_app_end, wait_for_containers_to_end, wait_until};

/// The lease these tests run with: failover within about a second.
const LEASE_S: f64 = 1.0;
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// `/healthz` of RM `number`, or `None` if it does not answer.
async fn health(cluster: &TestCluster, number: usize) -> Option<HealthReport> {
    let url = format!("{}/healthz", cluster.rm_urls()[number]);
    let client = spindle_protocol::tls::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client.get(url).send().await.ok()?.json().await.ok()
}

/// Waits until RM `number` says it is active; returns its epoch.
async fn wait_active(cluster: &TestCluster, number: usize) -> u64 {
    wait_until(Duration::from_secs(20), &format!("RM {number} to be active"), || async {
        let health = health(cluster, number).await?;
        (health.role == RmRole::Active).then_some(health.epoch?)
    })
    .await
}

/// The expected task lines `0..count`.
fn indexes(count: u32) -> Vec<String> {
    (0..count).map(|index| index.to_string()).collect()
}

/// Kill -9 of the active RM mid-job: the standby takes over; a client with both URLs submits
/// through it within a few seconds; the running job finishes with every task run once, its AM
/// never restarted and no container killed; the old RM comes back as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_active_is_killed_and_nothing_is_lost() {
    let Some(schema) = PgSchema::create().await else { return };
    let mut cluster = TestCluster::start_ha(schema.url.clone(), LEASE_S, 2).await;
    cluster.start_agent(2, 4096).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();

    let first_epoch = wait_active(&cluster, 0).await;
    let standby = health(&cluster, 1).await.expect("the standby answers");
    assert_eq!(standby.role, RmRole::Standby);
    assert_eq!(standby.active.as_deref(), Some(cluster.rm_urls()[0].as_str()));
    // A standby sends API calls to the active, path and query kept.
    let no_redirects = spindle_protocol::tls::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects
        .get(format!("{}/v1/apps?state=RUNNING", cluster.rm_urls()[1]))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        answer.headers()["location"],
        format!("{}/v1/apps?state=RUNNING", cluster.rm_urls()[0]).as_str()
    );

    let ran = cluster.path().join("ran.txt");
    let script = format!("echo $SPINDLE_TASK_INDEX >> {}; sleep 1", ran.display());
    let app_id = admin.submit(&shell_job("waves", &script, 8, 64, 3)).await.unwrap();
    wait_until(Duration::from_secs(30), "3 tasks to have run", || async {
        (task_lines(&ran).len() >= 3).then_some(())
    })
    .await;

    cluster.kill_rm_number(0);
    let killed_at = Instant::now();
    let late_ran = cluster.path().join("late.txt");
    let late_script = format!("echo $SPINDLE_TASK_INDEX >> {}", late_ran.display());
    // Through the URL list, the first of which is dead: the client finds the new active.
    let late_app = admin.submit(&shell_job("late", &late_script, 2, 64, 3)).await.unwrap();
    let failover = killed_at.elapsed();
    eprintln!("a submission was accepted {failover:?} after the active RM was killed");
    assert!(failover < Duration::from_secs(10), "{failover:?}");
    let second_epoch = wait_active(&cluster, 1).await;
    assert!(second_epoch > first_epoch, "a new epoch: {first_epoch} → {second_epoch}");

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );
    assert_eq!(task_lines(&ran), indexes(8), "each task ran exactly once");
    assert_eq!(report.attempts.len(), 1, "the AM survived the failover: {:#?}", report.attempts);
    let late = wait_for_app_end(&admin, late_app, JOB_TIMEOUT).await;
    assert_eq!(
        (late.state, late.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{late:?}"
    );
    assert_eq!(task_lines(&late_ran), indexes(2));
    for container in wait_for_containers_to_end(&admin, app_id).await {
        assert_eq!(
            container.exit_reason,
            Some(ExitReason::Success),
            "no container was killed by the failover: {container:?}"
        );
    }

    // The killed RM comes back as a standby of the new active.
    cluster.restart_rm(0).await;
    let back = wait_until(Duration::from_secs(10), "the old RM to stand by", || async {
        health(&cluster, 0)
            .await
            .filter(|health| health.role == RmRole::Standby && health.active.is_some())
    })
    .await;
    assert_eq!(back.active.as_deref(), Some(cluster.rm_urls()[1].as_str()));
    assert_eq!(back.epoch, Some(second_epoch));
    drop(cluster);
    drop(schema);
}

/// An active that is paused (SIGSTOP) past its lease is replaced; woken up, it finds itself
/// fenced, steps down to standby without writing, and the job ends as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_is_fenced_and_steps_down_when_it_wakes() {
    let Some(schema) = PgSchema::create().await else { return };
    let mut cluster = TestCluster::start_ha(schema.url.clone(), LEASE_S, 2).await;
    cluster.start_agent(2, 4096).await;
    let admin = cluster.admin();
    let first_epoch = wait_active(&cluster, 0).await;

    let ran = cluster.path().join("ran.txt");
    let script = format!("echo $SPINDLE_TASK_INDEX >> {}; sleep 1", ran.display());
    let app_id = admin.submit(&shell_job("paused", &script, 6, 64, 3)).await.unwrap();
    wait_until(Duration::from_secs(30), "a task to have run", || async {
        (!task_lines(&ran).is_empty()).then_some(())
    })
    .await;

    let old = cluster.rm_process(0).expect("the first RM runs").pid();
    // SAFETY: kill(2) with a signal number on our own child process.
    assert_eq!(unsafe { libc::kill(old, libc::SIGSTOP) }, 0);
    let second_epoch = wait_active(&cluster, 1).await;
    assert!(second_epoch > first_epoch);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(old, libc::SIGCONT) }, 0);
    let woken = wait_until(Duration::from_secs(10), "the woken RM to stand by", || async {
        health(&cluster, 0)
            .await
            .filter(|health| health.role == RmRole::Standby && health.active.is_some())
    })
    .await;
    assert_eq!(woken.active.as_deref(), Some(cluster.rm_urls()[1].as_str()));

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );
    assert_eq!(task_lines(&ran), indexes(6), "each task ran exactly once");
    assert_eq!(report.attempts.len(), 1, "{:#?}", report.attempts);
    let logs = cluster.rm_process(0).unwrap().logs();
    assert!(logs.contains("stepping down to standby"), "{logs}");
    drop(cluster);
    drop(schema);
}
