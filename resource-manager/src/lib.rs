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

/// How long a fail-stopped RM lets requests in flight finish before it exits anyway.
const FATAL_STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the RM on an already-bound listener until `shutdown` is cancelled (or a store failure
/// stops it). Opens the store named in the config, recovers, serves. At shutdown, requests in
/// flight get `http.shutdown_timeout` to finish; then the RM stops anyway.
pub async fn run(config: RmConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RmError> {
    config.validate()?;
    let tls = match (&config.tls.cert_file, &config.tls.key_file, &config.tls.ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            // Before any client exists: the launcher's and the log proxy's check agents with it.
            spindle_protocol::tls::trust_ca_file(ca).map_err(RmError::Tls)?;
            Some(spindle_http_server::tls::acceptor(cert, key).map_err(RmError::Tls)?)
        }
        _ => None,
    };
    let store = store::Store::connect_with(&config.db, config.store_options()).await?;
    let launcher = Arc::new(launcher::HttpAmLauncher::new(config.node_authority()));
    let rm = ResourceManager::start(config, store, launcher, shutdown.clone()).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, tls = tls.is_some(), store = %rm.store_description(), "resource manager listening");
    let timers = tokio::spawn(Arc::clone(&rm).run_timers());
    tokio::spawn(reload_on_sighup(Arc::clone(&rm)));
    let app = api::router(Arc::clone(&rm));
    let limits = rm.config.http.server_limits();
    let serving = spindle_http_server::serve(listener, app, limits, tls, shutdown.clone().cancelled_owned());
    // A fenced or fail-stopped RM can answer nothing useful any more: it does not wait the
    // whole graceful bound for clients, but exits soon so a supervisor restarts it.
    let fatal_stop = async {
        shutdown.cancelled().await;
        if rm.fatal_error().is_none() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(FATAL_STOP_DRAIN).await;
    };
    tokio::select! {
        () = serving => {}
        () = fatal_stop => tracing::warn!(drain_s = FATAL_STOP_DRAIN.as_secs(), "stopping with connections still open after a fatal error"),
    }
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
