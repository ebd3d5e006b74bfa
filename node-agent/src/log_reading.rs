//! Reading a container's log for the API: from an offset (all, the last N bytes, the last N
//! lines) to the end, or following it (what is appended is sent as it comes) until the
//! container has ended. The file was opened by `served_file`; this only reads it.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use spindle_protocol::{ContainerId, ContainerState, LogOptions};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use crate::manager::ContainerManager;

/// How often a followed log is checked for new bytes: the user sees a line within this of its
/// being written.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const CHUNK: usize = 64 * 1024;

/// The answer's body: `file` from where `options` say, and on while the container runs if it
/// is followed.
pub(crate) async fn log_body(
    mut file: File,
    options: &LogOptions,
    manager: Arc<ContainerManager>,
    container_id: ContainerId,
) -> std::io::Result<Body> {
    let length = file.metadata().await?.len();
    let mut start = options.tail_bytes.map_or(0, |bytes| length.saturating_sub(bytes));
    if let Some(lines) = options.tail_lines {
        start = start.max(last_lines_start(&mut file, length, lines).await?);
    }
    file.seek(SeekFrom::Start(start)).await?;
    if !options.follow {
        return Ok(Body::from_stream(ReaderStream::new(file)));
    }
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(follow(file, sender, manager, container_id));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok(Body::from_stream(stream))
}

/// Sends what the file holds and what is appended, until the container has ended and all it
/// wrote was sent, or the reader has gone.
async fn follow(mut file: File, sender: mpsc::Sender<std::io::Result<Bytes>>, manager: Arc<ContainerManager>, container_id: ContainerId) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        // Read whether it ended before reading to the end: what it wrote before it ended is sent.
        let ended = manager
            .status(&container_id)
            .map_or(true, |status| status.state == ContainerState::Complete);
        loop {
            match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => {
                    if sender.send(Ok(Bytes::copy_from_slice(&buffer[..read]))).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
        if ended {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = sender.closed() => return,
        }
    }
}

/// The offset where the last `lines` lines of the file's first `length` bytes begin (a last
/// line without its newline counts), reading backwards a chunk at a time.
async fn last_lines_start(file: &mut File, length: u64, lines: u64) -> std::io::Result<u64> {
    if lines == 0 {
        return Ok(length);
    }
    let mut buffer = vec![0u8; CHUNK];
    let mut end = length;
    let mut newlines = 0u64;
    // A newline that ends the file ends the last line; it does not start another.
    let mut skip_last_newline = true;
    while end > 0 {
        let begin = end.saturating_sub(CHUNK as u64);
        let chunk = &mut buffer[..(end - begin) as usize];
        file.seek(SeekFrom::Start(begin)).await?;
        file.read_exact(chunk).await?;
        for (index, byte) in chunk.iter().enumerate().rev() {
            if *byte != b'\n' {
                skip_last_newline = false;
                continue;
            }
            if skip_last_newline {
                skip_last_newline = false;
                continue;
            }
            newlines += 1;
            if newlines == lines {
                return Ok(begin + index as u64 + 1);
            }
        }
        end = begin;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start_of_last(text: &str, lines: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, text).unwrap();
        let mut file = File::open(&path).await.unwrap();
        let start = last_lines_start(&mut file, text.len() as u64, lines).await.unwrap();
        text[start as usize..].to_owned()
    }

    #[tokio::test]
    async fn the_last_lines_are_found_with_or_without_a_final_newline() {
        assert_eq!(start_of_last("a\nb\nc\n", 2).await, "b\nc\n");
        assert_eq!(start_of_last("a\nb\nc", 2).await, "b\nc");
        assert_eq!(start_of_last("a\nb\nc\n", 10).await, "a\nb\nc\n");
        assert_eq!(start_of_last("a\nb\nc\n", 0).await, "");
        assert_eq!(start_of_last("", 3).await, "");
        assert_eq!(start_of_last("\n\n\n", 1).await, "\n");
    }

    #[tokio::test]
    async fn lines_longer_than_a_chunk_are_found_across_chunks() {
        let long = "x".repeat(CHUNK * 2 + 17);
        let text = format!("first\n{long}\nlast\n");
        assert_eq!(start_of_last(&text, 2).await, format!("{long}\nlast\n"));
        assert_eq!(start_of_last(&text, 3).await, text);
    }
}
