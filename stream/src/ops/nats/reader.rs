//! The source's reader thread: pulls from an ephemeral consumer into the bounded channel that
//! `NatsSource::poll` drains, recreating the consumer after errors and delivery gaps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Event, ReaderConfig};
use crate::record::EventTime;

/// Messages prefetched ahead of `poll`: bounds memory, and a slow pipeline stops the fetching.
pub(super) const BUFFER: usize = 10_000;
/// Messages asked for per pull request.
const PULL_BATCH: usize = 500;
/// How long a pull request waits for messages: also how often an idle reader refreshes its lag.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const LAG_REFRESH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An ephemeral consumer whose reader died without deleting it is removed by the server then.
/// Long, because a reader held back by a full channel sends no pull requests meanwhile (and
/// if the consumer is gone all the same, the reader recreates it where it was).
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Connects to `url`, retrying with backoff until it works or `closed` says nobody listens.
async fn connect(url: &str, what: &str, sender: &mpsc::Sender<Event>) -> Option<async_nats::Client> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        match options.connect(url).await {
            Ok(client) => return Some(client),
            Err(err) => tracing::warn!(%err, "{what}: cannot connect to {url}; retrying in {backoff:?}"),
        }
        if sleep_or_closed(backoff, sender).await {
            return None;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps; true when the receiver went away meanwhile.
async fn sleep_or_closed(duration: Duration, sender: &mpsc::Sender<Event>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => sender.is_closed(),
        _ = sender.closed() => true,
    }
}

/// Why a consumer could not be opened.
enum OpenError {
    /// Fatal: the stream is not there.
    NoStream,
    Other(String),
}

async fn open(
    js: &jetstream::Context,
    config: &ReaderConfig,
    start: u64,
) -> Result<(jetstream::stream::Stream, jetstream::consumer::Consumer<pull::Config>), OpenError> {
    let stream = match js.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(err) => {
            return Err(match err.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    OpenError::NoStream
                }
                _ => OpenError::Other(err.to_string()),
            });
        }
    };
    let consumer_config = pull::Config {
        deliver_policy: if start <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: start }
        },
        // Offsets live in checkpoints, not in the server: nothing to acknowledge.
        ack_policy: AckPolicy::None,
        filter_subject: config.subject.clone().unwrap_or_default(),
        inactive_threshold: INACTIVE_THRESHOLD,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    match stream.create_consumer(consumer_config).await {
        Ok(consumer) => Ok((stream, consumer)),
        Err(err) => Err(match err.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(js_err) if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                OpenError::NoStream
            }
            _ => OpenError::Other(err.to_string()),
        }),
    }
}

/// The reader thread's task: reads messages from stream sequence `start` on into `sender`
/// until the receiver is dropped, recreating the consumer after errors and gaps.
pub(super) async fn read(config: ReaderConfig, mut start: u64, sender: mpsc::Sender<Event>, pending: Arc<Mutex<Option<(u64, u64)>>>) {
    let what = &config.what;
    let Some(client) = connect(&config.url, what, &sender).await else {
        return;
    };
    let js = jetstream::new(client);
    let mut sent: u64 = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let (stream, consumer) = match open(&js, &config, start).await {
            Ok(opened) => opened,
            Err(OpenError::NoStream) => {
                let message = format!("{what}: stream `{}` does not exist on {}", config.stream, config.url);
                let _ = sender.send(Event::Fatal(message)).await;
                return;
            }
            Err(OpenError::Other(err)) => {
                tracing::warn!(
                    "{what}: cannot open a consumer on stream `{}`: {err}; retrying in {backoff:?}",
                    config.stream
                );
                if sleep_or_closed(backoff, &sender).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let name = consumer.cached_info().name.clone();
        let outcome = fetch(&consumer, &mut start, &sender, &mut sent, &pending).await;
        // Best effort: an orphan expires after INACTIVE_THRESHOLD anyway.
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.delete_consumer(&name)).await;
        match outcome {
            Fetch::Closed => return,
            Fetch::Gap => backoff = Duration::from_millis(100),
            Fetch::Failed(err) => {
                tracing::warn!(
                    "{what}: reading stream `{}` failed: {err}; resuming at sequence {start}",
                    config.stream
                );
                if sleep_or_closed(backoff, &sender).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Fetch {
    /// The receiver is gone.
    Closed,
    /// A gap in consumer sequences (a lost delivery): recreate the consumer right away.
    Gap,
    Failed(String),
}

/// Pulls batches from `consumer` while it delivers in order; `start` follows the messages sent.
async fn fetch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    start: &mut u64,
    sender: &mpsc::Sender<Event>,
    sent: &mut u64,
    pending: &Mutex<Option<(u64, u64)>>,
) -> Fetch {
    let mut expected = 1u64;
    let mut last_info: Option<Instant> = None;
    loop {
        // Room for a whole batch before asking for it: the channel never holds more than BUFFER.
        // While a slow pipeline keeps it full the lag still refreshes: that is when it matters.
        let mut permits = loop {
            match tokio::time::timeout(LAG_REFRESH, sender.reserve_many(PULL_BATCH)).await {
                Ok(Ok(permits)) => break permits,
                Ok(Err(_)) => return Fetch::Closed,
                Err(_) => {
                    if let Err(err) = refresh_lag(consumer, *sent, pending, &mut last_info).await {
                        return Fetch::Failed(err);
                    }
                }
            }
        };
        let mut batch = match consumer.batch().max_messages(PULL_BATCH).expires(PULL_EXPIRES).messages().await {
            Ok(batch) => batch,
            Err(err) => return Fetch::Failed(err.to_string()),
        };
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = sender.closed() => return Fetch::Closed,
            };
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(err)) => return Fetch::Failed(err.to_string()),
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(err) => return Fetch::Failed(format!("bad JetStream metadata: {err}")),
            };
            if info.consumer_sequence != expected {
                return Fetch::Gap;
            }
            expected += 1;
            *start = info.stream_sequence + 1;
            let event = Event::Message {
                sequence: info.stream_sequence,
                published_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as EventTime,
                payload: message.payload.to_vec(),
            };
            let Some(permit) = permits.next() else {
                return Fetch::Failed("the server sent more messages than asked for".into());
            };
            permit.send(event);
            *sent += 1;
        }
        if let Err(err) = refresh_lag(consumer, *sent, pending, &mut last_info).await {
            return Fetch::Failed(err);
        }
    }
}

/// Records the consumer's num_pending with the messages sent by then, at most once per
/// LAG_REFRESH. Called only between batches, when nothing is in flight, so the two agree.
async fn refresh_lag(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    sent: u64,
    pending: &Mutex<Option<(u64, u64)>>,
    last_info: &mut Option<Instant>,
) -> Result<(), String> {
    if last_info.is_some_and(|at| at.elapsed() < LAG_REFRESH) {
        return Ok(());
    }
    let info = consumer.get_info().await.map_err(|err| format!("consumer info: {err}"))?;
    if let Ok(mut pending) = pending.lock() {
        *pending = Some((info.num_pending, sent));
    }
    *last_info = Some(Instant::now());
    Ok(())
}
