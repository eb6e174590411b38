//! Frames: a 4-byte big-endian body length, then the bincode body.
//!
//! Decoding is incremental (mini-redis style): [`decode_frame`] on a buffer that does
//! not yet hold a whole frame returns `Ok(None)`, and the caller reads more bytes.
//! A length prefix above the bound is refused before any of the body is buffered, so
//! a peer cannot make us allocate more than [`MAX_FRAME_LEN`].

use serde::{de::DeserializeOwned, Serialize};

/// Largest body accepted or produced: 64 MiB. An ImageNet result (a 299×299 u32
/// removal-step map plus confidence history) is about 0.4 MB, so this leaves room for
/// large payloads while bounding what one peer can make the leader buffer.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Largest frame a peer may send before it is authenticated (its `Hello` or
/// `StatusQuery`): 64 KiB, so an unauthenticated peer cannot make the leader buffer
/// more than this per connection.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 64 << 10;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be decoded. The connection that sent it is closed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the bound.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame body ({len} bytes): {detail}")]
    Malformed {
        /// Body length.
        len: usize,
        /// The decoder's explanation.
        detail: String,
    },
    /// The body decoded but did not use all its bytes: the peer speaks something else.
    #[error("frame body has {trailing} trailing bytes after a valid message")]
    TrailingBytes {
        /// Unused bytes.
        trailing: usize,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The message is larger than [`MAX_FRAME_LEN`]; the peer would refuse it.
    #[error("message of {len} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// Encoded body length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// The serializer failed (should not happen for our types).
    #[error("cannot encode message: {0}")]
    Bincode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Appends one frame holding `msg` to `dst`. On error `dst` is left as it was.
pub fn encode_frame<M: Serialize>(msg: &M, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.extend_from_slice(&[0u8; HEADER_LEN]);
    match bincode::serde::encode_into_std_write(msg, dst, config()) {
        Ok(len) if len <= MAX_FRAME_LEN => {
            // `len` fits in u32 because MAX_FRAME_LEN does.
            dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
            Ok(())
        }
        Ok(len) => {
            dst.truncate(start);
            Err(EncodeError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            })
        }
        Err(e) => {
            dst.truncate(start);
            Err(EncodeError::Bincode(e.to_string()))
        }
    }
}

/// Length of the frame at the start of `buf` (header included), `Ok(None)` if the
/// header is incomplete; refuses oversized prefixes as soon as the header is in.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    frame_len_within(buf, MAX_FRAME_LEN)
}

/// [`frame_len`] with a tighter bound `max` (at most [`MAX_FRAME_LEN`]), e.g.
/// [`MAX_HANDSHAKE_FRAME_LEN`] before authentication.
pub fn frame_len_within(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let max = max.min(MAX_FRAME_LEN);
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Decodes the frame at the start of `buf`: `Ok(Some((msg, consumed)))` for a whole
/// frame, `Ok(None)` when more bytes are needed, `Err` for a frame that can never be
/// valid.
pub fn decode_frame<M: DeserializeOwned>(buf: &[u8]) -> Result<Option<(M, usize)>, DecodeError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let (msg, used) = bincode::serde::decode_from_slice::<M, _>(body, config()).map_err(|e| {
        DecodeError::Malformed {
            len: body.len(),
            detail: e.to_string(),
        }
    })?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes {
            trailing: body.len() - used,
        });
    }
    Ok(Some((msg, total)))
}

/// Reads `(variant, protocol_version)` from the start of a frame body that failed to
/// decode, so a peer of another version is told "version N" rather than "malformed".
/// `Hello` is variant 0 and `StatusQuery` variant 1; both start with the version.
pub fn peek_version(frame: &[u8]) -> Option<u32> {
    let body = frame.get(HEADER_LEN..)?;
    let ((variant, version), _) =
        bincode::serde::decode_from_slice::<(u32, u32), _>(body, config()).ok()?;
    (variant <= 1).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ToLeader, ToWorker, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn frame_of(msg: &ToLeader) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(msg, &mut buf).expect("encodes");
        buf
    }

    #[test]
    fn roundtrip_and_partial_frames_are_none() {
        let msg = ToLeader::Result {
            shard_id: 7,
            index: 123_456,
            identity: [9; 32],
            payload: vec![1, 2, 3, 250],
        };
        let buf = frame_of(&msg);
        // Header says body length; the body is bincode's varint encoding: variant 3
        // (1 byte), shard 7 (1), index 123456 (0xFC + u32 = 5), 32 identity bytes,
        // len 4 (1), 4 bytes.
        assert_eq!(&buf[..4], &(1u32 + 1 + 5 + 32 + 1 + 4).to_be_bytes());
        for cut in 0..buf.len() {
            let r: Option<(ToLeader, usize)> = decode_frame(&buf[..cut]).expect("partial is ok");
            assert!(r.is_none(), "cut at {cut} decoded");
        }
        let (back, used): (ToLeader, usize) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!((back, used), (msg, buf.len()));
    }

    #[test]
    fn two_frames_back_to_back_decode_in_order() {
        let mut buf = frame_of(&ToLeader::Heartbeat);
        buf.extend(frame_of(&ToLeader::RequestShard));
        let (a, n): (ToLeader, usize) = decode_frame(&buf).unwrap().unwrap();
        let (b, m): (ToLeader, usize) = decode_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            (a, b, n + m),
            (ToLeader::Heartbeat, ToLeader::RequestShard, buf.len())
        );
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let buf = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = decode_frame::<ToLeader>(&buf).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { len, .. } if len == MAX_FRAME_LEN + 1));
    }

    #[test]
    fn handshake_bound_refuses_a_large_hello_from_its_header() {
        let buf = ((MAX_HANDSHAKE_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = frame_len_within(&buf, MAX_HANDSHAKE_FRAME_LEN).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { max, .. } if max == MAX_HANDSHAKE_FRAME_LEN));
        assert_eq!(
            frame_len(&buf).unwrap(),
            Some(HEADER_LEN + MAX_HANDSHAKE_FRAME_LEN + 1)
        );
    }

    #[test]
    fn garbage_body_is_malformed_and_trailing_bytes_are_refused() {
        // Variant 200 does not exist.
        let buf = [0, 0, 0, 1, 200];
        assert!(matches!(
            decode_frame::<ToLeader>(&buf),
            Err(DecodeError::Malformed { .. })
        ));
        // Heartbeat (variant 6) followed by one stray byte.
        let buf = [0, 0, 0, 2, 6, 0];
        assert!(matches!(
            decode_frame::<ToLeader>(&buf),
            Err(DecodeError::TrailingBytes { trailing: 1 })
        ));
    }

    #[test]
    fn version_is_readable_from_a_hello_of_another_shape() {
        // A future Hello with version 9 and fields we cannot parse.
        let mut buf = vec![0, 0, 0, 0];
        buf.extend([0u8, 9, 0xFF, 0xFF]);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode_frame::<ToLeader>(&buf).is_err());
        assert_eq!(peek_version(&buf), Some(9));
        let ok = frame_of(&ToLeader::Hello {
            protocol_version: PROTOCOL_VERSION,
            secret: "s".into(),
            worker_name: "w".into(),
            capacity: 32,
        });
        assert_eq!(peek_version(&ok), Some(PROTOCOL_VERSION));
    }

    #[test]
    fn encode_refuses_messages_over_the_bound() {
        let msg = ToLeader::Result {
            shard_id: 0,
            index: 0,
            identity: [0; 32],
            payload: vec![0; MAX_FRAME_LEN],
        };
        let mut buf = vec![42];
        assert!(matches!(
            encode_frame(&msg, &mut buf),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(buf, vec![42]);
    }

    fn drive<M: DeserializeOwned>(mut buf: &[u8]) {
        // Decode frames until the buffer is exhausted or an error; must never panic.
        while let Ok(Some((_, n))) = decode_frame::<M>(buf) {
            buf = &buf[n..];
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            drive::<ToLeader>(&bytes);
            drive::<ToWorker>(&bytes);
            let _ = peek_version(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_framed_random_bodies(body in proptest::collection::vec(any::<u8>(), 0..512), extra in 0u32..=u32::MAX) {
            // A valid-length header over a random body, and an arbitrary header.
            let mut buf = (body.len() as u32).to_be_bytes().to_vec();
            buf.extend(&body);
            drive::<ToLeader>(&buf);
            drive::<ToWorker>(&buf);
            let mut buf = extra.to_be_bytes().to_vec();
            buf.extend(&body);
            drive::<ToLeader>(&buf);
        }

        #[test]
        fn truncated_valid_frames_are_partial_not_errors(
            shard in any::<u64>(), index in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            cut in any::<proptest::sample::Index>()
        ) {
            let msg = ToLeader::Result { shard_id: shard, index, identity: [1; 32], payload };
            let buf = frame_of(&msg);
            let cut = cut.index(buf.len());
            prop_assert!(decode_frame::<ToLeader>(&buf[..cut]).unwrap().is_none());
            let (back, n) = decode_frame::<ToLeader>(&buf).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(n, buf.len());
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut buf = frame_of(&ToLeader::Result { shard_id: 3, index: 4, identity: [2; 32], payload });
            for (i, b) in flips {
                let i = i.index(buf.len());
                buf[i] = b;
            }
            drive::<ToLeader>(&buf);
        }
    }
}
