//! [`Coord`]: the leader state machine. See [`super`] for how it is driven and
//! [`super::shard`] for the shard lifecycle.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::shard::{Lease, Shard, ShardRecord, ShardState};
use super::{CoordConfig, Input, Output};
use crate::proto::{
    Digest, JobStatus, QuarantineStatus, ShardCounts, ShardId, ToLeader, ToWorker, WorkerId,
    WorkerStatus,
};

mod failures;

/// Counters for the job report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoordStats {
    /// Results accepted (first copies) in this leader run.
    pub accepted: u64,
    /// Results dropped because the index was already accepted.
    pub duplicates: u64,
    /// Images already durable when this run started.
    pub resumed: u64,
    /// Shard assignments, twins included.
    pub assignments: u64,
    /// Assignments of a shard that had been leased before (after a loss).
    pub reassignments: u64,
    /// Twin leases granted by speculation.
    pub speculative: u64,
    /// Leases that lapsed.
    pub lease_expiries: u64,
    /// Workers that joined.
    pub joins: u64,
    /// Workers that drained (`Leaving`).
    pub drains: u64,
    /// Workers whose connection closed without `Leaving`.
    pub disconnects: u64,
    /// Workers closed for protocol violations.
    pub violations: u64,
    /// Executor failures reported (on shards the worker held).
    pub shard_failures: u64,
    /// Reports about shards the sender did not hold, ignored.
    pub ignored_reports: u64,
    /// Workers closed for a fault of their own (bad payload, wrong identity).
    pub worker_faults: u64,
    /// Workers quarantined.
    pub quarantined: u64,
    /// Joins refused because the worker's name is quarantined.
    pub quarantine_refusals: u64,
}

#[derive(Debug)]
struct Worker {
    name: String,
    joined: Instant,
    /// Shards this worker holds a lease on.
    held: BTreeSet<ShardId>,
    /// It asked for a shard and has not been given one yet.
    waiting: bool,
    images_accepted: u64,
    shards_completed: u64,
}

/// The sans-io leader.
#[derive(Debug)]
pub struct Coord {
    config: CoordConfig,
    shards: Vec<Shard>,
    /// Pending shards, lowest id first.
    pending: BTreeSet<ShardId>,
    /// Shards that have ever been leased (to count reassignments).
    ever_leased: Vec<bool>,
    /// Lease expiry queue: (until, shard, worker).
    expiries: BTreeSet<(Instant, ShardId, WorkerId)>,
    workers: HashMap<WorkerId, Worker>,
    /// Workers waiting for a shard, first come first served (may hold stale ids).
    idle: VecDeque<WorkerId>,
    outputs: VecDeque<Output>,
    done: u64,
    syncing: u64,
    started: Instant,
    /// Sum and count of lease-to-completion times, for the speculation threshold.
    shard_time: (Duration, u32),
    failed: bool,
    stats: CoordStats,
    /// Images of this run made durable (shards `Done` since start).
    durable_images: u64,
    /// Failed shards (or worker faults, `None`) in a row, by worker name; a success
    /// clears it. Kept across reconnects.
    streaks: HashMap<String, Vec<Option<ShardId>>>,
    /// Quarantined workers by name.
    quarantine: std::collections::BTreeMap<String, QuarantineStatus>,
    /// Shards that have failed somewhere and are not done (checked for the grace rule).
    failing: BTreeSet<ShardId>,
}

impl Coord {
    /// A coordinator for `config`, resuming from the image indices the sink already
    /// holds durably: shards fully covered start `Done`, partly covered ones are
    /// assigned with only their missing indices. Indices outside the job are ignored.
    pub fn new(now: Instant, config: CoordConfig, durable: impl IntoIterator<Item = u64>) -> Self {
        let shard_size = config.shard_size.max(1);
        let n = config.num_images.div_ceil(shard_size);
        let mut shards: Vec<Shard> = (0..n)
            .map(|s| {
                Shard::new(
                    s,
                    s * shard_size..((s + 1) * shard_size).min(config.num_images),
                )
            })
            .collect();
        let mut resumed = 0;
        for index in durable {
            if let Some(shard) = shards.get_mut((index / shard_size) as usize) {
                let fresh = u64::from(shard.accept(index));
                shard.resumed += fresh;
                resumed += fresh;
            }
        }
        let mut pending = BTreeSet::new();
        let mut done = 0;
        for shard in &mut shards {
            if shard.is_complete() {
                shard.state = ShardState::Done;
                done += 1;
            } else {
                pending.insert(shard.id);
            }
        }
        let mut coord = Self {
            config: CoordConfig {
                shard_size,
                ..config
            },
            ever_leased: vec![false; shards.len()],
            shards,
            pending,
            expiries: BTreeSet::new(),
            workers: HashMap::new(),
            idle: VecDeque::new(),
            outputs: VecDeque::new(),
            done,
            syncing: 0,
            started: now,
            shard_time: (Duration::ZERO, 0),
            failed: false,
            stats: CoordStats {
                resumed,
                ..CoordStats::default()
            },
            durable_images: 0,
            streaks: HashMap::new(),
            quarantine: std::collections::BTreeMap::new(),
            failing: BTreeSet::new(),
        };
        if coord.is_complete() {
            coord.outputs.push_back(Output::Complete);
        }
        coord
    }

    /// True when every shard is durable.
    pub fn is_complete(&self) -> bool {
        self.done == self.shards.len() as u64
    }

    /// True after [`Output::Failed`].
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Counters so far.
    pub fn stats(&self) -> CoordStats {
        self.stats
    }

    /// The shards (for tests and diagnostics).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Per-shard counters for the job report.
    pub fn shard_records(&self) -> Vec<ShardRecord> {
        self.shards.iter().map(|s| s.record.clone()).collect()
    }

    /// Next action for the driver.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Coord::handle_timeout`] must next be called: the earliest lease expiry,
    /// or the moment a lease becomes old enough to speculate on while a worker idles.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.expiries.first().map(|&(t, _, _)| t);
        let speculate = if self.pending.is_empty() && self.idle.iter().any(|w| self.is_waiting(*w))
        {
            let threshold = self.speculation_threshold();
            threshold.and_then(|th| {
                self.speculation_candidates(None)
                    .map(|(_, since)| since + th)
                    .min()
            })
        } else {
            None
        };
        [expiry, speculate, self.grace_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Lapses every lease whose time is up and hands out what that frees.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(until, shard, worker)) = self.expiries.first() {
            if until > now {
                break;
            }
            self.stats.lease_expiries += 1;
            self.shards[shard as usize].record.lease_expiries += 1;
            tracing::warn!(shard, worker, "lease lapsed; shard back to the queue");
            self.release(shard, worker);
        }
        self.assign_idle(now);
        self.check_stuck(now);
    }

    /// Applies one input observed at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.failed {
            return;
        }
        match input {
            Input::Joined {
                worker,
                name,
                capacity,
            } => {
                // Ids are never reused by the driver; if one is, the old holder is gone.
                self.forget(worker);
                if let Some(q) = self.quarantine.get(&name) {
                    tracing::warn!(worker, %name, reason = %q.reason, "quarantined worker refused");
                    self.stats.quarantine_refusals += 1;
                    let reason = format!(
                        "worker {name} is quarantined: {}; lift it with `overinterp status --lift {name}`",
                        q.reason
                    );
                    self.outputs.push_back(Output::Close { worker, reason });
                    return;
                }
                tracing::info!(worker, %name, capacity, "worker joined");
                self.stats.joins += 1;
                self.workers.insert(
                    worker,
                    Worker {
                        name,
                        joined: now,
                        held: BTreeSet::new(),
                        waiting: false,
                        images_accepted: 0,
                        shards_completed: 0,
                    },
                );
                if self.is_complete() {
                    self.outputs.push_back(Output::Send {
                        worker,
                        msg: ToWorker::JobComplete,
                    });
                }
            }
            Input::Disconnected { worker } => {
                if self.workers.contains_key(&worker) {
                    self.stats.disconnects += 1;
                    self.forget(worker);
                    self.assign_idle(now);
                }
            }
            Input::Fault { worker, reason } => {
                if self.workers.contains_key(&worker) {
                    self.worker_fault(now, worker, reason);
                }
            }
            Input::Lift { name } => self.lift(&name),
            Input::Durable { shards } => {
                for shard in shards {
                    self.durable(shard);
                }
            }
            Input::Message { worker, msg } => {
                if !self.workers.contains_key(&worker) {
                    return; // a frame racing its connection's close
                }
                self.message(now, worker, msg);
            }
        }
        self.check_stuck(now);
    }

    fn message(&mut self, now: Instant, worker: WorkerId, msg: ToLeader) {
        match msg {
            ToLeader::RequestShard => {
                let w = self.workers.get_mut(&worker).expect("checked by caller");
                if !w.waiting {
                    w.waiting = true;
                    self.idle.push_back(worker);
                }
                self.assign_idle(now);
            }
            ToLeader::Heartbeat => {
                let held: Vec<ShardId> = self.workers[&worker].held.iter().copied().collect();
                for shard in held {
                    self.renew(now, shard, worker);
                }
            }
            ToLeader::Result {
                shard_id,
                index,
                identity,
                payload,
            } => {
                if let Some(job) = self.config.identity.filter(|job| *job != identity) {
                    let reason = format!(
                        "result for image {index} was computed with inputs of identity {}, \
                         the job's is {}: the worker's model, data or settings changed",
                        hex(&identity),
                        hex(&job)
                    );
                    return self.worker_fault(now, worker, reason);
                }
                self.result(now, worker, shard_id, index, payload)
            }
            ToLeader::ShardDone { shard_id } => {
                let Some(shard) = self.shards.get(shard_id as usize) else {
                    return self
                        .violation(worker, format!("ShardDone for unknown shard {shard_id}"));
                };
                if shard.holders().iter().any(|l| l.worker == worker) {
                    // Still leased, so results are missing: the executor skipped images.
                    let missing = shard.missing().len();
                    self.shard_failed(
                        now,
                        worker,
                        shard_id,
                        format!(
                            "worker reported shard {shard_id} done with {missing} results missing"
                        ),
                    );
                } else if !matches!(shard.state, ShardState::Syncing { .. } | ShardState::Done) {
                    self.ignored(worker, shard_id, "ShardDone");
                }
            }
            ToLeader::ShardFailed { shard_id, reason } => {
                let Some(shard) = self.shards.get(shard_id as usize) else {
                    return self
                        .violation(worker, format!("ShardFailed for unknown shard {shard_id}"));
                };
                if shard.holders().iter().any(|l| l.worker == worker) {
                    self.shard_failed(now, worker, shard_id, reason);
                } else {
                    self.ignored(worker, shard_id, "ShardFailed");
                }
            }
            ToLeader::Leaving { returned } => {
                tracing::info!(worker, ?returned, "worker draining");
                self.stats.drains += 1;
                self.forget(worker);
                self.assign_idle(now);
            }
            ToLeader::Hello { .. }
            | ToLeader::StatusQuery { .. }
            | ToLeader::Ready { .. }
            | ToLeader::CannotStart { .. } => {
                self.violation(worker, "handshake frame after the handshake".into())
            }
        }
    }

    fn result(
        &mut self,
        now: Instant,
        worker: WorkerId,
        shard_id: ShardId,
        index: u64,
        payload: Vec<u8>,
    ) {
        let Some(shard) = self.shards.get_mut(shard_id as usize) else {
            return self.violation(worker, format!("result for unknown shard {shard_id}"));
        };
        if !shard.range.contains(&index) {
            let range = shard.range.clone();
            return self.violation(
                worker,
                format!("result for image {index}, outside shard {shard_id} ({range:?})"),
            );
        }
        if shard.state == ShardState::Done || !shard.accept(index) {
            shard.record.duplicates += 1;
            self.stats.duplicates += 1;
            self.renew(now, shard_id, worker);
            return;
        }
        self.stats.accepted += 1;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.images_accepted += 1;
            *shard.record.accepted_by.entry(w.name.clone()).or_default() += 1;
        }
        self.outputs.push_back(Output::Persist {
            shard_id,
            index,
            payload,
        });
        if self.shards[shard_id as usize].is_complete() {
            self.complete(now, shard_id, worker);
        } else {
            self.renew(now, shard_id, worker);
        }
    }

    /// All results of `shard_id` accepted: stop its leases and ask for an fsync.
    fn complete(&mut self, now: Instant, shard_id: ShardId, completer: WorkerId) {
        let shard = &mut self.shards[shard_id as usize];
        let holders = match std::mem::replace(&mut shard.state, ShardState::Pending) {
            ShardState::Leased { holders } => holders,
            _ => Vec::new(),
        };
        self.pending.remove(&shard_id);
        if let Some(lease) = holders.iter().find(|l| l.worker == completer) {
            self.shard_time.0 += now.saturating_duration_since(lease.since);
            self.shard_time.1 += 1;
        }
        for lease in &holders {
            self.expiries.remove(&(lease.until, shard_id, lease.worker));
            if let Some(w) = self.workers.get_mut(&lease.worker) {
                w.held.remove(&shard_id);
            }
        }
        if let Some(w) = self.workers.get_mut(&completer) {
            w.shards_completed += 1;
            self.shards[shard_id as usize].record.completed_by = Some(w.name.clone());
            // A success ends the worker's run of failures.
            self.streaks.remove(&w.name);
        }
        self.failing.remove(&shard_id);
        self.shards[shard_id as usize].stuck_since = None;
        let mut ack_to: Vec<WorkerId> = holders.iter().map(|l| l.worker).collect();
        if !ack_to.contains(&completer) {
            ack_to.push(completer);
        }
        self.shards[shard_id as usize].state = ShardState::Syncing { ack_to };
        self.syncing += 1;
        self.outputs.push_back(Output::Sync { shard_id });
    }

    fn durable(&mut self, shard_id: ShardId) {
        let Some(shard) = self.shards.get_mut(shard_id as usize) else {
            return;
        };
        // Only a shard announced by `Sync` can become Done; anything else is ignored.
        if !matches!(shard.state, ShardState::Syncing { .. }) {
            return;
        }
        let ShardState::Syncing { ack_to } = std::mem::replace(&mut shard.state, ShardState::Done)
        else {
            return;
        };
        self.syncing -= 1;
        self.done += 1;
        self.durable_images += shard.len() - shard.resumed;
        for worker in ack_to {
            if self.workers.contains_key(&worker) {
                self.outputs.push_back(Output::Send {
                    worker,
                    msg: ToWorker::Ack { shard_id },
                });
            }
        }
        if self.is_complete() {
            tracing::info!(shards = self.shards.len(), "job complete");
            let mut ids: Vec<WorkerId> = self.workers.keys().copied().collect();
            ids.sort_unstable();
            for worker in ids {
                self.outputs.push_back(Output::Send {
                    worker,
                    msg: ToWorker::JobComplete,
                });
            }
            self.outputs.push_back(Output::Complete);
        }
    }

    fn violation(&mut self, worker: WorkerId, reason: String) {
        tracing::warn!(worker, %reason, "protocol violation; closing the worker");
        self.stats.violations += 1;
        self.forget(worker);
        self.outputs.push_back(Output::Close { worker, reason });
    }

    /// Drops a worker and requeues the shards it held.
    fn forget(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        let held: Vec<ShardId> = w.held.iter().copied().collect();
        for shard in held {
            self.release(shard, worker);
        }
        self.workers.remove(&worker);
    }

    /// Ends `worker`'s lease on `shard`; the shard is Pending again if nobody else holds it.
    fn release(&mut self, shard_id: ShardId, worker: WorkerId) {
        let shard = &mut self.shards[shard_id as usize];
        if let ShardState::Leased { holders } = &mut shard.state {
            if let Some(pos) = holders.iter().position(|l| l.worker == worker) {
                let lease = holders.remove(pos);
                self.expiries.remove(&(lease.until, shard_id, worker));
            }
            if holders.is_empty() {
                shard.state = ShardState::Pending;
                self.pending.insert(shard_id);
            }
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.held.remove(&shard_id);
        }
    }

    fn renew(&mut self, now: Instant, shard_id: ShardId, worker: WorkerId) {
        let lease_len = self.config.lease;
        let Some(shard) = self.shards.get_mut(shard_id as usize) else {
            return;
        };
        if let ShardState::Leased { holders } = &mut shard.state {
            if let Some(lease) = holders.iter_mut().find(|l| l.worker == worker) {
                self.expiries.remove(&(lease.until, shard_id, worker));
                lease.until = now + lease_len;
                self.expiries.insert((lease.until, shard_id, worker));
            }
        }
    }

    fn is_waiting(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.waiting)
    }

    /// Hands shards to waiting workers: pending ones first (never one that already
    /// failed on that worker), then twins of slow shards. A worker with nothing it
    /// may take keeps waiting.
    fn assign_idle(&mut self, now: Instant) {
        let mut still_waiting = VecDeque::new();
        while let Some(worker) = self.idle.pop_front() {
            if !self.is_waiting(worker) {
                continue;
            }
            match self.pick(now, worker) {
                Some(shard_id) => self.lease(now, shard_id, worker),
                None => still_waiting.push_back(worker),
            }
        }
        self.idle = still_waiting;
    }

    fn pick(&mut self, now: Instant, worker: WorkerId) -> Option<ShardId> {
        let name = &self.workers.get(&worker)?.name;
        let fresh = self
            .pending
            .iter()
            .copied()
            .find(|&s| !self.shards[s as usize].failed_on.contains(name));
        if let Some(s) = fresh {
            self.pending.remove(&s);
            return Some(s);
        }
        let s = self.speculation_pick(now, worker)?;
        self.stats.speculative += 1;
        tracing::info!(shard = s, worker, "speculative twin of a slow shard");
        Some(s)
    }

    fn lease(&mut self, now: Instant, shard_id: ShardId, worker: WorkerId) {
        let lease = Lease {
            worker,
            until: now + self.config.lease,
            since: now,
        };
        let shard = &mut self.shards[shard_id as usize];
        match &mut shard.state {
            ShardState::Leased { holders } => holders.push(lease),
            state => {
                *state = ShardState::Leased {
                    holders: vec![lease],
                }
            }
        }
        let indices = shard.missing();
        self.expiries.insert((lease.until, shard_id, worker));
        let w = self
            .workers
            .get_mut(&worker)
            .expect("waiting worker exists");
        w.waiting = false;
        w.held.insert(shard_id);
        shard.record.assigned.push(w.name.clone());
        self.stats.assignments += 1;
        if std::mem::replace(&mut self.ever_leased[shard_id as usize], true) {
            self.stats.reassignments += 1;
        }
        let lease_ms = self.config.lease.as_millis() as u64;
        self.outputs.push_back(Output::Send {
            worker,
            msg: ToWorker::Assign {
                shard_id,
                indices,
                lease_ms,
            },
        });
    }

    /// The age a lease must reach before it may get a twin, if speculation is on.
    fn speculation_threshold(&self) -> Option<Duration> {
        let min = self.config.speculate_after?;
        let (sum, n) = self.shard_time;
        let mean = if n > 0 { sum / n } else { Duration::ZERO };
        Some(min.max(mean * 2))
    }

    /// Singly-held leased shards not held by `except`, with their lease start.
    fn speculation_candidates(
        &self,
        except: Option<WorkerId>,
    ) -> impl Iterator<Item = (ShardId, Instant)> + '_ {
        self.shards.iter().filter_map(move |s| match s.holders() {
            [lease] if Some(lease.worker) != except => Some((s.id, lease.since)),
            _ => None,
        })
    }

    fn speculation_pick(&self, now: Instant, worker: WorkerId) -> Option<ShardId> {
        let threshold = self.speculation_threshold()?;
        self.speculation_candidates(Some(worker))
            .filter(|&(_, since)| now.saturating_duration_since(since) >= threshold)
            .min_by_key(|&(id, since)| (since, id))
            .map(|(id, _)| id)
    }

    /// Progress snapshot for `status`.
    pub fn status(&self, now: Instant) -> JobStatus {
        let mut shards = ShardCounts::default();
        for s in &self.shards {
            match s.state {
                ShardState::Pending => shards.pending += 1,
                ShardState::Leased { .. } => shards.leased += 1,
                ShardState::Syncing { .. } => shards.syncing += 1,
                ShardState::Done => shards.done += 1,
            }
        }
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        // Only durable images count as done: accepted ones may still be lost.
        let images_done = self.stats.resumed + self.durable_images;
        let rate = if elapsed > 0.0 {
            self.durable_images as f64 / elapsed
        } else {
            0.0
        };
        let remaining = self.config.num_images - images_done;
        let eta_s = (rate > 0.0).then(|| remaining as f64 / rate);
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(&id, w)| {
                let age = now.saturating_duration_since(w.joined).as_secs_f64();
                WorkerStatus {
                    worker_id: id,
                    name: w.name.clone(),
                    images_accepted: w.images_accepted,
                    shards_completed: w.shards_completed,
                    images_per_s: if age > 0.0 {
                        w.images_accepted as f64 / age
                    } else {
                        0.0
                    },
                    leased: w.held.iter().copied().collect(),
                }
            })
            .collect();
        workers.sort_by_key(|w| w.worker_id);
        JobStatus {
            images_total: self.config.num_images,
            images_done,
            images_resumed: self.stats.resumed,
            shards,
            images_per_s: rate,
            eta_s,
            elapsed_s: elapsed,
            workers,
            quarantined: self.quarantine.values().cloned().collect(),
        }
    }
}

/// Lowercase hex of a digest, for messages.
pub(crate) fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
