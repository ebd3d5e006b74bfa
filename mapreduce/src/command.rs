//! Hadoop Streaming: a mapper, combiner or reducer that is a command. It runs as `sh -c CMD`
//! with the task's environment; one thread writes its input lines to its stdin while this
//! thread reads `key<TAB>value` lines from its stdout (so neither pipe can fill up and block
//! both sides), and a third keeps the tail of its stderr for the error message.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::process::{ChildStdin, Command, Stdio};

use super::error::{TaskError, TaskResult};
use super::functions::split_key_value;

/// The command's stdin, buffered.
pub type CommandInput = BufWriter<ChildStdin>;

/// Lines of stderr kept for the error of a failed command.
const STDERR_TAIL_LINES: usize = 20;

/// Turns an error writing to the command's stdin into the task's error.
pub fn stdin_error(source: io::Error) -> TaskError {
    TaskError::Stream {
        what: "write to the command's stdin".into(),
        source,
    }
}

/// Runs `command`, feeding its stdin with `feed` (on another thread) and passing each line of
/// its stdout, split into key and value, to `on_record`. A command that exits before reading
/// all its input is fine if it exits with status 0 (as `head` does); a non-zero exit is an
/// error with the status and the last lines of its stderr, which is also copied to ours.
pub fn run_streaming<F, O>(command: &str, env: &BTreeMap<String, String>, feed: F, mut on_record: O) -> TaskResult<()>
where
    F: FnOnce(&mut CommandInput) -> TaskResult<()> + Send,
    O: FnMut(&[u8], &[u8]) -> TaskResult<()>,
{
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| TaskError::CommandStart {
            command: command.to_owned(),
            source,
        })?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let mut input = BufWriter::with_capacity(256 * 1024, stdin);
            let fed = feed(&mut input).and_then(|()| input.flush().map_err(stdin_error));
            drop(input); // EOF for the command
            match fed {
                Err(TaskError::Stream { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
        });
        let stderr_tail = scope.spawn(move || {
            let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                eprintln!("{}", String::from_utf8_lossy(&line));
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&line[..line.len().min(1000)]).into_owned());
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });

        let mut stdout = BufReader::with_capacity(256 * 1024, stdout);
        let read = read_records(&mut stdout, &mut on_record);
        if read.is_err() {
            // Stop the command, and read what its pipeline (`sh`'s children, which stay in the
            // task's process group so the node agent can kill them) still writes, so none of
            // them blocks on a full pipe and every thread here ends.
            let _ = child.kill();
            let _ = io::copy(&mut stdout, &mut io::sink());
        }
        let status = child.wait().map_err(|source| TaskError::Stream {
            what: format!("wait for command `{command}`"),
            source,
        });
        let fed = writer.join().expect("the stdin writer does not panic");
        let stderr_tail = stderr_tail.join().expect("the stderr reader does not panic");
        read?;
        let status = status?;
        if !status.success() {
            return Err(TaskError::CommandFailed {
                command: command.to_owned(),
                status: status.to_string(),
                stderr_tail,
            });
        }
        fed
    })
}

fn read_records<O>(stdout: &mut impl BufRead, on_record: &mut O) -> TaskResult<()>
where
    O: FnMut(&[u8], &[u8]) -> TaskResult<()>,
{
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = stdout.read_until(b'\n', &mut line).map_err(|source| TaskError::Stream {
            what: "read the command's stdout".into(),
            source,
        })?;
        if read == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let (key, value) = split_key_value(&line);
        on_record(key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(command: &str, input: &str) -> TaskResult<Vec<(String, String)>> {
        let mut records = Vec::new();
        let input = input.to_owned();
        run_streaming(
            command,
            &BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
            move |stdin| stdin.write_all(input.as_bytes()).map_err(stdin_error),
            |key, value| {
                records.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
                Ok(())
            },
        )?;
        Ok(records)
    }

    #[test]
    fn lines_split_at_the_first_tab_and_env_is_passed() {
        let records = run(r#"cat; printf '%s\n' "$GREETING""#, "a\tb\tc\nplain\n").unwrap();
        let expected = [("a", "b\tc"), ("plain", ""), ("hi", "")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(records, expected);
    }

    #[test]
    fn large_input_and_output_do_not_deadlock() {
        let input = "x\n".repeat(1 << 20);
        assert_eq!(run("cat", &input).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_command_that_stops_reading_early_is_fine() {
        let input = "line\n".repeat(1 << 20);
        assert_eq!(run("head -n 2", &input).unwrap().len(), 2);
    }

    #[test]
    fn a_record_error_stops_a_whole_pipeline() {
        let mut seen = 0;
        let error = run_streaming(
            "yes 'k\tv' | head -n 1000000 | cat",
            &BTreeMap::new(),
            |stdin| stdin.write_all(&vec![b'x'; 1 << 20]).map_err(stdin_error),
            |_, _| {
                seen += 1;
                if seen == 10 {
                    Err(TaskError::InvalidParams("stop".into()))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(error.to_string().contains("stop"), "{error}");
    }

    #[test]
    fn a_failing_command_reports_its_status_and_stderr() {
        let message = run("echo first >&2; echo oops >&2; exit 3", "").unwrap_err().to_string();
        assert!(message.contains("exit status: 3") && message.contains("first\noops"), "{message}");
    }
}
