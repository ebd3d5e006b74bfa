//! What the streaming and MapReduce tests share: a local 2-agent cluster in a test's directory,
//! and polling a stream job's detail for checkpoints.

use std::path::Path;
use std::time::Duration;

use spindle_cli::local::{LocalCluster, LocalOptions};
use spindle_protocol::{AppId, Resources, RmClient, StreamDetail};

/// `spindle local` in-process: an RM and 2 agents of 4 vcores and 8 GB each, under `dir`.
pub async fn start_local(dir: &Path) -> LocalCluster {
    let mut options = LocalOptions::new(dir.join("local")).expect("local options");
    options.agents = 2;
    options.agent_capacity = Some(Resources::new(4, 8192));
    options.spindle_bin = super::spindle_bin();
    LocalCluster::start(options).await.expect("the local cluster starts")
}

/// The stream job's detail; panics if the job has ended (the caller waits for it running).
pub async fn stream_detail(client: &RmClient, app_id: AppId) -> Option<StreamDetail> {
    let report = client.app(app_id).await.ok()?;
    assert!(!report.state.is_terminal(), "the job ended early: {report:#?}");
    report.detail?.stream()
}

/// Waits for a checkpoint newer than `after` with at least `restarts` restarts behind it.
pub async fn wait_for_checkpoint(client: &RmClient, app_id: AppId, after: u64, restarts: u32, what: &str) -> u64 {
    super::wait_until(Duration::from_secs(60), what, || async {
        let detail = stream_detail(client, app_id).await?;
        let id = detail.last_checkpoint?.id;
        (id > after && detail.restarts >= restarts).then_some(id)
    })
    .await
}
