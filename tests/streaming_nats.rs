//! NATS JetStream in and out, end to end with real AM and worker processes on a local cluster:
//! `examples/stream-nats.toml` (nats_source → key_by → 1 s tumbling count → nats_sink) reads
//! a deterministic input from a JetStream subject while a worker is `kill -9`ed after the first
//! committed output, and input keeps coming after the kill. The output stream then holds every
//! (key, window) exactly once with its exact count: the source resumed from the checkpointed
//! stream sequence, and the sink's re-published messages were dropped by their `Nats-Msg-Id`.
//!
//! Needs a NATS server with JetStream on 127.0.0.1:4222: skipped (with a note) when there is
//! none, unless SPINDLE_REQUIRE_NATS is set.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;
use spindle_protocol::{ContainerState, JobSpec};
use support::{CleanupDir, kill_processes_under, start_local, stream_detail, task_containers, wait_for_checkpoint, wait_until};

const URL: &str = "nats://127.0.0.1:4222";
/// Input messages `k{key}\t{i}\t{i / 2}`: 10 s of event time, then one far later.
const EVENTS: u64 = 20_000;
const KEYS: u64 = 50;
const LAST_TIME_MS: u64 = 60_000;

fn nats_is_up() -> bool {
    let address: SocketAddr = "127.0.0.1:4222".parse().unwrap();
    if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
        return true;
    }
    support::skip_unless_required("SPINDLE_REQUIRE_NATS", &format!("no NATS server listens on {URL}"));
    false
}

/// Deletes its streams when dropped, also when the test fails (on a thread of its own: drop
/// runs inside the test's runtime, which must not block on another).
struct Streams(Vec<String>);

impl Drop for Streams {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let Ok(client) = async_nats::connect(URL).await else { return };
                let js = jetstream::new(client);
                for name in names {
                    let _ = js.delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

/// Input message `i`: its key, and the line.
fn event(i: u64) -> (String, u64, String) {
    // Skewed, deterministic counts (the smaller of two hashes): from ~100 a window for k0 to
    // none at all for k49 in some windows.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    let key = format!("k{}", (x % KEYS).min((x >> 8) % KEYS));
    let time = i / 2;
    let line = format!("{key}\t{i}\t{time}");
    (key, time, line)
}

async fn publish(js: &jetstream::Context, subject: &str, lines: impl Iterator<Item = String>) {
    let mut acks = Vec::new();
    for line in lines {
        acks.push(js.publish(subject.to_owned(), line.into()).await.unwrap());
        if acks.len() >= 1_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn message_count(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().get_info().await.unwrap().state.messages
}

/// Every message of `stream`, from the first, through a consumer of its own.
async fn read_all(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.unwrap();
    let count = stream.get_info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let messages = consumer.messages().await.unwrap().take(count);
    let messages: Vec<_> = tokio::time::timeout(Duration::from_secs(30), messages.collect()).await.unwrap();
    messages
        .into_iter()
        .map(|message| String::from_utf8(message.unwrap().payload.to_vec()).unwrap())
        .collect()
}

/// The example with the test's streams, subjects and checkpoint dir.
fn example_job(dir: &Path, input: (&str, &str), output_subject: &str) -> JobSpec {
    let text = std::fs::read_to_string(support::examples_dir().join("stream-nats.toml")).unwrap();
    let mut spec: JobSpec = toml::from_str(&text).unwrap();
    let stream = spec.stream.as_mut().unwrap();
    stream.checkpoint_dir = Some(dir.join("checkpoints").display().to_string());
    let source = stream.operators.iter_mut().find(|op| op.name == "events").unwrap();
    source.stream = Some(input.0.to_owned());
    source.subject = Some(input.1.to_owned());
    stream.operators.iter_mut().find(|op| op.name == "out").unwrap().subject = Some(output_subject.to_owned());
    spec.validate().unwrap();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_count_pipeline_from_a_jetstream_subject_to_a_nats_subject_is_exact() {
    if !nats_is_up() {
        return;
    }
    let started = Instant::now();
    let elapsed = || format!("{:.1}s", started.elapsed().as_secs_f64());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    let (input, output) = (format!("SPINDLE_E2E_IN_{id}"), format!("SPINDLE_E2E_OUT_{id}"));
    let (in_subject, out_subject) = (format!("spindle.e2e.{id}.in"), format!("spindle.e2e.{id}.out"));
    let js = jetstream::new(async_nats::connect(URL).await.expect("connect to NATS"));
    let _streams = Streams(vec![input.clone(), output.clone()]);
    for (name, subject) in [(&input, &in_subject), (&output, &out_subject)] {
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        };
        js.create_stream(config).await.expect("create a stream");
    }

    // Every window the last message's watermark closes: all but the last message's own.
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for i in 0..EVENTS {
        let (key, time, _) = event(i);
        *expected.entry((key, (time - time % 1000) as i64)).or_default() += 1;
    }
    let lines = |range: std::ops::Range<u64>| range.map(|i| event(i).2);
    // The first 8,000 (times 0..4 s) before the job starts, the rest after the kill.
    publish(&js, &in_subject, lines(0..8_000)).await;

    let dir = support::shared_tempdir("spindle-test-");
    let cluster = start_local(dir.path()).await;
    let _cleanup = CleanupDir(dir.path());
    let client = cluster.client();
    let spec = example_job(dir.path(), (&input, &in_subject), &out_subject);
    let app_id = client.submit(&spec).await.unwrap();
    eprintln!("{}: submitted {app_id}", elapsed());

    // Output committed: a checkpoint with a source offset past the start.
    wait_until(Duration::from_secs(60), "the first committed output", || async {
        stream_detail(&client, app_id).await?;
        (message_count(&js, &output).await > 0).then_some(())
    })
    .await;
    let first = wait_for_checkpoint(&client, app_id, 0, 0, "a first checkpoint").await;
    let workers = task_containers(&client, app_id).await;
    let victim = workers
        .iter()
        .find(|c| c.state == ContainerState::Running)
        .expect("a running worker");
    let victim_dir = (0..2)
        .map(|agent| {
            cluster
                .work_root
                .join(format!("agent-{agent}"))
                .join("apps")
                .join(app_id.to_string())
                .join(victim.container_id.to_string())
        })
        .find(|dir| dir.is_dir())
        .expect("the worker's container dir");
    eprintln!(
        "{}: kill -9 worker {} after checkpoint {first} ({} output messages)",
        elapsed(),
        victim.container_id,
        message_count(&js, &output).await
    );
    kill_processes_under(&victim_dir);
    publish(&js, &in_subject, lines(8_000..14_000)).await;
    let second = wait_for_checkpoint(&client, app_id, first, 1, "a checkpoint after the worker's loss").await;
    eprintln!("{}: checkpoint {second} after the restart", elapsed());
    let last = format!("klast\t{EVENTS}\t{LAST_TIME_MS}");
    publish(&js, &in_subject, lines(14_000..EVENTS).chain([last])).await;

    wait_until(Duration::from_secs(60), "the whole output", || async {
        stream_detail(&client, app_id).await?;
        (message_count(&js, &output).await >= expected.len() as u64).then_some(())
    })
    .await;
    eprintln!(
        "{}: {} windows out; a few more checkpoints for duplicates",
        elapsed(),
        expected.len()
    );
    let settled = wait_for_checkpoint(&client, app_id, second, 1, "a checkpoint after the output").await;
    wait_for_checkpoint(&client, app_id, settled + 2, 1, "more checkpoints").await;
    let detail = stream_detail(&client, app_id).await.unwrap();
    assert_eq!(detail.restarts, 1, "one restart, for the killed worker");

    let mut committed: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for message in read_all(&js, &output).await {
        let fields: Vec<&str> = message.split('\t').collect();
        assert_eq!(fields.len(), 4, "{message:?}");
        let start: i64 = fields[1].parse().unwrap();
        assert_eq!(fields[2].parse::<i64>().unwrap(), start + 1000, "{message:?}");
        let key = (fields[0].to_owned(), start);
        let count = fields[3].parse().unwrap();
        assert!(committed.insert(key.clone(), count).is_none(), "{key:?} published twice");
    }
    let missing: Vec<_> = expected.keys().filter(|key| !committed.contains_key(*key)).take(5).collect();
    let extra: Vec<_> = committed.keys().filter(|key| !expected.contains_key(*key)).take(5).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, count)| committed.get(*key).is_some_and(|c| c != *count))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} windows expected, {} published; missing {missing:?}, extra {extra:?}, wrong (expected) {wrong:?}",
        expected.len(),
        committed.len()
    );
    eprintln!("{}: exact; killing the job", elapsed());
    client.kill(app_id).await.unwrap();
    support::wait_for_app_end(&client, app_id, Duration::from_secs(30)).await;
    assert_eq!(message_count(&js, &output).await, expected.len() as u64, "nothing published later");
    let _ = cluster.shutdown().await;
}
