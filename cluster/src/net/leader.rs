//! The leader driver: binds where it is told, accepts and authenticates workers
//! ([`super::conn`]), pumps the sans-io [`Coord`], and feeds the [`ResultSink`] on a
//! dedicated thread.
//!
//! Backpressure: the sink thread takes appends from a bounded channel; when the disk
//! is slow the loop waits on it, stops draining the bounded event channel, connection
//! readers stop reading, QUIC flow control stops the workers' sends, and their
//! executors block in `emit`. Memory stays bounded by the channel sizes and windows.
//!
//! Durability: the coordinator emits `Sync{shard}` after the shard's last `Persist`;
//! the loop batches the syncs it has and sends them to the sink thread behind the
//! appends, which fsyncs once and reports the shards durable; only then are they
//! acknowledged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::conn::{serve, ConnContext, Event, Outbound};
use super::status::{spawn_progress, ProgressHook};
use super::tls::{
    leader_transport, write_atomic, Credentials, ADDR_FILE, COMPLETE_FILE, INCOMING_BUFFER,
};
use super::{NetError, Shutdown, ShutdownHandle};
use crate::coord::{Coord, CoordConfig, CoordStats, Input, Output, ShardRecord};
use crate::proto::{Identity, JobStatus, ShardId, WorkerId};
use crate::sink::ResultSink;

/// How to run a leader.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The only address the leader binds (use a port of 0 to let the OS pick; the
    /// bound address is written to `leader.addr` in the job directory).
    pub listen: SocketAddr,
    /// Job directory: credentials, `leader.addr`. Shared storage on a cluster.
    pub job_dir: PathBuf,
    /// The job's TOML spec, handed to every worker in `Welcome`.
    pub job_spec: String,
    /// Images in the job (indices `0..num_images`).
    pub num_images: u64,
    /// Images per shard.
    pub shard_size: u64,
    /// Lease length; workers heartbeat at a third of it.
    pub lease: Duration,
    /// Speculation threshold (see [`CoordConfig::speculate_after`]); `None` disables.
    pub speculate_after: Option<Duration>,
    /// Failed shards in a row before a worker is quarantined (see [`CoordConfig`]).
    pub quarantine_after: u32,
    /// Distinct workers a shard may fail on before the job fails.
    pub shard_fail_workers: u32,
    /// How long a shard that failed on every connected worker waits for another.
    pub failure_grace: Duration,
    /// The job's identity; workers must present the same in `Ready`, results carry
    /// its digest. `None`: no check (tests of the transport alone).
    pub identity: Option<Identity>,
    /// Time a new peer gets, in all, for TLS, its stream and its first frame.
    pub handshake_timeout: Duration,
    /// Time an authenticated worker gets to open the job and answer `Ready`.
    pub prepare_timeout: Duration,
    /// Connections that may be in the handshake at once; more are refused at once.
    pub max_unauthenticated: usize,
    /// QUIC idle timeout: a peer silent this long (even keep-alives) is lost.
    pub idle_timeout: Duration,
    /// How long to wait for workers to take `JobComplete` and leave before closing.
    pub linger: Duration,
    /// Called with a status snapshot at a fixed interval while the job runs (progress
    /// bars and log lines live with the caller); `None`: no progress reports.
    pub progress: Option<ProgressHook>,
}

impl LeaderConfig {
    /// Defaults for everything but the essentials: 64-image shards, 30 s leases,
    /// speculation after 30 s, quarantine after 2 failures in a row, a shard fails the
    /// job on 3 workers or after 300 s of grace, a 10 s handshake, 64 peers in it.
    pub fn new(
        listen: SocketAddr,
        job_dir: impl Into<PathBuf>,
        job_spec: impl Into<String>,
        num_images: u64,
    ) -> Self {
        Self {
            listen,
            job_dir: job_dir.into(),
            job_spec: job_spec.into(),
            num_images,
            shard_size: 64,
            lease: Duration::from_secs(30),
            speculate_after: Some(Duration::from_secs(30)),
            quarantine_after: 2,
            shard_fail_workers: 3,
            failure_grace: Duration::from_secs(300),
            identity: None,
            handshake_timeout: Duration::from_secs(10),
            prepare_timeout: Duration::from_secs(1800),
            max_unauthenticated: 64,
            idle_timeout: Duration::from_secs(20),
            linger: Duration::from_secs(5),
            progress: None,
        }
    }
}

/// What a finished leader run did.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Final progress snapshot.
    pub status: JobStatus,
    /// Coordinator counters (accepted, duplicates, expiries, reassignments, ...).
    pub stats: CoordStats,
    /// Connections refused (bad secret, version, certificate, frames).
    pub refused: u64,
    /// The reasons, in order (bounded to the first 100).
    pub refusals: Vec<String>,
    /// Result payload bytes received.
    pub ingested_bytes: u64,
    /// fsyncs performed.
    pub syncs: u64,
    /// Wall time of this run.
    pub elapsed_s: f64,
    /// Connections refused before the handshake because `max_unauthenticated`
    /// peers were already in it.
    pub refused_busy: u64,
    /// Per-shard counters (assignments, accepted copies by worker, lapsed leases,
    /// dropped duplicates, failures, who completed it).
    pub shards: Vec<ShardRecord>,
}

/// Asks a running leader for a status snapshot, in process.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    pub(super) events: mpsc::Sender<Event>,
}

impl StatusHandle {
    /// The current snapshot, or `None` once the leader has stopped.
    pub async fn status(&self) -> Option<JobStatus> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Status(tx, None)).await.ok()?;
        rx.await.ok()
    }
}

/// A bound leader, ready to [`Leader::run`].
pub struct Leader {
    config: LeaderConfig,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    ctx: Arc<ConnContext>,
    coord: Coord,
    sink: Box<dyn ResultSink>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    shutdown: ShutdownHandle,
}

/// Binds and runs a leader to completion. See [`Leader`] for finer control.
pub async fn run_leader<S: ResultSink>(
    config: LeaderConfig,
    sink: S,
) -> Result<JobReport, NetError> {
    Leader::bind(config, sink)?.run().await
}

/// Events buffered between connections and the loop; bounds memory under a slow sink.
const EVENT_QUEUE: usize = 64;
/// Appends buffered for the sink thread (each up to one result payload).
const SINK_QUEUE: usize = 32;

impl Leader {
    /// Loads or creates the job credentials, reads the store's durable indices, binds
    /// `config.listen` and writes `leader.addr`. Must be called inside a tokio runtime.
    pub fn bind<S: ResultSink>(config: LeaderConfig, sink: S) -> Result<Self, NetError> {
        let creds = Credentials::load_or_create(&config.job_dir)?;
        let mut server = creds.server_config(leader_transport(config.idle_timeout)?)?;
        // Bound what peers that have not been accepted yet can make us buffer.
        let slots = config.max_unauthenticated.max(1);
        server
            .max_incoming(slots)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER * slots as u64);
        let endpoint =
            quinn::Endpoint::server(server, config.listen).map_err(|source| NetError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        write_atomic(
            &config.job_dir.join(ADDR_FILE),
            format!("{local_addr}\n").as_bytes(),
            0o644,
        )?;
        let durable = sink.durable_indices();
        let coord_config = CoordConfig {
            num_images: config.num_images,
            shard_size: config.shard_size,
            lease: config.lease,
            speculate_after: config.speculate_after,
            quarantine_after: config.quarantine_after,
            shard_fail_workers: config.shard_fail_workers,
            failure_grace: config.failure_grace,
            identity: config.identity.as_ref().map(Identity::digest),
        };
        let payload_check = sink.payload_check();
        let coord = Coord::new(Instant::now(), coord_config, durable);
        let marker = config.job_dir.join(COMPLETE_FILE);
        if coord.is_complete() {
            write_atomic(&marker, b"", 0o644)?;
        } else if marker.exists() {
            // A stale marker (the job grew, or the store was replaced): workers must wait.
            std::fs::remove_file(&marker).map_err(|source| NetError::File {
                path: marker.clone(),
                what: "remove stale completion marker",
                source,
            })?;
        }
        tracing::info!(%local_addr, job_dir = %config.job_dir.display(), images = config.num_images,
            resumed = coord.stats().resumed, "leader listening");
        let ctx = Arc::new(ConnContext {
            secret: creds.secret,
            job_spec: config.job_spec.clone(),
            lease_ms: config.lease.as_millis() as u64,
            handshake_timeout: config.handshake_timeout,
            prepare_timeout: config.prepare_timeout,
            identity: config.identity.clone(),
            payload_check,
            ingested_bytes: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            max_unauthenticated: slots,
        });
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        Ok(Self {
            config,
            endpoint,
            local_addr,
            ctx,
            coord,
            sink: Box::new(sink),
            events_tx,
            events_rx,
            shutdown: ShutdownHandle::new(),
        })
    }

    /// The bound address (also in `leader.addr`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the leader when triggered (the job resumes on restart).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// In-process status queries.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            events: self.events_tx.clone(),
        }
    }

    /// Runs the job until every shard is durable, it fails, or shutdown is triggered.
    pub async fn run(self) -> Result<JobReport, NetError> {
        if let Some(hook) = self.config.progress.clone() {
            spawn_progress(self.status_handle(), hook);
        }
        let Leader {
            config,
            endpoint,
            ctx,
            mut coord,
            sink,
            events_tx,
            mut events_rx,
            shutdown,
            ..
        } = self;
        let started = Instant::now();
        // Connection tasks get their own shutdown so that completion can stop them too.
        let conns_stop = ShutdownHandle::new();
        let (guard_tx, mut guard_rx) = mpsc::channel::<()>(1);
        let acceptor = tokio::spawn(accept_loop(
            endpoint.clone(),
            ctx.clone(),
            events_tx.clone(),
            conns_stop.subscribe(),
            guard_tx,
        ));
        drop(events_tx);
        let (sink_tx, sink_rx) = mpsc::channel::<SinkCmd>(SINK_QUEUE);
        let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<SinkEvent>();
        let sink_thread = std::thread::Builder::new()
            .name("result-sink".into())
            .spawn(move || sink_loop(sink, sink_rx, durable_tx))
            .map_err(|e| NetError::Tls(format!("cannot start the sink thread: {e}")))?;

        let mut writers: HashMap<WorkerId, mpsc::UnboundedSender<Outbound>> = HashMap::new();
        let mut refusals = Vec::new();
        let mut refused = 0u64;
        let mut syncs = 0u64;
        let mut stop = shutdown.subscribe();
        let mut result: Result<(), NetError> = Ok(());
        let mut complete = false;
        'main: loop {
            // Carry out everything the coordinator decided.
            let mut to_sync: Vec<ShardId> = Vec::new();
            while let Some(out) = coord.poll_output() {
                match out {
                    Output::Send { worker, msg } => {
                        if let Some(tx) = writers.get(&worker) {
                            let _ = tx.send(Outbound::Frame(msg));
                        }
                    }
                    Output::Persist { index, payload, .. } => {
                        if sink_tx
                            .send(SinkCmd::Append { index, payload })
                            .await
                            .is_err()
                        {
                            break 'main;
                        }
                    }
                    Output::Sync { shard_id } => to_sync.push(shard_id),
                    Output::Close { worker, reason } => {
                        if let Some(tx) = writers.remove(&worker) {
                            let _ = tx.send(Outbound::Close(reason));
                        }
                    }
                    Output::Complete => complete = true,
                    Output::Failed { reason } => {
                        result = Err(NetError::JobFailed(reason));
                        break 'main;
                    }
                }
            }
            if !to_sync.is_empty()
                && sink_tx
                    .send(SinkCmd::Sync { shards: to_sync })
                    .await
                    .is_err()
            {
                break 'main;
            }
            if complete {
                break;
            }
            let deadline = coord.poll_timeout();
            let timer = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.recv() => {
                    tracing::warn!("leader shutdown requested; the job resumes from the store on restart");
                    break;
                }
                ev = durable_rx.recv() => match ev {
                    Some(SinkEvent::Durable(shards)) => {
                        syncs += 1;
                        coord.handle(Instant::now(), Input::Durable { shards });
                    }
                    Some(SinkEvent::Failed(e)) => { result = Err(NetError::Sink(e)); break; }
                    None => break,
                },
                ev = events_rx.recv() => match ev {
                    Some(Event::Joined { worker, name, capacity, tx }) => {
                        writers.insert(worker, tx);
                        coord.handle(Instant::now(), Input::Joined { worker, name, capacity });
                    }
                    Some(Event::Input(input)) => {
                        if let Input::Disconnected { worker } = &input {
                            writers.remove(worker);
                        }
                        coord.handle(Instant::now(), input);
                    }
                    Some(Event::Status(reply, lift)) => {
                        if let Some(name) = lift {
                            coord.handle(Instant::now(), Input::Lift { name });
                        }
                        let _ = reply.send(coord.status(Instant::now()));
                    }
                    Some(Event::Refused { reason, .. }) => {
                        refused += 1;
                        if refusals.len() < 100 { refusals.push(reason); }
                    }
                    None => break,
                },
                _ = timer => coord.handle_timeout(Instant::now()),
            }
        }

        // Wind down: let writers flush (JobComplete), give workers `linger` to leave,
        // then stop the remaining connections and the endpoint.
        drop(writers);
        drop(sink_tx);
        // The acceptor holds a guard clone; stop it so the guard counts connections only.
        acceptor.abort();
        let _ = acceptor.await;
        if complete {
            let _ = tokio::time::timeout(config.linger, async {
                loop {
                    tokio::select! {
                        _ = guard_rx.recv() => break,
                        ev = events_rx.recv() => match ev {
                            Some(Event::Status(reply, _)) => { let _ = reply.send(coord.status(Instant::now())); }
                            Some(_) => {}
                            None => break,
                        },
                    }
                }
            })
            .await;
        }
        conns_stop.trigger();
        endpoint.close(0u32.into(), b"leader stopping");
        drop(events_rx);
        let _ = tokio::time::timeout(Duration::from_secs(2), guard_rx.recv()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        // The sink thread drains what it was given and exits when its channel closes.
        let sink_result = tokio::task::spawn_blocking(move || sink_thread.join()).await;
        if let Ok(Ok(Err(e))) = sink_result {
            if result.is_ok() {
                result = Err(NetError::Sink(e));
            }
        }
        while let Ok(ev) = durable_rx.try_recv() {
            if let SinkEvent::Durable(shards) = ev {
                syncs += 1;
                coord.handle(Instant::now(), Input::Durable { shards });
            }
        }
        result?;
        if coord.is_complete() {
            write_atomic(&config.job_dir.join(COMPLETE_FILE), b"", 0o644)?;
        }
        let status = coord.status(Instant::now());
        if !coord.is_complete() {
            return Err(NetError::Interrupted {
                done: status.shards.done,
                total: shard_total(&status),
            });
        }
        let report = JobReport {
            refused_busy: ctx.refused_busy.load(Ordering::Relaxed),
            shards: coord.shard_records(),
            stats: coord.stats(),
            status,
            refused,
            refusals,
            ingested_bytes: ctx.ingested_bytes.load(Ordering::Relaxed),
            syncs,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            images = report.status.images_done,
            accepted = report.stats.accepted,
            duplicates = report.stats.duplicates,
            refused,
            elapsed_s = report.elapsed_s,
            "job complete"
        );
        Ok(report)
    }
}

fn shard_total(s: &JobStatus) -> u64 {
    s.shards.pending + s.shards.leased + s.shards.syncing + s.shards.done
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<ConnContext>,
    events: mpsc::Sender<Event>,
    shutdown: Shutdown,
    guard: mpsc::Sender<()>,
) {
    let mut next_id: WorkerId = 1;
    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.max_unauthenticated));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(preauth) = slots.clone().try_acquire_owned() else {
            // Every handshake slot is taken (a flood): refuse before any TLS work.
            ctx.refused_busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %incoming.remote_address(), "too many connections in the handshake; refused");
            incoming.refuse();
            continue;
        };
        let worker = next_id;
        next_id += 1;
        tokio::spawn(serve(
            incoming,
            worker,
            ctx.clone(),
            events.clone(),
            shutdown.clone(),
            guard.clone(),
            preauth,
        ));
    }
}

enum SinkCmd {
    Append { index: u64, payload: Vec<u8> },
    Sync { shards: Vec<ShardId> },
}

enum SinkEvent {
    Durable(Vec<ShardId>),
    Failed(crate::SinkError),
}

/// The sink thread: appends in order, fsyncs once per run of queued syncs. Appends
/// that arrive while it syncs wait in the bounded channel (that is the backpressure).
fn sink_loop(
    mut sink: Box<dyn ResultSink>,
    mut rx: mpsc::Receiver<SinkCmd>,
    events: mpsc::UnboundedSender<SinkEvent>,
) -> Result<(), crate::SinkError> {
    let mut carry: Option<SinkCmd> = None;
    while let Some(cmd) = carry.take().or_else(|| rx.blocking_recv()) {
        let outcome = match cmd {
            SinkCmd::Append { index, payload } => sink.append(index, &payload).map(|fresh| {
                if !fresh {
                    tracing::debug!(index, "sink already held this image; ignored");
                }
            }),
            SinkCmd::Sync { mut shards } => sink.sync().map(|()| {
                // Syncs queued right behind this one have all their appends before
                // this fsync (each Sync follows its own appends), so one fsync covers them.
                loop {
                    match rx.try_recv() {
                        Ok(SinkCmd::Sync { shards: more }) => shards.extend(more),
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = events.send(SinkEvent::Durable(shards));
            }),
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "result sink failed; stopping the job");
            let msg = e.to_string();
            let _ = events.send(SinkEvent::Failed(e));
            return Err(crate::SinkError::new(
                "result sink",
                std::io::Error::other(msg),
            ));
        }
    }
    Ok(())
}
