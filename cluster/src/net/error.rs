//! [`NetError`]: everything the network side can fail with. Each variant names the
//! file, peer or address at fault.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::proto::{DecodeError, EncodeError};
use crate::sink::SinkError;

/// Errors of the leader, worker and status drivers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A job-directory file could not be read or written.
    #[error("{path}: {what}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A job-directory file has unusable contents.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// TLS or certificate setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Could not bind the UDP socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Could not reach the leader (down, wrong address, or its certificate is not the
    /// one pinned in the job directory).
    #[error("cannot connect to the leader at {addr}: {detail}")]
    Connect {
        /// The leader address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The TLS handshake with the leader failed: it does not hold the certificate
    /// pinned in `cert.der` (another job's leader, or an impostor). Not retried.
    #[error("refusing the leader at {addr}: {detail}")]
    Untrusted {
        /// The leader address.
        addr: SocketAddr,
        /// The TLS error.
        detail: String,
    },
    /// The connection broke.
    #[error("connection to {peer} lost: {detail}")]
    ConnectionLost {
        /// The other side.
        peer: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The leader refused us (wrong secret, version, or a protocol violation).
    #[error("the leader at {peer} refused this worker: {reason}")]
    Refused {
        /// The leader.
        peer: SocketAddr,
        /// The leader's reason.
        reason: String,
    },
    /// The peer sent something the protocol does not allow here.
    #[error("protocol error with {peer}: {detail}")]
    Protocol {
        /// The other side.
        peer: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// A frame from the peer could not be decoded.
    #[error("bad frame from {peer}: {source}")]
    Decode {
        /// The sender.
        peer: SocketAddr,
        /// The decoder's error.
        source: DecodeError,
    },
    /// A message could not be encoded.
    #[error("cannot encode a frame for {peer}: {source}")]
    Encode {
        /// The recipient.
        peer: SocketAddr,
        /// The encoder's error.
        source: EncodeError,
    },
    /// Waiting for the peer took too long.
    #[error("timed out after {secs:.1} s waiting for {what} from {peer}")]
    Timeout {
        /// The other side.
        peer: SocketAddr,
        /// What we waited for.
        what: &'static str,
        /// How long.
        secs: f64,
    },
    /// The result sink failed; nothing after the last fsync was acknowledged.
    #[error("result sink failed: {0}")]
    Sink(#[from] SinkError),
    /// The job cannot finish (a shard failed too often).
    #[error("job failed: {0}")]
    JobFailed(String),
    /// This worker's inputs hash differently from the job's: it would compute
    /// other results, so it is refused. The message names the node, the file and
    /// both hashes. Not retried.
    #[error("refused: {0}")]
    IdentityMismatch(String),
    /// The executor could not open the job on this node (missing files, no GPU).
    #[error("cannot open the job on this worker: {0}")]
    CannotStart(String),
    /// The executor thread panicked.
    #[error("executor panicked on shard {shard}: {message}")]
    ExecutorPanicked {
        /// The shard it was running.
        shard: u64,
        /// The panic message.
        message: String,
    },
    /// The leader was shut down before the job completed.
    #[error("leader shut down before the job completed ({done} of {total} shards durable)")]
    Interrupted {
        /// Durable shards.
        done: u64,
        /// All shards.
        total: u64,
    },
}
