//! Frames over QUIC streams: [`FrameReader`] buffers a `RecvStream` and yields whole
//! frames; [`write_frame`] encodes and sends one.

use std::net::SocketAddr;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::NetError;
use crate::proto::codec::{frame_len_within, HEADER_LEN};
use crate::proto::{decode_frame, encode_frame};

/// Reads frames from a byte stream. Cancel-safe: every partial read is kept in the
/// buffer, so it can sit in a `select!`.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read and not yet returned as frames.
    buf: Vec<u8>,
    /// The peer, named in errors.
    peer: SocketAddr,
    /// Largest frame body accepted now (small until the peer is authenticated).
    max: usize,
}

/// Bytes asked of the stream per read when the frame size is not yet known.
const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`; `peer` is used in errors.
    pub fn new(inner: R, peer: SocketAddr) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            peer,
            max: crate::proto::MAX_FRAME_LEN,
        }
    }

    /// Bounds the frames accepted from now on to `max` body bytes (at most
    /// [`crate::proto::MAX_FRAME_LEN`]); reads never buffer more than one frame.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max.min(crate::proto::MAX_FRAME_LEN);
    }

    /// The next whole frame (header included), or `None` at a clean end of stream.
    /// An oversized length prefix is refused before its body is read.
    pub async fn read_raw(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        loop {
            let want = match frame_len_within(&self.buf, self.max) {
                Ok(Some(total)) if self.buf.len() >= total => {
                    let rest = self.buf.split_off(total);
                    return Ok(Some(std::mem::replace(&mut self.buf, rest)));
                }
                Ok(Some(total)) => total - self.buf.len(),
                Ok(None) => HEADER_LEN - self.buf.len(),
                Err(source) => {
                    return Err(NetError::Decode {
                        peer: self.peer,
                        source,
                    })
                }
            };
            // `read_buf` writes into spare capacity and only then grows the length, so
            // cancelling this future mid-read leaves the buffer intact.
            self.buf.reserve(want.min(1 << 20));
            let n =
                self.inner
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| NetError::ConnectionLost {
                        peer: self.peer,
                        detail: e.to_string(),
                    })?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(NetError::Protocol {
                    peer: self.peer,
                    detail: format!(
                        "stream ended inside a frame ({} bytes buffered)",
                        self.buf.len()
                    ),
                });
            }
        }
    }

    /// The next decoded message, or `None` at a clean end of stream.
    pub async fn read<M: DeserializeOwned>(&mut self) -> Result<Option<M>, NetError> {
        let Some(frame) = self.read_raw().await? else {
            return Ok(None);
        };
        decode_raw(&frame, self.peer).map(Some)
    }
}

/// Decodes a whole frame returned by [`FrameReader::read_raw`].
pub fn decode_raw<M: DeserializeOwned>(frame: &[u8], peer: SocketAddr) -> Result<M, NetError> {
    match decode_frame::<M>(frame) {
        Ok(Some((msg, _))) => Ok(msg),
        Ok(None) => Err(NetError::Protocol {
            peer,
            detail: "incomplete frame".into(),
        }),
        Err(source) => Err(NetError::Decode { peer, source }),
    }
}

/// Encodes `msg` into `scratch` (reused across calls) and writes it to `send`.
pub async fn write_frame<M: Serialize>(
    send: &mut quinn::SendStream,
    msg: &M,
    scratch: &mut Vec<u8>,
    peer: SocketAddr,
) -> Result<(), NetError> {
    scratch.clear();
    encode_frame(msg, scratch).map_err(|source| NetError::Encode { peer, source })?;
    send.write_all(scratch)
        .await
        .map_err(|e| NetError::ConnectionLost {
            peer,
            detail: e.to_string(),
        })
}

/// Finishes `send` and waits (bounded) until the peer has received everything, so a
/// following connection close does not discard the last frames.
pub async fn finish(send: &mut quinn::SendStream, within: std::time::Duration) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(within, send.stopped()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ToLeader;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_survive_cancellation_mid_frame() -> Result<(), Box<dyn std::error::Error>> {
        // A frame dribbled in 3-byte pieces while the reader is cancelled by a timer
        // over and over: it must still come out whole and correct.
        let (mut tx, rx) = tokio::io::duplex(64);
        let msg = ToLeader::Result {
            shard_id: 1,
            index: 2,
            identity: [3; 32],
            payload: (0..200u8).collect(),
        };
        let mut frame = Vec::new();
        encode_frame(&msg, &mut frame)?;
        frame.extend(frame.clone());
        let writer = tokio::spawn(async move {
            for piece in frame.chunks(3) {
                tx.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut reader = FrameReader::new(rx, "127.0.0.1:1".parse()?);
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "frames never arrived"
            );
            tokio::select! {
                r = reader.read::<ToLeader>() => got.push(r?.ok_or("early end")?),
                _ = tokio::time::sleep(Duration::from_micros(300)) => {}
            }
        }
        writer.await?;
        assert_eq!(got, vec![msg.clone(), msg]);
        assert!(reader.read::<ToLeader>().await?.is_none());
        Ok(())
    }
}
