//! The wire protocol between leader and workers.
//!
//! - [`msg`]: the message enums, one per direction, and the status report.
//! - [`codec`]: length-prefixed bincode frames with a size bound; the only file that
//!   names bincode, so a compatible successor is a one-file change.
//!
//! One bidirectional QUIC stream per connection carries frames both ways. The first
//! frame a peer sends is [`ToLeader::Hello`] (a worker) or [`ToLeader::StatusQuery`]
//! (a status client); both lead with [`PROTOCOL_VERSION`] so that a peer speaking
//! another version is told so instead of failing on a garbled decode.

pub mod codec;
pub mod msg;

pub use codec::{
    decode_frame, encode_frame, peek_version, DecodeError, EncodeError, MAX_FRAME_LEN,
    MAX_HANDSHAKE_FRAME_LEN,
};
pub use msg::{
    Digest, Identity, IdentityPart, JobStatus, QuarantineStatus, ShardCounts, ShardId, ToLeader,
    ToWorker, WorkerId, WorkerStatus,
};

/// Version of the message set in [`msg`]. Bump it on any change to the enums: the
/// encoding is positional, so an old peer would misread new messages.
pub const PROTOCOL_VERSION: u32 = 2;
