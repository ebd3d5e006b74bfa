//! Against the real server on 127.0.0.1:4222: skipped (with a note) when it is unreachable,
//! unless SPINDLE_REQUIRE_NATS is set. Each test makes its own streams and deletes them.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures_util::StreamExt;
use spindle_protocol::{OperatorKind, OperatorSpec};

use super::*;
use crate::operator::{NatsCommit, Sink};

const URL: &str = "nats://127.0.0.1:4222";

/// A connection for setting up and checking; deletes its streams when dropped.
struct Admin {
    runtime: tokio::runtime::Runtime,
    js: jetstream::Context,
    client: async_nats::Client,
    streams: Vec<String>,
}

fn admin() -> Option<Admin> {
    let address: SocketAddr = "127.0.0.1:4222".parse().unwrap();
    if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
        assert!(
            std::env::var_os("SPINDLE_REQUIRE_NATS").is_none(),
            "SPINDLE_REQUIRE_NATS is set but no NATS server listens on {URL}"
        );
        // Straight to stderr: the test harness captures `eprintln!`, and the skip must show.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: no NATS server on {URL} (set SPINDLE_REQUIRE_NATS to make this a failure)"
        );
        return None;
    }
    // Multi-threaded so that subscriptions keep receiving while the test thread blocks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async_nats::connect(URL)).expect("connect to NATS");
    // The JetStream context spawns a task: it needs the runtime entered.
    let js = {
        let _entered = runtime.enter();
        jetstream::new(client.clone())
    };
    Some(Admin {
        runtime,
        js,
        client,
        streams: Vec::new(),
    })
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

impl Admin {
    fn create_stream(&mut self, name: &str, subjects: Vec<String>) {
        let config = jetstream::stream::Config {
            name: name.to_string(),
            subjects,
            ..Default::default()
        };
        self.runtime.block_on(self.js.create_stream(config)).expect("create stream");
        self.streams.push(name.to_string());
    }

    fn publish(&self, subject: &str, payload: String) {
        self.runtime.block_on(async {
            self.js.publish(subject.to_string(), payload.into()).await.unwrap().await.unwrap();
        });
    }

    fn message_count(&self, stream: &str) -> u64 {
        self.runtime
            .block_on(async { self.js.get_stream(stream).await.unwrap().get_info().await.unwrap().state.messages })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        for stream in &self.streams {
            let _ = self.runtime.block_on(self.js.delete_stream(stream));
        }
    }
}

fn context(checkpoint_dir: &Path) -> InstanceContext {
    InstanceContext {
        app_id: "app_1_0001".into(),
        operator: "out".into(),
        index: 0,
        parallelism: 1,
        key_groups: 128,
        key_group_range: 0..128,
        epoch: 3,
        work_dir: checkpoint_dir.to_path_buf(),
        checkpoint_dir: crate::location::Location::Dir(checkpoint_dir.to_path_buf()),
        env: Default::default(),
    }
}

fn source_spec(stream: &str, subject: Option<String>, time_field: Option<&str>) -> OperatorSpec {
    OperatorSpec {
        name: "events".into(),
        kind: Some(OperatorKind::NatsSource),
        parallelism: 1,
        url: Some(URL.into()),
        stream: Some(stream.into()),
        subject,
        time_field: time_field.map(String::from),
        ..Default::default()
    }
}

/// Polls until `want` records came (or 10 s passed), `max_records` at a time.
fn read(source: &mut NatsSource, want: usize, max_records: usize) -> Vec<(i64, String)> {
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < want && Instant::now() < deadline {
        let mut batch = Batch::new();
        let status = source.poll(&mut batch, max_records.min(want - records.len())).unwrap();
        records.extend(batch.iter().map(|r| (r.time, String::from_utf8(r.value.to_vec()).unwrap())));
        if status == SourceStatus::Idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    records
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn source_reads_in_order_and_replays_exactly_after_a_restore() {
    let Some(mut admin) = admin() else { return };
    let stream = unique("spindle_src");
    let subjects = format!("{stream}.>");
    let events = format!("{stream}.events");
    admin.create_stream(&stream, vec![subjects]);
    const N: usize = 60;
    let expected: Vec<(i64, String)> = (1..=N).map(|i| (1_000 + i as i64, format!("k{i} {i} {}", 1_000 + i))).collect();
    for (i, (_, line)) in expected.iter().enumerate() {
        admin.publish(&events, format!("{line}\n"));
        if i % 10 == 0 {
            // Another subject of the stream: the filter leaves it out.
            admin.publish(&format!("{stream}.other"), format!("other {i} 5"));
        }
    }
    admin.publish(&events, "bad line no-time".into());

    let ctx = context(Path::new("/nonexistent"));
    let spec = source_spec(&stream, Some(events.clone()), Some("$3"));
    let mut first = NatsSource::new(&spec, &ctx).unwrap();
    first.restore(&[]).unwrap();
    const K: usize = 17;
    assert_eq!(read(&mut first, K, 1), expected[..K]);
    let offset = first.snapshot().unwrap();
    assert_eq!(read(&mut first, N - K, 7), expected[K..]);
    wait_for("the bad message", || {
        first.poll(&mut Batch::new(), 10).unwrap();
        first.bad_records() == 1
    });
    wait_for("the lag to be known and zero", || first.lag() == Some(0));

    // The usual case: restored before the first poll.
    let mut second = NatsSource::new(&spec, &ctx).unwrap();
    second.restore(&offset).unwrap();
    assert_eq!(read(&mut second, 1, 1), expected[K..K + 1]);
    // Left after the one emitted: the other good ones and the bad one, prefetched or not.
    wait_for("the lag", || second.lag() == Some((N - K) as u64));
    assert_eq!(read(&mut second, N - K - 1, 1_000), expected[K + 1..]);

    // Restored after polls: the running reader is replaced.
    first.restore(&offset).unwrap();
    assert_eq!(read(&mut first, N - K, 1_000), expected[K..]);

    // Without time_field: the JetStream timestamp, and every subject of the stream.
    let mut all = NatsSource::new(&source_spec(&stream, None, None), &ctx).unwrap();
    let records = read(&mut all, N + 7, 1_000);
    assert_eq!(records.len(), N + 7);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(
        records.iter().all(|(time, _)| (now - 60_000..=now).contains(time)),
        "{:?}",
        records[0]
    );
    assert_eq!(records[1].1, "other 0 5");
}

#[test]
fn sink_commits_each_message_exactly_once_even_when_run_twice() {
    let Some(mut admin) = admin() else { return };
    let stream = unique("spindle_sink");
    let subject = format!("{stream}.out");
    admin.create_stream(&stream, vec![subject.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let spec = OperatorSpec {
        name: "out".into(),
        kind: Some(OperatorKind::NatsSink),
        subject: Some(subject.clone()),
        ..Default::default()
    };
    let mut sink = NatsSink::new(&spec, &ctx).unwrap();
    assert!(sink.prepare_commit(1).unwrap().is_empty());

    // More than one ack window, in two writes.
    const N: usize = 2_500;
    let lines: Vec<String> = (0..N).map(|i| format!("line {i}")).collect();
    for chunk in lines.chunks(1_300) {
        let mut batch = Batch::new();
        for line in chunk {
            batch.push(0, b"", line.as_bytes());
        }
        sink.write(&batch).unwrap();
    }
    let commit = sink.prepare_commit(2).unwrap();
    let nats = commit.nats.clone().expect("a NATS commit");
    assert_eq!(nats.id_prefix, "app_1_0001-out-0-2");
    assert_eq!(nats.url, URL);
    assert_eq!(nats.staged, dir.path().join("staged/out-0-e3-0.msgs"));
    let copy = dir.path().join("copy");
    std::fs::copy(&nats.staged, &copy).unwrap();

    run_nats_commit(&nats).unwrap();
    assert!(!nats.staged.exists());
    // A crash before the AM recorded the commit: the same file published again.
    std::fs::rename(&copy, &nats.staged).unwrap();
    run_nats_commit(&nats).unwrap();
    // Already committed and cleaned up.
    run_nats_commit(&nats).unwrap();
    assert_eq!(admin.message_count(&stream), N as u64);

    let mut reader = NatsSource::new(&source_spec(&stream, None, None), &ctx).unwrap();
    let read_back: Vec<String> = read(&mut reader, N, 1_000).into_iter().map(|(_, line)| line).collect();
    assert_eq!(read_back, lines);

    // The next checkpoint stages a new file.
    let mut batch = Batch::new();
    batch.push(0, b"", b"next");
    sink.write(&batch).unwrap();
    let next = sink.prepare_commit(3).unwrap().nats.unwrap();
    assert_eq!(next.staged, dir.path().join("staged/out-0-e3-1.msgs"));
}

#[test]
fn a_subject_without_a_stream_gets_core_nats_messages() {
    let Some(admin) = admin() else { return };
    let subject = unique("spindle_core");
    let mut subscriber = admin.runtime.block_on(admin.client.subscribe(subject.clone())).unwrap();
    admin.runtime.block_on(admin.client.flush()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("core.msgs");
    std::fs::write(&staged, "a\nb\n").unwrap();
    let commit = NatsCommit {
        url: URL.into(),
        subject,
        staged,
        id_prefix: "x".into(),
    };
    run_nats_commit(&commit).unwrap();
    let received: Vec<String> = admin.runtime.block_on(async {
        let mut received = Vec::new();
        for _ in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
                .await
                .unwrap()
                .unwrap();
            received.push(String::from_utf8(message.payload.to_vec()).unwrap());
        }
        received
    });
    assert_eq!(received, ["a", "b"]);
}

#[test]
fn a_missing_stream_is_a_clear_error() {
    let Some(_admin) = admin() else { return };
    let stream = unique("spindle_missing");
    let ctx = context(Path::new("/nonexistent"));
    let mut source = NatsSource::new(&source_spec(&stream, None, None), &ctx).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match source.poll(&mut Batch::new(), 100) {
            Err(error) => break error.to_string(),
            Ok(_) => assert!(Instant::now() < deadline, "no error for a missing stream"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(error, format!("nats_source events: stream `{stream}` does not exist on {URL}"));
}

#[test]
fn time_fields_follow_the_delimiter() {
    let spec = OperatorSpec {
        time_field: Some("$2".into()),
        delimiter: Some(",".into()),
        ..Default::default()
    };
    let field = TimeField::parse(&spec, "t").unwrap().unwrap();
    assert_eq!(field.time_of(b"a b,42,c"), Some(42));
    assert_eq!(field.time_of(b"a,x"), None);
    assert_eq!(field.time_of(b"a"), None);
    let spaces = TimeField::parse(
        &OperatorSpec {
            time_field: Some("$2".into()),
            ..Default::default()
        },
        "t",
    )
    .unwrap()
    .unwrap();
    assert_eq!(spaces.time_of(b"  a \t 7 "), Some(7));
    assert_eq!(spaces.time_of(b"a 7.5"), None);
    assert!(
        TimeField::parse(
            &OperatorSpec {
                time_field: Some("3".into()),
                ..Default::default()
            },
            "t"
        )
        .is_err()
    );
    assert_eq!(trim_newline(b"x\r\n"), b"x");
}

#[test]
fn tls_urls_are_refused_up_front() {
    let ctx = context(Path::new("/nonexistent"));
    let mut spec = source_spec("s", None, None);
    spec.url = Some("tls://127.0.0.1:4222".into());
    let error = NatsSource::new(&spec, &ctx).err().unwrap().to_string();
    assert_eq!(
        error,
        "nats_source events: `tls://127.0.0.1:4222`: only plain nats:// servers are supported"
    );
    spec.subject = Some("out".into());
    assert!(NatsSink::new(&spec, &ctx).is_err());
}
