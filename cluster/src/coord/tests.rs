//! Fake workers and virtual time: every scenario is deterministic and sleeps never.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::proto::{ToLeader, ToWorker};

const LEASE: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(60);

struct Sim {
    coord: Coord,
    now: Instant,
    /// index → how many times it was persisted (must end at exactly 1).
    persisted: HashMap<u64, u32>,
    /// Shards announced by Sync and not yet reported durable.
    to_sync: Vec<ShardId>,
    /// Every Send, in order.
    sent: Vec<(WorkerId, ToWorker)>,
    closed: Vec<(WorkerId, String)>,
    complete: bool,
    failed: Option<String>,
}

impl Sim {
    fn new(
        num_images: u64,
        shard_size: u64,
        speculate_after: Option<Duration>,
        durable: Vec<u64>,
    ) -> Self {
        let now = Instant::now();
        let config = CoordConfig {
            lease: LEASE,
            speculate_after,
            failure_grace: GRACE,
            ..CoordConfig::new(num_images, shard_size)
        };
        let mut sim = Sim {
            coord: Coord::new(now, config, durable),
            now,
            persisted: HashMap::new(),
            to_sync: Vec::new(),
            sent: Vec::new(),
            closed: Vec::new(),
            complete: false,
            failed: None,
        };
        sim.pump();
        sim
    }

    fn pump(&mut self) {
        while let Some(out) = self.coord.poll_output() {
            match out {
                Output::Send { worker, msg } => self.sent.push((worker, msg)),
                Output::Persist { index, .. } => *self.persisted.entry(index).or_default() += 1,
                Output::Sync { shard_id } => self.to_sync.push(shard_id),
                Output::Close { worker, reason } => self.closed.push((worker, reason)),
                Output::Complete => self.complete = true,
                Output::Failed { reason } => self.failed = Some(reason),
            }
        }
    }

    fn input(&mut self, input: Input) {
        self.coord.handle(self.now, input);
        self.pump();
    }

    fn join(&mut self, worker: WorkerId) {
        self.input(Input::Joined {
            worker,
            name: format!("w{worker}"),
            capacity: 4,
        });
    }

    fn msg(&mut self, worker: WorkerId, msg: ToLeader) {
        self.input(Input::Message { worker, msg });
    }

    /// Requests a shard and returns the assignment it got right away, if any.
    fn request(&mut self, worker: WorkerId) -> Option<(ShardId, Vec<u64>)> {
        let before = self.sent.len();
        self.msg(worker, ToLeader::RequestShard);
        self.assignment_since(before, worker)
    }

    fn assignment_since(&self, before: usize, worker: WorkerId) -> Option<(ShardId, Vec<u64>)> {
        self.sent[before..].iter().find_map(|(w, m)| match m {
            ToWorker::Assign {
                shard_id, indices, ..
            } if *w == worker => Some((*shard_id, indices.clone())),
            _ => None,
        })
    }

    fn result(&mut self, worker: WorkerId, shard_id: ShardId, index: u64) {
        self.msg(
            worker,
            ToLeader::Result {
                shard_id,
                index,
                identity: [0; 32],
                payload: index.to_le_bytes().to_vec(),
            },
        );
    }

    fn run_shard(&mut self, worker: WorkerId, shard_id: ShardId, indices: &[u64]) {
        for &i in indices {
            self.result(worker, shard_id, i);
        }
        self.msg(worker, ToLeader::ShardDone { shard_id });
    }

    fn sync_all(&mut self) {
        let shards = std::mem::take(&mut self.to_sync);
        self.input(Input::Durable { shards });
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.coord.poll_timeout().is_some_and(|t| t <= self.now) {
            self.coord.handle_timeout(self.now);
            self.pump();
        }
    }

    fn acks_to(&self, worker: WorkerId) -> Vec<ShardId> {
        self.sent
            .iter()
            .filter_map(|(w, m)| match m {
                ToWorker::Ack { shard_id } if *w == worker => Some(*shard_id),
                _ => None,
            })
            .collect()
    }

    fn assert_each_index_once(&self, n: u64) {
        for i in 0..n {
            assert_eq!(self.persisted.get(&i), Some(&1), "image {i}");
        }
        assert_eq!(self.persisted.len() as u64, n);
    }
}

#[test]
fn pull_assignment_completes_a_job_and_acks_only_after_durability() {
    // 10 images in shards of 4: [0..4), [4..8), [8..10).
    let mut sim = Sim::new(10, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1), Some((0, vec![0, 1, 2, 3])));
    assert_eq!(sim.request(2), Some((1, vec![4, 5, 6, 7])));
    sim.run_shard(1, 0, &[0, 1, 2, 3]);
    // All results in, but nothing durable yet: no Ack, shard is Syncing.
    assert!(sim.acks_to(1).is_empty());
    assert_eq!(sim.to_sync, vec![0]);
    assert!(matches!(
        sim.coord.shards()[0].state,
        ShardState::Syncing { .. }
    ));
    // The fast worker pulls again and gets the last shard.
    assert_eq!(sim.request(1), Some((2, vec![8, 9])));
    sim.sync_all();
    assert_eq!(sim.acks_to(1), vec![0]);
    sim.run_shard(2, 1, &[4, 5, 6, 7]);
    sim.run_shard(1, 2, &[8, 9]);
    assert!(!sim.complete);
    sim.sync_all();
    assert!(sim.complete);
    assert_eq!(sim.acks_to(1), vec![0, 2]);
    assert_eq!(sim.acks_to(2), vec![1]);
    assert!(sim
        .sent
        .iter()
        .any(|(w, m)| *w == 2 && *m == ToWorker::JobComplete));
    sim.assert_each_index_once(10);
    let st = sim.coord.status(sim.now);
    assert_eq!(
        (st.images_done, st.shards.done, st.shards.pending),
        (10, 3, 0)
    );
}

#[test]
fn lapsed_lease_requeues_the_missing_images_and_late_results_count_once() {
    let mut sim = Sim::new(4, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    assert_eq!(sim.request(2), None, "nothing else to do");
    sim.result(1, 0, 0);
    sim.result(1, 0, 1);
    // Worker 1 hangs. The lease runs from its last result.
    assert_eq!(sim.coord.poll_timeout(), Some(sim.now + LEASE));
    sim.advance(LEASE - Duration::from_millis(1));
    assert_eq!(sim.coord.stats().lease_expiries, 0);
    let before = sim.sent.len();
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.coord.stats().lease_expiries, 1);
    // Worker 2 was waiting: it gets only the two missing images.
    assert_eq!(sim.assignment_since(before, 2), Some((0, vec![2, 3])));
    // Worker 1 wakes up and sends image 2 late: accepted (first copy).
    sim.result(1, 0, 2);
    // Worker 2's copy of 2 is a duplicate, its 3 completes the shard.
    sim.result(2, 0, 2);
    sim.result(2, 0, 3);
    // Worker 1 also sends 3 and claims done: dropped, ignored.
    sim.result(1, 0, 3);
    sim.msg(1, ToLeader::ShardDone { shard_id: 0 });
    assert_eq!(sim.coord.stats().duplicates, 2);
    sim.sync_all();
    assert!(sim.complete);
    sim.assert_each_index_once(4);
    assert_eq!(sim.coord.stats().reassignments, 1);
    // Both holders at completion time get the ack; worker 1 had lost its lease.
    assert_eq!(sim.acks_to(2), vec![0]);
}

#[test]
fn heartbeats_keep_a_lease_alive() {
    let mut sim = Sim::new(4, 4, None, vec![]);
    sim.join(1);
    sim.request(1);
    for _ in 0..5 {
        sim.advance(LEASE / 2);
        sim.msg(1, ToLeader::Heartbeat);
    }
    assert_eq!(sim.coord.stats().lease_expiries, 0);
    sim.advance(LEASE);
    assert_eq!(sim.coord.stats().lease_expiries, 1);
    assert_eq!(sim.coord.status(sim.now).shards.pending, 1);
}

#[test]
fn disconnect_requeues_and_results_after_it_are_ignored() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    sim.result(1, 0, 0);
    sim.input(Input::Disconnected { worker: 1 });
    // A frame that raced the close is not accepted from a forgotten worker.
    sim.result(1, 0, 1);
    assert_eq!(sim.persisted.len(), 1);
    sim.join(2);
    assert_eq!(sim.request(2), Some((0, vec![1, 2, 3])));
}

#[test]
fn drain_returns_the_shard_and_a_worker_joining_mid_job_takes_it() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    sim.result(1, 0, 0);
    sim.msg(1, ToLeader::Leaving { returned: Some(0) });
    assert_eq!(sim.coord.stats().drains, 1);
    assert_eq!(sim.coord.status(sim.now).shards.pending, 2);
    // Mid-job join: gets the returned shard first (lowest id), minus the accepted image.
    sim.join(3);
    assert_eq!(sim.request(3), Some((0, vec![1, 2, 3])));
    sim.run_shard(3, 0, &[1, 2, 3]);
    assert_eq!(sim.request(3), Some((1, vec![4, 5, 6, 7])));
    sim.run_shard(3, 1, &[4, 5, 6, 7]);
    sim.sync_all();
    assert!(sim.complete);
    sim.assert_each_index_once(8);
    assert!(sim.acks_to(1).is_empty(), "a drained worker is not acked");
}

#[test]
fn idle_workers_speculate_on_slow_shards_and_the_first_copy_wins() {
    let spec = Duration::from_secs(3);
    let mut sim = Sim::new(8, 4, Some(spec), vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    assert_eq!(sim.request(2).map(|a| a.0), Some(1));
    sim.advance(Duration::from_secs(1));
    sim.run_shard(2, 1, &[4, 5, 6, 7]);
    sim.sync_all();
    // Queue empty, worker 2 idle. Mean shard time is 1 s, so threshold = max(3 s, 2 s).
    assert_eq!(sim.request(2), None);
    assert_eq!(
        sim.coord.poll_timeout(),
        Some(sim.now - Duration::from_secs(1) + spec)
    );
    let before = sim.sent.len();
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.assignment_since(before, 2), Some((0, vec![0, 1, 2, 3])));
    assert_eq!(sim.coord.stats().speculative, 1);
    assert_eq!(sim.coord.shards()[0].holders().len(), 2);
    // The slow original sends one image, the twin finishes the rest.
    sim.result(1, 0, 0);
    sim.run_shard(2, 0, &[0, 1, 2, 3]);
    sim.result(1, 0, 1);
    sim.sync_all();
    assert!(sim.complete);
    sim.assert_each_index_once(8);
    // Both copies are told the shard is durable (the slow one stops).
    assert_eq!(sim.acks_to(1), vec![0]);
    assert_eq!(sim.acks_to(2), vec![1, 0]);
}

#[test]
fn no_speculation_when_disabled_or_before_the_threshold() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    sim.request(1);
    sim.request(2);
    sim.run_shard(2, 1, &[4, 5, 6, 7]);
    assert_eq!(sim.request(2), None);
    sim.advance(LEASE - Duration::from_millis(1));
    assert_eq!(sim.coord.stats().speculative, 0);
}

#[test]
fn resume_skips_durable_shards_and_images() {
    // Durable: shard 0 whole, image 6 of shard 1, all of shard 2; 99 is outside the job.
    let mut sim = Sim::new(10, 4, None, vec![0, 1, 2, 3, 6, 8, 9, 99]);
    let st = sim.coord.status(sim.now);
    assert_eq!(
        (st.images_resumed, st.shards.done, st.shards.pending),
        (7, 2, 1)
    );
    sim.join(1);
    assert_eq!(sim.request(1), Some((1, vec![4, 5, 7])));
    assert_eq!(sim.request(1), None);
    sim.run_shard(1, 1, &[4, 5, 7]);
    sim.sync_all();
    assert!(sim.complete);
    assert_eq!(sim.persisted.len(), 3);
}

#[test]
fn a_fully_durable_job_is_complete_at_once() {
    let mut sim = Sim::new(3, 2, None, vec![0, 1, 2]);
    assert!(sim.complete);
    sim.join(1);
    assert_eq!(sim.sent, vec![(1, ToWorker::JobComplete)]);
}

#[test]
fn protocol_violations_close_only_the_offender() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    sim.request(1);
    sim.request(2);
    sim.result(1, 0, 5); // image 5 is in shard 1, not 0
    assert_eq!(sim.closed.len(), 1);
    assert_eq!(sim.closed[0].0, 1);
    assert!(
        sim.closed[0].1.contains("outside shard 0"),
        "{}",
        sim.closed[0].1
    );
    sim.result(2, 99, 1);
    assert_eq!(sim.closed.len(), 2);
    // Both shards are back in the queue; a good worker finishes the job.
    sim.join(3);
    assert_eq!(sim.request(3).map(|a| a.0), Some(0));
    sim.run_shard(3, 0, &[0, 1, 2, 3]);
    assert_eq!(sim.request(3).map(|a| a.0), Some(1));
    sim.run_shard(3, 1, &[4, 5, 6, 7]);
    sim.sync_all();
    assert!(sim.complete);
    sim.assert_each_index_once(8);
}

fn fail(sim: &mut Sim, worker: WorkerId, shard_id: ShardId, reason: &str) {
    sim.msg(
        worker,
        ToLeader::ShardFailed {
            shard_id,
            reason: reason.into(),
        },
    );
}

fn quarantined(sim: &Sim) -> Vec<String> {
    sim.coord
        .status(sim.now)
        .quarantined
        .iter()
        .map(|q| q.name.clone())
        .collect()
}

#[test]
fn a_shard_failing_on_three_workers_fails_the_job_and_never_returns_to_them() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    for w in 1..=4 {
        sim.join(w);
    }
    for w in 1..=3 {
        // Shard 0 goes to a worker it has not failed on; the others wait for it.
        assert_eq!(sim.request(w).map(|a| a.0), Some(0), "worker {w}");
        fail(&mut sim, w, 0, "cannot decode image 2");
        if w < 3 {
            assert!(sim.failed.is_none());
            // The worker that failed shard 0 gets shard 1, never shard 0 again.
            if w == 1 {
                assert_eq!(sim.request(w).map(|a| a.0), Some(1));
            }
        }
    }
    let reason = sim.failed.clone().expect("job failed");
    assert!(
        reason.contains("shard 0") && reason.contains("3 workers") && reason.contains("image 2"),
        "{reason}"
    );
    // Three different workers failed it: the shard is at fault, nobody is quarantined.
    assert!(quarantined(&sim).is_empty());
    // Every connected worker is told why.
    assert!(sim
        .sent
        .iter()
        .any(|(w, m)| *w == 4
            && matches!(m, ToWorker::Reject { reason } if reason.contains("shard 0"))));
}

#[test]
fn a_worker_failing_two_shards_in_a_row_is_quarantined_and_the_job_completes() {
    let mut sim = Sim::new(12, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    fail(&mut sim, 1, 0, "cannot read /data/x.JPEG: no such file");
    // Not the same shard again: worker 1 gets shard 1 while 0 waits for worker 2.
    assert_eq!(sim.request(1).map(|a| a.0), Some(1));
    fail(&mut sim, 1, 1, "cannot read /data/y.JPEG: no such file");
    assert_eq!(quarantined(&sim), vec!["w1".to_string()]);
    let (closed, reason) = sim.closed.last().cloned().expect("closed");
    assert_eq!(closed, 1);
    assert!(
        reason.contains("quarantined") && reason.contains("y.JPEG"),
        "{reason}"
    );
    let status = sim.coord.status(sim.now);
    assert_eq!(status.quarantined[0].shards, vec![0, 1]);
    assert!(status.workers.iter().all(|w| w.name != "w1"));
    // Rejoining under the same name is refused with the reason.
    sim.join(3);
    assert!(quarantined(&sim).len() == 1);
    sim.input(Input::Joined {
        worker: 4,
        name: "w1".into(),
        capacity: 4,
    });
    assert!(sim
        .closed
        .last()
        .is_some_and(|(w, r)| *w == 4 && r.contains("quarantined")));
    // The good worker finishes everything.
    for _ in 0..3 {
        let (s, idx) = sim.request(2).expect("a shard");
        sim.run_shard(2, s, &idx);
    }
    sim.sync_all();
    assert!(sim.complete, "{:?}", sim.failed);
    sim.assert_each_index_once(12);
    // The operator lifts the quarantine: the name may join again.
    sim.input(Input::Lift { name: "w1".into() });
    assert!(quarantined(&sim).is_empty());
}

#[test]
fn failures_of_shards_that_also_fail_elsewhere_do_not_quarantine() {
    let mut sim = Sim::new(12, 4, None, vec![]);
    for w in 1..=4 {
        sim.join(w);
    }
    assert_eq!(sim.request(2).map(|a| a.0), Some(0));
    assert_eq!(sim.request(3).map(|a| a.0), Some(1));
    fail(&mut sim, 2, 0, "bad image in shard 0");
    fail(&mut sim, 3, 1, "bad image in shard 1");
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    fail(&mut sim, 1, 0, "bad image in shard 0");
    assert_eq!(sim.request(1).map(|a| a.0), Some(1));
    fail(&mut sim, 1, 1, "bad image in shard 1");
    // Worker 1 failed two in a row, but both failed on other workers too.
    assert!(quarantined(&sim).is_empty(), "{:?}", quarantined(&sim));
    assert!(sim.failed.is_none());
}

#[test]
fn a_shard_that_failed_on_every_worker_fails_the_job_after_the_grace_period() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    fail(&mut sim, 1, 0, "bad image");
    assert_eq!(sim.request(2).map(|a| a.0), Some(0));
    fail(&mut sim, 2, 0, "bad image");
    // Both workers finish shard 1 meanwhile (and so are not quarantined).
    let (s, idx) = sim.request(1).expect("shard 1");
    sim.run_shard(1, s, &idx);
    assert!(
        sim.request(2).is_none(),
        "shard 0 must not go back to worker 2"
    );
    assert!(sim.failed.is_none());
    // No hang: at the end of the grace period the job fails, naming the shard.
    let deadline = sim.coord.poll_timeout().expect("a grace deadline");
    assert!(deadline <= sim.now + GRACE);
    sim.advance(GRACE);
    let reason = sim
        .failed
        .clone()
        .expect("job failed after the grace period");
    assert!(
        reason.contains("shard 0") && reason.contains("every connected worker"),
        "{reason}"
    );

    // A third worker joining within the grace period takes the shard instead.
    let mut sim = Sim::new(4, 4, None, vec![]);
    sim.join(1);
    sim.request(1);
    fail(&mut sim, 1, 0, "transient");
    sim.advance(GRACE / 2);
    sim.join(2);
    let (s, idx) = sim.request(2).expect("shard 0");
    sim.advance(GRACE);
    sim.run_shard(2, s, &idx);
    sim.sync_all();
    assert!(sim.complete && sim.failed.is_none());
}

#[test]
fn reports_about_shards_not_held_are_ignored_and_faults_count_as_strikes() {
    let mut sim = Sim::new(8, 4, None, vec![]);
    sim.join(1);
    sim.join(2);
    assert_eq!(sim.request(1).map(|a| a.0), Some(0));
    // Worker 2 does not hold shard 0: its failure report changes nothing.
    fail(&mut sim, 2, 0, "confused");
    assert_eq!(sim.coord.stats().ignored_reports, 1);
    assert_eq!(sim.coord.shards()[0].record.failures, 0);
    assert!(sim.coord.shards()[0]
        .holders()
        .iter()
        .any(|l| l.worker == 1));
    // A "done" with results missing is a failure of the holder.
    sim.result(1, 0, 0);
    sim.msg(1, ToLeader::ShardDone { shard_id: 0 });
    assert_eq!(sim.coord.stats().shard_failures, 1);
    assert_eq!(sim.request(2), Some((0, vec![1, 2, 3])));
    // A bad payload found by the driver: the worker is closed, its shard requeued.
    sim.input(Input::Fault {
        worker: 2,
        reason: "bad result payload for image 1: truncated".into(),
    });
    assert!(sim
        .closed
        .iter()
        .any(|(w, r)| *w == 2 && r.contains("truncated")));
    assert!(sim.coord.shards()[0].holders().is_empty());
    // A result computed with other inputs is a fault too.
    let mut sim = Sim::new(4, 4, None, vec![]);
    sim.coord = Coord::new(
        sim.now,
        CoordConfig {
            identity: Some([7; 32]),
            ..CoordConfig::new(4, 4)
        },
        vec![],
    );
    sim.join(1);
    sim.request(1);
    sim.result(1, 0, 0); // carries identity [0; 32]
    assert!(sim
        .closed
        .iter()
        .any(|(w, r)| *w == 1 && r.contains("identity 0000")));
    assert!(sim.persisted.is_empty());
}

#[test]
fn done_counts_only_durable_images() {
    let mut sim = Sim::new(4, 4, None, vec![]);
    sim.join(1);
    let (s, idx) = sim.request(1).expect("shard");
    sim.run_shard(1, s, &idx);
    assert_eq!(sim.coord.status(sim.now).images_done, 0);
    sim.sync_all();
    assert_eq!(sim.coord.status(sim.now).images_done, 4);
}

mod random {
    //! Random interleavings of fake workers: whatever they do, no image is persisted
    //! twice, no shard is acknowledged before it is durable, and a good worker can
    //! always finish the job afterwards.

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Act {
        Join(WorkerId),
        Request(WorkerId),
        Result(WorkerId, u64),
        Done(WorkerId, ShardId),
        Fail(WorkerId, ShardId),
        Heartbeat(WorkerId),
        Leave(WorkerId, Option<ShardId>),
        Disconnect(WorkerId),
        Advance(u64),
        Sync,
    }

    fn act() -> impl Strategy<Value = Act> {
        let w = 0u64..4;
        prop_oneof![
            1 => w.clone().prop_map(Act::Join),
            3 => w.clone().prop_map(Act::Request),
            8 => (w.clone(), 0u64..30).prop_map(|(w, i)| Act::Result(w, i)),
            2 => (w.clone(), 0u64..8).prop_map(|(w, s)| Act::Done(w, s)),
            1 => (w.clone(), 0u64..8).prop_map(|(w, s)| Act::Fail(w, s)),
            1 => w.clone().prop_map(Act::Heartbeat),
            1 => (w.clone(), proptest::option::of(0u64..8)).prop_map(|(w, s)| Act::Leave(w, s)),
            1 => w.prop_map(Act::Disconnect),
            2 => (0u64..15_000).prop_map(Act::Advance),
            2 => Just(Act::Sync),
        ]
    }

    /// Feeds outputs through the invariant checks.
    struct Checked {
        sim: Sim,
        durable: HashSet<ShardId>,
        seen_sent: usize,
    }

    impl Checked {
        fn check(&mut self) {
            for (w, m) in &self.sim.sent[self.seen_sent..] {
                if let ToWorker::Ack { shard_id } = m {
                    assert!(
                        self.durable.contains(shard_id),
                        "Ack of shard {shard_id} to {w} before durable"
                    );
                }
            }
            self.seen_sent = self.sim.sent.len();
            for (i, n) in &self.sim.persisted {
                assert_eq!(*n, 1, "image {i} persisted {n} times");
            }
        }

        fn sync(&mut self) {
            self.durable.extend(self.sim.to_sync.iter().copied());
            self.sim.sync_all();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_workers_never_break_exactly_once(acts in proptest::collection::vec(act(), 1..120), spec in any::<bool>()) {
            // 30 images in shards of 4 (the last has 2); max 3 failures per shard.
            let speculate = spec.then_some(Duration::from_secs(3));
            let mut c = Checked { sim: Sim::new(30, 4, speculate, vec![]), durable: HashSet::new(), seen_sent: 0 };
            for a in acts {
                match a {
                    Act::Join(w) => c.sim.join(w),
                    Act::Request(w) => { c.sim.request(w); }
                    Act::Result(w, i) => {
                        // Usually the right shard; sometimes a wrong one (a violation).
                        let shard = if i % 7 == 3 { (i / 4 + 1) % 8 } else { i / 4 };
                        c.sim.result(w, shard, i);
                    }
                    Act::Done(w, s) => c.sim.msg(w, ToLeader::ShardDone { shard_id: s }),
                    Act::Fail(w, s) => c.sim.msg(w, ToLeader::ShardFailed { shard_id: s, reason: "boom".into() }),
                    Act::Heartbeat(w) => c.sim.msg(w, ToLeader::Heartbeat),
                    Act::Leave(w, s) => c.sim.msg(w, ToLeader::Leaving { returned: s }),
                    Act::Disconnect(w) => c.sim.input(Input::Disconnected { worker: w }),
                    Act::Advance(ms) => c.sim.advance(Duration::from_millis(ms)),
                    Act::Sync => c.sync(),
                }
                c.check();
            }
            if c.sim.failed.is_some() {
                return Ok(()); // a shard failed 3 times: the job is over, correctly
            }
            // Cleanup: everyone else leaves, a good worker finishes the job.
            for w in 0..4 {
                c.sim.input(Input::Disconnected { worker: w });
            }
            c.sync();
            c.sim.join(100);
            for _ in 0..20 {
                if c.sim.complete {
                    break;
                }
                if let Some((shard, indices)) = c.sim.request(100) {
                    c.sim.run_shard(100, shard, &indices);
                }
                c.sync();
                c.check();
            }
            prop_assert!(c.sim.complete, "job never completed: {:?}", c.sim.coord.status(c.sim.now).shards);
            c.sim.assert_each_index_once(30);
        }
    }
}
