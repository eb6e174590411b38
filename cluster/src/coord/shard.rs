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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

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
    /// Images that were durable when the leader started.
    pub resumed: u64,
    /// Names of the workers this shard failed on.
    pub failed_on: BTreeSet<String>,
    /// The last failure's reason, for the job's error.
    pub last_failure: Option<String>,
    /// Since when every connected worker has failed it (the grace clock).
    pub stuck_since: Option<Instant>,
    /// What happened to it, for the job report.
    pub record: ShardRecord,
}

/// Per-shard counters in the job report: fault tests read them to prove that a
/// fault landed (work reassigned, a lease lapsed, a late duplicate dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard.
    pub shard: ShardId,
    /// Names of the workers it was assigned to, in order (twins included).
    pub assigned: Vec<String>,
    /// First copies accepted, by worker name.
    pub accepted_by: BTreeMap<String, u64>,
    /// Leases on it that lapsed.
    pub lease_expiries: u32,
    /// Late copies of its images dropped.
    pub duplicates: u64,
    /// Failures reported on it (by any worker).
    pub failures: u32,
    /// The worker whose result completed it.
    pub completed_by: Option<String>,
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
            resumed: 0,
            failed_on: BTreeSet::new(),
            last_failure: None,
            stuck_since: None,
            record: ShardRecord {
                shard: id,
                ..ShardRecord::default()
            },
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
