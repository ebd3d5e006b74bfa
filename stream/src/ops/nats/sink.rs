//! `nats_sink`: stages messages in a file per checkpoint; the AM publishes the file once the
//! checkpoint completes (`run_nats_commit`), so readers never see output of a checkpoint that
//! failed.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use spindle_protocol::OperatorSpec;

use super::{panic_text, server_url};
use crate::location::Location;
use crate::operator::{Commit, InstanceContext, NatsCommit, OperatorError, Sink};
use crate::record::Batch;

/// Publishes awaited per ack: pipelining is what makes publishing fast, the bound keeps
/// memory flat.
const ACK_WINDOW: usize = 1_000;
const CONNECT_ATTEMPTS: u32 = 5;

/// `nats_sink`: each record's value becomes one message on `subject` (a value with newlines
/// becomes several messages, one per line).
pub struct NatsSink {
    url: String,
    subject: String,
    id_base: String,
    staged_dir: PathBuf,
    file_base: String,
    /// Number of the next staged file.
    next_file: u64,
    current: Option<(PathBuf, BufWriter<File>)>,
}

impl NatsSink {
    pub fn new(spec: &OperatorSpec, ctx: &InstanceContext) -> Result<NatsSink, OperatorError> {
        let subject = spec
            .subject
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OperatorError::failed(format!("nats_sink {}: `subject` is required", spec.name)))?;
        Ok(NatsSink {
            url: server_url(spec, &format!("nats_sink {}", spec.name))?,
            subject,
            id_base: format!("{}-{}-{}", ctx.app_id, ctx.operator, ctx.index),
            staged_dir: match &ctx.checkpoint_dir {
                Location::Dir(dir) => dir.join("staged"),
                // Refused at submit; a spec that skipped validation fails here.
                Location::Object(_) => {
                    return Err(OperatorError::failed(format!(
                        "nats_sink {}: stages its output in the checkpoint dir, which must be a directory every node sees, not {}",
                        spec.name, ctx.checkpoint_dir
                    )));
                }
            },
            // The epoch makes names unique across restarts, which restart the numbering.
            file_base: format!("{}-{}-e{}", ctx.operator, ctx.index, ctx.epoch),
            next_file: 0,
            current: None,
        })
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, OperatorError> {
        if self.current.is_none() {
            fs::create_dir_all(&self.staged_dir)?;
            let path = self.staged_dir.join(format!("{}-{}.msgs", self.file_base, self.next_file));
            self.next_file += 1;
            let file = File::create(&path)?;
            self.current = Some((path, BufWriter::with_capacity(256 * 1024, file)));
        }
        Ok(&mut self.current.as_mut().expect("created above").1)
    }
}

impl Sink for NatsSink {
    fn write(&mut self, batch: &Batch) -> Result<(), OperatorError> {
        if batch.is_empty() {
            return Ok(());
        }
        let writer = self.writer()?;
        for record in batch {
            writer.write_all(record.value)?;
            writer.write_all(b"\n")?;
        }
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint: u64) -> Result<Commit, OperatorError> {
        let Some((path, writer)) = self.current.take() else {
            return Ok(Commit::default());
        };
        let file = writer.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        // The file's name must survive a crash too: the checkpoint refers to it.
        File::open(&self.staged_dir)?.sync_all()?;
        Ok(Commit {
            nats: Some(NatsCommit {
                url: self.url.clone(),
                subject: self.subject.clone(),
                staged: path,
                id_prefix: format!("{}-{checkpoint}", self.id_base),
            }),
            ..Commit::default()
        })
    }
}

/// Publishes a staged file (blocking: the AM calls it from a blocking thread). Every line goes
/// to `subject` with message id `<id_prefix>-<line number>` (from 1), each publish acknowledged
/// by JetStream; then the staged file is deleted. A missing staged file was published before.
///
/// Exactly-once holds when `subject` belongs to a stream: a re-run within the stream's
/// duplicate window (default 2 minutes) is dropped by id. When no stream takes the subject,
/// the lines go out as core NATS messages instead, at least once (a re-run repeats them).
pub fn run_nats_commit(commit: &NatsCommit) -> Result<(), OperatorError> {
    let data = match fs::read(&commit.staged) {
        Ok(data) => data,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The client panics on TLS (built without a provider): an error for the AM, not a crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(publish_file(commit, &data))))
        .map_err(|panic| failed(commit, format!("the NATS client panicked: {}", panic_text(&*panic))))??;
    remove_staged(&commit.staged)
}

fn remove_staged(path: &Path) -> Result<(), OperatorError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}

fn failed(commit: &NatsCommit, what: impl std::fmt::Display) -> OperatorError {
    OperatorError::failed(format!(
        "nats_sink commit of {} to `{}` on {}: {what}",
        commit.staged.display(),
        commit.subject,
        commit.url
    ))
}

/// The file's lines: every `\n`-terminated line (a last line without one counts too).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    let empty = data.is_empty();
    data.split(|&byte| byte == b'\n').filter(move |_| !empty)
}

async fn publish_file(commit: &NatsCommit, data: &[u8]) -> Result<(), OperatorError> {
    let client = connect(commit).await?;
    let js = jetstream::new(client.clone());
    // Asked first rather than learnt from a failed publish: with a core subscriber on the
    // subject (and no stream) a JetStream publish gets no "no responders", only a timeout.
    match js.stream_by_subject(commit.subject.as_str()).await {
        Ok(_) => {}
        Err(err) if err.kind() == GetStreamByNameErrorKind::NotFound => return publish_core(commit, &client, data).await,
        Err(err) => return Err(failed(commit, format!("looking up its stream: {err}"))),
    }
    let mut in_flight = VecDeque::with_capacity(ACK_WINDOW);
    let mut acked = 0u64;
    for (index, line) in lines(data).enumerate() {
        let publish = PublishMessage::build()
            .payload(line.to_vec().into())
            .message_id(format!("{}-{}", commit.id_prefix, index + 1));
        let ack = js
            .send_publish(commit.subject.clone(), publish)
            .await
            .map_err(|err| failed(commit, err))?;
        in_flight.push_back(ack);
        if in_flight.len() >= ACK_WINDOW {
            let ack = in_flight.pop_front().expect("full window");
            match ack.await {
                Ok(_) => acked += 1,
                Err(err) if err.kind() == PublishErrorKind::StreamNotFound && acked == 0 => {
                    return publish_core(commit, &client, data).await;
                }
                Err(err) => return Err(failed(commit, err)),
            }
        }
    }
    while let Some(ack) = in_flight.pop_front() {
        match ack.await {
            Ok(_) => acked += 1,
            // Nothing was stored (no stream has the subject): publish without JetStream.
            Err(err) if err.kind() == PublishErrorKind::StreamNotFound && acked == 0 => {
                return publish_core(commit, &client, data).await;
            }
            Err(err) => return Err(failed(commit, err)),
        }
    }
    Ok(())
}

/// Core NATS fallback for a subject no stream takes: at-least-once (no server-side dedup).
async fn publish_core(commit: &NatsCommit, client: &async_nats::Client, data: &[u8]) -> Result<(), OperatorError> {
    tracing::warn!(
        "nats_sink: no JetStream stream takes subject `{}`: publishing as core NATS, at least once",
        commit.subject
    );
    for line in lines(data) {
        client
            .publish(commit.subject.clone(), line.to_vec().into())
            .await
            .map_err(|err| failed(commit, err))?;
    }
    client.flush().await.map_err(|err| failed(commit, err))
}

async fn connect(commit: &NatsCommit) -> Result<async_nats::Client, OperatorError> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        match options.connect(commit.url.as_str()).await {
            Ok(client) => return Ok(client),
            Err(err) if attempt >= CONNECT_ATTEMPTS => return Err(failed(commit, err)),
            Err(err) => tracing::warn!(%err, "nats_sink: cannot connect to {}; retrying in {backoff:?}", commit.url),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}
