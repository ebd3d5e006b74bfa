//! The `tcp` source: lines read from a TCP server at `address`.
//!
//! A background thread connects, reads lines and hands them over a bounded channel (so a slow
//! pipeline pushes back on the socket instead of buffering without limit); `poll` only takes
//! from the channel and never blocks. On a refused connection or a closed one the thread
//! reconnects with exponential backoff (100 ms to 5 s). Not replayable: snapshots are empty,
//! and lines in flight at a failure are lost (at-most-once). Time as the file source:
//! `time_field` or the time the line was read. A trailing `\r` is dropped.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use spindle_protocol::OperatorSpec;

use super::file_source::{LineTime, now_ms};
use crate::operator::{InstanceContext, OperatorError, Source, SourceStatus};
use crate::record::Batch;

/// Lines buffered between the reader thread and `poll`.
const CHANNEL_LINES: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A `tcp` source instance.
pub struct TcpSource {
    lines: Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    time: LineTime,
    bad: u64,
}

impl TcpSource {
    pub fn new(spec: &OperatorSpec, _context: &InstanceContext) -> Result<TcpSource, OperatorError> {
        let address = spec
            .address
            .clone()
            .ok_or_else(|| OperatorError::failed(format!("operator {}: tcp source needs `address`", spec.name)))?;
        let time = LineTime::from_spec(spec)?;
        let (sender, lines) = sync_channel(CHANNEL_LINES);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("tcp-source-{}", spec.name))
            .spawn(move || read_lines(&address, &sender, &thread_stop))?;
        Ok(TcpSource { lines, stop, time, bad: 0 })
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reader thread: connect, read lines, reconnect; ends when `stop` is set or `poll`'s side
/// of the channel is gone.
fn read_lines(address: &str, sender: &SyncSender<Vec<u8>>, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let stream = match connect(address) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%address, %error, "tcp source: cannot connect; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
            continue;
        }
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut line = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // A timeout keeps what was read of the line in `line`; the next call appends.
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) if line.last() == Some(&b'\n') => {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if sender.send(std::mem::take(&mut line)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(error) => {
                    tracing::debug!(%address, %error, "tcp source: connection lost; reconnecting");
                    break;
                }
            }
        }
        // The server closed: a last line without its newline is still a line.
        if !line.is_empty() && sender.send(line).is_err() {
            return;
        }
    }
}

/// Connects to the first address `address` resolves to, with a timeout (a plain connect to an
/// unreachable host can hang for minutes, and the thread must notice `stop`).
fn connect(address: &str) -> std::io::Result<TcpStream> {
    let target = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{address} resolves to no address")))?;
    TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
}

impl Source for TcpSource {
    /// Lines skipped because their time field is not an integer.
    fn bad_records(&self) -> u64 {
        self.bad
    }

    fn poll(&mut self, out: &mut Batch, max_records: usize) -> Result<SourceStatus, OperatorError> {
        let now = now_ms();
        let mut emitted = 0;
        while emitted < max_records {
            match self.lines.try_recv() {
                Ok(line) => match self.time.time(&line, now) {
                    Some(time) => {
                        out.push(time, b"", &line);
                        emitted += 1;
                    }
                    None => self.bad += 1,
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(OperatorError::failed("tcp source: the reader thread ended")),
            }
        }
        Ok(if emitted > 0 { SourceStatus::Ready } else { SourceStatus::Idle })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _state: &[u8]) -> Result<(), OperatorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Instant;

    use spindle_protocol::OperatorKind;

    use super::*;
    use crate::ops::test_context;

    fn poll_until(source: &mut TcpSource, out: &mut Batch, count: usize) {
        let start = Instant::now();
        while out.len() < count {
            assert!(start.elapsed() < Duration::from_secs(10), "only {} of {count} lines", out.len());
            if source.poll(out, 100).unwrap() == SourceStatus::Idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn lines_arrive_across_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = OperatorSpec {
            name: "socket".into(),
            kind: Some(OperatorKind::TcpSource),
            address: Some(listener.local_addr().unwrap().to_string()),
            time_field: Some("$2".into()),
            ..OperatorSpec::default()
        };
        let mut source = TcpSource::new(&spec, &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        assert_eq!(source.poll(&mut out, 10).unwrap(), SourceStatus::Idle);
        let (mut connection, _) = listener.accept().unwrap();
        connection.write_all(b"a 10\r\nb x\nc ").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        connection.write_all(b"30\n").unwrap();
        drop(connection);
        let (mut second, _) = listener.accept().unwrap();
        second.write_all(b"d 40").unwrap();
        drop(second);
        poll_until(&mut source, &mut out, 3);
        let got: Vec<(i64, Vec<u8>)> = out.iter().map(|record| (record.time, record.value.to_vec())).collect();
        assert_eq!(got, vec![(10, b"a 10".to_vec()), (30, b"c 30".to_vec()), (40, b"d 40".to_vec())]);
        assert_eq!(source.bad_records(), 1);
        assert!(source.snapshot().unwrap().is_empty());
    }
}
