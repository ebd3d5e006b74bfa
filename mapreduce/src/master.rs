//! The MapReduce AM on the driver: plan the maps, set up the output and serve the task API at
//! start; then the pure `MapReduceJob` decides every launch, retry and speculation from the
//! driver's events and the task reports; when it says so, commit (or abort) the output.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spindle_protocol::{
    Allocation, ContainerId, ContainerStatus, JobDetail, LaunchSpec, MapReduceSpec, ResourceAsk, StageStatus, env, now_ms,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::committer::OutputCommitter;
use super::job::{GrantDecision, JobOutcome, JobPlan, JobProgress, JobSettings, MapReduceJob, StageProgress};
use super::planning::plan_maps;
use super::task_api::{self, TaskApi};
use super::task_protocol::{JobFunctions, TASK_ENV, TaskReport};
use spindle_app_master::AmContext;
use spindle_app_master::AmError;
use spindle_app_master::AmExit;
use spindle_app_master::driver::{self, Framework, Outcome, Report, Started};
use spindle_app_master::{AgentLauncher, ContainerLauncher, LaunchFailure};

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
        let MapReduceMaster {
            context,
            spec,
            launcher,
            shuffle_token,
        } = self;
        driver::run_default(context, launcher, shutdown, |started| start(started, spec, shuffle_token)).await
    }
}

/// Plans the maps, sets up the output and serves the task API; a bad input or an existing
/// output fails the job with the reason (it is not an AM crash).
async fn start(started: Started<Event>, spec: MapReduceSpec, shuffle_token: String) -> Result<MapReduceFramework, Outcome> {
    let Started {
        context, events, shutdown, ..
    } = started;
    let (plan_splits, preferred_nodes, partitioner, committer) = prepare(&spec, &context).await.map_err(Outcome::failed)?;
    let api = start_task_api(&context, shuffle_token, shutdown)
        .await
        .map_err(|err| Outcome::failed(format!("cannot serve the task API: {err}")))?;
    let TaskApi { url: am_url, mut reports } = api;
    let forward = events.clone();
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            if forward.send(Event::TaskReport(report)).is_err() {
                break;
            }
        }
    });
    let maps = plan_splits.len();
    let plan = JobPlan {
        splits: plan_splits,
        preferred_nodes,
        partitioner,
        functions: JobFunctions {
            mapper: spec.mapper.clone(),
            combiner: spec.combiner.clone(),
            reducer: spec.reducer.clone(),
            sort_buffer_bytes: usize::try_from(spec.sort_buffer_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
            env: spec.env.clone(),
        },
        output_temp_dir: committer.staging_location(),
        am_url,
    };
    tracing::info!(app_id = %context.app_id, maps, reducers = spec.reducers, "MapReduce AM starting");
    Ok(MapReduceFramework {
        job: MapReduceJob::new(plan, JobSettings::from_spec(&spec)),
        committer,
        commit: CommitState::NotStarted,
        clock: WallClock::new(),
        events,
    })
}

/// What the MapReduce AM's own I/O reports.
pub enum Event {
    /// A task's report, from the task API.
    TaskReport(TaskReport),
    /// The output commit ended: `Err` is why it failed.
    Committed(Result<(), String>),
}

/// Where the output commit is.
enum CommitState {
    NotStarted,
    /// Running off the async threads; its result arrives as `Event::Committed`.
    Running,
    Done,
}

/// The MapReduce job on the driver: `MapReduceJob` decides; this runs its launches, feeds it
/// the task reports and commits (or aborts) the output when it says so.
pub struct MapReduceFramework {
    job: MapReduceJob,
    committer: OutputCommitter,
    commit: CommitState,
    clock: WallClock,
    /// For the commit's result.
    events: mpsc::UnboundedSender<Event>,
}

impl Framework for MapReduceFramework {
    type Event = Event;

    fn allocate_wait(&self) -> Duration {
        ALLOCATE_WAIT
    }

    fn on_registered(&mut self, live: &[ContainerId], _now: Instant) {
        self.job.on_registered(live, None);
    }

    fn on_granted(&mut self, allocation: Allocation, now: Instant) -> Option<LaunchSpec> {
        let GrantDecision::Launch(launch) = self.job.on_granted(allocation, self.clock.ms(now)) else {
            return None;
        };
        let assignment = serde_json::to_string(&launch.assignment).expect("assignments serialize");
        Some(LaunchSpec {
            command: vec!["spindle".to_owned(), "mr-task".to_owned()],
            env: BTreeMap::from([(TASK_ENV.to_owned(), assignment)]),
            files: Default::default(),
        })
    }

    fn on_launched(&mut self, container: ContainerId, result: Result<(), LaunchFailure>, _now: Instant) {
        if let Err(failure) = result {
            self.job.on_launch_failed(container, &failure);
        }
    }

    fn on_completed(&mut self, status: &ContainerStatus, now: Instant) {
        self.job.on_container_completed(status, self.clock.ms(now));
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::TaskReport(report) => self.job.on_task_report(&report, self.clock.ms(now)),
            Event::Committed(result) => {
                self.commit = CommitState::Done;
                match result {
                    Ok(()) => self.job.commit_done(),
                    Err(error) => self.job.commit_failed(&error),
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.job.tick(self.clock.ms(now));
    }

    fn asks(&self) -> Vec<ResourceAsk> {
        self.job.asks()
    }

    fn take_releases(&mut self) -> Vec<ContainerId> {
        self.job.take_releases()
    }

    fn report(&self) -> Report {
        let progress = self.job.progress();
        Report {
            progress: progress.progress,
            detail: Some(job_detail(&progress)),
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        match self.job.outcome()? {
            JobOutcome::ReadyToCommit => {
                if matches!(self.commit, CommitState::NotStarted) {
                    self.commit = CommitState::Running;
                    self.spawn_commit();
                }
                None
            }
            JobOutcome::Succeeded { diagnostics } => {
                let counters = serde_json::to_string(&self.job.progress().counters).unwrap_or_default();
                Some(Outcome::succeeded(format!("{diagnostics}; counters: {counters}")))
            }
            JobOutcome::Failed { diagnostics } => {
                let diagnostics = diagnostics.clone();
                self.committer.abort();
                Some(Outcome::failed(diagnostics))
            }
        }
    }
}

impl MapReduceFramework {
    /// Publishes the winners' part files (renames on the shared file system) off the async
    /// threads; the result comes back as `Event::Committed`.
    fn spawn_commit(&self) {
        let winners = self.job.winning_reduce_attempts();
        let publishing = self.committer.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let result = publishing.commit(&winners).map_err(|err| err.to_string());
            let _ = events.send(Event::Committed(result));
        });
    }
}

/// Wall-clock milliseconds for `MapReduceJob` (its attempts' times are shown to users), derived
/// from the driver's `now` so the job reads no clock itself.
struct WallClock {
    base: Instant,
    base_ms: u64,
}

impl WallClock {
    fn new() -> Self {
        WallClock {
            base: Instant::now(),
            base_ms: now_ms(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        self.base_ms + u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
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
        ..JobDetail::default()
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
        let s3 = spindle_storage::S3Settings::from_env(&spec.env);
        let committer = OutputCommitter::setup(&spec.output, spec.overwrite, app_id, &s3).map_err(|err| err.to_string())?;
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
