//! Fault attribution and admission over real QUIC on 127.0.0.1: workers with other
//! inputs are refused naming both hashes, a worker that cannot open the job never
//! gets a shard, a worker whose data breaks after admission is quarantined (shown in
//! `status`, liftable), bad payloads close only their sender, and stale executor
//! events never reach a new session. Every job must still store each image once.

mod common;

use std::time::Duration;

use common::*;
use overinterp_cluster::net::{
    query_status_lifting, run_worker, Leader, NetError, ShutdownHandle, WorkerOutcome,
};
use overinterp_cluster::sink::FileSink;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn assert_store_complete(path: &std::path::Path, n: u64) -> TestResult {
    let mut sink = FileSink::open(path)?;
    assert_eq!(sink.indices(), (0..n).collect::<Vec<_>>(), "images stored");
    for i in 0..n {
        assert_eq!(sink.get(i)?, Some(payload(i, 56)), "image {i}");
    }
    Ok(())
}

const JOB_SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_SHA: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_other_inputs_or_none_are_refused_and_good_ones_finish() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let mut config = leader_config(dir.path(), 48, 8);
    config.identity = Some(identity_of(JOB_SHA));
    let leader = Leader::bind(config, CheckedSink(FileSink::open(&store)?))?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());

    // Other weights at the same path: refused, both hashes in the error.
    let mut other = Synth::new(4, Duration::ZERO);
    other.identity = Ok(identity_of(OTHER_SHA));
    let err = run_worker(
        worker_config(dir.path(), "node-7", addr),
        other.clone(),
        ShutdownHandle::new().subscribe(),
    )
    .await
    .expect_err("a worker with other weights must be refused");
    let msg = err.to_string();
    assert!(matches!(err, NetError::IdentityMismatch(_)), "{msg}");
    for needle in ["node-7", "/models/r20", JOB_SHA, OTHER_SHA] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert!(
        other.seen.lock().expect("lock").is_empty(),
        "it ran a shard"
    );

    // A worker that cannot open the data joins first: refused, never runs anything.
    let mut broken = Synth::new(4, Duration::ZERO);
    broken.identity =
        Err("cannot open /data/fashion-mnist/t10k-images-idx3-ubyte: No such file".into());
    let err = run_worker(
        worker_config(dir.path(), "node-8", addr),
        broken.clone(),
        ShutdownHandle::new().subscribe(),
    )
    .await
    .expect_err("a worker that cannot open the job must fail");
    assert!(matches!(err, NetError::CannotStart(_)), "{err}");
    assert!(err.to_string().contains("t10k-images"), "{err}");

    // Two good workers after them complete the job.
    let mut tasks = Vec::new();
    for name in ["good-1", "good-2"] {
        let mut good = Synth::new(4, Duration::from_millis(5));
        good.identity = Ok(identity_of(JOB_SHA));
        tasks.push(tokio::spawn(run_worker(
            worker_config(dir.path(), name, addr),
            good,
            ShutdownHandle::new().subscribe(),
        )));
    }
    for t in tasks {
        let wr = tokio::time::timeout(WAIT, t).await???;
        assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    }
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert_eq!(report.refused, 2, "{:?}", report.refusals);
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.contains(JOB_SHA) && r.contains(OTHER_SHA)),
        "{:?}",
        report.refusals
    );
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.contains("node-8") && r.contains("cannot open")),
        "{:?}",
        report.refusals
    );
    assert_eq!(report.stats.joins, 2);
    assert_store_complete(&store, 48)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_data_breaks_is_quarantined_and_the_job_completes() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let config = leader_config(dir.path(), 96, 8);
    let leader = Leader::bind(config, CheckedSink(FileSink::open(&store)?))?;
    let addr = leader.local_addr();
    let status = leader.status_handle();
    let leader_task = tokio::spawn(leader.run());

    // Its data breaks after one good shard: every later shard fails on it.
    let mut breaking = Synth::new(4, Duration::ZERO);
    breaking.fail_after = Some(1);
    let bad = tokio::spawn(run_worker(
        worker_config(dir.path(), "node-3", addr),
        breaking,
        ShutdownHandle::new().subscribe(),
    ));
    let err = tokio::time::timeout(WAIT, bad)
        .await??
        .expect_err("quarantined");
    assert!(err.to_string().contains("quarantined"), "{err}");
    // `status` shows it with its reason while the job is still to be done.
    let s = status.status().await.ok_or("leader gone")?;
    assert_eq!(s.quarantined.len(), 1, "{s:?}");
    let q = &s.quarantined[0];
    assert_eq!(q.name, "node-3");
    assert!(
        q.reason.contains("Input/output error") && q.shards.len() == 2,
        "{q:?}"
    );
    assert!(
        s.images_done < 96,
        "the job finished before the quarantine mattered"
    );
    // The same name is refused while quarantined ...
    let again = run_worker(
        worker_config(dir.path(), "node-3", addr),
        Synth::new(4, Duration::ZERO),
        ShutdownHandle::new().subscribe(),
    )
    .await
    .expect_err("a quarantined name is refused");
    assert!(again.to_string().contains("lift"), "{again}");
    // ... until the operator lifts it; then it helps finish.
    let lifted = query_status_lifting(dir.path(), Some(addr), Some("node-3".into())).await?;
    assert!(lifted.quarantined.is_empty(), "{lifted:?}");
    let mut tasks = Vec::new();
    for name in ["node-3", "node-4"] {
        tasks.push(tokio::spawn(run_worker(
            worker_config(dir.path(), name, addr),
            Synth::new(4, Duration::from_millis(5)),
            ShutdownHandle::new().subscribe(),
        )));
    }
    for t in tasks {
        let wr = tokio::time::timeout(WAIT, t).await???;
        assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    }
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert_eq!(report.stats.quarantined, 1);
    assert_eq!(report.stats.shard_failures, 2);
    // Both failed shards were completed by someone else.
    for rec in report.shards.iter().filter(|r| r.failures > 0) {
        assert_ne!(rec.completed_by.as_deref(), Some("node-3"), "{rec:?}");
        assert!(rec.completed_by.is_some(), "{rec:?}");
    }
    assert_store_complete(&store, 96)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_close_their_sender_and_never_stop_the_job() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let leader = Leader::bind(
        leader_config(dir.path(), 64, 8),
        CheckedSink(FileSink::open(&store)?),
    )?;
    let addr = leader.local_addr();
    let leader_task = tokio::spawn(leader.run());
    let mut corrupt = Synth::new(4, Duration::ZERO);
    corrupt.corrupt = true;
    let err = run_worker(
        worker_config(dir.path(), "corrupt", addr),
        corrupt,
        ShutdownHandle::new().subscribe(),
    )
    .await
    .expect_err("the leader closes a worker sending bad payloads");
    assert!(
        err.to_string().contains("bad result payload for image 0"),
        "{err}"
    );
    let wr = run_worker(
        worker_config(dir.path(), "good", addr),
        Synth::new(4, Duration::ZERO),
        ShutdownHandle::new().subscribe(),
    )
    .await?;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    let report = tokio::time::timeout(WAIT, leader_task).await???;
    assert_eq!(report.stats.worker_faults, 1);
    assert_eq!(report.stats.accepted, 64);
    // Shard 0 was the corrupt worker's and was re-queued to the good one.
    assert_eq!(report.shards[0].assigned, vec!["corrupt", "good"]);
    assert_eq!(report.shards[0].completed_by.as_deref(), Some("good"));
    assert_store_complete(&store, 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_an_executor_that_outlives_its_session_are_dropped_by_epoch() -> TestResult {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("results.bin");
    let leader = Leader::bind(leader_config(dir.path(), 32, 8), FileSink::open(&store)?)?;
    let stop_leader = leader.shutdown_handle();
    let leader_task = tokio::spawn(leader.run());
    // The worker finds the leader through leader.addr, so it follows the restart.
    let mut wc = worker_config(dir.path(), "stuck", "127.0.0.1:1".parse()?);
    wc.leader_addr = None;
    wc.abandon_wait = Duration::from_millis(100);
    let mut exec = Synth::new(4, Duration::ZERO);
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    exec.stall = Some((Duration::from_secs(2), stalled.clone()));
    let worker = tokio::spawn(run_worker(wc, exec, ShutdownHandle::new().subscribe()));
    wait_until("the executor to stall mid-shard", || {
        stalled.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // The leader goes away while the executor is stuck in shard 0: the session ends
    // (the abandon wait is 100 ms), the executor runs on for its 2 s.
    stop_leader.trigger();
    let first = tokio::time::timeout(WAIT, leader_task).await??;
    assert!(
        matches!(first, Err(NetError::Interrupted { .. })),
        "{first:?}"
    );
    let leader = Leader::bind(leader_config(dir.path(), 32, 8), FileSink::open(&store)?)?;
    let second = tokio::spawn(leader.run());
    let wr = tokio::time::timeout(WAIT, worker).await???;
    assert_eq!(wr.outcome, WorkerOutcome::JobComplete);
    assert!(wr.reconnects >= 1, "{wr:?}");
    // The old run's remaining results and its Finished arrived in the new session
    // and were dropped there.
    assert!(wr.stale_events >= 2, "{wr:?}");
    let report = tokio::time::timeout(WAIT, second).await???;
    assert_eq!(report.stats.joins, 1);
    assert_store_complete(&store, 32)
}
