//! The leader's brain, sans-io (quinn-proto style): feed it [`Input`]s with the time
//! they happened, drain [`Output`]s, and call [`Coord::handle_timeout`] at
//! [`Coord::poll_timeout`]. No sockets, no tokio, no clock: the drivers in
//! [`crate::net`] pump it, and the tests drive it with fake workers and virtual time.
//!
//! - [`shard`]: a shard and its lifecycle.
//! - [`leader`]: [`Coord`], the state machine.
//! - `leader/failures`: failure attribution — a shard's failures count against the
//!   worker that reported them; a worker failing `quarantine_after` shards in a row is
//!   quarantined unless the same shards failed elsewhere too (then the shard is at
//!   fault); a shard failing on `shard_fail_workers` distinct workers, or on every
//!   connected worker for `failure_grace`, fails the job.

pub mod leader;
pub mod shard;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use leader::{Coord, CoordStats};
pub use shard::{Lease, Shard, ShardRecord, ShardState};

use crate::proto::{Digest, ShardId, ToLeader, ToWorker, WorkerId};

/// What the leader is asked to do.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// Images in the job: indices `0..num_images`.
    pub num_images: u64,
    /// Images per shard. Small shards balance load and lose little on a failure;
    /// large ones cost fewer round trips. A few mini-batches per shard is a good start.
    pub shard_size: u64,
    /// How long a shard stays leased without a result or heartbeat from its worker.
    pub lease: Duration,
    /// Minimum age of a lease before an idle worker may run a twin of the shard when
    /// no shard is pending (speculative re-execution); `None` disables it. The
    /// effective threshold is the larger of this and twice the mean shard time.
    pub speculate_after: Option<Duration>,
    /// A worker (by name) that fails this many shards in a row — executor errors, a
    /// `ShardDone` with results missing, bad payloads — is quarantined, unless every
    /// one of those shards failed on another worker too.
    pub quarantine_after: u32,
    /// A shard that fails on this many distinct workers fails the job.
    pub shard_fail_workers: u32,
    /// A shard that failed on every connected worker (fewer than
    /// `shard_fail_workers`) fails the job if no other worker takes it this long.
    pub failure_grace: Duration,
    /// The [`crate::proto::Identity::digest`] every result must carry; `None` skips
    /// the check.
    pub identity: Option<Digest>,
}

impl CoordConfig {
    /// Defaults for everything but the job size: 30 s leases, speculation after 30 s,
    /// quarantine after 2 failed shards in a row, a shard fails the job on 3 workers,
    /// 300 s of grace.
    pub fn new(num_images: u64, shard_size: u64) -> Self {
        Self {
            num_images,
            shard_size,
            lease: Duration::from_secs(30),
            speculate_after: Some(Duration::from_secs(30)),
            quarantine_after: 2,
            shard_fail_workers: 3,
            failure_grace: Duration::from_secs(300),
            identity: None,
        }
    }
}

/// An event the driver observed.
#[derive(Debug, Clone)]
pub enum Input {
    /// A worker passed the handshake (TLS, secret, version); the driver has sent it
    /// `Welcome`. `worker` ids are never reused.
    Joined {
        /// The new worker.
        worker: WorkerId,
        /// Its name, for status and logs.
        name: String,
        /// Its mini-batch size, informational.
        capacity: u32,
    },
    /// A frame from a joined worker (anything but `Hello`/`StatusQuery`).
    Message {
        /// The sender.
        worker: WorkerId,
        /// The frame.
        msg: ToLeader,
    },
    /// The worker's connection closed (or the driver closed it).
    Disconnected {
        /// The lost worker.
        worker: WorkerId,
    },
    /// The sink fsynced every result of these shards (they were announced by
    /// [`Output::Sync`]).
    Durable {
        /// Shards now durable.
        shards: Vec<ShardId>,
    },
    /// The driver found the worker at fault (a result payload that does not decode,
    /// has the wrong shape or index): close it, requeue its shards, count a strike.
    Fault {
        /// The offender.
        worker: WorkerId,
        /// What was wrong, for the worker, the log and `status`.
        reason: String,
    },
    /// An operator lifts the quarantine of the worker called `name`.
    Lift {
        /// The worker's name.
        name: String,
    },
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a frame to a worker.
    Send {
        /// Recipient.
        worker: WorkerId,
        /// Frame.
        msg: ToWorker,
    },
    /// Append this accepted result to the sink. Emitted exactly once per image index.
    Persist {
        /// The shard it belongs to.
        shard_id: ShardId,
        /// The image.
        index: u64,
        /// The executor's result.
        payload: Vec<u8>,
    },
    /// Every result of the shard has been announced by `Persist`: make them durable,
    /// then report [`Input::Durable`]. Only then is the shard acknowledged.
    Sync {
        /// The shard to make durable.
        shard_id: ShardId,
    },
    /// Close this worker's connection after sending it `Reject{reason}` (protocol
    /// violation). The coordinator has already forgotten the worker.
    Close {
        /// The offender.
        worker: WorkerId,
        /// Why, for the worker and the log.
        reason: String,
    },
    /// Every shard is durable; the driver may stop once the frames are sent.
    Complete,
    /// A shard failed on too many workers; the job cannot finish.
    Failed {
        /// The last failure, naming the shard.
        reason: String,
    },
}
