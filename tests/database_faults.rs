//! The database under the RMs fails while jobs run, on a PostgreSQL server of the test's own:
//! a restart within the lease is ridden out (commits are retried, nothing acknowledged is
//! lost); an outage past the lease makes the active step down rather than act on stale
//! state, and when the database is back an RM leads again and the jobs finish as if nothing
//! had happened.

mod support;

use std::time::Duration;

use spindle_protocol::{AppState, FinalStatus, HealthReport, RmRole};
use support::{PrivatePostgres, TestCluster, shell_job, task_lines, wait_for_app_end, wait_until};

const LEASE_S: f64 = 2.0;
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

async fn roles(cluster: &TestCluster) -> Vec<Option<RmRole>> {
    let client = spindle_protocol::tls::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut roles = Vec::new();
    for url in cluster.rm_urls() {
        let health = async {
            client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .ok()?
                .json::<HealthReport>()
                .await
                .ok()
        };
        roles.push(health.await.map(|health| health.role));
    }
    roles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rms_ride_out_a_database_restart_and_step_down_when_it_stays_away() {
    let Some(postgres) = PrivatePostgres::start() else {
        support::skip_unless_required(
            support::REQUIRE_POSTGRES,
            "no private PostgreSQL server can run here (Debian's postgresql package)",
        );
        return;
    };
    let mut cluster = TestCluster::start_ha(postgres.url(), LEASE_S, 2).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();

    let ran = cluster.path().join("ran.txt");
    let script = format!("echo $SPINDLE_TASK_INDEX >> {}; sleep 1", ran.display());
    let app_id = admin.submit(&shell_job("through-faults", &script, 12, 64, 3)).await.unwrap();
    wait_until(Duration::from_secs(30), "2 tasks to have run", || async {
        (task_lines(&ran).len() >= 2).then_some(())
    })
    .await;

    // A restart shorter than the lease: the active stays active and retries its commits.
    postgres.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    postgres.start_again();
    let during = admin.submit(&shell_job("after-restart", "true", 1, 64, 3)).await.unwrap();
    assert_eq!(
        roles(&cluster).await.iter().filter(|role| **role == Some(RmRole::Active)).count(),
        1
    );

    // An outage past the lease: no RM acts on what may be stale; all stand by.
    postgres.stop();
    wait_until(Duration::from_secs(15), "every RM to stand by", || async {
        roles(&cluster)
            .await
            .iter()
            .all(|role| *role == Some(RmRole::Standby))
            .then_some(())
    })
    .await;
    postgres.start_again();
    wait_until(Duration::from_secs(20), "an RM to lead again", || async {
        roles(&cluster).await.contains(&Some(RmRole::Active)).then_some(())
    })
    .await;

    let report = wait_for_app_end(&admin, app_id, JOB_TIMEOUT).await;
    assert_eq!(
        (report.state, report.final_status),
        (AppState::Finished, FinalStatus::Succeeded),
        "{report:?}"
    );
    let expected: Vec<String> = (0..12).map(|index| index.to_string()).collect();
    assert_eq!(task_lines(&ran), expected, "each task ran exactly once");
    assert_eq!(report.attempts.len(), 1, "{:#?}", report.attempts);
    let during = wait_for_app_end(&admin, during, JOB_TIMEOUT).await;
    assert_eq!(during.final_status, FinalStatus::Succeeded, "{during:?}");
}
