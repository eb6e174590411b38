//! Real QUIC over 127.0.0.1 with the FileSink: whole jobs, lost workers, refused
//! peers, leader restarts. Every wait is bounded (see `common::WAIT`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use overinterp_cluster::net::{
    query_status, run_local, run_worker, Leader, ShutdownHandle, WorkerConfig, WorkerOutcome,
};
use overinterp_cluster::proto::{ToLeader, ToWorker, PROTOCOL_VERSION};
use overinterp_cluster::sink::FileSink;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Opens the sink and checks it holds exactly `0..n`, each with its own payload.
fn assert_store_complete(path: &std::path::Path, n: u64, payload_len: usize) -> TestResult {
    let mut sink = FileSink::open(path)?;
    assert_eq!(sink.indices(), (0..n).collect::<Vec<_>>());
    for i in 0..n {
        assert_eq!(
            sink.get(i)?,
            Some(payload(i, payload_len)),
            "payload of image {i}"
        );
    }
    // The file holds one record per image, no duplicates: magic + n * (16 + 8 + len).
    let expected = 8 + n * (16 + 8 + payload_len as u64);
    assert_eq!(std::fs::metadata(path)?.len(), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_local_workers_store_each_index_exactly_once() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let config = leader_config(dir.path(), 203, 8);
    let execs: Vec<Synth> = (0..4).map(|_| Synth::new(4, Duration::ZERO)).collect();
    let seen: Vec<_> = execs.iter().map(|e| e.seen.clone()).collect();
    let report = tokio::time::timeout(
        WAIT,
        run_local(
            config,
            FileSink::open(&store)?,
            4,
            |i| execs[i].clone(),
            ShutdownHandle::new(),
        ),
    )
    .await??;
    assert_eq!(report.job.stats.accepted, 203);
    assert_eq!(report.job.status.shards.done, 26); // ceil(203 / 8)
    assert_eq!(report.job.stats.duplicates, 0);
    for w in &report.workers {
        assert_eq!(
            w.as_ref().map(|r| r.outcome),
            Ok(WorkerOutcome::JobComplete)
        );
    }
    // Work was spread: every image run exactly once across the workers.
    let mut all: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.lock().expect("lock").clone())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..203).collect::<Vec<_>>());
    assert_store_complete(&store, 203, 56)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dropped_mid_shard_has_its_shard_reassigned() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let leader = Leader::bind(leader_config(dir.path(), 40, 10), FileSink::open(&store)?)?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());

    // Worker A emits 3 images of its first shard, then hangs; we then kill it (abort
    // drops its connection, as a kill -9 closes the socket).
    let mut doomed = Synth::new(1, Duration::ZERO);
    let hang = Arc::new((AtomicUsize::new(3), AtomicBool::new(false)));
    doomed.hang_after = Some(hang.clone());
    let a = tokio::spawn(run_worker(
        worker_config(dir.path(), "doomed", addr),
        doomed,
        ShutdownHandle::new().subscribe(),
    ));
    wait_until("worker A to hang mid-shard", || {
        hang.1.load(Ordering::SeqCst)
    })
    .await;
    a.abort();

    let good = Synth::new(4, Duration::ZERO);
    let seen = good.seen.clone();
    let b = run_worker(
        worker_config(dir.path(), "good", addr),
        good,
        ShutdownHandle::new().subscribe(),
    );
    let wr = tokio::time::timeout(WAIT, b).await??;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert_eq!(report.stats.accepted, 40);
    assert!(report.stats.reassignments >= 1, "{:?}", report.stats);
    // Worker B never redid the three images A delivered.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 37, "B ran {seen:?}");
    assert_store_complete(&store, 40, 56)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_lease_and_its_late_results_count_once() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let mut config = leader_config(dir.path(), 20, 10);
    config.lease = Duration::from_millis(500);
    let leader = Leader::bind(config, FileSink::open(&store)?)?;
    let addr = leader.local_addr();
    let status = leader.status_handle();
    let leader_task = tokio::spawn(leader.run());
    let cert = std::fs::read(dir.path().join("cert.der"))?;
    let secret = std::fs::read_to_string(dir.path().join("secret"))?
        .trim()
        .to_string();

    // A hand-driven worker takes shard 0, sends image 0, then goes silent (no heartbeats:
    // a SIGSTOPped process; QUIC keep-alives still flow, so only the lease can catch it).
    let mut raw = RawPeer::connect(addr, cert).await?;
    raw.send(&ToLeader::Hello {
        protocol_version: PROTOCOL_VERSION,
        secret,
        worker_name: "stopped".into(),
        capacity: 1,
    })
    .await?;
    assert!(matches!(raw.recv().await, Some(ToWorker::Welcome { .. })));
    raw.send(&ready()).await?;
    raw.send(&ToLeader::RequestShard).await?;
    let Some(ToWorker::Assign {
        shard_id: 0,
        indices,
        ..
    }) = raw.recv().await
    else {
        panic!("no assignment")
    };
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
    raw.send(&ToLeader::Result {
        shard_id: 0,
        index: 0,
        identity: NO_IDENTITY,
        payload: payload(0, 56),
    })
    .await?;

    // Wait until the lease lapsed (status shows nothing leased by it).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status.status().await.ok_or("leader gone")?;
        let accepted = s.workers.iter().map(|w| w.images_accepted).sum::<u64>();
        if s.workers.iter().all(|w| w.leased.is_empty()) && accepted == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never lapsed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It wakes up and sends a late result for image 1 (accepted: first copy) and a
    // duplicate of image 0 (dropped).
    raw.send(&ToLeader::Result {
        shard_id: 0,
        index: 1,
        identity: NO_IDENTITY,
        payload: payload(1, 56),
    })
    .await?;
    raw.send(&ToLeader::Result {
        shard_id: 0,
        index: 0,
        identity: NO_IDENTITY,
        payload: payload(0, 56),
    })
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while status
        .status()
        .await
        .ok_or("leader gone")?
        .workers
        .iter()
        .map(|w| w.images_accepted)
        .sum::<u64>()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "late result not accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let good = Synth::new(4, Duration::ZERO);
    let seen = good.seen.clone();
    let wr = tokio::time::timeout(
        WAIT,
        run_worker(
            worker_config(dir.path(), "good", addr),
            good,
            ShutdownHandle::new().subscribe(),
        ),
    )
    .await??;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert!(report.stats.lease_expiries >= 1);
    assert_eq!(report.stats.duplicates, 1);
    assert_eq!(report.stats.accepted, 20);
    assert!(!seen.lock().expect("lock").contains(&0));
    drop(raw);
    assert_store_complete(&store, 20, 56)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_broken_peers_are_refused_while_a_good_worker_finishes() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let leader = Leader::bind(leader_config(dir.path(), 64, 8), FileSink::open(&store)?)?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());
    let cert = std::fs::read(dir.path().join("cert.der"))?;
    let secret = std::fs::read_to_string(dir.path().join("secret"))?
        .trim()
        .to_string();

    // A slow good worker runs throughout.
    let good = run_worker(
        worker_config(dir.path(), "good", addr),
        Synth::new(2, Duration::from_millis(20)),
        ShutdownHandle::new().subscribe(),
    );
    let good = tokio::spawn(good);

    let hello = |version: u32, secret: &str| ToLeader::Hello {
        protocol_version: version,
        secret: secret.into(),
        worker_name: "forged".into(),
        capacity: 1,
    };
    // 1. Wrong secret.
    let mut p = RawPeer::connect(addr, cert.clone()).await?;
    p.send(&hello(PROTOCOL_VERSION, "not-the-secret")).await?;
    let Some(ToWorker::Reject { reason }) = p.recv().await else {
        panic!("wrong secret not rejected")
    };
    assert!(reason.contains("secret"), "{reason}");
    // 2. Wrong protocol version (and the right secret).
    let mut p = RawPeer::connect(addr, cert.clone()).await?;
    p.send(&hello(PROTOCOL_VERSION + 1, &secret)).await?;
    let Some(ToWorker::Reject { reason }) = p.recv().await else {
        panic!("wrong version not rejected")
    };
    assert!(
        reason.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)),
        "{reason}"
    );
    // 3. Garbage first frame.
    let mut p = RawPeer::connect(addr, cert.clone()).await?;
    p.send_bytes(&[0, 0, 0, 5, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB])
        .await?;
    let Some(ToWorker::Reject { reason }) = p.recv().await else {
        panic!("garbage not rejected")
    };
    assert!(reason.contains("malformed"), "{reason}");
    // 4. Oversized length prefix (a 4 GiB frame) is refused without reading a body.
    let mut p = RawPeer::connect(addr, cert.clone()).await?;
    p.send_bytes(&u32::MAX.to_be_bytes()).await?;
    let Some(ToWorker::Reject { reason }) = p.recv().await else {
        panic!("oversized not rejected")
    };
    assert!(reason.contains("exceeds"), "{reason}");
    // 5. An authenticated worker that then sends garbage is closed, the job unharmed.
    let mut p = RawPeer::connect(addr, cert.clone()).await?;
    p.send(&hello(PROTOCOL_VERSION, &secret)).await?;
    assert!(matches!(p.recv().await, Some(ToWorker::Welcome { .. })));
    p.send(&ready()).await?;
    p.send_bytes(&[0, 0, 0, 2, 0xEE, 0xEE]).await?;
    let reject = loop {
        match p.recv().await {
            Some(ToWorker::Reject { reason }) => break reason,
            Some(_) => continue,
            None => panic!("no Reject after garbage"),
        }
    };
    assert!(reject.contains("malformed"), "{reject}");
    // 6. A worker with a certificate from another job cannot connect at all.
    let other = tempfile::tempdir()?;
    overinterp_cluster::net::Credentials::load_or_create(other.path())?;
    std::fs::copy(dir.path().join("secret"), other.path().join("secret"))?;
    let err = run_worker(
        worker_config(other.path(), "wrong-cert", addr),
        Synth::new(1, Duration::ZERO),
        ShutdownHandle::new().subscribe(),
    )
    .await
    .expect_err("unpinned certificate must fail");
    assert!(err.to_string().contains("refusing the leader"), "{err}");

    let wr = tokio::time::timeout(WAIT, good).await???;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert!(
        report.refused >= 5,
        "refused {}: {:?}",
        report.refused,
        report.refusals
    );
    assert!(
        report.refusals.iter().any(|r| r.contains("TLS")),
        "{:?}",
        report.refusals
    );
    assert_eq!(report.stats.accepted, 64);
    assert_store_complete(&store, 64, 56)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_resumes_without_redoing_durable_shards() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let n = 120;

    // Run 1: a slow worker that finds the leader through leader.addr; stop the leader
    // once some shards are durable.
    let leader = Leader::bind(leader_config(dir.path(), n, 10), FileSink::open(&store)?)?;
    let stop = leader.shutdown_handle();
    let status = leader.status_handle();
    let run1 = tokio::spawn(leader.run());
    let exec1 = Synth::new(2, Duration::from_millis(15));
    let (phase, runs1) = (exec1.phase.clone(), exec1.runs.clone());
    let mut wc = WorkerConfig::new(dir.path(), "w1");
    wc.idle_timeout = Duration::from_secs(5);
    wc.connect_timeout = Duration::from_secs(1);
    wc.reconnect_for = WAIT;
    let w1 = tokio::spawn(run_worker(wc, exec1, ShutdownHandle::new().subscribe()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status.status().await.ok_or("leader gone")?;
        if s.shards.done >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The network status query sees the same job.
    let remote = tokio::time::timeout(WAIT, query_status(dir.path(), None)).await??;
    assert_eq!(remote.images_total, n);
    assert!(remote.shards.done >= 3);
    assert_eq!(remote.workers.len(), 1);
    // `overinterp status --json` prints this struct.
    let json = serde_json::to_value(&remote)?;
    assert_eq!(json["images_total"], serde_json::json!(n));
    assert_eq!(json["workers"][0]["name"], serde_json::json!("w1"));
    stop.trigger();
    let err = tokio::time::timeout(WAIT, run1)
        .await?
        .expect("join")
        .expect_err("interrupted");
    assert!(
        err.to_string()
            .contains("shut down before the job completed"),
        "{err}"
    );
    phase.store(1, std::sync::atomic::Ordering::SeqCst);

    let durable = FileSink::open(&store)?.indices();
    assert!(
        durable.len() >= 30 && durable.len() < n as usize,
        "{} durable",
        durable.len()
    );

    // Run 2 on the same job dir: same certificate, resumes from the store; w1
    // reconnects by itself and a new worker joins.
    let cert_before = std::fs::read(dir.path().join("cert.der"))?;
    let leader = Leader::bind(leader_config(dir.path(), n, 10), FileSink::open(&store)?)?;
    assert_eq!(std::fs::read(dir.path().join("cert.der"))?, cert_before);
    let addr2 = leader.local_addr();
    let status2 = leader.status_handle();
    let run2 = tokio::spawn(leader.run());
    // w1 comes back by itself (reading the new leader.addr) ...
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status2.status().await.ok_or("leader gone")?;
        if s.workers.iter().any(|w| w.name == "w1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "w1 never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and a new worker joins mid-job.
    let exec2 = Synth::new(4, Duration::ZERO);
    let runs2 = exec2.runs.clone();
    let w2 = run_worker(
        worker_config(dir.path(), "w2", addr2),
        exec2,
        ShutdownHandle::new().subscribe(),
    );
    let w2 = tokio::time::timeout(WAIT, w2).await??;
    assert_eq!(w2.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, run2).await???;
    let w1 = tokio::time::timeout(WAIT, w1).await???;
    assert_eq!(w1.outcome, WorkerOutcome::JobComplete);
    assert!(w1.reconnects >= 1);
    assert_eq!(report.stats.resumed, durable.len() as u64);
    // A worker started after the end exits at once, seeing the completion marker.
    let late = run_worker(
        WorkerConfig::new(dir.path(), "late"),
        Synth::new(1, Duration::ZERO),
        ShutdownHandle::new().subscribe(),
    );
    let late = tokio::time::timeout(WAIT, late).await??;
    assert_eq!(
        (late.outcome, late.images_emitted),
        (WorkerOutcome::JobComplete, 0)
    );
    assert_eq!(report.stats.accepted, n - durable.len() as u64);
    // Nothing started after the restart touched a durable image.
    let after: Vec<u64> = runs1
        .lock()
        .expect("lock")
        .iter()
        .chain(runs2.lock().expect("lock").iter())
        .filter(|(p, _)| *p == 1)
        .flat_map(|(_, idx)| idx.clone())
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|i| durable.binary_search(i).is_err()),
        "redid durable images"
    );
    assert_store_complete(&store, n, 56)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_returns_its_shard_and_leaves() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let leader = Leader::bind(leader_config(dir.path(), 40, 20), FileSink::open(&store)?)?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());
    // A slow worker: 2 images per 50 ms mini-batch.
    let slow = Synth::new(2, Duration::from_millis(50));
    let slow_seen = slow.seen.clone();
    let handle = ShutdownHandle::new();
    let drained = tokio::spawn(run_worker(
        worker_config(dir.path(), "draining", addr),
        slow,
        handle.subscribe(),
    ));
    wait_until("the slow worker to start", || {
        !slow_seen.lock().expect("lock").is_empty()
    })
    .await;
    handle.trigger(); // as SIGTERM would
    let dr = tokio::time::timeout(WAIT, drained).await???;
    assert_eq!(dr.outcome, WorkerOutcome::Drained);
    assert!(
        dr.images_emitted >= 2 && dr.images_emitted < 20,
        "emitted {}",
        dr.images_emitted
    );
    // A worker joining mid-job finishes everything, including the returned shard.
    let wr = tokio::time::timeout(
        WAIT,
        run_worker(
            worker_config(dir.path(), "late", addr),
            Synth::new(4, Duration::ZERO),
            ShutdownHandle::new().subscribe(),
        ),
    )
    .await??;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert_eq!(report.stats.drains, 1);
    assert_eq!(report.stats.accepted, 40);
    assert_eq!(report.stats.accepted + report.stats.duplicates, 40);
    assert_store_complete(&store, 40, 56)
}

/// A sink that takes `delay` per append, counting appends.
struct SlowSink {
    inner: FileSink,
    delay: Duration,
    appended: Arc<AtomicUsize>,
}

impl overinterp_cluster::ResultSink for SlowSink {
    fn durable_indices(&self) -> Vec<u64> {
        self.inner.durable_indices()
    }
    fn append(
        &mut self,
        index: u64,
        payload: &[u8],
    ) -> Result<bool, overinterp_cluster::SinkError> {
        std::thread::sleep(self.delay);
        self.appended.fetch_add(1, Ordering::SeqCst);
        self.inner.append(index, payload)
    }
    fn sync(&mut self) -> Result<(), overinterp_cluster::SinkError> {
        self.inner.sync()
    }
}

/// Counts images emitted (emit returned), to compare with the sink.
struct Counting {
    inner: Synth,
    emitted: Arc<AtomicUsize>,
}

impl overinterp_cluster::Executor for Counting {
    fn run(
        &mut self,
        job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), overinterp_cluster::EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), overinterp_cluster::ExecError> {
        let emitted = self.emitted.clone();
        let mut counting = |i: u64, p: Vec<u8>| {
            emit(i, p)?;
            emitted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        self.inner.run(job_spec, shard_indices, &mut counting, stop)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_executor_instead_of_buffering_everything() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let n = 400u64;
    let payload_len = 200_000;
    let appended = Arc::new(AtomicUsize::new(0));
    let sink = SlowSink {
        inner: FileSink::open(&store)?,
        delay: Duration::from_millis(5),
        appended: appended.clone(),
    };
    let leader = Leader::bind(leader_config(dir.path(), n, 50), sink)?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());
    let mut synth = Synth::new(8, Duration::ZERO);
    synth.payload_len = payload_len;
    let emitted = Arc::new(AtomicUsize::new(0));
    let exec = Counting {
        inner: synth,
        emitted: emitted.clone(),
    };
    let worker = tokio::spawn(run_worker(
        worker_config(dir.path(), "fast", addr),
        exec,
        ShutdownHandle::new().subscribe(),
    ));
    // Without backpressure the executor would emit all 400 at once. With it, what is
    // ahead of the sink is bounded by the queues: worker 8 + 16, the leader's stream
    // window 8 MiB / 200 kB = 42, leader events 64, sink 32, plus a few in hand.
    let bound = 8 + 16 + 42 + 64 + 32 + 8;
    let mut max_lead = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !worker.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "job did not finish");
        let lead = emitted
            .load(Ordering::SeqCst)
            .saturating_sub(appended.load(Ordering::SeqCst));
        max_lead = max_lead.max(lead);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        max_lead <= bound,
        "executor ran {max_lead} images ahead of the sink (bound {bound})"
    );
    assert!(max_lead > 0);
    let wr = worker.await??;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    tokio::time::timeout(WAIT, leader_task).await???;
    assert_store_complete(&store, n, payload_len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_twins_a_slow_shard_and_the_slow_copy_is_cancelled() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let mut config = leader_config(dir.path(), 20, 10);
    config.speculate_after = Some(Duration::from_millis(300));
    config.lease = Duration::from_secs(10);
    let leader = Leader::bind(config, FileSink::open(&store)?)?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());
    // The slow worker takes shard 0 first: 200 ms per image, 2 s for the shard.
    let slow = Synth::new(1, Duration::from_millis(200));
    let slow_seen = slow.seen.clone();
    let slow_task = tokio::spawn(run_worker(
        worker_config(dir.path(), "slow", addr),
        slow,
        ShutdownHandle::new().subscribe(),
    ));
    wait_until("the slow worker to start", || {
        !slow_seen.lock().expect("lock").is_empty()
    })
    .await;
    // The fast worker takes shard 1, finishes it, idles, then twins shard 0.
    let fast = run_worker(
        worker_config(dir.path(), "fast", addr),
        Synth::new(5, Duration::ZERO),
        ShutdownHandle::new().subscribe(),
    );
    let fast = tokio::time::timeout(WAIT, fast).await??;
    assert_eq!(fast.outcome, WorkerOutcome::JobComplete);
    let slow = tokio::time::timeout(WAIT, slow_task).await???;
    assert_eq!(slow.outcome, WorkerOutcome::JobComplete);
    // It was stopped by the Ack well before its 10 images (2 s).
    assert!(
        slow.images_emitted < 10,
        "slow worker emitted {}",
        slow.images_emitted
    );
    assert_eq!(slow.shards_finished, 0);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert!(report.stats.speculative >= 1, "{:?}", report.stats);
    assert_eq!(report.stats.accepted, 20);
    assert_store_complete(&store, 20, 56)
}
