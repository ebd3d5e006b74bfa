//! The Spindle resource manager: the cluster state machine, the scheduler interface, the
//! durable store, and the REST API that serves users, agents and application masters.

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod launcher;
pub mod records;
pub mod scheduler;
pub mod service;
pub mod sim;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiUser, RmConfig};
pub use error::RmError;
pub use service::ResourceManager;

/// Runs the RM on an already-bound listener until `shutdown` is cancelled (or a store failure
/// stops it). Opens the store named in the config, recovers, serves. At shutdown, requests in
/// flight get `http.shutdown_timeout` to finish; then the RM stops anyway.
pub async fn run(config: RmConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RmError> {
    config.validate()?;
    let store = store::Store::connect_with(&config.db, config.store_options()).await?;
    let launcher = Arc::new(launcher::HttpAmLauncher::new(&spindle_protocol::ClusterSecret::new(
        &config.cluster_secret,
    )));
    let rm = ResourceManager::start(config, store, launcher, shutdown.clone()).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = %rm.store_description(), "resource manager listening");
    let timers = tokio::spawn(Arc::clone(&rm).run_timers());
    tokio::spawn(reload_on_sighup(Arc::clone(&rm)));
    let app = api::router(Arc::clone(&rm));
    let limits = rm.config.http.server_limits();
    spindle_http_server::serve(listener, app, limits, shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    let _ = timers.await;
    match rm.fatal_error() {
        Some(reason) => Err(RmError::Stopped(reason)),
        None => Ok(()),
    }
}

/// SIGHUP reloads the queues from the config file, as `spindle queues reload` does; a refused
/// reload is logged and changes nothing.
async fn reload_on_sighup(rm: Arc<ResourceManager>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload the queues with `spindle queues reload`");
            return;
        };
        loop {
            tokio::select! {
                _ = rm.shutdown.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            match rm.reload_queues().await {
                Ok(_) => tracing::info!("SIGHUP: queues reloaded"),
                Err(err) => tracing::error!(error = %err, "SIGHUP: queue reload refused; the old queues stay"),
            }
        }
    }
}
