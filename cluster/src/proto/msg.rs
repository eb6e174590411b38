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
        /// An operator's request to lift the quarantine of the worker with this name
        /// (`overinterp status --lift NAME`) before the snapshot is taken.
        lift: Option<String>,
    },
    /// "I am idle, give me a shard." Pull-based, so fast workers take more.
    RequestShard,
    /// One finished image. Also renews the lease of `shard_id`.
    Result {
        /// The shard this image was assigned under (used for lease renewal and checks).
        shard_id: ShardId,
        /// Dataset index of the image; the key of exactly-once acceptance.
        index: u64,
        /// [`Identity::digest`] of what the executor had open when it computed this
        /// result; the leader accepts only the job's.
        identity: Digest,
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
    /// After `Welcome`: the worker opened the job and hashed what it opened. It gets
    /// shards only if this equals the job's identity.
    Ready {
        /// The content hashes the worker computed itself.
        identity: Identity,
    },
    /// After `Welcome`: the worker cannot open the job (missing files, no GPU); it is
    /// refused and never gets a shard.
    CannotStart {
        /// The executor's error, naming the file or option at fault.
        reason: String,
    },
}

/// SHA-256 of an [`Identity`]'s hashes (not its paths, which differ per node).
pub type Digest = [u8; 32];

/// What decides a worker's results: content hashes of the files it computes with
/// (the model, the dataset split) and of the settings it parsed (method, objective,
/// precision, seed). Paths are for error messages only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// One entry per input, in a fixed order.
    pub parts: Vec<IdentityPart>,
}

/// One hashed input of an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPart {
    /// Which input: `model`, `dataset`, `settings`.
    pub what: String,
    /// Where this node found it (a path, or the spec text), for error messages.
    pub file: String,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: String,
}

impl Identity {
    /// The digest results carry: SHA-256 over `what=sha256` lines.
    pub fn digest(&self) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for p in &self.parts {
            h.update(p.what.as_bytes());
            h.update(b"=");
            h.update(p.sha256.as_bytes());
            h.update(b"\n");
        }
        h.finalize().into()
    }

    /// The first difference from `job`, in words naming the node, the file and both
    /// hashes; `None` when the hashes agree.
    pub fn mismatch(&self, job: &Identity, node: &str) -> Option<String> {
        for want in &job.parts {
            let got = self.parts.iter().find(|p| p.what == want.what);
            match got {
                Some(got) if got.sha256 == want.sha256 => {}
                Some(got) => {
                    return Some(format!(
                        "worker {node}: its {} {} has sha256 {}, but the job's ({} on the leader) has sha256 {}",
                        want.what, got.file, got.sha256, want.file, want.sha256
                    ))
                }
                None => {
                    return Some(format!(
                        "worker {node} reported no {} hash; the job's ({}) is {}",
                        want.what, want.file, want.sha256
                    ))
                }
            }
        }
        (self.digest() != job.digest()).then(|| {
            format!(
                "worker {node} reported inputs the job does not have: {:?}",
                self.parts
            )
        })
    }
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
        /// The job's identity (the store's model and dataset hashes, the settings):
        /// the worker answers `Ready` with its own and is admitted only on a match.
        identity: Identity,
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
    /// Workers removed for failing; lifted with `overinterp status --lift NAME`.
    #[serde(default)]
    pub quarantined: Vec<QuarantineStatus>,
}

/// A quarantined worker and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineStatus {
    /// The worker's name (from `Hello`); a worker with this name is refused.
    pub name: String,
    /// Why, naming the shards and the last error.
    pub reason: String,
    /// The shards whose failures count against it.
    pub shards: Vec<ShardId>,
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
