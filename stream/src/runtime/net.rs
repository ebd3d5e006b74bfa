//! Data connections: a credit-gated sender used from an instance's thread, and the acceptor
//! that hands incoming connections to the instances of this worker.
//!
//! Credit-based flow control (as Flink's): a receiver grants credits (batches it will buffer)
//! when a connection opens and one more each time its instance has processed a batch; a sender
//! with no credit waits. So a slow instance slows exactly the senders that feed it, and the
//! memory held in flight is bounded by credits × batch size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::wire::{
    DataEvent, DataHello, DataHelloReply, InstanceId, TAG_CREDIT, batch_header, credit_frame, decode_event, encode_event, read_frame,
    read_json, read_json_at_most, write_json,
};

/// Batches a receiver buffers per input connection.
pub const INITIAL_CREDITS: u32 = 16;

/// What an instance's inbox receives.
pub enum Inbound<C> {
    /// A sender connected (before any of its data).
    Connected {
        from: InstanceId,
        credits: CreditReturn,
        starts_after: Option<u64>,
    },
    Data {
        from: InstanceId,
        event: DataEvent,
    },
    /// The connection broke without an `End`: the sender died.
    Broken {
        from: InstanceId,
        error: String,
    },
    /// A command from the AM for this instance.
    Command(C),
}

/// Gives credits back to one sender.
#[derive(Clone)]
pub struct CreditReturn(mpsc::UnboundedSender<u32>);

impl CreditReturn {
    pub fn grant(&self, credits: u32) {
        let _ = self.0.send(credits);
    }
}

/// The instances of this worker that accept connections, by id.
pub type Inboxes<C> = Arc<Mutex<HashMap<InstanceId, std::sync::mpsc::Sender<Inbound<C>>>>>;

/// Accepts data connections until the listener fails; each is checked against `token` and
/// handed to its instance's inbox.
/// Largest first frame (the hello with the token) a connecting peer may send.
const MAX_HELLO_BYTES: usize = 4096;
/// How long a connecting peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop<C: Send + 'static>(listener: TcpListener, token: String, inboxes: Inboxes<C>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let token = token.clone();
        let inboxes = inboxes.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, &token, &inboxes).await {
                tracing::debug!(%error, "data connection ended");
            }
        });
    }
}

async fn serve_connection<C: Send + 'static>(stream: TcpStream, token: &str, inboxes: &Inboxes<C>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    // Before the peer proved it holds the app's token: a small first frame, soon.
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_json_at_most::<_, DataHello>(&mut reader, MAX_HELLO_BYTES))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello within 10 s"))??;
    let Some(hello) = hello else {
        return Ok(());
    };
    if !spindle_protocol::constant_time_eq(hello.token.as_bytes(), token.as_bytes()) {
        write_json(
            &mut writer,
            &DataHelloReply::Refused {
                reason: "bad token".into(),
            },
        )
        .await?;
        return Ok(());
    }
    let inbox = inboxes.lock().expect("inboxes lock").get(&hello.to).cloned();
    let Some(inbox) = inbox else {
        write_json(&mut writer, &DataHelloReply::UnknownInstance).await?;
        return Ok(());
    };
    let (credit_tx, mut credit_rx) = mpsc::unbounded_channel::<u32>();
    if inbox
        .send(Inbound::Connected {
            from: hello.from,
            credits: CreditReturn(credit_tx),
            starts_after: hello.starts_after,
        })
        .is_err()
    {
        write_json(&mut writer, &DataHelloReply::UnknownInstance).await?;
        return Ok(());
    }
    write_json(&mut writer, &DataHelloReply::Accepted { credits: INITIAL_CREDITS }).await?;
    // Credits flow back on the same socket.
    tokio::spawn(async move {
        while let Some(mut credits) = credit_rx.recv().await {
            while let Ok(more) = credit_rx.try_recv() {
                credits += more;
            }
            if writer.write_all(&credit_frame(credits)).await.is_err() {
                break;
            }
        }
    });
    let from = hello.from;
    loop {
        match read_frame(&mut reader).await {
            Ok(Some((tag, payload))) => {
                let event = decode_event(tag, payload)?;
                let end = matches!(event, DataEvent::End { .. });
                if inbox.send(Inbound::Data { from, event }).is_err() || end {
                    return Ok(());
                }
            }
            Ok(None) => {
                let _ = inbox.send(Inbound::Broken {
                    from,
                    error: "connection closed before its end".into(),
                });
                return Ok(());
            }
            Err(error) => {
                let _ = inbox.send(Inbound::Broken {
                    from,
                    error: error.to_string(),
                });
                return Err(error);
            }
        }
    }
}

/// Credits of one connection, shared by the sending thread and the task reading credits.
struct Credits {
    available: Mutex<(u32, bool)>,
    changed: Condvar,
}

/// One outgoing data connection, used from an instance's thread.
pub struct Sender {
    pub to: InstanceId,
    credits: Arc<Credits>,
    frames: mpsc::UnboundedSender<Frame>,
}

/// Bytes for the writer task: a head (a whole control frame, or a batch's framing) and the
/// batch's own bytes, written after it as they are.
struct Frame {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection to instance {0} lost")]
    Closed(InstanceId),
    #[error("cancelled")]
    Cancelled,
}

impl Sender {
    /// Opens a connection to instance `hello.to` at `address`, retrying while it is not
    /// deployed yet (up to `patience`, or until `cancel`: a reset or a region's restart must
    /// not wait on a peer that is gone).
    pub async fn connect(address: &str, hello: DataHello, patience: Duration, cancel: &AtomicBool) -> std::io::Result<Sender> {
        let deadline = Instant::now() + patience;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("cancelled"));
            }
            match Self::try_connect(address, &hello).await {
                Ok(Some(sender)) => return Ok(sender),
                Ok(None) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(None) => {
                    return Err(std::io::Error::other(format!("instance {} is not deployed at {address}", hello.to)));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn try_connect(address: &str, hello: &DataHello) -> std::io::Result<Option<Sender>> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) = stream.into_split();
        write_json(&mut writer, hello).await?;
        let credits = match read_json::<_, DataHelloReply>(&mut reader).await? {
            Some(DataHelloReply::Accepted { credits }) => credits,
            Some(DataHelloReply::UnknownInstance) | None => return Ok(None),
            Some(DataHelloReply::Refused { reason }) => return Err(std::io::Error::other(format!("refused: {reason}"))),
        };
        let shared = Arc::new(Credits {
            available: Mutex::new((credits, false)),
            changed: Condvar::new(),
        });
        let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Frame>();
        let close = |credits: &Credits| {
            credits.available.lock().expect("credits lock").1 = true;
            credits.changed.notify_all();
        };
        let for_writer = shared.clone();
        tokio::spawn(async move {
            let mut writer = BufWriter::with_capacity(256 << 10, writer);
            while let Some(frame) = frames_rx.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    break;
                }
                while let Ok(frame) = frames_rx.try_recv() {
                    if write_frame(&mut writer, &frame).await.is_err() {
                        break;
                    }
                }
                if writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
            close(&for_writer);
        });
        let for_reader = shared.clone();
        tokio::spawn(async move {
            while let Ok(Some((tag, payload))) = read_frame(&mut reader).await {
                if tag != TAG_CREDIT || payload.len() != 4 {
                    break;
                }
                let more = u32::from_le_bytes(payload.try_into().expect("4 bytes"));
                let mut available = for_reader.available.lock().expect("credits lock");
                available.0 += more;
                for_reader.changed.notify_all();
            }
            close(&for_reader);
        });
        Ok(Some(Sender {
            to: hello.to,
            credits: shared,
            frames: frames_tx,
        }))
    }

    /// Sends an event; a batch first takes a credit, waiting for one if need be. Returns how
    /// long it waited (backpressure).
    pub fn send(&self, event: DataEvent, cancel: &AtomicBool) -> Result<Duration, SendError> {
        let mut waited = Duration::ZERO;
        if matches!(event, DataEvent::Batch(_)) {
            let mut available = self.credits.available.lock().expect("credits lock");
            if available.0 == 0 {
                let started = Instant::now();
                while available.0 == 0 && !available.1 {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(SendError::Cancelled);
                    }
                    available = self
                        .credits
                        .changed
                        .wait_timeout(available, Duration::from_millis(50))
                        .expect("credits lock")
                        .0;
                }
                waited = started.elapsed();
            }
            if available.1 {
                return Err(SendError::Closed(self.to));
            }
            available.0 -= 1;
        }
        let frame = match event {
            DataEvent::Batch(batch) => Frame {
                head: batch_header(batch.byte_len()).to_vec(),
                body: batch.into_bytes(),
            },
            control => {
                let mut head = Vec::with_capacity(16);
                encode_event(&control, &mut head);
                Frame { head, body: Vec::new() }
            }
        };
        self.frames.send(frame).map_err(|_| SendError::Closed(self.to))?;
        Ok(waited)
    }
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> std::io::Result<()> {
    writer.write_all(&frame.head).await?;
    if !frame.body.is_empty() {
        writer.write_all(&frame.body).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that is gone (a region restarting, a reset) must not hold a connecting instance
    /// for the whole patience: its cancel flag ends the retries.
    #[tokio::test]
    async fn connecting_to_a_peer_that_is_gone_stops_when_cancelled() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::Relaxed);
        });
        let hello = DataHello {
            token: "t".into(),
            from: 1,
            to: 2,
            starts_after: None,
        };
        let started = Instant::now();
        let result = Sender::connect(&format!("127.0.0.1:{port}"), hello, Duration::from_secs(60), &cancel).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}
