//! A shard: a contiguous range of image indices and where it is in its life.
//!
//! ```text
//!              assign (pull)                 last missing result accepted
//!   Pending ─────────────────▶ Leased{holders} ───────────────────────────▶ Syncing
//!     ▲  ▲                       │    │ ▲                                      │
//!     │  └───────────────────────┘    │ └─ twin lease (speculation,           │ Durable
//!     │   lease lapsed / worker lost  │    idle workers, nothing pending)     ▼
//!     │   / drained / shard failed    │                                      Done
//!     │   (and no other holder)       │
//!     └── late result completes ──────┘ (a Pending shard can also go straight
//!                                        to Syncing when a lost worker's late
//!                                        results fill it)
//! ```
//!
//! Results are accepted per image, whatever the state (except `Done`): the first copy
//! of an index wins and is persisted, later copies are dropped. A reassigned shard is
//! sent with only its still-missing indices.

use std::ops::Range;
use std::time::Instant;

use crate::proto::{ShardId, WorkerId};

/// One worker's hold on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The holder.
    pub worker: WorkerId,
    /// When the lease lapses unless renewed by a result or heartbeat.
    pub until: Instant,
    /// When it was granted (for speculation and the mean shard time).
    pub since: Instant,
}

/// Where a shard is in its lifecycle (see the module diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Waiting in the queue for a worker.
    Pending,
    /// Being run by one worker, or two while speculating.
    Leased {
        /// Current holders, oldest first.
        holders: Vec<Lease>,
    },
    /// All results accepted and handed to the sink; waiting for its fsync.
    Syncing {
        /// Workers to acknowledge once durable (holders at completion).
        ack_to: Vec<WorkerId>,
    },
    /// Durable in the store.
    Done,
}

/// A shard of the job.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Its id (position in the job).
    pub id: ShardId,
    /// Image indices it covers.
    pub range: Range<u64>,
    /// Lifecycle state.
    pub state: ShardState,
    /// Which offsets of `range` have an accepted result.
    accepted: Vec<bool>,
    /// Count of `true` in `accepted`.
    accepted_count: u64,
    /// Executor failures so far.
    pub failures: u32,
}

impl Shard {
    /// A pending shard with nothing accepted.
    pub fn new(id: ShardId, range: Range<u64>) -> Self {
        let len = (range.end - range.start) as usize;
        Self {
            id,
            range,
            state: ShardState::Pending,
            accepted: vec![false; len],
            accepted_count: 0,
            failures: 0,
        }
    }

    /// Number of images.
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// True for an empty range (never built by the coordinator).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `index` accepted; false if it already was (a duplicate) or is outside.
    pub fn accept(&mut self, index: u64) -> bool {
        if !self.range.contains(&index) {
            return false;
        }
        let slot = &mut self.accepted[(index - self.range.start) as usize];
        if *slot {
            return false;
        }
        *slot = true;
        self.accepted_count += 1;
        true
    }

    /// Whether `index` has an accepted result.
    pub fn is_accepted(&self, index: u64) -> bool {
        self.range.contains(&index) && self.accepted[(index - self.range.start) as usize]
    }

    /// True when every image has an accepted result.
    pub fn is_complete(&self) -> bool {
        self.accepted_count == self.len()
    }

    /// Images accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted_count
    }

    /// Indices still without a result, ascending: what an assignment carries.
    pub fn missing(&self) -> Vec<u64> {
        self.range
            .clone()
            .filter(|&i| !self.is_accepted(i))
            .collect()
    }

    /// Current holders (empty unless `Leased`).
    pub fn holders(&self) -> &[Lease] {
        match &self.state {
            ShardState::Leased { holders } => holders,
            _ => &[],
        }
    }
}
