//! The ring's byte formats: a fixed handshake in each direction when a connection opens,
//! then frames of a fixed 40-byte header and a payload of little-endian `f32`s (or an
//! abort reason). Fixed layouts need no codec and let the receiver check, before reading
//! a payload, that the sender is in the same collective, step and chunk.

/// Opens every data/abort frame ("OIRF").
pub(super) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"OIRF");
/// Opens the connector's hello ("OIRH").
pub(super) const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"OIRH");
/// Opens the acceptor's answer ("OIRA").
pub(super) const ACK_MAGIC: u32 = u32::from_le_bytes(*b"OIRA");
/// Bumped on any incompatible change of these layouts.
pub(super) const PROTOCOL_VERSION: u32 = 1;
/// Bytes in a frame header.
pub(super) const HEADER_BYTES: usize = 40;
/// Bytes in a hello.
pub(super) const HELLO_BYTES: usize = 32;
/// Bytes in an ack.
pub(super) const ACK_BYTES: usize = 12;
/// Longest abort reason sent; longer ones are cut (the receiver rejects longer frames).
pub(super) const MAX_REASON_BYTES: usize = 4096;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A chunk of partial sums, to add into the receiver's buffer.
    ReduceScatter = 1,
    /// A chunk of final sums, to copy into the receiver's buffer.
    AllGather = 2,
    /// A chunk of the root's buffer, to copy.
    Broadcast = 3,
    /// The sender saw a failure; `offset` is the failed rank, `step` the reporting rank,
    /// the payload the reason (UTF-8, `count` bytes).
    Abort = 4,
    /// "I am inside a collective, waiting for my predecessor": sent on every poll tick
    /// of a blocked read, so only the successor of a rank that is really silent (hung,
    /// dead host, never entered the collective) times out, and blames the right rank.
    Keepalive = 5,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        match value {
            1 => Some(Kind::ReduceScatter),
            2 => Some(Kind::AllGather),
            3 => Some(Kind::Broadcast),
            4 => Some(Kind::Abort),
            5 => Some(Kind::Keepalive),
            _ => None,
        }
    }
}

/// A frame header. Layout (little-endian): magic u32, kind u8, 3 zero bytes, op_seq u64,
/// total_len u64, offset u64, count u32, step u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// What the frame carries.
    pub kind: Kind,
    /// Which collective of this communicator (0, 1, ...), so a rank that skipped one is
    /// caught instead of mixing two collectives' data.
    pub op_seq: u64,
    /// Floats in the whole buffer; ranks must agree.
    pub total_len: u64,
    /// Float index of the chunk in the buffer.
    pub offset: u64,
    /// Floats in the chunk (bytes of the reason for [`Kind::Abort`]).
    pub count: u32,
    /// Ring step (reduce-scatter and all-gather), root rank (broadcast), reporting rank
    /// (abort).
    pub step: u32,
}

impl Header {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
        out.extend_from_slice(&[self.kind as u8, 0, 0, 0]);
        out.extend_from_slice(&self.op_seq.to_le_bytes());
        out.extend_from_slice(&self.total_len.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
    }

    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Header, String> {
        let magic = u32_at(bytes, 0);
        if magic != FRAME_MAGIC {
            return Err(format!(
                "frame starts with {magic:#010x}, not the ring frame magic; stream out of sync"
            ));
        }
        let kind =
            Kind::from_u8(bytes[4]).ok_or_else(|| format!("unknown frame kind {}", bytes[4]))?;
        Ok(Header {
            kind,
            op_seq: u64_at(bytes, 8),
            total_len: u64_at(bytes, 16),
            offset: u64_at(bytes, 24),
            count: u32_at(bytes, 32),
            step: u32_at(bytes, 36),
        })
    }
}

/// What the connecting rank (the predecessor) says first. Layout: magic u32, version
/// u32, rank u32, world_size u32, session u64, chunk_floats u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hello {
    /// The connector's rank.
    pub rank: u32,
    /// The connector's world size.
    pub world_size: u32,
    /// [`super::Rendezvous::session_tag`] of the connector's rendezvous.
    pub session: u64,
    /// The connector's chunk size: both ends must split segments identically.
    pub chunk_floats: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.rank.to_le_bytes());
        out[12..16].copy_from_slice(&self.world_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.session.to_le_bytes());
        out[24..32].copy_from_slice(&self.chunk_floats.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HELLO_BYTES]) -> Result<Hello, String> {
        if u32_at(bytes, 0) != HELLO_MAGIC {
            return Err("not an overinterp ring hello".into());
        }
        let version = u32_at(bytes, 4);
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "ring protocol version {version}, this build speaks {PROTOCOL_VERSION}"
            ));
        }
        Ok(Hello {
            rank: u32_at(bytes, 8),
            world_size: u32_at(bytes, 12),
            session: u64_at(bytes, 16),
            chunk_floats: u64_at(bytes, 24),
        })
    }
}

/// The accepting rank's answer: magic u32, session u64.
pub(super) fn encode_ack(session: u64) -> [u8; ACK_BYTES] {
    let mut out = [0u8; ACK_BYTES];
    out[0..4].copy_from_slice(&ACK_MAGIC.to_le_bytes());
    out[4..12].copy_from_slice(&session.to_le_bytes());
    out
}

/// The session in an ack, or why it is not one.
pub(super) fn decode_ack(bytes: &[u8; ACK_BYTES]) -> Result<u64, String> {
    if u32_at(bytes, 0) != ACK_MAGIC {
        return Err("not an overinterp ring ack".into());
    }
    Ok(u64_at(bytes, 4))
}

/// Appends `values` as little-endian bytes.
pub(super) fn encode_f32s(values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 4 * values.len(), 0);
    for (dst, v) in out[start..].chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// `dst[i] += received[i]`: the reduce-scatter step. The received value is the partial
/// sum of the ranks before this one on the segment's way round (IEEE addition is
/// commutative, so only this association matters), which fixes each element's
/// summation order to "around the ring, starting at the segment's first rank".
pub(super) fn add_f32s(bytes: &[u8], dst: &mut [f32]) {
    for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
        *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// `dst[i] = received[i]`: the all-gather and broadcast steps.
pub(super) fn copy_f32s(bytes: &[u8], dst: &mut [f32]) {
    for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_hello_ack_round_trip_with_fixed_sizes() {
        let h = Header {
            kind: Kind::AllGather,
            op_seq: 7,
            total_len: 11_200_000,
            offset: 2_800_000,
            count: 262_144,
            step: 5,
        };
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(bytes.len(), HEADER_BYTES);
        let arr: [u8; HEADER_BYTES] = bytes.as_slice().try_into().expect("40 bytes");
        assert_eq!(Header::decode(&arr), Ok(h));
        let mut corrupt = arr;
        corrupt[0] ^= 1;
        assert!(Header::decode(&corrupt).is_err());
        corrupt = arr;
        corrupt[4] = 9;
        assert!(Header::decode(&corrupt).is_err());

        let hello = Hello {
            rank: 3,
            world_size: 4,
            session: 0xdead_beef_0123,
            chunk_floats: 1 << 18,
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let mut other_version = hello.encode();
        other_version[4] = 2;
        assert!(Hello::decode(&other_version)
            .unwrap_err()
            .contains("version 2"));
        assert_eq!(decode_ack(&encode_ack(42)), Ok(42));
    }

    #[test]
    fn f32_payload_round_trips_bits_and_adds_received_first() {
        let values = [1.5f32, -0.0, f32::MAX, 1e-45, f32::NAN];
        let mut bytes = Vec::new();
        encode_f32s(&values, &mut bytes);
        assert_eq!(bytes.len(), 20);
        // Little-endian 1.5 is 0x3FC00000.
        assert_eq!(&bytes[0..4], &[0x00, 0x00, 0xC0, 0x3F]);
        let mut copied = [0f32; 5];
        copy_f32s(&bytes, &mut copied);
        for (a, b) in copied.iter().zip(&values) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        let mut acc = [2.0f32, 3.0, 0.0, 0.0, 1.0];
        add_f32s(&bytes, &mut acc);
        assert_eq!(&acc[..4], &[3.5, 3.0, f32::MAX, 1e-45]);
        assert!(acc[4].is_nan());
    }
}
