//! The AM's side of the workers' control connections: each worker connects, says hello with the
//! app's token, then exchanges JSON frames; what arrives becomes the driver's events.

use spindle_protocol::ContainerId;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Event;
use crate::control::{ToAm, ToWorker};
use crate::wire::{read_json, write_json};

/// Accepts workers' control connections: each says hello with the app's token first.
pub(super) async fn accept_workers(listener: TcpListener, token: String, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (token, events) = (token.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_worker(stream, &token, events).await {
                tracing::debug!(%error, "worker control connection ended");
            }
        });
    }
}

async fn serve_worker(stream: TcpStream, token: &str, events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let Some(ToAm::Hello {
        container_id,
        data_address,
        token: given,
    }) = read_json::<_, ToAm>(&mut reader).await?
    else {
        return Ok(());
    };
    let Ok(container) = container_id.parse::<ContainerId>() else {
        return Ok(());
    };
    if given != token {
        tracing::warn!(%container_id, "a worker presented a wrong token");
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let stop = matches!(message, ToWorker::Shutdown);
            if write_json(&mut writer, &message).await.is_err() || stop {
                break;
            }
        }
    });
    let _ = events.send(Event::Hello {
        container,
        data_address,
        tx,
    });
    loop {
        match read_json::<_, ToAm>(&mut reader).await {
            Ok(Some(message)) => {
                if events
                    .send(Event::Message {
                        container,
                        message: Box::new(message),
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(None) | Err(_) => {
                let _ = events.send(Event::Closed { container });
                return Ok(());
            }
        }
    }
}
