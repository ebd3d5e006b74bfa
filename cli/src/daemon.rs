//! What every long-running role shares: logging, shutdown on a signal, and binding a listener
//! with an error that says what to do.

use std::io::IsTerminal;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Exit code after a second Ctrl-C: the shell's convention for death by SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), as text or JSON lines.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests) keeps the first subscriber: nothing to report.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves at the first Ctrl-C or SIGTERM. A second one ends the process at once, for when a
/// clean shutdown hangs.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("interrupted again: exiting now");
        std::process::exit(EXIT_INTERRUPTED);
    });
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops this process cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// A token cancelled at the first Ctrl-C or SIGTERM.
pub fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    shutdown
}

/// Binds `address` for `role`; `flag` is the option that changes it, named in the error.
pub async fn bind(address: SocketAddr, role: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|err| {
        let advice = match err.kind() {
            std::io::ErrorKind::AddrInUse => format!("another process is using it: stop it, or choose another address with {flag}"),
            std::io::ErrorKind::PermissionDenied => format!("ports below 1024 need privileges: choose another with {flag}"),
            std::io::ErrorKind::AddrNotAvailable => format!("no interface of this machine has that address: check {flag}"),
            _ => format!("check {flag}"),
        };
        anyhow::anyhow!("the {role} cannot listen on {address}: {err}; {advice}")
    })
}

/// The address to give clients for a listener: `0.0.0.0` and `::` become loopback.
pub fn reachable_address(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    address
}

/// Raises this process's soft limit of open files to its hard limit; returns the limit.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_flag_to_change() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = bind(taken.local_addr().unwrap(), "resource manager", "--listen").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("resource manager") && message.contains("--listen"), "{message}");
    }

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(reachable_address("0.0.0.0:8088".parse().unwrap()).to_string(), "127.0.0.1:8088");
        assert_eq!(reachable_address("[::]:1".parse().unwrap()).to_string(), "[::1]:1");
        assert_eq!(reachable_address("10.0.0.1:1".parse().unwrap()).to_string(), "10.0.0.1:1");
    }
}
