//! One leader-side connection: TLS accept, the `Hello` check, then a reader that
//! forwards frames to the leader loop and a writer that sends what the loop queues.
//! A refused or misbehaving peer is answered with `Reject`, logged with its address,
//! and closed; nothing it sent reaches the coordinator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::frames::{decode_raw, finish, write_frame, FrameReader};
use super::tls::{secrets_match, AUTH_RECEIVE_WINDOW};
use super::{NetError, Shutdown};
use crate::coord::Input;
use crate::proto::{
    peek_version, Identity, JobStatus, ToLeader, ToWorker, WorkerId, MAX_FRAME_LEN,
    MAX_HANDSHAKE_FRAME_LEN, PROTOCOL_VERSION,
};
use crate::sink::PayloadCheck;

/// What a connection tells the leader loop.
#[derive(Debug)]
pub enum Event {
    /// A worker passed the handshake; frames for it go to `tx`.
    Joined {
        /// Its id.
        worker: WorkerId,
        /// Name from `Hello`.
        name: String,
        /// Capacity from `Hello`.
        capacity: u32,
        /// Its writer queue.
        tx: mpsc::UnboundedSender<Outbound>,
    },
    /// An input for the coordinator.
    Input(Input),
    /// Someone wants a status snapshot (after lifting the named worker's quarantine).
    Status(oneshot::Sender<JobStatus>, Option<String>),
    /// A peer was refused (counted in the report).
    Refused {
        /// Who.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// What the leader loop asks a connection's writer to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send a frame.
    Frame(ToWorker),
    /// Send `Reject{reason}` and close the connection.
    Close(String),
}

/// Settings every connection needs.
pub struct ConnContext {
    /// Secret `Hello` must carry.
    pub secret: String,
    /// Sent in `Welcome`.
    pub job_spec: String,
    /// Sent in `Welcome`.
    pub lease_ms: u64,
    /// How long a new peer has, in all, to complete TLS, open its stream and send
    /// its first frame.
    pub handshake_timeout: Duration,
    /// How long an authenticated worker has to open the job and answer `Ready`.
    pub prepare_timeout: Duration,
    /// The job's identity, sent in `Welcome`; `Ready` must match it.
    pub identity: Option<Identity>,
    /// Checks result payloads before they reach the coordinator.
    pub payload_check: Option<PayloadCheck>,
    /// Result payload bytes received, for the ingest figure in the report.
    pub ingested_bytes: AtomicU64,
    /// Connections refused because every handshake slot was taken.
    pub refused_busy: AtomicU64,
    /// Handshake slots (connections that have not yet presented the secret).
    pub max_unauthenticated: usize,
}

impl std::fmt::Debug for ConnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnContext")
            .field("lease_ms", &self.lease_ms)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Serves one incoming connection to the end. `_guard` is dropped when it returns,
/// which is how the leader knows every connection task has finished.
/// `preauth` is this connection's slot among the unauthenticated ones; it is given
/// back as soon as the peer has presented the job secret (or is gone).
pub async fn serve(
    incoming: quinn::Incoming,
    worker: WorkerId,
    ctx: Arc<ConnContext>,
    events: mpsc::Sender<Event>,
    shutdown: Shutdown,
    _guard: mpsc::Sender<()>,
    preauth: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = incoming.remote_address();
    let span = tracing::info_span!("conn", %peer, worker);
    async move {
        if let Err(e) = serve_inner(incoming, peer, worker, &ctx, &events, shutdown, preauth).await
        {
            tracing::debug!(error = %e, "connection ended");
        }
    }
    .instrument(span)
    .await
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    peer: SocketAddr,
    events: &mpsc::Sender<Event>,
    reason: String,
) {
    tracing::warn!(%peer, %reason, "refusing peer");
    let mut scratch = Vec::new();
    let _ = write_frame(
        send,
        &ToWorker::Reject {
            reason: reason.clone(),
        },
        &mut scratch,
        peer,
    )
    .await;
    finish(send, Duration::from_secs(1)).await;
    conn.close(1u32.into(), reason.as_bytes());
    let _ = events.send(Event::Refused { peer, reason }).await;
}

async fn serve_inner(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    worker: WorkerId,
    ctx: &ConnContext,
    events: &mpsc::Sender<Event>,
    mut shutdown: Shutdown,
    preauth: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), NetError> {
    // One deadline for TLS, the stream and the first frame together.
    let timeout = ctx.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = |what| NetError::Timeout {
        peer,
        what,
        secs: timeout.as_secs_f64(),
    };
    let connecting = incoming.accept().map_err(|e| NetError::ConnectionLost {
        peer,
        detail: e.to_string(),
    })?;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // TLS failed: typically a worker that does not pin our certificate.
            tracing::warn!(%peer, error = %e, "TLS handshake failed; peer refused");
            let _ = events
                .send(Event::Refused {
                    peer,
                    reason: format!("TLS handshake failed: {e}"),
                })
                .await;
            return Ok(());
        }
        Err(_) => return Err(timed_out("the TLS handshake")),
    };
    let (mut send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(NetError::ConnectionLost {
                peer,
                detail: e.to_string(),
            })
        }
        Err(_) => {
            conn.close(1u32.into(), b"no stream opened");
            return Err(timed_out("a stream"));
        }
    };
    let mut reader = FrameReader::new(recv, peer);
    reader.set_max_frame(MAX_HANDSHAKE_FRAME_LEN);
    let first = match tokio::time::timeout_at(deadline, reader.read_raw()).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            refuse(
                &conn,
                &mut send,
                peer,
                events,
                format!("bad first frame: {e}"),
            )
            .await;
            return Ok(());
        }
        Err(_) => {
            refuse(
                &conn,
                &mut send,
                peer,
                events,
                format!(
                    "no Hello within the {:.0} s handshake deadline",
                    timeout.as_secs_f64()
                ),
            )
            .await;
            return Ok(());
        }
    };
    let hello = match decode_raw::<ToLeader>(&first, peer) {
        Ok(msg) => msg,
        Err(e) => {
            let reason = match peek_version(&first) {
                Some(v) if v != PROTOCOL_VERSION => {
                    format!("protocol version {v} is not supported; this leader speaks version {PROTOCOL_VERSION}")
                }
                _ => format!("malformed handshake: {e}"),
            };
            refuse(&conn, &mut send, peer, events, reason).await;
            return Ok(());
        }
    };
    let (version, secret) = match &hello {
        ToLeader::Hello {
            protocol_version,
            secret,
            ..
        }
        | ToLeader::StatusQuery {
            protocol_version,
            secret,
            ..
        } => (*protocol_version, secret.as_str()),
        other => {
            let reason = format!("expected Hello, got {}", variant_name(other));
            refuse(&conn, &mut send, peer, events, reason).await;
            return Ok(());
        }
    };
    if version != PROTOCOL_VERSION {
        let reason =
            format!("protocol version {version} is not supported; this leader speaks version {PROTOCOL_VERSION}");
        refuse(&conn, &mut send, peer, events, reason).await;
        return Ok(());
    }
    if !secrets_match(secret, &ctx.secret) {
        refuse(&conn, &mut send, peer, events, "wrong job secret".into()).await;
        return Ok(());
    }
    // Authenticated: free the pre-authentication slot, open the windows, lift the
    // frame bound to what results need.
    drop(preauth);
    conn.set_receive_window(
        quinn::VarInt::from_u64(AUTH_RECEIVE_WINDOW).unwrap_or(quinn::VarInt::MAX),
    );
    reader.set_max_frame(MAX_FRAME_LEN);
    let mut scratch = Vec::new();
    let (name, capacity) = match hello {
        ToLeader::Hello {
            worker_name,
            capacity,
            ..
        } => (worker_name, capacity),
        ToLeader::StatusQuery { lift, .. } => {
            // StatusQuery: one snapshot, then close.
            let (tx, rx) = oneshot::channel();
            if events.send(Event::Status(tx, lift)).await.is_ok() {
                if let Ok(status) = rx.await {
                    write_frame(&mut send, &ToWorker::Status(status), &mut scratch, peer).await?;
                }
            }
            finish(&mut send, Duration::from_secs(2)).await;
            conn.close(0u32.into(), b"status sent");
            return Ok(());
        }
        _ => unreachable!("matched above"),
    };
    let welcome = ToWorker::Welcome {
        worker_id: worker,
        job_spec: ctx.job_spec.clone(),
        lease_ms: ctx.lease_ms,
        identity: ctx
            .identity
            .clone()
            .unwrap_or(Identity { parts: Vec::new() }),
    };
    write_frame(&mut send, &welcome, &mut scratch, peer).await?;
    tracing::info!(%name, capacity, "worker authenticated; waiting for it to open the job");
    if let Err(reason) = admit(&mut reader, ctx, &name).await {
        refuse(&conn, &mut send, peer, events, reason).await;
        return Ok(());
    }
    tracing::info!(%name, "worker admitted");
    let (tx, rx) = mpsc::unbounded_channel();
    if events
        .send(Event::Joined {
            worker,
            name,
            capacity,
            tx: tx.clone(),
        })
        .await
        .is_err()
    {
        return Ok(()); // leader loop gone
    }
    let writer = tokio::spawn(write_loop(conn.clone(), send, rx, peer, scratch).in_current_span());
    let reason = loop {
        let frame = tokio::select! {
            frame = reader.read::<ToLeader>() => frame,
            _ = shutdown.recv() => break "leader shutting down".to_string(),
        };
        match frame {
            Ok(Some(msg)) => {
                if let ToLeader::Result { index, payload, .. } = &msg {
                    ctx.ingested_bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    if let Some(Err(problem)) =
                        ctx.payload_check.as_ref().map(|c| c(*index, payload))
                    {
                        let reason = format!("bad result payload for image {index}: {problem}");
                        tracing::warn!(%peer, %reason, "closing the worker");
                        let _ = events
                            .send(Event::Input(Input::Fault {
                                worker,
                                reason: reason.clone(),
                            }))
                            .await;
                        break reason;
                    }
                }
                if events
                    .send(Event::Input(Input::Message { worker, msg }))
                    .await
                    .is_err()
                {
                    break "leader loop gone".into();
                }
            }
            Ok(None) => break "worker closed its stream".into(),
            Err(e @ NetError::ConnectionLost { .. }) => break e.to_string(),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad frame from worker; closing it");
                let _ = tx.send(Outbound::Close(e.to_string()));
                break e.to_string();
            }
        }
    };
    tracing::info!(%reason, "worker connection ended");
    let _ = events
        .send(Event::Input(Input::Disconnected { worker }))
        .await;
    drop(tx);
    let _ = writer.await;
    Ok(())
}

async fn write_loop(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    peer: SocketAddr,
    mut scratch: Vec<u8>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outbound::Frame(msg) => {
                if write_frame(&mut send, &msg, &mut scratch, peer)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Outbound::Close(reason) => {
                let msg = ToWorker::Reject {
                    reason: reason.clone(),
                };
                let _ = write_frame(&mut send, &msg, &mut scratch, peer).await;
                finish(&mut send, Duration::from_secs(1)).await;
                conn.close(1u32.into(), reason.as_bytes());
                return;
            }
        }
    }
    finish(&mut send, Duration::from_secs(2)).await;
}

/// Waits for the worker's `Ready` and compares its identity with the job's.
/// `Err` is the refusal, naming the worker, the file and both hashes.
async fn admit(
    reader: &mut FrameReader<quinn::RecvStream>,
    ctx: &ConnContext,
    name: &str,
) -> Result<(), String> {
    let answer = tokio::time::timeout(ctx.prepare_timeout, reader.read::<ToLeader>())
        .await
        .map_err(|_| {
            format!(
                "worker {name} did not open the job within {:.0} s",
                ctx.prepare_timeout.as_secs_f64()
            )
        })?;
    match answer {
        Ok(Some(ToLeader::Ready { identity })) => match &ctx.identity {
            Some(job) => match identity.mismatch(job, name) {
                Some(why) => {
                    tracing::error!(%name, %why, "worker computes with other inputs; refused");
                    Err(why)
                }
                None => Ok(()),
            },
            None => Ok(()),
        },
        Ok(Some(ToLeader::CannotStart { reason })) => {
            tracing::error!(%name, %reason, "worker cannot open the job; refused");
            Err(format!("worker {name} cannot open the job: {reason}"))
        }
        Ok(Some(other)) => Err(format!("expected Ready, got {}", variant_name(&other))),
        Ok(None) => Err(format!("worker {name} left before opening the job")),
        Err(e) => Err(format!("worker {name}: {e}")),
    }
}

fn variant_name(msg: &ToLeader) -> &'static str {
    match msg {
        ToLeader::Hello { .. } => "Hello",
        ToLeader::StatusQuery { .. } => "StatusQuery",
        ToLeader::RequestShard => "RequestShard",
        ToLeader::Result { .. } => "Result",
        ToLeader::ShardDone { .. } => "ShardDone",
        ToLeader::ShardFailed { .. } => "ShardFailed",
        ToLeader::Heartbeat => "Heartbeat",
        ToLeader::Leaving { .. } => "Leaving",
        ToLeader::Ready { .. } => "Ready",
        ToLeader::CannotStart { .. } => "CannotStart",
    }
}
