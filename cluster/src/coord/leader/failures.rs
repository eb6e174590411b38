//! Failure attribution: who is at fault when a shard fails, and what follows.
//!
//! A failure reported by a worker (`ShardFailed`, a `ShardDone` with results missing)
//! counts against that worker *and* is recorded on the shard. The shard goes back to
//! the queue and is offered to workers it has not failed on. A worker with
//! `quarantine_after` strikes in a row is quarantined — closed, refused on rejoin,
//! listed in `status` with its reason — unless every shard of the run also failed on
//! another worker: then the shards are at fault, not the worker. A fault of the
//! worker's own (a bad payload, a wrong identity) is always a strike against it.
//!
//! A shard fails the job when it has failed on `shard_fail_workers` distinct workers,
//! or when every connected worker has failed it and no other takes it within
//! `failure_grace`: the job ends with an error instead of waiting forever.

use std::time::Instant;

use super::Coord;
use crate::coord::shard::ShardState;
use crate::coord::Output;
use crate::proto::{QuarantineStatus, ShardId, ToWorker, WorkerId};

impl Coord {
    /// `worker` reports that `shard_id`, which it holds, failed.
    pub(super) fn shard_failed(
        &mut self,
        now: Instant,
        worker: WorkerId,
        shard_id: ShardId,
        reason: String,
    ) {
        let name = self.workers[&worker].name.clone();
        self.stats.shard_failures += 1;
        let shard = &mut self.shards[shard_id as usize];
        shard.record.failures += 1;
        shard.failed_on.insert(name.clone());
        shard.last_failure = Some(format!("on worker {name}: {reason}"));
        let distinct = shard.failed_on.len();
        tracing::warn!(shard = shard_id, worker, %name, distinct, %reason, "shard failed");
        self.failing.insert(shard_id);
        if distinct >= self.config.shard_fail_workers as usize {
            let on: Vec<&str> = shard.failed_on.iter().map(String::as_str).collect();
            let why = format!(
                "shard {shard_id} (images {:?}) failed on {distinct} workers ({}); last error: {reason}",
                shard.range,
                on.join(", ")
            );
            return self.fail(why);
        }
        self.release(shard_id, worker);
        self.strike(worker, Some(shard_id), &reason);
        self.assign_idle(now);
    }

    /// The driver or the coordinator found `worker` itself at fault: close it, requeue
    /// its shards, count a strike.
    pub(super) fn worker_fault(&mut self, now: Instant, worker: WorkerId, reason: String) {
        let name = self.workers[&worker].name.clone();
        tracing::warn!(worker, %name, %reason, "worker fault; closing the worker");
        self.stats.worker_faults += 1;
        if !self.strike(worker, None, &reason) {
            self.forget(worker);
            self.outputs.push_back(Output::Close { worker, reason });
        }
        self.assign_idle(now);
    }

    /// Adds a strike to `worker`'s run; quarantines it when the run is long enough and
    /// not explained by bad shards. True if it was quarantined (and closed).
    fn strike(&mut self, worker: WorkerId, shard: Option<ShardId>, reason: &str) -> bool {
        let name = self.workers[&worker].name.clone();
        let run = self.streaks.entry(name.clone()).or_default();
        run.push(shard);
        let n = self.config.quarantine_after.max(1) as usize;
        if run.len() < n {
            return false;
        }
        let last: Vec<Option<ShardId>> = run[run.len() - n..].to_vec();
        let shards_at_fault = last
            .iter()
            .all(|s| s.is_some_and(|s| self.shards[s as usize].failed_on.len() >= 2));
        if shards_at_fault {
            tracing::info!(%name, shards = ?last, "the failed shards failed elsewhere too; not quarantining");
            return false;
        }
        let shards: Vec<ShardId> = last.iter().flatten().copied().collect();
        let reason = format!(
            "{n} failures in a row (shards {shards:?} failed on no other worker); last error: {reason}"
        );
        tracing::error!(worker, %name, %reason, "worker quarantined");
        self.stats.quarantined += 1;
        self.quarantine.insert(
            name.clone(),
            QuarantineStatus {
                name: name.clone(),
                reason: reason.clone(),
                shards,
            },
        );
        self.streaks.remove(&name);
        self.forget(worker);
        self.outputs.push_back(Output::Close {
            worker,
            reason: format!(
                "worker {name} is quarantined: {reason}; lift it with `overinterp status --lift {name}`"
            ),
        });
        true
    }

    /// An operator lifted the quarantine of `name`: it may join again with a clean run.
    pub(super) fn lift(&mut self, name: &str) {
        if self.quarantine.remove(name).is_some() {
            tracing::warn!(%name, "quarantine lifted by the operator");
        } else {
            tracing::warn!(%name, "asked to lift a quarantine, but no worker of that name is quarantined");
        }
        self.streaks.remove(name);
    }

    /// A report about a shard the sender does not hold: logged and ignored, so a
    /// confused or stale worker cannot fail shards others are running.
    pub(super) fn ignored(&mut self, worker: WorkerId, shard_id: ShardId, what: &str) {
        self.stats.ignored_reports += 1;
        tracing::warn!(
            worker,
            shard = shard_id,
            what,
            "report about a shard the worker does not hold; ignored"
        );
    }

    /// Starts or stops the grace clock of every failing shard: it runs while each
    /// connected worker has failed the (pending) shard.
    pub(super) fn check_stuck(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        let live: Vec<&String> = self.workers.values().map(|w| &w.name).collect();
        let mut expired = None;
        for &id in &self.failing {
            let shard = &mut self.shards[id as usize];
            let stuck = shard.state == ShardState::Pending
                && !live.is_empty()
                && live.iter().all(|n| shard.failed_on.contains(*n));
            if !stuck {
                shard.stuck_since = None;
                continue;
            }
            let since = *shard.stuck_since.get_or_insert(now);
            if expired.is_none()
                && now.saturating_duration_since(since) >= self.config.failure_grace
            {
                expired = Some(id);
            }
        }
        if let Some(id) = expired {
            let shard = &self.shards[id as usize];
            let on: Vec<&str> = shard.failed_on.iter().map(String::as_str).collect();
            let reason = format!(
                "shard {id} (images {:?}) failed on every connected worker ({}) and no other \
                 worker took it within {:.0} s; last error {}",
                shard.range,
                on.join(", "),
                self.config.failure_grace.as_secs_f64(),
                shard.last_failure.as_deref().unwrap_or("unknown")
            );
            self.fail(reason);
        }
    }

    /// When the earliest grace clock runs out.
    pub(super) fn grace_deadline(&self) -> Option<Instant> {
        self.failing
            .iter()
            .filter_map(|&id| self.shards[id as usize].stuck_since)
            .min()
            .map(|t| t + self.config.failure_grace)
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(%reason, "job failed");
        self.failed = true;
        let mut ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        ids.sort_unstable();
        for worker in ids {
            self.outputs.push_back(Output::Send {
                worker,
                msg: ToWorker::Reject {
                    reason: format!("the job failed: {reason}"),
                },
            });
        }
        self.outputs.push_back(Output::Failed { reason });
    }
}
