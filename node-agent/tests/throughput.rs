//! How many short containers one agent turns around per second, counted when the stub RM has
//! seen their completions. Ignored by default (it measures, it does not check behaviour):
//! `cargo test -p spindle-node-agent --test throughput -- --ignored --nocapture`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use common::{StubRm, TestAgent};
use spindle_node_agent::MemoryEnforcement;
use spindle_protocol::ContainerState;

const CONTAINERS: u64 = 2_000;
/// Launches in flight at once, as a few AMs launching in parallel would have.
const CONCURRENCY: u64 = 32;

async fn measure(enforcement: MemoryEnforcement) {
    let rm = StubRm::start().await;
    // On tmpfs when there is one: the point is the agent's cost, not the disk's.
    let work_dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let agent = Arc::new(
        TestAgent::start(&rm.url, |config| {
            config.memory_enforcement = enforcement;
            config.work_dir = work_dir.path().to_path_buf();
        })
        .await
        .unwrap(),
    );
    rm.wait_for_registrations(1).await;
    let started = Instant::now();
    let mut launchers = Vec::new();
    for worker in 0..CONCURRENCY {
        let agent = agent.clone();
        launchers.push(tokio::spawn(async move {
            let mut seq = 1 + worker;
            while seq <= CONTAINERS {
                agent.launch(seq, 64, &["true"]).await.unwrap();
                seq += CONCURRENCY;
            }
        }));
    }
    for launcher in launchers {
        launcher.await.unwrap();
    }
    let launched = started.elapsed();
    common::eventually("every completion at the RM", || {
        let completed: HashSet<_> = rm
            .state
            .heartbeats
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, request)| request.containers.iter())
            .filter(|status| status.state == ContainerState::Complete)
            .map(|status| status.container_id)
            .collect();
        async move { (completed.len() as u64 == CONTAINERS).then_some(()) }
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "{enforcement:?}: {CONTAINERS} containers launched in {launched:?}, all completions at the RM after {elapsed:?}: {:.0} containers/s, {} heartbeats",
        CONTAINERS as f64 / elapsed.as_secs_f64(),
        rm.heartbeat_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run on demand"]
async fn short_containers_per_second_with_cgroups() {
    measure(MemoryEnforcement::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run on demand"]
async fn short_containers_per_second_with_sampling() {
    measure(MemoryEnforcement::Sampling).await;
}
