//! Frames of the data plane and the control channel.
//!
//! Every frame is `length: u32 LE` (of what follows), `tag: u8`, payload. Data connections
//! carry batches, watermarks, barriers and ends from sender to receiver, and credits back;
//! the control channel between a worker and its AM carries JSON messages (tag `JSON`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::record::{Batch, EventTime};

/// Largest frame accepted: a guard against garbage on a socket, well above any batch we send.
pub const MAX_FRAME: usize = 64 << 20;

pub const TAG_BATCH: u8 = 0;
pub const TAG_WATERMARK: u8 = 1;
pub const TAG_BARRIER: u8 = 2;
pub const TAG_END: u8 = 3;
pub const TAG_CREDIT: u8 = 4;
pub const TAG_JSON: u8 = 5;

/// A unique instance of an operator within a job (never reused, even across AM attempts).
pub type InstanceId = u64;

/// What a sender tells a receiver when it opens a data connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHello {
    /// The app's shuffle token: only the job's own processes may feed its instances.
    pub token: String,
    pub from: InstanceId,
    pub to: InstanceId,
    /// A connection opened for a rescale carries only data after barrier `starts_after`.
    pub starts_after: Option<u64>,
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataHelloReply {
    /// Send up to `credits` batches before waiting for more.
    Accepted {
        credits: u32,
    },
    /// The instance is not deployed here (yet): try again shortly.
    UnknownInstance,
    Refused {
        reason: String,
    },
}

/// An event on a data connection, sender to receiver.
#[derive(Debug, Clone)]
pub enum DataEvent {
    Batch(Batch),
    Watermark(EventTime),
    Barrier(u64),
    /// No more from this sender: `last` when its input ended for good (end of stream), not
    /// when the sender was retired by a rescale.
    End {
        last: bool,
    },
}

pub fn encode_event(event: &DataEvent, out: &mut Vec<u8>) {
    match event {
        DataEvent::Batch(batch) => {
            header(out, TAG_BATCH, batch.byte_len());
            out.extend_from_slice(batch.as_bytes());
        }
        DataEvent::Watermark(watermark) => {
            header(out, TAG_WATERMARK, 8);
            out.extend_from_slice(&watermark.to_le_bytes());
        }
        DataEvent::Barrier(checkpoint) => {
            header(out, TAG_BARRIER, 8);
            out.extend_from_slice(&checkpoint.to_le_bytes());
        }
        DataEvent::End { last } => {
            header(out, TAG_END, 1);
            out.push(u8::from(*last));
        }
    }
}

/// The framing in front of a batch's bytes (so a sender can write the batch without copying
/// it into a frame first).
pub fn batch_header(batch_bytes: usize) -> [u8; 5] {
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&((batch_bytes + 1) as u32).to_le_bytes());
    head[4] = TAG_BATCH;
    head
}

fn header(out: &mut Vec<u8>, tag: u8, payload: usize) {
    out.extend_from_slice(&((payload + 1) as u32).to_le_bytes());
    out.push(tag);
}

/// Reads one frame: its tag and payload. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    read_frame_at_most(reader, MAX_FRAME).await
}

/// `read_frame` refusing frames over `max_bytes`: what a peer may send before it has
/// authenticated must not make the receiver allocate 64 MiB.
pub async fn read_frame_at_most<R: AsyncRead + Unpin>(reader: &mut R, max_bytes: usize) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length == 0 || length > max_bytes {
        return Err(invalid(format!("frame of {length} bytes (at most {max_bytes} here)")));
    }
    let mut tag = [0u8; 1];
    reader.read_exact(&mut tag).await?;
    let mut payload = vec![0u8; length - 1];
    reader.read_exact(&mut payload).await?;
    Ok(Some((tag[0], payload)))
}

pub fn decode_event(tag: u8, payload: Vec<u8>) -> std::io::Result<DataEvent> {
    let fixed = |payload: &[u8]| -> std::io::Result<[u8; 8]> { payload.try_into().map_err(|_| invalid("control frame length".into())) };
    Ok(match tag {
        TAG_BATCH => DataEvent::Batch(Batch::from_bytes(payload).map_err(|error| invalid(error.to_string()))?),
        TAG_WATERMARK => DataEvent::Watermark(i64::from_le_bytes(fixed(&payload)?)),
        TAG_BARRIER => DataEvent::Barrier(u64::from_le_bytes(fixed(&payload)?)),
        TAG_END => DataEvent::End {
            last: payload.first() == Some(&1),
        },
        other => return Err(invalid(format!("unexpected frame tag {other}"))),
    })
}

/// Writes a JSON message frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(writer: &mut W, message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(|error| invalid(error.to_string()))?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    header(&mut frame, TAG_JSON, body.len());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads a JSON message frame; `Ok(None)` at a clean end.
pub async fn read_json<R: AsyncRead + Unpin, T: DeserializeOwned>(reader: &mut R) -> std::io::Result<Option<T>> {
    read_json_at_most(reader, MAX_FRAME).await
}

/// `read_json` of a frame of at most `max_bytes`.
pub async fn read_json_at_most<R: AsyncRead + Unpin, T: DeserializeOwned>(reader: &mut R, max_bytes: usize) -> std::io::Result<Option<T>> {
    match read_frame_at_most(reader, max_bytes).await? {
        None => Ok(None),
        Some((TAG_JSON, payload)) => serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|error| invalid(error.to_string())),
        Some((tag, _)) => Err(invalid(format!("expected a JSON frame, got tag {tag}"))),
    }
}

pub fn credit_frame(credits: u32) -> [u8; 9] {
    let mut frame = [0u8; 9];
    frame[..4].copy_from_slice(&5u32.to_le_bytes());
    frame[4] = TAG_CREDIT;
    frame[5..].copy_from_slice(&credits.to_le_bytes());
    frame
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_round_trip() {
        let mut batch = Batch::new();
        batch.push(3, b"k", b"k\t1");
        let mut bytes = Vec::new();
        for event in [
            DataEvent::Batch(batch.clone()),
            DataEvent::Watermark(-5),
            DataEvent::Barrier(7),
            DataEvent::End { last: true },
        ] {
            encode_event(&event, &mut bytes);
        }
        let mut reader = &bytes[..];
        let mut decoded = Vec::new();
        while let Some((tag, payload)) = read_frame(&mut reader).await.unwrap() {
            decoded.push(decode_event(tag, payload).unwrap());
        }
        assert!(matches!(&decoded[0], DataEvent::Batch(b) if *b == batch));
        assert!(matches!(decoded[1], DataEvent::Watermark(-5)));
        assert!(matches!(decoded[2], DataEvent::Barrier(7)));
        assert!(matches!(decoded[3], DataEvent::End { last: true }));

        // A sender writes a batch as its framing then its bytes: the same frame.
        let mut framed = batch_header(batch.byte_len()).to_vec();
        framed.extend_from_slice(batch.as_bytes());
        let mut encoded = Vec::new();
        encode_event(&DataEvent::Batch(batch), &mut encoded);
        assert_eq!(framed, encoded);
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_before_allocating() {
        let mut claimed_huge: &[u8] = &[0, 0, 0x10, 0, TAG_JSON];
        let err = read_frame_at_most(&mut claimed_huge, 4096).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("at most 4096"), "{err}");
    }
}
