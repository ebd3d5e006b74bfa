//! The worker process (`spindle stream-task`): connects to its AM's control port, serves data
//! connections, and runs the instances the AM places on it, each on a thread of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use spindle_protocol::env;
use spindle_storage::S3Settings;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::instance::{self, Body, Command, Counters, Environment};
use super::net::{Inbound, Inboxes, accept_loop};
use super::snapshots::StateFiles;
use crate::control::{InstanceChange, InstanceMetrics, InstancePlan, ToAm, ToWorker};
use crate::location::Location;
use crate::operator::{InstanceContext, OperatorRegistry};
use crate::ops;
use crate::wire::{InstanceId, read_json, write_json};

/// Environment variable with the AM's control address (`host:port`).
pub const AM_CONTROL_ENV: &str = "SPINDLE_STREAM_AM";
/// How often a worker reports its instances' counters.
const METRICS_EVERY: Duration = Duration::from_secs(1);

struct Running {
    inbox: std::sync::mpsc::Sender<Inbound<Command>>,
    cancel: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: std::thread::JoinHandle<()>,
}

/// Runs a worker with the built-in operators and `registry`'s user operators, until the AM
/// says stop or goes away.
pub fn run_worker(registry: OperatorRegistry) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the worker's async runtime")?;
    runtime.block_on(serve(registry))
}

/// The worker, on the caller's async runtime (which must be multi-threaded: instances block
/// their own threads on it to open connections).
pub async fn serve(registry: OperatorRegistry) -> anyhow::Result<()> {
    let am = std::env::var(AM_CONTROL_ENV).with_context(|| format!("{AM_CONTROL_ENV} is not set"))?;
    let token = std::env::var(env::SHUFFLE_TOKEN).with_context(|| format!("{} is not set", env::SHUFFLE_TOKEN))?;
    let container_id = std::env::var(env::CONTAINER_ID).unwrap_or_default();
    let app_id = std::env::var(env::APP_ID).unwrap_or_default();
    let host = std::env::var(env::NODE_ID)
        .ok()
        .and_then(|node| node.rsplit_once(':').map(|(host, _)| host.to_owned()))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let work_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));

    let listener = TcpListener::bind(("0.0.0.0", 0)).await.context("binding the data port")?;
    let data_address = format!("{host}:{}", listener.local_addr()?.port());
    let inboxes: Inboxes<Command> = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(accept_loop(listener, token.clone(), inboxes.clone()));

    let stream = TcpStream::connect(&am)
        .await
        .with_context(|| format!("connecting to the AM at {am}"))?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let (to_am, mut outgoing) = mpsc::unbounded_channel::<ToAm>();
    to_am
        .send(ToAm::Hello {
            container_id: container_id.clone(),
            data_address: data_address.clone(),
            token: token.clone(),
        })
        .expect("receiver alive");
    tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if write_json(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });
    tracing::info!(%container_id, %data_address, %am, "stream worker connected to its AM");

    let running: Arc<Mutex<HashMap<InstanceId, Running>>> = Arc::default();
    tokio::spawn(report_metrics(running.clone(), to_am.clone()));
    let handle = tokio::runtime::Handle::current();
    loop {
        let Some(message) = read_json::<_, ToWorker>(&mut reader).await? else {
            anyhow::bail!("the AM closed the control connection");
        };
        match message {
            ToWorker::Start { instances } => {
                for plan in instances {
                    let id = plan.id;
                    match start(plan, &registry, &app_id, &work_dir, &token, &handle, &to_am, &inboxes) {
                        Ok(instance) => {
                            running.lock().expect("running lock").insert(id, instance);
                        }
                        Err(error) => {
                            let _ = to_am.send(ToAm::Failed {
                                instance: id,
                                error: error.to_string(),
                            });
                        }
                    }
                }
            }
            ToWorker::Reset { epoch } => {
                let stopped: Vec<Running> = running.lock().expect("running lock").drain().map(|(_, r)| r).collect();
                inboxes.lock().expect("inboxes lock").clear();
                for instance in &stopped {
                    instance.cancel.store(true, Ordering::Relaxed);
                }
                let joined = tokio::task::spawn_blocking(move || {
                    for instance in stopped {
                        let _ = instance.thread.join();
                    }
                });
                if tokio::time::timeout(Duration::from_secs(10), joined).await.is_err() {
                    anyhow::bail!("instances did not stop within 10 s of a reset");
                }
                let _ = to_am.send(ToAm::ResetDone { epoch });
            }
            ToWorker::Cancel { instances, epoch } => {
                // Only a failover region's instances stop: the others (and this loop) go on,
                // so they are joined off the control loop.
                let stopped: Vec<Running> = {
                    let mut running = running.lock().expect("running lock");
                    let mut inboxes = inboxes.lock().expect("inboxes lock");
                    instances
                        .iter()
                        .filter_map(|id| {
                            inboxes.remove(id);
                            running.remove(id)
                        })
                        .collect()
                };
                for instance in &stopped {
                    instance.cancel.store(true, Ordering::Relaxed);
                }
                let to_am = to_am.clone();
                tokio::spawn(async move {
                    let joined = tokio::task::spawn_blocking(move || {
                        for instance in stopped {
                            let _ = instance.thread.join();
                        }
                    });
                    if tokio::time::timeout(Duration::from_secs(10), joined).await.is_err() {
                        // They might still write: the worker goes, and its loss restarts the
                        // whole job (as a reset that does not finish does).
                        tracing::error!(epoch, "cancelled instances did not stop within 10 s: the worker exits");
                        std::process::exit(1);
                    }
                    let _ = to_am.send(ToAm::Cancelled { epoch });
                });
            }
            ToWorker::Trigger {
                checkpoint,
                instances,
                stop,
            } => {
                let running = running.lock().expect("running lock");
                for id in instances {
                    if let Some(instance) = running.get(&id) {
                        let _ = instance.inbox.send(Inbound::Command(Command::Trigger { checkpoint, stop }));
                    }
                }
            }
            ToWorker::Rescale { checkpoint, changes } => {
                let running = running.lock().expect("running lock");
                for change in changes {
                    let (id, command) = match change {
                        InstanceChange::Retarget { instance, edge, targets } => (instance, Command::Retarget { checkpoint, edge, targets }),
                        InstanceChange::Regroup { instance, range, gains } => (instance, Command::Regroup { checkpoint, range, gains }),
                        InstanceChange::AddInputs { instance, inputs } => (instance, Command::AddInputs(inputs)),
                    };
                    if let Some(instance) = running.get(&id) {
                        let _ = instance.inbox.send(Inbound::Command(command));
                    }
                }
                let _ = to_am.send(ToAm::Prepared { checkpoint });
            }
            ToWorker::Load {
                instance,
                checkpoint,
                files,
            } => {
                if let Some(running) = running.lock().expect("running lock").get(&instance) {
                    let _ = running.inbox.send(Inbound::Command(Command::Load { checkpoint, files }));
                }
            }
            ToWorker::Shutdown => {
                tracing::info!("the AM says the job is over");
                return Ok(());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    plan: InstancePlan,
    registry: &OperatorRegistry,
    app_id: &str,
    work_dir: &std::path::Path,
    token: &str,
    handle: &tokio::runtime::Handle,
    to_am: &mpsc::UnboundedSender<ToAm>,
    inboxes: &Inboxes<Command>,
) -> anyhow::Result<Running> {
    let context = InstanceContext {
        app_id: app_id.to_owned(),
        operator: plan.spec.name.clone(),
        index: plan.index,
        parallelism: plan.parallelism,
        key_groups: plan.key_groups,
        key_group_range: plan.range.0..plan.range.1,
        epoch: plan.epoch,
        work_dir: work_dir.join(format!("instance-{}", plan.id)),
        checkpoint_dir: Location::open(&plan.checkpoint_dir, &S3Settings::from_env(&plan.env))
            .with_context(|| format!("the checkpoint dir {}", plan.checkpoint_dir))?,
        env: plan.env.clone(),
    };
    std::fs::create_dir_all(&context.work_dir)?;
    let kind = plan.spec.kind();
    let body = if kind.is_source() {
        Body::Source(ops::build_source(&plan.spec, &context)?)
    } else if kind.is_sink() {
        Body::Sink(ops::build_sink(&plan.spec, &context)?)
    } else {
        Body::Operator(ops::build_operator(&plan.spec, &context, registry)?)
    };
    let (inbox, inbox_rx) = std::sync::mpsc::channel();
    inboxes.lock().expect("inboxes lock").insert(plan.id, inbox.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    counters.lag.store(u64::MAX, Ordering::Relaxed);
    let environment = Environment {
        plan,
        inbox: inbox_rx,
        to_am: to_am.clone(),
        counters: counters.clone(),
        cancel: cancel.clone(),
        handle: handle.clone(),
        token: token.to_owned(),
        files: StateFiles {
            root: context.checkpoint_dir.clone(),
            s3: S3Settings::from_env(&context.env),
            scratch: context.work_dir.clone(),
        },
    };
    let name = format!("{}-{}", environment.plan.spec.name, environment.plan.index);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || instance::run(environment, body))
        .context("starting an instance thread")?;
    Ok(Running {
        inbox,
        cancel,
        counters,
        thread,
    })
}

async fn report_metrics(running: Arc<Mutex<HashMap<InstanceId, Running>>>, to_am: mpsc::UnboundedSender<ToAm>) {
    let mut ticker = tokio::time::interval(METRICS_EVERY);
    loop {
        ticker.tick().await;
        let instances: Vec<InstanceMetrics> = running
            .lock()
            .expect("running lock")
            .iter()
            .filter(|(_, instance)| !instance.thread.is_finished())
            .map(|(&id, instance)| {
                let counters = &instance.counters;
                let lag = counters.lag.load(Ordering::Relaxed);
                InstanceMetrics {
                    id,
                    records_in: counters.records_in.load(Ordering::Relaxed),
                    records_out: counters.records_out.load(Ordering::Relaxed),
                    busy_ns: counters.busy_ns.load(Ordering::Relaxed),
                    backpressured_ns: counters.backpressured_ns.load(Ordering::Relaxed),
                    state_bytes: counters.state_bytes.load(Ordering::Relaxed),
                    lag: (lag != u64::MAX).then_some(lag),
                    late_records: counters.late_records.load(Ordering::Relaxed),
                    bad_records: counters.bad_records.load(Ordering::Relaxed),
                    bytes_in: counters.bytes_in.load(Ordering::Relaxed),
                    bytes_out: counters.bytes_out.load(Ordering::Relaxed),
                }
            })
            .collect();
        if to_am.send(ToAm::Metrics { instances }).is_err() {
            return;
        }
    }
}
