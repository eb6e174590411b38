//! [`CollectiveError`]: everything a rendezvous or an all-reduce can fail with. Each
//! variant names the rank, address or file at fault, because the trainer's answer to a
//! failed collective is to restart the gang without the rank that broke it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the rendezvous, the CPU ring backend and the NCCL backend.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// The rank / world size pair, or a root rank, is impossible.
    #[error("invalid rank {rank} for a world of {world_size} ranks{context}")]
    InvalidRank {
        /// The offending rank.
        rank: usize,
        /// The world size it was checked against.
        world_size: usize,
        /// Where the rank came from (", as broadcast root", ...).
        context: &'static str,
    },
    /// A rendezvous file could not be read or written.
    #[error("rendezvous file {path}: {what}: {source}")]
    RendezvousIo {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A rendezvous file has contents this rank cannot use.
    #[error("rendezvous file {path}: {problem}")]
    RendezvousBadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Not every rank published its address before the deadline.
    #[error(
        "rendezvous in {dir}: ranks {missing:?} did not publish their address within {waited:?}; \
         are they running (check their logs), and do all ranks use the same directory?"
    )]
    RendezvousTimeout {
        /// The shared directory.
        dir: PathBuf,
        /// The ranks whose files never appeared.
        missing: Vec<usize>,
        /// How long this rank waited.
        waited: Duration,
    },
    /// Could not open a connection to a peer, or the peer did not accept ours in time.
    #[error("cannot connect rank {rank} with rank {peer} at {addr}: {detail}")]
    Connect {
        /// This rank.
        rank: usize,
        /// The peer rank.
        peer: usize,
        /// The peer's listen address from the rendezvous.
        addr: SocketAddr,
        /// Why, and what was tried.
        detail: String,
    },
    /// A peer closed its connection or the connection broke.
    #[error("rank {peer} ({addr}) disconnected during {op}: {source}")]
    PeerDisconnected {
        /// The peer rank.
        peer: usize,
        /// The peer's address.
        addr: SocketAddr,
        /// The collective in progress.
        op: &'static str,
        /// The OS error (end of file for a clean close).
        source: std::io::Error,
    },
    /// A peer sent nothing for longer than the configured operation timeout.
    #[error(
        "no data from rank {peer} ({addr}) for {waited:?} during {op}; the rank is hung, \
         partitioned, or far behind (raise RingConfig::op_timeout if ranks are skewed)"
    )]
    PeerTimeout {
        /// The silent peer.
        peer: usize,
        /// The peer's address.
        addr: SocketAddr,
        /// The collective in progress.
        op: &'static str,
        /// How long nothing arrived.
        waited: Duration,
    },
    /// Another rank saw a failure and aborted the ring; the message names the rank that
    /// failed first, as seen by `reported_by`.
    #[error("rank {failed_rank} failed (reported by rank {reported_by}): {reason}")]
    PeerFailed {
        /// The rank blamed for the failure.
        failed_rank: usize,
        /// The rank that first saw it.
        reported_by: usize,
        /// That rank's error message.
        reason: String,
    },
    /// Ranks disagree on the buffer length of the same collective (different models,
    /// or a rank skipped a step).
    #[error(
        "rank {peer} all-reduces {theirs} floats where this rank has {ours}; all ranks must \
         call the same collectives on buffers of the same length in the same order"
    )]
    LengthMismatch {
        /// The peer rank.
        peer: usize,
        /// This rank's length.
        ours: usize,
        /// The peer's length.
        theirs: usize,
    },
    /// A peer sent a frame the protocol does not allow here.
    #[error("protocol error from rank {peer} ({addr}): {detail}")]
    Protocol {
        /// The peer rank.
        peer: usize,
        /// The peer's address.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// An earlier collective failed; the communicator cannot be used again and the gang
    /// must be rebuilt.
    #[error("communicator unusable after an earlier failure: {first}")]
    Poisoned {
        /// The first error's message.
        first: String,
    },
    /// The CUDA driver or NCCL library could not be loaded at run time.
    #[error("{library} cannot be loaded: {detail}")]
    LibraryUnavailable {
        /// Which library ("CUDA driver (libcuda.so)", "NCCL (libnccl.so)").
        library: &'static str,
        /// What was tried and what to do.
        detail: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA device {ordinal}: {what}: {detail}")]
    Cuda {
        /// The device ordinal.
        ordinal: usize,
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        detail: String,
    },
    /// An NCCL call failed.
    #[error("NCCL {what} on rank {rank}: {detail}")]
    Nccl {
        /// This rank.
        rank: usize,
        /// What was being done.
        what: &'static str,
        /// NCCL's error.
        detail: String,
    },
    /// The NCCL backend needs the unique id rank 0 created, and the rendezvous has none.
    #[error(
        "rendezvous for rank {rank} carries no NCCL unique id; rank 0 must create one with \
         NcclAllReduce::unique_id() and publish it in the rendezvous"
    )]
    MissingNcclId {
        /// This rank.
        rank: usize,
    },
}

impl CollectiveError {
    /// The rank this error blames, if any: what the trainer drops from the gang before
    /// restarting it from the last checkpoint.
    pub fn failed_rank(&self) -> Option<usize> {
        match self {
            CollectiveError::PeerDisconnected { peer, .. }
            | CollectiveError::PeerTimeout { peer, .. }
            | CollectiveError::Connect { peer, .. }
            | CollectiveError::Protocol { peer, .. }
            | CollectiveError::LengthMismatch { peer, .. } => Some(*peer),
            CollectiveError::PeerFailed { failed_rank, .. } => Some(*failed_rank),
            CollectiveError::RendezvousTimeout { missing, .. } => missing.first().copied(),
            _ => None,
        }
    }
}
