//! Wire messages. Every field is documented with why the peer needs it.
//!
//! Encoding is positional (bincode): keep `Hello` and `StatusQuery` with
//! `protocol_version` as their first field and never reorder variants without bumping
//! [`super::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

/// Leader-assigned id of a worker connection; never reused within a leader run.
pub type WorkerId = u64;
/// Index of a shard: shard `s` covers image indices `[s*shard_size, (s+1)*shard_size)`.
pub type ShardId = u64;

/// Messages a worker (or a status client) sends to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToLeader {
    /// First frame of a worker connection.
    Hello {
        /// Must equal the leader's [`super::PROTOCOL_VERSION`]; checked first.
        protocol_version: u32,
        /// The per-job secret from the job directory (or `OVERINTERP_SECRET`); TLS pins
        /// the leader to the worker, the secret pins the worker to the job.
        secret: String,
        /// Human-readable name (host, Slurm task) for logs and `status`.
        worker_name: String,
        /// How many images the worker processes at once (its mini-batch); informational.
        capacity: u32,
    },
    /// First frame of a status client: one [`ToWorker::Status`] reply, then close.
    StatusQuery {
        /// Same check as in `Hello`.
        protocol_version: u32,
        /// Same secret as in `Hello`: status reveals job progress, so it is authenticated.
        secret: String,
    },
    /// "I am idle, give me a shard." Pull-based, so fast workers take more.
    RequestShard,
    /// One finished image. Also renews the lease of `shard_id`.
    Result {
        /// The shard this image was assigned under (used for lease renewal and checks).
        shard_id: ShardId,
        /// Dataset index of the image; the key of exactly-once acceptance.
        index: u64,
        /// Opaque per-image result produced by the executor.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The executor finished every index of the shard's assignment.
    ShardDone {
        /// The finished shard.
        shard_id: ShardId,
    },
    /// The executor failed on this shard; the leader requeues it (bounded retries).
    ShardFailed {
        /// The failed shard.
        shard_id: ShardId,
        /// The executor's error, for the leader's log and report.
        reason: String,
    },
    /// Keeps the worker's leases alive while it computes without emitting.
    Heartbeat,
    /// Drain: the worker leaves (SIGTERM, scale-down) and hands back its unfinished shard.
    Leaving {
        /// The shard it was running, if any; the results it sent stay accepted.
        returned: Option<ShardId>,
    },
}

/// Messages the leader sends to a worker (or status client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Reply to an accepted `Hello`.
    Welcome {
        /// The id the leader logs this worker under.
        worker_id: WorkerId,
        /// The job's TOML spec, opaque here; the executor parses it.
        job_spec: String,
        /// Lease length: the worker must send something at least this often per shard.
        lease_ms: u64,
    },
    /// A shard to run. `indices` lists only images not yet accepted, so a reassigned or
    /// resumed shard does not redo finished images.
    Assign {
        /// Shard id to quote in results.
        shard_id: ShardId,
        /// Image indices to process, ascending.
        indices: Vec<u64>,
        /// Lease length for this shard.
        lease_ms: u64,
    },
    /// Every result of the shard is durable (fsynced) in the store. A worker still
    /// running the shard (a speculative twin) may stop.
    Ack {
        /// The durable shard.
        shard_id: ShardId,
    },
    /// The leader refuses this peer (bad secret, bad version, protocol violation) and
    /// closes the connection.
    Reject {
        /// Why, in words the operator can act on.
        reason: String,
    },
    /// Every shard is durable; the worker should leave.
    JobComplete,
    /// Reply to `StatusQuery`.
    Status(JobStatus),
}

/// Snapshot of a job's progress, for `overinterp status` (also printed as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Images in the job.
    pub images_total: u64,
    /// Images whose results are accepted (durable or about to be).
    pub images_done: u64,
    /// Images that were already durable when this leader run started (resume).
    pub images_resumed: u64,
    /// Shards by state.
    pub shards: ShardCounts,
    /// Images accepted per second over this leader run.
    pub images_per_s: f64,
    /// Estimated seconds to completion at the current rate; `None` before any progress.
    pub eta_s: Option<f64>,
    /// Seconds since this leader run started.
    pub elapsed_s: f64,
    /// Connected workers.
    pub workers: Vec<WorkerStatus>,
}

/// Shard counts by lifecycle state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    /// Waiting for a worker.
    pub pending: u64,
    /// Held by at least one worker.
    pub leased: u64,
    /// All results accepted, waiting for the store's fsync.
    pub syncing: u64,
    /// Durable.
    pub done: u64,
}

/// Per-worker progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Leader-assigned id.
    pub worker_id: WorkerId,
    /// Name from `Hello`.
    pub name: String,
    /// Images this worker got accepted (first copies only).
    pub images_accepted: u64,
    /// Shards whose completing result came from this worker.
    pub shards_completed: u64,
    /// `images_accepted` per second since the worker joined.
    pub images_per_s: f64,
    /// Shards it currently holds.
    pub leased: Vec<ShardId>,
}
