//! The worker driver: connect (pinning the job certificate), say `Hello` with the
//! secret, then pull shards and run the [`Executor`] on a dedicated thread, streaming
//! each result as it is emitted.
//!
//! Threads and queues: the executor thread sends results and then the end of each
//! shard into one small bounded queue (`blocking_send`); the async loop forwards them
//! to the bounded writer queue in order, so `ShardDone` follows the shard's results on
//! the wire and a slow leader blocks `emit` — that is the backpressure.
//!
//! Shutdown (SIGTERM): the loop sets the shard's stop flag; the executor finishes its
//! mini-batch and returns; the worker sends `Leaving{returned}` and closes.
//!
//! Leader loss: the executor thread outlives connections; the worker abandons the
//! running shard (the leader requeues it) and reconnects, so a restarted leader gets
//! its workers back.
//!
//! Session epochs: every connection is a session with its own number, and every
//! command to the executor thread and every event it sends back carries it. An
//! executor that outlives a session (a shard that ignored `stop` past the abandon
//! timeout) reports into the old epoch, and the new session drops those events, so a
//! stale `Finished` can never clear the new session's shard.
//!
//! Admission: after `Welcome` the executor opens the job (`prepare`) and the worker
//! answers `Ready` with the content hashes it computed; if they differ from the
//! job's, it logs the file and both hashes and exits with an error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::frames::{finish, write_frame, FrameReader};
use super::tls::{read_leader_addr, transport, ClientCredentials, COMPLETE_FILE, SERVER_NAME};
use super::{NetError, Shutdown};
use crate::exec::{EmitError, Executor};
use crate::proto::{Digest, Identity, ShardId, ToLeader, ToWorker, PROTOCOL_VERSION};

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Leader address; `None` reads `leader.addr` from the job directory.
    pub leader_addr: Option<SocketAddr>,
    /// Job directory holding `cert.der` (pinned) and `secret` (unless
    /// `OVERINTERP_SECRET` is set).
    pub job_dir: PathBuf,
    /// Name shown in status and logs (host name, Slurm task id).
    pub name: String,
    /// Mini-batch size reported to the leader (informational).
    pub capacity: u32,
    /// Time allowed to connect and be welcomed.
    pub connect_timeout: Duration,
    /// QUIC idle timeout (should match the leader's).
    pub idle_timeout: Duration,
    /// How long to keep trying to reach the leader after losing it (or before it is
    /// up); zero gives up at once.
    pub reconnect_for: Duration,
    /// How long a lost session waits for its running shard to stop before moving on
    /// (the executor's later events are then dropped by epoch).
    pub abandon_wait: Duration,
}

impl WorkerConfig {
    /// Defaults: address from `leader.addr`, capacity 32, 10 s connect, 20 s idle,
    /// 120 s of reconnect attempts.
    pub fn new(job_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            leader_addr: None,
            job_dir: job_dir.into(),
            name: name.into(),
            capacity: 32,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            reconnect_for: Duration::from_secs(120),
            abandon_wait: Duration::from_secs(60),
        }
    }
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WorkerOutcome {
    /// The leader said the job is complete.
    JobComplete,
    /// Shutdown was triggered and the worker drained.
    Drained,
}

/// What a worker did.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    /// Id the leader gave it.
    pub worker_id: u64,
    /// Shards it ran to the end.
    pub shards_finished: u64,
    /// Shards acknowledged durable by the leader.
    pub shards_acked: u64,
    /// Results it emitted.
    pub images_emitted: u64,
    /// Times it reconnected to the leader (leader restarts, network breaks).
    pub reconnects: u32,
    /// Executor events from an earlier session, dropped.
    pub stale_events: u64,
    /// Why it stopped.
    pub outcome: WorkerOutcome,
}

/// Work for the executor thread, tagged with the session that asked for it.
enum Cmd {
    /// Open the job and hash what was opened.
    Prepare { epoch: u64, job_spec: Arc<str> },
    /// Run a shard.
    Run(Run),
}

/// A shard run handed to the executor thread.
struct Run {
    epoch: u64,
    shard_id: ShardId,
    indices: Vec<u64>,
    job_spec: Arc<str>,
    stop: Arc<AtomicBool>,
}

/// What the executor thread reports, in order: a shard's results, then its end.
enum ExecEvent {
    Prepared {
        epoch: u64,
        outcome: Result<Identity, String>,
    },
    Result {
        epoch: u64,
        shard_id: ShardId,
        index: u64,
        identity: Digest,
        payload: Vec<u8>,
    },
    Finished(Finished),
}

impl ExecEvent {
    fn epoch(&self) -> u64 {
        match self {
            ExecEvent::Prepared { epoch, .. } | ExecEvent::Result { epoch, .. } => *epoch,
            ExecEvent::Finished(f) => f.epoch,
        }
    }
}

/// The executor thread's report on one shard.
struct Finished {
    epoch: u64,
    shard_id: ShardId,
    /// Images emitted out of those assigned.
    emitted: usize,
    assigned: usize,
    outcome: Result<(), String>,
    panicked: bool,
}

/// Results buffered between the executor and the connection: small, so a slow leader
/// blocks `emit` quickly instead of piling up 0.4 MB results in memory.
const EXEC_QUEUE: usize = 8;

/// Connects to the leader and runs shards until the job completes or `shutdown`
/// fires. If the leader is unreachable or its connection breaks (a leader restart),
/// it keeps trying for `config.reconnect_for`, re-reading `leader.addr` each time
/// unless an address was given; the executor and its loaded state survive that.
pub async fn run_worker<E: Executor>(
    config: WorkerConfig,
    executor: E,
    shutdown: Shutdown,
) -> Result<WorkerReport, NetError> {
    let span = tracing::info_span!("worker", name = %config.name);
    run_worker_inner(config, executor, shutdown)
        .instrument(span)
        .await
}

/// Errors after which trying again may help: the leader is not up yet, restarting,
/// or its connection broke.
fn retryable(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Connect { .. }
            | NetError::ConnectionLost { .. }
            | NetError::Timeout { .. }
            | NetError::File { .. }
    )
}

async fn run_worker_inner<E: Executor>(
    config: WorkerConfig,
    executor: E,
    mut shutdown: Shutdown,
) -> Result<WorkerReport, NetError> {
    let (run_tx, run_rx) = std::sync::mpsc::channel::<Cmd>();
    let (ev_tx, mut ev_rx) = mpsc::channel::<ExecEvent>(EXEC_QUEUE);
    let exec_thread = std::thread::Builder::new()
        .name(format!("executor-{}", config.name))
        .spawn(move || executor_loop(executor, run_rx, ev_tx))
        .map_err(|e| NetError::Tls(format!("cannot start the executor thread: {e}")))?;
    let mut report = WorkerReport {
        worker_id: 0,
        shards_finished: 0,
        shards_acked: 0,
        images_emitted: 0,
        reconnects: 0,
        stale_events: 0,
        outcome: WorkerOutcome::JobComplete,
    };
    let mut epoch = 0u64;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_millis(200);
    let result = loop {
        let mut welcomed = false;
        epoch += 1;
        let session = session(
            &config,
            epoch,
            &mut report,
            &run_tx,
            &mut ev_rx,
            &mut shutdown,
            &mut welcomed,
        )
        .await;
        if welcomed {
            give_up_at = None;
            backoff = Duration::from_millis(200);
        }
        match session {
            Ok(outcome) => {
                report.outcome = outcome;
                break Ok(());
            }
            Err(e)
                if retryable(&e) && !shutdown.is_shutdown() && !config.reconnect_for.is_zero() =>
            {
                let now = tokio::time::Instant::now();
                let deadline = *give_up_at.get_or_insert(now + config.reconnect_for);
                if now >= deadline {
                    break Err(e);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "leader unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.recv() => {
                        report.outcome = WorkerOutcome::Drained;
                        break Ok(());
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                report.reconnects += 1;
            }
            Err(e) => break Err(e),
        }
    };
    // Let the executor thread finish: no more runs; drain its events so it never
    // blocks on a full queue.
    drop(run_tx);
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while ev_rx.recv().await.is_some() {}
    })
    .await;
    let _ = tokio::task::spawn_blocking(move || exec_thread.join()).await;
    result.map(|()| report)
}

/// Sets `stop` and discards events until the running shard reports its end (or
/// `wait` passes: the next session drops the late events by epoch).
async fn abandon_shard(
    ev_rx: &mut mpsc::Receiver<ExecEvent>,
    stop: &AtomicBool,
    epoch: u64,
    wait: Duration,
) {
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(wait, async {
        while let Some(ev) = ev_rx.recv().await {
            if matches!(&ev, ExecEvent::Finished(f) if f.epoch == epoch) {
                break;
            }
        }
    })
    .await;
}

/// After `Welcome`: has the executor open the job, checks its identity against the
/// job's and tells the leader. Returns the digest results carry.
async fn prepare(
    config: &WorkerConfig,
    epoch: u64,
    job_spec: &Arc<str>,
    expected: &Identity,
    run_tx: &std::sync::mpsc::Sender<Cmd>,
    ev_rx: &mut mpsc::Receiver<ExecEvent>,
    report: &mut WorkerReport,
) -> Result<(Result<Digest, NetError>, ToLeader), NetError> {
    let lost = || NetError::ExecutorPanicked {
        shard: 0,
        message: "executor thread exited".into(),
    };
    run_tx
        .send(Cmd::Prepare {
            epoch,
            job_spec: job_spec.clone(),
        })
        .map_err(|_| lost())?;
    let outcome = loop {
        match ev_rx.recv().await.ok_or_else(lost)? {
            ExecEvent::Prepared { epoch: e, outcome } if e == epoch => break outcome,
            _ => report.stale_events += 1,
        }
    };
    Ok(match outcome {
        Err(reason) => {
            tracing::error!(node = %config.name, %reason, "cannot open the job");
            (
                Err(NetError::CannotStart(format!(
                    "worker {}: {reason}",
                    config.name
                ))),
                ToLeader::CannotStart { reason },
            )
        }
        Ok(identity) => {
            let digest = identity.digest();
            let verdict = if expected.parts.is_empty() {
                Ok(digest)
            } else {
                match identity.mismatch(expected, &config.name) {
                    Some(why) => {
                        tracing::error!(node = %config.name, %why, "this worker's inputs differ from the job's");
                        Err(NetError::IdentityMismatch(why))
                    }
                    None => Ok(digest),
                }
            };
            (verdict, ToLeader::Ready { identity })
        }
    })
}

/// One connection to the leader, from `Hello` to `JobComplete`, drain, or an error.
#[allow(clippy::too_many_arguments)]
async fn session(
    config: &WorkerConfig,
    epoch: u64,
    report: &mut WorkerReport,
    run_tx: &std::sync::mpsc::Sender<Cmd>,
    ev_rx: &mut mpsc::Receiver<ExecEvent>,
    shutdown: &mut Shutdown,
    welcomed: &mut bool,
) -> Result<WorkerOutcome, NetError> {
    if config.job_dir.join(COMPLETE_FILE).exists() {
        tracing::info!("the job directory says the job is complete");
        return Ok(WorkerOutcome::JobComplete);
    }
    let creds = ClientCredentials::load(&config.job_dir)?;
    let addr = match config.leader_addr {
        Some(a) => a,
        None => read_leader_addr(&config.job_dir)?,
    };
    let (endpoint, conn, mut send, recv) =
        connect(addr, &creds, config.idle_timeout, config.connect_timeout).await?;
    let peer = addr;
    let mut scratch = Vec::new();
    let hello = ToLeader::Hello {
        protocol_version: PROTOCOL_VERSION,
        secret: creds.secret.clone(),
        worker_name: config.name.clone(),
        capacity: config.capacity,
    };
    write_frame(&mut send, &hello, &mut scratch, peer).await?;
    let mut reader = FrameReader::new(recv, peer);
    let welcome = tokio::time::timeout(config.connect_timeout, reader.read::<ToWorker>())
        .await
        .map_err(|_| NetError::Timeout {
            peer,
            what: "Welcome",
            secs: config.connect_timeout.as_secs_f64(),
        })??;
    let (worker_id, job_spec, lease_ms, expected) = match welcome {
        Some(ToWorker::Welcome {
            worker_id,
            job_spec,
            lease_ms,
            identity,
        }) => (worker_id, job_spec, lease_ms, identity),
        Some(ToWorker::Reject { reason }) => return Err(NetError::Refused { peer, reason }),
        Some(other) => {
            return Err(NetError::Protocol {
                peer,
                detail: format!("expected Welcome, got {other:?}"),
            })
        }
        None => {
            return Err(NetError::Refused {
                peer,
                reason: "connection closed during the handshake".into(),
            })
        }
    };
    *welcomed = true;
    report.worker_id = worker_id;
    let job_spec: Arc<str> = job_spec.into();
    tracing::info!(worker_id, %peer, "welcomed; opening the job");
    let (verdict, answer) =
        prepare(config, epoch, &job_spec, &expected, run_tx, ev_rx, report).await?;
    write_frame(&mut send, &answer, &mut scratch, peer).await?;
    if let Err(e) = verdict {
        // Let the leader read our answer (it logs the refusal too), then leave.
        let _ = tokio::time::timeout(Duration::from_secs(2), reader.read::<ToWorker>()).await;
        finish(&mut send, Duration::from_secs(2)).await;
        conn.close(1u32.into(), b"refused");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        return Err(e);
    }
    // The leader answers `Ready` with its first frame: an admission check failure
    // arrives as `Reject`, handled by the loop below.
    tracing::info!(worker_id, %peer, "joined the job");

    // Writer task: the only owner of the send stream.
    let (out_tx, mut out_rx) = mpsc::channel::<ToLeader>(16);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            write_frame(&mut send, &msg, &mut scratch, peer).await?;
        }
        finish(&mut send, Duration::from_secs(5)).await;
        Ok::<(), NetError>(())
    });
    let send = |msg: ToLeader| {
        let tx = out_tx.clone();
        async move {
            tx.send(msg).await.map_err(|_| NetError::ConnectionLost {
                peer,
                detail: "writer stopped".into(),
            })
        }
    };

    let heartbeat_every = Duration::from_millis((lease_ms / 3).max(10));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current: Option<(ShardId, Arc<AtomicBool>)> = None;
    let mut draining = false;
    let mut cancelled = false;
    send(ToLeader::RequestShard).await?;
    let result: Result<WorkerOutcome, NetError> = loop {
        tokio::select! {
            _ = shutdown.recv(), if !draining => {
                draining = true;
                tracing::info!("shutdown: finishing the current mini-batch, then leaving");
                match &current {
                    Some((_, stop)) => stop.store(true, Ordering::SeqCst),
                    None => {
                        send(ToLeader::Leaving { returned: None }).await?;
                        break Ok(WorkerOutcome::Drained);
                    }
                }
            }
            ev = ev_rx.recv() => match ev {
                None => {
                    break Err(NetError::ExecutorPanicked {
                        shard: current.as_ref().map_or(0, |c| c.0),
                        message: "executor thread exited".into(),
                    })
                }
                Some(ev) if ev.epoch() != epoch => {
                    // From an executor run of an earlier session: never let it touch this one.
                    report.stale_events += 1;
                    tracing::debug!(stale_epoch = ev.epoch(), epoch, "dropping a stale executor event");
                }
                Some(ExecEvent::Prepared { .. }) => {}
                Some(ExecEvent::Result { shard_id, index, identity, payload, .. }) => {
                    // Awaiting here is the backpressure from the leader to `emit`.
                    send(ToLeader::Result { shard_id, index, identity, payload }).await?;
                }
                Some(ExecEvent::Finished(fin)) => {
                    current = None;
                    report.images_emitted += fin.emitted as u64;
                    if fin.panicked {
                        let reason = fin.outcome.err().unwrap_or_default();
                        let _ = send(ToLeader::ShardFailed { shard_id: fin.shard_id, reason: reason.clone() }).await;
                        break Err(NetError::ExecutorPanicked { shard: fin.shard_id, message: reason });
                    }
                    let whole = fin.emitted >= fin.assigned;
                    match fin.outcome {
                        Err(reason) => send(ToLeader::ShardFailed { shard_id: fin.shard_id, reason }).await?,
                        Ok(()) if whole => {
                            report.shards_finished += 1;
                            send(ToLeader::ShardDone { shard_id: fin.shard_id }).await?;
                        }
                        Ok(()) if draining && !cancelled => {
                            send(ToLeader::Leaving { returned: Some(fin.shard_id) }).await?;
                            break Ok(WorkerOutcome::Drained);
                        }
                        Ok(()) => {} // cancelled: a twin finished the shard first
                    }
                    cancelled = false;
                    if draining {
                        send(ToLeader::Leaving { returned: None }).await?;
                        break Ok(WorkerOutcome::Drained);
                    }
                    send(ToLeader::RequestShard).await?;
                }
            },
            frame = reader.read::<ToWorker>() => match frame {
                Ok(Some(ToWorker::Assign { shard_id, indices, .. })) => {
                    if draining {
                        send(ToLeader::Leaving { returned: Some(shard_id) }).await?;
                        break Ok(WorkerOutcome::Drained);
                    }
                    tracing::debug!(shard_id, images = indices.len(), "assigned");
                    let stop = Arc::new(AtomicBool::new(false));
                    current = Some((shard_id, stop.clone()));
                    let run = Run { epoch, shard_id, indices, job_spec: job_spec.clone(), stop };
                    if run_tx.send(Cmd::Run(run)).is_err() {
                        break Err(NetError::ExecutorPanicked { shard: shard_id, message: "executor thread exited".into() });
                    }
                }
                Ok(Some(ToWorker::Ack { shard_id })) => {
                    report.shards_acked += 1;
                    if let Some((s, stop)) = &current {
                        if *s == shard_id {
                            cancelled = true;
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Ok(Some(ToWorker::JobComplete)) => {
                    tracing::info!("job complete");
                    break Ok(WorkerOutcome::JobComplete);
                }
                Ok(Some(ToWorker::Reject { reason })) => break Err(NetError::Refused { peer, reason }),
                Ok(Some(other)) => {
                    break Err(NetError::Protocol { peer, detail: format!("unexpected {other:?}") })
                }
                Ok(None) => {
                    break Err(NetError::ConnectionLost { peer, detail: "leader closed the stream".into() })
                }
                Err(e) => break Err(e),
            },
            _ = heartbeat.tick() => {
                // Skip when the queue is full: results are flowing and renew the lease.
                let _ = out_tx.try_send(ToLeader::Heartbeat);
            }
        }
    };

    // Tear down: stop a shard still running (its results are not needed any more),
    // flush the writer, close.
    if let Some((_, stop)) = &current {
        abandon_shard(ev_rx, stop, epoch, config.abandon_wait).await;
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    conn.close(0u32.into(), b"worker leaving");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    result
}

async fn connect(
    addr: SocketAddr,
    creds: &ClientCredentials,
    idle_timeout: Duration,
    timeout: Duration,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
    NetError,
> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .expect("literal address");
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(creds.client_config(transport(idle_timeout)?)?);
    let connect_err = |detail: String| NetError::Connect { addr, detail };
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| connect_err(format!("no answer within {:.1} s", timeout.as_secs_f64())))?
        .map_err(|e| match e {
            // A TLS failure: retrying cannot help (typically a certificate mismatch).
            quinn::ConnectionError::TransportError(t) => NetError::Untrusted {
                addr,
                detail: format!("{t} (is cert.der from this job's directory?)"),
            },
            e => connect_err(e.to_string()),
        })?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    Ok((endpoint, conn, send, recv))
}

/// Opens an authenticated connection and exchanges one status query.
pub(crate) async fn status_exchange(
    addr: SocketAddr,
    creds: &ClientCredentials,
    timeout: Duration,
    lift: Option<String>,
) -> Result<crate::proto::JobStatus, NetError> {
    let (endpoint, conn, mut send, recv) = connect(addr, creds, timeout * 2, timeout).await?;
    let mut scratch = Vec::new();
    let query = ToLeader::StatusQuery {
        protocol_version: PROTOCOL_VERSION,
        secret: creds.secret.clone(),
        lift,
    };
    write_frame(&mut send, &query, &mut scratch, addr).await?;
    let mut reader = FrameReader::new(recv, addr);
    let reply = tokio::time::timeout(timeout, reader.read::<ToWorker>())
        .await
        .map_err(|_| NetError::Timeout {
            peer: addr,
            what: "the status reply",
            secs: timeout.as_secs_f64(),
        })??;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match reply {
        Some(ToWorker::Status(s)) => Ok(s),
        Some(ToWorker::Reject { reason }) => Err(NetError::Refused { peer: addr, reason }),
        other => Err(NetError::Protocol {
            peer: addr,
            detail: format!("expected Status, got {other:?}"),
        }),
    }
}

fn executor_loop<E: Executor>(
    mut executor: E,
    cmds: std::sync::mpsc::Receiver<Cmd>,
    events: mpsc::Sender<ExecEvent>,
) {
    // The digest of what the executor last opened: every result is tagged with it.
    let mut digest: Digest = Identity { parts: Vec::new() }.digest();
    for cmd in cmds {
        let run = match cmd {
            Cmd::Prepare { epoch, job_spec } => {
                let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    executor.prepare(&job_spec)
                }));
                let outcome = match opened {
                    Ok(Ok(identity)) => {
                        digest = identity.digest();
                        Ok(identity)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(format!("executor panicked: {}", panic_message(&*panic))),
                };
                if events
                    .blocking_send(ExecEvent::Prepared { epoch, outcome })
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Cmd::Run(run) => run,
        };
        let Run {
            epoch,
            shard_id,
            indices,
            job_spec,
            stop,
        } = run;
        let mut emitted = 0usize;
        let mut emit = |index: u64, payload: Vec<u8>| -> Result<(), EmitError> {
            if indices.binary_search(&index).is_err() {
                return Err(EmitError::NotAssigned { index });
            }
            events
                .blocking_send(ExecEvent::Result {
                    epoch,
                    shard_id,
                    index,
                    identity: digest,
                    payload,
                })
                .map_err(|_| EmitError::Disconnected)?;
            emitted += 1;
            Ok(())
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            executor.run(&job_spec, &indices, &mut emit, &stop)
        }));
        let (outcome, panicked) = match run {
            Ok(Ok(())) => (Ok(()), false),
            Ok(Err(e)) => (Err(e.to_string()), false),
            Err(panic) => (
                Err(format!("executor panicked: {}", panic_message(&*panic))),
                true,
            ),
        };
        let fin = Finished {
            epoch,
            shard_id,
            emitted,
            assigned: indices.len(),
            outcome,
            panicked,
        };
        if events.blocking_send(ExecEvent::Finished(fin)).is_err() || panicked {
            return;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
