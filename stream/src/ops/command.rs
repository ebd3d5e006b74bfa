//! `map` with a `command`: any executable reading lines on stdin and writing lines on stdout.
//!
//! Semantics (a program's outputs are not aligned with its inputs, so this is all one can
//! promise): each input record's value is written to the program as a line; each line the
//! program prints becomes a record with an empty key and the time of the latest input record,
//! emitted at the next `process` or watermark after it arrived. Watermarks flush the program's
//! stdin (so a slow stream is not held in a buffer). A checkpoint flushes stdin and waits until
//! the program has been quiet for 200 ms (at most 2 s), keeping what it printed for the next
//! call: output the program produces later than that for earlier input is not covered by that
//! checkpoint, so `command` maps are exactly-once only for programs that answer promptly.
//! `finish` closes stdin and waits for the program to end. A program that exits early, or
//! exits non-zero at the end, fails the operator with the tail of its stderr.
//!
//! Deadlock freedom: a reader thread drains the program's stdout into an unbounded channel, so
//! the program can always write, hence always reads its stdin, so our writes always progress.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_protocol::OperatorSpec;

use crate::operator::{InstanceContext, Operator, OperatorError};
use crate::record::{Batch, EventTime, Record};

const QUIET: Duration = Duration::from_millis(200);
const MOST_WAIT: Duration = Duration::from_secs(2);
const STDERR_TAIL: usize = 4096;

/// A `map` instance running a program.
pub struct CommandMap {
    argv: Vec<String>,
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    lines: Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Lines received while no output batch was at hand (during a snapshot).
    pending: Vec<Vec<u8>>,
    latest_time: EventTime,
}

impl CommandMap {
    pub fn new(spec: &OperatorSpec, context: &InstanceContext) -> Result<CommandMap, OperatorError> {
        let argv = spec
            .command
            .clone()
            .filter(|argv| !argv.is_empty())
            .ok_or_else(|| OperatorError::failed(format!("operator {}: `command` needs at least the program", spec.name)))?;
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(&context.env)
            .current_dir(&context.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| OperatorError::failed(format!("operator {}: cannot run {:?}: {error}", spec.name, argv[0])))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let (sender, lines) = channel();
        std::thread::Builder::new()
            .name(format!("command-out-{}", spec.name))
            .spawn(move || {
                let mut reader = BufReader::with_capacity(1 << 16, stdout);
                loop {
                    let mut line = Vec::new();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if line.last() == Some(&b'\n') {
                                line.pop();
                            }
                            if sender.send(line).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr.clone();
        std::thread::Builder::new()
            .name(format!("command-err-{}", spec.name))
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(read) = stderr_pipe.read(&mut chunk) {
                    if read == 0 {
                        return;
                    }
                    let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    tail.extend_from_slice(&chunk[..read]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL);
                    tail.drain(..excess);
                }
            })?;
        let stdin = BufWriter::with_capacity(1 << 16, child.stdin.take().expect("piped"));
        Ok(CommandMap {
            argv,
            child,
            stdin: Some(stdin),
            lines,
            stderr,
            pending: Vec::new(),
            latest_time: EventTime::MIN,
        })
    }

    /// The error for a program that ended (or broke its pipe): its status and stderr tail.
    fn died(&mut self, what: &str) -> OperatorError {
        // A program that closed a pipe may still be running: give it a second to end, then end it.
        let deadline = Instant::now() + Duration::from_secs(1);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        // Then give the stderr thread a moment to collect the last words.
        let status = self
            .child
            .wait()
            .map(|status| status.to_string())
            .unwrap_or_else(|error| error.to_string());
        std::thread::sleep(Duration::from_millis(20));
        let tail = self.stderr.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        OperatorError::failed(format!(
            "command {:?} {what} ({status}); stderr: {}",
            self.argv,
            String::from_utf8_lossy(&tail).trim_end()
        ))
    }

    /// Emits what the program printed so far.
    fn drain(&mut self, out: &mut Batch) -> Result<(), OperatorError> {
        for line in self.pending.drain(..) {
            out.push(self.latest_time, b"", &line);
        }
        loop {
            match self.lines.try_recv() {
                Ok(line) => out.push(self.latest_time, b"", &line),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) if self.stdin.is_some() => return Err(self.died("closed its output early")),
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn flush(&mut self) -> Result<(), OperatorError> {
        if let Some(stdin) = self.stdin.as_mut()
            && stdin.flush().is_err()
        {
            return Err(self.died("stopped reading its input"));
        }
        Ok(())
    }
}

impl Drop for CommandMap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator for CommandMap {
    fn process(&mut self, record: Record<'_>, _key_group: u32, out: &mut Batch) -> Result<(), OperatorError> {
        self.latest_time = self.latest_time.max(record.time);
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| OperatorError::failed("command map: input after finish"))?;
        if stdin.write_all(record.value).and_then(|()| stdin.write_all(b"\n")).is_err() {
            return Err(self.died("stopped reading its input"));
        }
        self.drain(out)
    }

    fn on_watermark(&mut self, _watermark: EventTime, out: &mut Batch) -> Result<(), OperatorError> {
        self.flush()?;
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Batch) -> Result<(), OperatorError> {
        self.flush()?;
        self.stdin = None;
        self.drain(out)?;
        // The program ends its output when it is done: wait for that, then for its status.
        while let Ok(line) = self.lines.recv() {
            out.push(self.latest_time, b"", &line);
        }
        let status = self.child.wait()?;
        if !status.success() {
            return Err(self.died("failed"));
        }
        Ok(())
    }

    fn snapshot(&mut self, _state: &mut crate::state::StateWriter) -> Result<(), OperatorError> {
        self.flush()?;
        let start = Instant::now();
        while start.elapsed() < MOST_WAIT {
            match self.lines.recv_timeout(QUIET) {
                Ok(line) => self.pending.push(line),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err(self.died("closed its output early")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use spindle_protocol::OperatorKind;

    use super::*;
    use crate::ops::test_context;

    fn spec(argv: &[&str]) -> OperatorSpec {
        OperatorSpec {
            name: "upper".into(),
            kind: Some(OperatorKind::Map),
            command: Some(argv.iter().map(|arg| arg.to_string()).collect()),
            ..OperatorSpec::default()
        }
    }

    fn values(out: &Batch) -> Vec<String> {
        out.iter().map(|record| String::from_utf8(record.value.to_vec()).unwrap()).collect()
    }

    #[test]
    fn lines_go_through_the_program_without_deadlock() {
        let mut context = test_context(0, 1);
        context.env.insert("SUFFIX".into(), "!".into());
        let mut map = CommandMap::new(&spec(&["sh", "-c", "while read line; do echo \"$line$SUFFIX\"; done"]), &context).unwrap();
        let mut out = Batch::new();
        // Far more than a pipe buffer holds, with nobody draining between writes but us.
        let line = "x".repeat(1000);
        for time in 0..2000 {
            map.process(
                Record {
                    time,
                    key: b"k",
                    value: line.as_bytes(),
                },
                0,
                &mut out,
            )
            .unwrap();
        }
        map.finish(&mut out).unwrap();
        assert_eq!(out.len(), 2000);
        assert!(values(&out).iter().all(|value| value.len() == 1001 && value.ends_with('!')));
        assert!(out.iter().all(|record| record.key.is_empty()));
        assert_eq!(out.iter().last().unwrap().time, 1999);
    }

    #[test]
    fn a_snapshot_waits_for_prompt_output() {
        let mut map = CommandMap::new(&spec(&["cat"]), &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        map.process(
            Record {
                time: 5,
                key: b"",
                value: b"hello",
            },
            0,
            &mut out,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut writer = crate::state::StateWriter::create(&dir.path().join("s")).unwrap();
        map.snapshot(&mut writer).unwrap();
        map.on_watermark(10, &mut out).unwrap();
        assert_eq!(values(&out), vec!["hello"]);
    }

    #[test]
    fn a_dying_program_fails_with_its_stderr() {
        let mut map = CommandMap::new(&spec(&["sh", "-c", "echo boom >&2; exit 3"]), &test_context(0, 1)).unwrap();
        let mut out = Batch::new();
        std::thread::sleep(Duration::from_millis(100));
        let mut result = Ok(());
        for _ in 0..100 {
            result = map
                .process(
                    Record {
                        time: 0,
                        key: b"",
                        value: b"x",
                    },
                    0,
                    &mut out,
                )
                .and_then(|()| map.on_watermark(0, &mut out));
            if result.is_err() {
                break;
            }
        }
        let error = result.unwrap_err().to_string();
        assert!(error.contains("boom") && error.contains("3"), "{error}");
        assert!(CommandMap::new(&spec(&["/nonexistent/program"]), &test_context(0, 1)).is_err());
    }
}
