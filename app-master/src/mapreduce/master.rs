//! The MapReduce AM's I/O loop: plan the maps, set up the output, serve the task API, then
//! allocate / launch / observe until the pure `MapReduceJob` says the job is ready to commit or
//! has failed; commit (or abort) the output and finish. Every decision is the job's; this file
//! only carries them out.

use std::collections::BTreeMap;
use std::time::Duration;

use spindle_protocol::{AllocateRequest, FinalStatus, JobDetail, LaunchSpec, MapReduceSpec, StageStatus, env, now_ms};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::committer::OutputCommitter;
use super::job::{GrantDecision, JobOutcome, JobPlan, JobProgress, JobSettings, MapReduceJob, StageProgress};
use super::planning::plan_maps;
use super::task_api::{self, TaskApi};
use super::umbilical::{JobFunctions, TASK_ENV};
use crate::AmExit;
use crate::context::AmContext;
use crate::error::AmError;
use crate::launch::{AgentLauncher, ContainerLauncher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT, LaunchPool};
use crate::rm::{Heartbeat, RmConnection};

/// How long an allocate may wait on the RM for news: short, because task reports arrive on
/// another channel and the loop handles them between allocates.
const ALLOCATE_WAIT: Duration = Duration::from_millis(100);

/// The application master of a `mapreduce` job.
pub struct MapReduceMaster<L = AgentLauncher> {
    context: AmContext,
    spec: MapReduceSpec,
    launcher: L,
    /// The app's shuffle token: tasks present it when they report (the agent gives it to every
    /// container of the app, this AM's included).
    shuffle_token: String,
}

impl MapReduceMaster<AgentLauncher> {
    /// A MapReduce AM that launches on the real node agents.
    pub fn new(context: AmContext) -> Result<Self, AmError> {
        let shuffle_token = std::env::var(env::SHUFFLE_TOKEN).map_err(|_| AmError::MissingEnv { name: env::SHUFFLE_TOKEN })?;
        Self::with_launcher(context, AgentLauncher::new(), shuffle_token)
    }
}

impl<L: ContainerLauncher> MapReduceMaster<L> {
    pub fn with_launcher(context: AmContext, launcher: L, shuffle_token: String) -> Result<Self, AmError> {
        context.spec.validate()?;
        let Some(spec) = context.spec.mapreduce.clone() else {
            return Err(AmError::UnsupportedKind {
                kind: format!("{:?}", context.spec.kind).to_lowercase(),
            });
        };
        Ok(MapReduceMaster {
            context,
            spec,
            launcher,
            shuffle_token,
        })
    }

    /// Runs the job to its end (see `ShellMaster::run` for what `Ok` and `Err` mean).
    pub async fn run(self, shutdown: CancellationToken) -> Result<AmExit, AmError> {
        let app_id = self.context.app_id;
        let api_shutdown = shutdown.child_token();
        let result = self.run_until_done(&shutdown, &api_shutdown).await;
        api_shutdown.cancel();
        match result {
            Err(AmError::Cancelled) => {
                tracing::info!(app_id = %app_id, "MapReduce AM stopping: asked to stop");
                Ok(AmExit::Cancelled)
            }
            other => other,
        }
    }

    async fn run_until_done(self, shutdown: &CancellationToken, api_shutdown: &CancellationToken) -> Result<AmExit, AmError> {
        let context = &self.context;
        let mut rm = RmConnection::new(
            &context.rm_urls,
            &context.am_token,
            context.app_id,
            context.attempt,
            context.rm_retry,
        );
        let registered = rm.register(shutdown).await?;

        // Planning and output setup read the shared file system: a bad input or an existing
        // output fails the job with the reason, it is not an AM crash.
        let prepared = prepare(&self.spec, context).await;
        let (plan_splits, preferred_nodes, partitioner, committer) = match prepared {
            Ok(prepared) => prepared,
            Err(diagnostics) => return finish(&mut rm, FinalStatus::Failed, diagnostics, shutdown).await,
        };
        let api = match start_task_api(context, self.shuffle_token.clone(), api_shutdown.clone()).await {
            Ok(api) => api,
            Err(err) => return finish(&mut rm, FinalStatus::Failed, format!("cannot serve the task API: {err}"), shutdown).await,
        };
        let TaskApi { url: am_url, mut reports } = api;
        let maps = plan_splits.len();
        let plan = JobPlan {
            splits: plan_splits,
            preferred_nodes,
            partitioner,
            functions: JobFunctions {
                mapper: self.spec.mapper.clone(),
                combiner: self.spec.combiner.clone(),
                reducer: self.spec.reducer.clone(),
                sort_buffer_bytes: usize::try_from(self.spec.sort_buffer_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
                env: self.spec.env.clone(),
            },
            output_temp_dir: committer.staging_dir().to_owned(),
            am_url,
        };
        let mut job = MapReduceJob::new(plan, JobSettings::from_spec(&self.spec));
        job.on_registered(&registered.live_containers, context.container_id);
        let mut launches = LaunchPool::new(self.launcher, DEFAULT_MAX_LAUNCHES_IN_FLIGHT);
        tracing::info!(app_id = %context.app_id, maps, reducers = self.spec.reducers, "MapReduce AM starting");

        loop {
            for result in launches.finished() {
                if let Err(failure) = result.result {
                    tracing::warn!(container_id = %result.container_id, error = %failure.message, "task launch failed");
                    job.on_launch_failed(result.container_id, &failure);
                }
            }
            while let Ok(report) = reports.try_recv() {
                job.on_task_report(&report, now_ms());
            }
            job.tick(now_ms());
            if job.outcome().is_some() {
                break;
            }
            let progress = job.progress();
            let request = AllocateRequest {
                app_id: context.app_id,
                attempt: context.attempt,
                asks: job.asks(),
                releases: job.take_releases(),
                progress: progress.progress,
                wait_ms: ALLOCATE_WAIT.as_millis() as u64,
                response_id: None, // numbered by RmConnection
                detail: Some(job_detail(&progress)),
            };
            let Heartbeat { reply, reregistered } = rm.allocate(&request, shutdown).await?;
            if let Some(registered) = reregistered {
                job.on_registered(&registered.live_containers, context.container_id);
            }
            if reply.shutdown {
                tracing::info!(app_id = %context.app_id, "the RM says this attempt is over: stopping without finish");
                return Ok(AmExit::ShutdownByRm);
            }
            let now = now_ms();
            // Completions first: a task they free can take a grant of this same reply.
            for status in &reply.completed {
                job.on_container_completed(status, now);
            }
            for allocation in reply.allocated {
                if let GrantDecision::Launch(launch) = job.on_granted(allocation, now) {
                    let assignment = serde_json::to_string(&launch.assignment).expect("assignments serialize");
                    let spec = LaunchSpec {
                        command: vec!["spindle".to_owned(), "mr-task".to_owned()],
                        env: BTreeMap::from([(TASK_ENV.to_owned(), assignment)]),
                        files: Default::default(),
                    };
                    launches.spawn(launch.allocation, spec);
                }
            }
        }

        // Hand back every container still held, and send the final stages and counters, before
        // committing or failing.
        let request = AllocateRequest {
            app_id: context.app_id,
            attempt: context.attempt,
            asks: Vec::new(),
            releases: job.take_releases(),
            progress: job.progress().progress,
            wait_ms: 0,
            response_id: None,
            detail: Some(job_detail(&job.progress())),
        };
        if rm.allocate(&request, shutdown).await?.reply.shutdown {
            return Ok(AmExit::ShutdownByRm);
        }
        let outcome = job.outcome().cloned().expect("the loop ends with an outcome");
        if outcome == JobOutcome::ReadyToCommit {
            let winners = job.winning_reduce_attempts();
            let publishing = committer.clone();
            match tokio::task::spawn_blocking(move || publishing.commit(&winners)).await {
                Ok(Ok(())) => job.commit_done(),
                Ok(Err(err)) => job.commit_failed(&err.to_string()),
                Err(join) => job.commit_failed(&format!("the commit panicked: {join}")),
            }
        }
        let progress = job.progress();
        match job.outcome().cloned().expect("an outcome after the commit") {
            JobOutcome::Succeeded { diagnostics } => {
                let counters = serde_json::to_string(&progress.counters).unwrap_or_default();
                finish(
                    &mut rm,
                    FinalStatus::Succeeded,
                    format!("{diagnostics}; counters: {counters}"),
                    shutdown,
                )
                .await
            }
            JobOutcome::Failed { diagnostics } => {
                committer.abort();
                finish(&mut rm, FinalStatus::Failed, diagnostics, shutdown).await
            }
            JobOutcome::ReadyToCommit => unreachable!("commit_done or commit_failed ended the job"),
        }
    }
}

/// The stages and counters the app report shows.
fn job_detail(progress: &JobProgress) -> JobDetail {
    let stage = |name: &str, stage: &StageProgress| StageStatus {
        name: name.to_owned(),
        total: stage.total,
        running: stage.running,
        succeeded: stage.succeeded,
    };
    let mut counters: BTreeMap<String, u64> = match serde_json::to_value(progress.counters) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_u64()?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    counters.insert("failed_attempts".to_owned(), progress.failed_attempts);
    counters.insert("killed_attempts".to_owned(), progress.killed_attempts);
    counters.insert("speculative_attempts".to_owned(), progress.speculative_attempts);
    counters.insert("fetch_failures".to_owned(), progress.fetch_failures);
    counters.insert("lost_map_outputs".to_owned(), progress.lost_map_outputs);
    JobDetail {
        stages: vec![stage("map", &progress.maps), stage("reduce", &progress.reduces)],
        counters,
        stream: None,
    }
}

/// Plans the maps and sets up the output, off the async threads; `Err` is the diagnostics.
async fn prepare(
    spec: &MapReduceSpec,
    context: &AmContext,
) -> Result<
    (
        Vec<super::Split>,
        Vec<Vec<spindle_protocol::NodeId>>,
        super::Partitioner,
        OutputCommitter,
    ),
    String,
> {
    let (spec, app_id) = (spec.clone(), context.app_id);
    let joined = tokio::task::spawn_blocking(move || {
        let plan = plan_maps(&spec).map_err(|err| format!("cannot plan the maps: {err}"))?;
        if plan.splits.is_empty() {
            return Err("the input is empty: no file has any bytes".to_owned());
        }
        let committer =
            OutputCommitter::setup(std::path::Path::new(&spec.output), spec.overwrite, app_id).map_err(|err| err.to_string())?;
        Ok((plan.splits, plan.preferred_nodes, plan.partitioner, committer))
    })
    .await;
    joined.unwrap_or_else(|join| Err(format!("planning panicked: {join}")))
}

/// Serves the task API on this node, at the host part of the AM's node id.
async fn start_task_api(context: &AmContext, token: String, shutdown: CancellationToken) -> std::io::Result<TaskApi> {
    let listener = TcpListener::bind(("0.0.0.0", 0)).await?;
    let host = context
        .node_id
        .as_ref()
        .and_then(|node| node.0.rsplit_once(':').map(|(host, _)| host.to_owned()))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    task_api::serve(listener, &host, token, shutdown)
}

async fn finish(
    rm: &mut RmConnection,
    final_status: FinalStatus,
    diagnostics: String,
    shutdown: &CancellationToken,
) -> Result<AmExit, AmError> {
    tracing::info!(?final_status, %diagnostics, "MapReduce job finished");
    rm.finish(final_status, &diagnostics, shutdown).await?;
    Ok(AmExit::Finished { final_status, diagnostics })
}
