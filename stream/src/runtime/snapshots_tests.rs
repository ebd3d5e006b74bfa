use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::counts::RecordCounts;
use crate::state::StateReader;

/// A captured state that writes one group only once the test lets it.
struct Gated {
    release: Receiver<()>,
    bytes: &'static [u8],
}

impl CapturedState for Gated {
    fn write_to(self: Box<Self>, state: &mut StateWriter) -> Result<(), OperatorError> {
        self.release
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| OperatorError::failed("never released"))?;
        state.key_group(3, |out| out.extend_from_slice(self.bytes))
    }
}

fn ack(checkpoint: u64) -> Ack {
    Ack {
        instance: 7,
        checkpoint,
        state_file: None,
        state_bytes: 0,
        commit: None,
        duration_ms: 0,
        counts: RecordCounts {
            records_in: checkpoint * 10,
            ..RecordCounts::default()
        },
    }
}

fn gated_job(path: PathBuf, checkpoint: u64) -> (SnapshotJob, std::sync::mpsc::Sender<()>) {
    let (release, gate) = channel();
    // `<dir>/chk-<n>/<file>`: the job's checkpoint dir is `<dir>`.
    let root = path
        .parent()
        .and_then(std::path::Path::parent)
        .expect("a file in a checkpoint's directory")
        .to_owned();
    let job = SnapshotJob {
        location: Location::Dir(path),
        files: StateFiles {
            root: Location::Dir(root.clone()),
            s3: S3Settings::default(),
            scratch: root.join("scratch"),
        },
        state: Box::new(Gated {
            release: gate,
            bytes: b"state",
        }),
        ack: ack(checkpoint),
        aligned_at: Instant::now(),
    };
    (job, release)
}

fn next_ack(acks: &mut UnboundedReceiver<ToAm>) -> Option<Ack> {
    match acks.try_recv() {
        Ok(ToAm::Acked(ack)) => Some(ack),
        Ok(_) => panic!("only acks are sent"),
        Err(_) => None,
    }
}

#[test]
fn the_ack_leaves_only_once_the_file_is_written_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chk-1/count-7.state");
    let (to_am, mut acks) = unbounded_channel();
    let mut snapshots = SnapshotThread::new("test-snapshot".into(), to_am);
    let (job, release) = gated_job(path.clone(), 1);
    snapshots.submit(job).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(next_ack(&mut acks).is_none(), "no ack while the write is under way");
    assert!(!path.exists(), "the file appears only when complete");
    snapshots.check().unwrap();

    release.send(()).unwrap();
    snapshots.wait().unwrap();
    let ack = next_ack(&mut acks).expect("acked once written");
    assert_eq!(ack.state_file.as_deref(), Some(path.to_str().unwrap()));
    assert_eq!(ack.counts.records_in, 10, "the counts taken at the barrier travel unchanged");
    assert_eq!(ack.state_bytes, std::fs::metadata(&path).unwrap().len());
    let mut reader = StateReader::open(&path).unwrap();
    let mut groups = Vec::new();
    reader
        .read_key_groups(&(0..16), |group, bytes| {
            groups.push((group, bytes.to_vec()));
            Ok(())
        })
        .unwrap();
    assert_eq!(groups, vec![(3, b"state".to_vec())]);
}

#[test]
fn one_snapshot_in_flight_and_acks_in_checkpoint_order() {
    let dir = tempfile::tempdir().unwrap();
    let (to_am, mut acks) = unbounded_channel();
    let mut snapshots = SnapshotThread::new("test-snapshot".into(), to_am);
    let (first, release_first) = gated_job(dir.path().join("chk-1/x.state"), 1);
    let (second, release_second) = gated_job(dir.path().join("chk-2/x.state"), 2);
    snapshots.submit(first).unwrap();

    // The second submit waits for the first write: it returns only after the release.
    let (submitted_tx, submitted) = channel();
    let submitter = std::thread::spawn(move || {
        snapshots.submit(second).unwrap();
        submitted_tx.send(()).unwrap();
        snapshots
    });
    assert!(
        submitted.recv_timeout(Duration::from_millis(100)).is_err(),
        "a second snapshot must wait while one is in flight"
    );
    release_first.send(()).unwrap();
    submitted
        .recv_timeout(Duration::from_secs(10))
        .expect("submitted after the first write");
    release_second.send(()).unwrap();
    let mut snapshots = submitter.join().unwrap();
    snapshots.wait().unwrap();
    let order: Vec<u64> = std::iter::from_fn(|| next_ack(&mut acks)).map(|ack| ack.checkpoint).collect();
    assert_eq!(order, vec![1, 2]);
}

#[test]
fn a_failed_write_fails_the_instance_and_sends_no_ack() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the checkpoint's directory should be: creating the snapshot fails.
    std::fs::write(dir.path().join("chk-1"), b"in the way").unwrap();
    let (to_am, mut acks) = unbounded_channel();
    let mut snapshots = SnapshotThread::new("test-snapshot".into(), to_am);
    let (job, release) = gated_job(dir.path().join("chk-1/x.state"), 1);
    drop(release);
    snapshots.submit(job).unwrap();
    let error = snapshots.wait().expect_err("the write fails");
    assert!(matches!(error, OperatorError::Io(_)), "{error}");
    assert!(next_ack(&mut acks).is_none());

    // The error is reported once; a later snapshot still works.
    let (job, release) = gated_job(dir.path().join("chk-2/x.state"), 2);
    release.send(()).unwrap();
    snapshots.submit(job).unwrap();
    snapshots.wait().unwrap();
    assert_eq!(next_ack(&mut acks).map(|ack| ack.checkpoint), Some(2));
}

#[test]
fn an_error_is_seen_by_check_without_waiting_and_drop_lets_the_write_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (to_am, mut acks) = unbounded_channel();
    let mut snapshots = SnapshotThread::new("test-snapshot".into(), to_am.clone());
    let (job, release) = gated_job(dir.path().join("chk-1/x.state"), 1);
    drop(release);
    snapshots.submit(job).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match snapshots.check() {
            Err(error) => {
                assert!(error.to_string().contains("never released"), "{error}");
                break;
            }
            Ok(()) => assert!(Instant::now() < deadline, "check never saw the failure"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut snapshots = SnapshotThread::new("test-snapshot".into(), to_am);
    let (job, release) = gated_job(dir.path().join("chk-2/x.state"), 2);
    snapshots.submit(job).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
    });
    drop(snapshots);
    releaser.join().unwrap();
    assert_eq!(next_ack(&mut acks).map(|ack| ack.checkpoint), Some(2), "drop waited for the ack");
}
