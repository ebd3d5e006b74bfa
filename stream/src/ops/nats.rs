//! NATS JetStream source and sink.
//!
//! The source reads a stream through an ephemeral pull consumer with no acks, started at a
//! stream sequence: the offset it snapshots is the sequence of the last message it emitted, so
//! a restore replays exactly the messages after it. The sink stages its output in a file per
//! checkpoint; the AM publishes it (`run_nats_commit`) once the checkpoint is complete, with a
//! `Nats-Msg-Id` per message, so JetStream's duplicate window drops what a re-run publishes
//! again.
//!
//! The NATS client is async and the operator interfaces are not: each source owns a background
//! thread running a current-thread tokio runtime, which prefetches into a bounded channel that
//! `poll` drains without waiting.

mod reader;
mod sink;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use spindle_protocol::OperatorSpec;
use tokio::sync::mpsc;

pub use sink::{NatsSink, run_nats_commit};

use super::expr::parse_field_ref;
use super::fields::{Fields, parse_i64};
use crate::operator::{InstanceContext, OperatorError, Source, SourceStatus};
use crate::record::{Batch, EventTime};

/// Server of `url` when the spec names none.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The spec's server URL. async-nats is built without a TLS provider (one less crypto library
/// to compile): a TLS or websocket URL is refused here rather than panicking in the client.
fn server_url(spec: &OperatorSpec, what: &str) -> Result<String, OperatorError> {
    let url = spec.url.clone().unwrap_or_else(|| DEFAULT_URL.to_string());
    if ["tls://", "ws://", "wss://"].iter().any(|scheme| url.starts_with(scheme)) {
        return Err(OperatorError::failed(format!(
            "{what}: `{url}`: only plain nats:// servers are supported"
        )));
    }
    Ok(url)
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Which field holds event time, and how to find it (as every operator splits fields).
#[derive(Debug, Clone)]
struct TimeField {
    /// `$N`'s N.
    field: usize,
    fields: Fields,
}

impl TimeField {
    fn parse(spec: &OperatorSpec, what: &str) -> Result<Option<TimeField>, OperatorError> {
        let Some(source) = spec.time_field.as_deref() else {
            return Ok(None);
        };
        let field = parse_field_ref(source).map_err(|err| OperatorError::failed(format!("{what}: time_field: {err}")))?;
        Ok(Some(TimeField {
            field,
            fields: Fields::new(spec.delimiter.as_deref()),
        }))
    }

    /// The time in the line, or None when the field is missing or not an integer.
    fn time_of(&self, line: &[u8]) -> Option<EventTime> {
        parse_i64(self.fields.field(line, self.field)?)
    }
}

/// What the reader thread hands `poll`.
#[derive(Debug)]
enum Event {
    Message {
        sequence: u64,
        published_ms: EventTime,
        payload: Vec<u8>,
    },
    /// The reader cannot go on (e.g. the stream does not exist): the instance fails.
    Fatal(String),
}

/// Where and what the reader reads.
#[derive(Debug, Clone)]
struct ReaderConfig {
    what: String,
    url: String,
    stream: String,
    subject: Option<String>,
}

/// A running reader thread; dropping it closes the channel, which stops the thread.
struct Reader {
    events: mpsc::Receiver<Event>,
    /// Messages taken from `events`.
    received: u64,
    /// From the latest consumer info: (messages not yet delivered, messages sent into the
    /// channel by then).
    pending: Arc<Mutex<Option<(u64, u64)>>>,
}

/// `nats_source`: the messages of JetStream stream `stream` (only `subject`, if set), one
/// record per message with its payload as value (a trailing newline trimmed).
pub struct NatsSource {
    config: ReaderConfig,
    time_field: Option<TimeField>,
    /// Stream sequence of the last message emitted (or skipped as bad): 0 for none.
    last_sequence: u64,
    reader: Option<Reader>,
    bad_records: u64,
}

impl NatsSource {
    pub fn new(spec: &OperatorSpec, ctx: &InstanceContext) -> Result<NatsSource, OperatorError> {
        let what = format!("nats_source {}", spec.name);
        let stream = spec
            .stream
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OperatorError::failed(format!("{what}: `stream` is required")))?;
        let time_field = TimeField::parse(spec, &what)?;
        let url = server_url(spec, &what)?;
        if ctx.parallelism > 1 {
            // Every instance would read the whole stream: the output would hold each message
            // `parallelism` times.
            return Err(OperatorError::failed(format!(
                "{what}: a JetStream stream is read by one instance (parallelism 1)"
            )));
        }
        Ok(NatsSource {
            config: ReaderConfig {
                what,
                url,
                stream,
                subject: spec.subject.clone().filter(|s| !s.is_empty()),
            },
            time_field,
            last_sequence: 0,
            reader: None,
            bad_records: 0,
        })
    }

    fn start_reader(&self) -> Result<Reader, OperatorError> {
        let (sender, events) = mpsc::channel(reader::BUFFER);
        let pending = Arc::new(Mutex::new(None));
        let config = self.config.clone();
        let start = self.last_sequence + 1;
        let shared = pending.clone();
        std::thread::Builder::new()
            .name(format!("nats-source-{}", self.config.stream))
            .spawn(move || {
                let what = config.what.clone();
                // Kept for reporting a panic (e.g. a server that demands TLS): `poll` then fails
                // with its text instead of only seeing the channel close.
                let fatal = sender.clone();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(reader::read(config, start, sender, shared));
                    Ok::<(), std::io::Error>(())
                }));
                let message = match run {
                    Ok(Ok(())) => return,
                    Ok(Err(err)) => format!("{what}: no tokio runtime: {err}"),
                    Err(panic) => format!("{what}: the NATS reader panicked: {}", panic_text(&*panic)),
                };
                let _ = fatal.try_send(Event::Fatal(message));
            })?;
        Ok(Reader {
            events,
            received: 0,
            pending,
        })
    }
}

impl Source for NatsSource {
    /// Messages skipped because their time field was missing or not an integer.
    fn bad_records(&self) -> u64 {
        self.bad_records
    }

    fn poll(&mut self, out: &mut Batch, max_records: usize) -> Result<SourceStatus, OperatorError> {
        if self.reader.is_none() {
            self.reader = Some(self.start_reader()?);
        }
        let reader = self.reader.as_mut().expect("started above");
        let mut taken = 0;
        while taken < max_records {
            match reader.events.try_recv() {
                Ok(Event::Message {
                    sequence,
                    published_ms,
                    payload,
                }) => {
                    taken += 1;
                    reader.received += 1;
                    self.last_sequence = sequence;
                    let value = trim_newline(&payload);
                    let time = match &self.time_field {
                        None => Some(published_ms),
                        Some(field) => field.time_of(value),
                    };
                    match time {
                        Some(time) => out.push(time, b"", value),
                        None => self.bad_records += 1,
                    }
                }
                Ok(Event::Fatal(message)) => return Err(OperatorError::failed(message)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(OperatorError::failed(format!("{}: the NATS reader stopped", self.config.what)));
                }
            }
        }
        Ok(if taken > 0 { SourceStatus::Ready } else { SourceStatus::Idle })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(self.last_sequence.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        self.last_sequence = match state.len() {
            0 => 0,
            8 => u64::from_le_bytes(state.try_into().expect("8 bytes")),
            n => return Err(OperatorError::CorruptState(format!("{}: offset of {n} bytes", self.config.what))),
        };
        // A reader already running read from the old offset: the next poll starts a new one.
        self.reader = None;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let reader = self.reader.as_ref()?;
        let (pending, sent) = (*reader.pending.lock().ok()?)?;
        Some((pending + sent).saturating_sub(reader.received))
    }
}

fn trim_newline(payload: &[u8]) -> &[u8] {
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    payload.strip_suffix(b"\r").unwrap_or(payload)
}
