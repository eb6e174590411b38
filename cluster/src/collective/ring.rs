//! [`RingAllReduce`]: the CPU backend, a ring all-reduce over TCP.
//!
//! Rank `r` sends to rank `r+1` and receives from rank `r-1` (mod `n`) over two
//! one-directional connections. The buffer is cut into `n` segments; in `n-1`
//! reduce-scatter steps each segment travels once around the ring collecting every
//! rank's contribution, then in `n-1` all-gather steps the finished segments travel
//! around again and overwrite the partial ones. Each rank sends and receives
//! `2(n-1)/n` of the buffer, independent of `n`.
//!
//! Segment `j` starts at rank `j` and is summed as `((v_j + v_{j+1}) + v_{j+2}) + ...`
//! on its way round, then copied: every rank ends with the same bits.
//!
//! Segments move in chunks of [`RingConfig::chunk_floats`], pipelined: a chunk received
//! at step `t` is queued for step `t+1` at once. The calling thread only receives and
//! reduces; a writer thread per communicator drains an unbounded queue to the socket,
//! so no rank ever blocks on a send while its predecessor waits for it to read (the
//! classic ring deadlock), and a large buffer streams instead of being sent whole.
//!
//! Failures: reads wake every [`RingConfig::poll_interval`] to check the
//! [`RingConfig::op_timeout`] and to send the next rank a keepalive ("I am in the
//! collective, waiting"), so only the successor of a rank that is really silent times
//! out. A failed send surfaces when the next frame is queued. A rank that sees a failure sends an abort frame naming the failed rank to its
//! successor, so every survivor's error blames the same rank instead of its neighbour.

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wire::{self, Header, Hello, Kind, ACK_BYTES, HEADER_BYTES, HELLO_BYTES};
use super::{AllReduce, CollectiveError, Rendezvous};

/// Tuning of the ring. All ranks must use the same `chunk_floats` (checked in the
/// handshake); the timeouts are local.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Floats per frame. Big enough that the 40-byte header and the per-frame work are
    /// noise, small enough that a segment of ResNet18's gradient (11.2M floats) is
    /// pipelined over many frames. Default 256Ki floats (1 MiB).
    pub chunk_floats: usize,
    /// How long [`RingAllReduce::connect`] tries to reach the next rank and waits for the
    /// previous one. Default 60 s.
    pub connect_timeout: Duration,
    /// How long a collective waits for bytes from the previous rank (or a write to the
    /// next rank blocks) before declaring it hung. A rank waiting inside a collective
    /// sends keepalives, so this is the time the previous rank may spend *outside* the
    /// collective (data loading, checkpoints) or dead: it bounds skew, not transfer
    /// time. Must be well above `poll_interval`. Default 300 s.
    pub op_timeout: Duration,
    /// How often a waiting rank sends a keepalive and checks `op_timeout`: the
    /// granularity of timeout detection. Default 100 ms.
    pub poll_interval: Duration,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            chunk_floats: 256 * 1024,
            connect_timeout: Duration::from_secs(60),
            op_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// A CPU all-reduce communicator over a TCP ring. See the module docs for the algorithm.
pub struct RingAllReduce {
    /// This rank.
    rank: usize,
    /// Ranks in the gang.
    world_size: usize,
    /// The connections; `None` for a world of one, where every collective is a no-op.
    links: Option<Links>,
    /// Sequence number of the next collective, carried in every frame.
    op_seq: u64,
    /// The first failure, once there was one: the ring's state is unknown after it.
    poisoned: Option<String>,
    /// Tuning, fixed at connect time.
    config: RingConfig,
}

/// The two connections of a rank of a ring with more than one rank.
struct Links {
    /// Rank we receive from.
    prev_rank: usize,
    /// Its address, for errors.
    prev_addr: SocketAddr,
    /// Rank we send to.
    next_rank: usize,
    /// Its address, for errors.
    next_addr: SocketAddr,
    /// Read side, from `prev_rank`; has a read timeout of `poll_interval`.
    prev: TcpStream,
    /// A handle on the write side, to cut a writer that is stuck on a dead peer.
    next_shutdown: TcpStream,
    /// Frames for the writer thread; `None` once it has been closed.
    to_writer: Option<mpsc::Sender<Vec<u8>>>,
    /// Buffers the writer has finished with, reused so large collectives do not fault in
    /// fresh pages for every chunk.
    pool: mpsc::Receiver<Vec<u8>>,
    /// The writer's error, if its socket failed.
    writer_error: Arc<Mutex<Option<std::io::Error>>>,
    /// The writer thread.
    writer: Option<JoinHandle<()>>,
    /// Receive buffer for one payload.
    scratch: Vec<u8>,
    /// How often a waiting rank sends a keepalive (the poll interval).
    keepalive_every: Duration,
    /// When this rank last sent one: keepalives go out on a clock, not only when a read
    /// times out, because a predecessor's own keepalives can keep every read busy.
    last_keepalive: Cell<Instant>,
}

/// Which collective is running, for error messages and frame checks.
#[derive(Debug, Clone, Copy)]
enum Op {
    AllReduce,
    Barrier,
    Broadcast,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all-reduce",
            Op::Barrier => "barrier",
            Op::Broadcast => "broadcast",
        }
    }
}

impl RingAllReduce {
    /// Joins the ring described by `rendezvous`. `listener` must be the socket this rank
    /// published in the rendezvous (`rendezvous.peers[rank]`); it is closed once the
    /// previous rank has connected. Returns after both neighbours have completed the
    /// handshake (same session, world size and chunk size), or fails naming the peer.
    pub fn connect(
        listener: TcpListener,
        rendezvous: &Rendezvous,
        config: RingConfig,
    ) -> Result<Self, CollectiveError> {
        rendezvous.validate()?;
        let (rank, world_size) = (rendezvous.rank, rendezvous.world_size);
        if config.chunk_floats == 0 || config.chunk_floats > (u32::MAX / 4) as usize {
            return Err(CollectiveError::Protocol {
                peer: rank,
                addr: rendezvous.peers[rank],
                detail: format!(
                    "RingConfig::chunk_floats = {} is outside 1..={}",
                    config.chunk_floats,
                    u32::MAX / 4
                ),
            });
        }
        let mut ring = RingAllReduce {
            rank,
            world_size,
            links: None,
            op_seq: 0,
            poisoned: None,
            config,
        };
        if world_size > 1 {
            ring.links = Some(Links::establish(listener, rendezvous, &ring.config)?);
        }
        Ok(ring)
    }

    /// Turns any error into a poisoned communicator and tells the next rank which rank
    /// failed, so the failure travels round the ring instead of each rank timing out.
    fn fail(&mut self, err: CollectiveError) -> CollectiveError {
        let (failed_rank, reported_by) = match &err {
            CollectiveError::PeerFailed {
                failed_rank,
                reported_by,
                ..
            } => (*failed_rank, *reported_by),
            other => (other.failed_rank().unwrap_or(self.rank), self.rank),
        };
        let reason = match &err {
            CollectiveError::PeerFailed { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        tracing::warn!(rank = self.rank, failed_rank, error = %err, "ring collective failed");
        self.poisoned = Some(err.to_string());
        if let Some(links) = self.links.as_mut() {
            links.send_abort(failed_rank, reported_by, &reason);
        }
        err
    }

    fn check_usable(&self) -> Result<(), CollectiveError> {
        match &self.poisoned {
            Some(first) => Err(CollectiveError::Poisoned {
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Sums `buf` over all ranks in place (reduce-scatter, then all-gather).
    fn all_reduce_sum(&mut self, buf: &mut [f32], op: Op) -> Result<(), CollectiveError> {
        self.check_usable()?;
        let seq = self.op_seq;
        self.op_seq += 1;
        let (rank, n, chunk) = (self.rank, self.world_size, self.config.chunk_floats);
        let op_timeout = self.config.op_timeout;
        let Some(links) = self.links.as_mut() else {
            return Ok(());
        };
        let result = (|| {
            let total = buf.len();
            let steps = 2 * (n - 1);
            let kind_of = |t: usize| {
                if t < n - 1 {
                    Kind::ReduceScatter
                } else {
                    Kind::AllGather
                }
            };
            let first = segment(total, n, rank);
            for (offset, count) in chunks(first.clone(), chunk) {
                links.send_data(
                    Header {
                        kind: Kind::ReduceScatter,
                        op_seq: seq,
                        total_len: total as u64,
                        offset: offset as u64,
                        count: count as u32,
                        step: 0,
                    },
                    &buf[offset..offset + count],
                    op,
                )?;
            }
            for t in 0..steps {
                let kind = kind_of(t);
                let seg_index = if t < n - 1 {
                    (rank + 2 * n - t - 1) % n
                } else {
                    (rank + n - (t - (n - 1))) % n
                };
                for (offset, count) in chunks(segment(total, n, seg_index), chunk) {
                    let expected = Header {
                        kind,
                        op_seq: seq,
                        total_len: total as u64,
                        offset: offset as u64,
                        count: count as u32,
                        step: t as u32,
                    };
                    let payload = links.receive(expected, op, op_timeout)?;
                    let dst = &mut buf[offset..offset + count];
                    match kind {
                        Kind::ReduceScatter => wire::add_f32s(payload, dst),
                        _ => wire::copy_f32s(payload, dst),
                    }
                    if t + 1 < steps {
                        links.send_data(
                            Header {
                                kind: kind_of(t + 1),
                                step: (t + 1) as u32,
                                ..expected
                            },
                            dst,
                            op,
                        )?;
                    }
                }
            }
            Ok(())
        })();
        result.map_err(|e| self.fail(e))
    }
}

impl AllReduce for RingAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_mean_f32(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_sum(buf, Op::AllReduce)?;
        if self.world_size > 1 {
            let n = self.world_size as f32;
            for x in buf.iter_mut() {
                *x /= n;
            }
        }
        Ok(())
    }

    /// An all-reduce of an empty buffer: every step still sends one empty frame, and a
    /// rank's last frame depends on every other rank's first, so no rank leaves before
    /// all have arrived.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_reduce_sum(&mut [], Op::Barrier)
    }

    /// A pipelined chain `root -> root+1 -> ... -> root-1`, chunk by chunk.
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.check_usable()?;
        if root >= self.world_size {
            return Err(CollectiveError::InvalidRank {
                rank: root,
                world_size: self.world_size,
                context: ", as broadcast root",
            });
        }
        let seq = self.op_seq;
        self.op_seq += 1;
        let (rank, chunk, op_timeout) =
            (self.rank, self.config.chunk_floats, self.config.op_timeout);
        let Some(links) = self.links.as_mut() else {
            return Ok(());
        };
        let forward = links.next_rank != root;
        let result = (|| {
            for (offset, count) in chunks(0..buf.len(), chunk) {
                let header = Header {
                    kind: Kind::Broadcast,
                    op_seq: seq,
                    total_len: buf.len() as u64,
                    offset: offset as u64,
                    count: count as u32,
                    step: root as u32,
                };
                let dst = &mut buf[offset..offset + count];
                if rank != root {
                    let payload = links.receive(header, Op::Broadcast, op_timeout)?;
                    wire::copy_f32s(payload, dst);
                }
                if forward {
                    links.send_data(header, dst, Op::Broadcast)?;
                }
            }
            Ok(())
        })();
        result.map_err(|e| self.fail(e))
    }
}

impl Drop for RingAllReduce {
    fn drop(&mut self) {
        if let Some(links) = self.links.as_mut() {
            links.close(self.poisoned.is_some(), self.config.op_timeout);
        }
    }
}

impl std::fmt::Debug for RingAllReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingAllReduce")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("op_seq", &self.op_seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Links {
    fn establish(
        listener: TcpListener,
        rendezvous: &Rendezvous,
        config: &RingConfig,
    ) -> Result<Links, CollectiveError> {
        let (rank, n) = (rendezvous.rank, rendezvous.world_size);
        let (next_rank, prev_rank) = ((rank + 1) % n, (rank + n - 1) % n);
        let (next_addr, prev_addr) = (rendezvous.peers[next_rank], rendezvous.peers[prev_rank]);
        let session = rendezvous.session_tag();
        let deadline = Instant::now() + config.connect_timeout;
        let connect_err =
            |peer: usize, addr: SocketAddr, detail: String| CollectiveError::Connect {
                rank,
                peer,
                addr,
                detail,
            };
        let hello = Hello {
            rank: rank as u32,
            world_size: n as u32,
            session,
            chunk_floats: config.chunk_floats as u64,
        };

        // 1. Connect to the next rank and say hello. Its listener exists (it was bound
        //    before the rendezvous), so this completes even before it accepts.
        let mut next = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&next_addr, remaining.max(Duration::from_millis(1))) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() + Duration::from_millis(50) < deadline => {
                    tracing::debug!(rank, peer = next_rank, %next_addr, error = %e, "retrying connect");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(connect_err(
                        next_rank,
                        next_addr,
                        format!("connecting for {:?}: {e}", config.connect_timeout),
                    ))
                }
            }
        };
        let io_next = |what: &'static str| {
            move |e: std::io::Error| connect_err(next_rank, next_addr, format!("{what}: {e}"))
        };
        next.set_nodelay(true)
            .map_err(io_next("setting TCP_NODELAY"))?;
        next.write_all(&hello.encode())
            .map_err(io_next("sending hello"))?;

        // 2. Accept the previous rank. Connections that are not it (a process left from an
        //    earlier gang, a port scanner) are refused and we keep waiting.
        listener
            .set_nonblocking(true)
            .map_err(|e| connect_err(prev_rank, prev_addr, format!("listener: {e}")))?;
        let prev = loop {
            match listener.accept() {
                Ok((mut stream, from)) => {
                    match accept_hello(&mut stream, &hello, prev_rank, deadline) {
                        Ok(()) => break stream,
                        Err(AcceptError::Fatal(detail)) => {
                            return Err(connect_err(prev_rank, prev_addr, detail))
                        }
                        Err(AcceptError::Stranger(detail)) => {
                            tracing::warn!(rank, %from, detail, "refused a ring connection")
                        }
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if Instant::now() >= deadline {
                        return Err(connect_err(
                            prev_rank,
                            prev_addr,
                            format!(
                                "rank {prev_rank} did not connect to this rank within {:?}",
                                config.connect_timeout
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(connect_err(prev_rank, prev_addr, format!("accept: {e}"))),
            }
        };
        drop(listener);

        // 3. The next rank's ack: it accepted us as its predecessor.
        next.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .map_err(io_next("setting a read timeout"))?;
        let mut ack = [0u8; ACK_BYTES];
        next.read_exact(&mut ack)
            .map_err(io_next("waiting for the handshake answer"))?;
        match wire::decode_ack(&ack) {
            Ok(s) if s == session => {}
            Ok(_) => {
                return Err(connect_err(
                    next_rank,
                    next_addr,
                    "answered for another gang (session tag differs)".into(),
                ))
            }
            Err(detail) => return Err(connect_err(next_rank, next_addr, detail)),
        }

        // 4. Steady-state socket options and the writer thread.
        next.set_read_timeout(None)
            .map_err(io_next("clearing the read timeout"))?;
        next.set_write_timeout(Some(config.op_timeout))
            .map_err(io_next("setting a write timeout"))?;
        let io_prev = |e: std::io::Error| connect_err(prev_rank, prev_addr, format!("socket: {e}"));
        prev.set_nodelay(true).map_err(io_prev)?;
        prev.set_read_timeout(Some(config.poll_interval.max(Duration::from_millis(1))))
            .map_err(io_prev)?;
        let next_shutdown = next.try_clone().map_err(io_next("cloning the socket"))?;
        let (to_writer, frames) = mpsc::channel::<Vec<u8>>();
        let (pool_tx, pool) = mpsc::channel::<Vec<u8>>();
        let writer_error = Arc::new(Mutex::new(None));
        let writer_error_in = Arc::clone(&writer_error);
        let writer = std::thread::Builder::new()
            .name(format!("ring-writer-{rank}"))
            .spawn(move || write_frames(next, frames, pool_tx, writer_error_in))
            .map_err(|e| connect_err(next_rank, next_addr, format!("spawning the writer: {e}")))?;
        tracing::debug!(rank, next_rank, %next_addr, prev_rank, %prev_addr, "ring connected");
        Ok(Links {
            prev_rank,
            prev_addr,
            next_rank,
            next_addr,
            prev,
            next_shutdown,
            to_writer: Some(to_writer),
            pool,
            writer_error,
            writer: Some(writer),
            scratch: Vec::new(),
            keepalive_every: config.poll_interval,
            last_keepalive: Cell::new(Instant::now()),
        })
    }

    /// Queues one data frame for the next rank.
    fn send_data(&mut self, header: Header, data: &[f32], op: Op) -> Result<(), CollectiveError> {
        let mut frame = self.pool.try_recv().unwrap_or_default();
        frame.clear();
        header.encode(&mut frame);
        wire::encode_f32s(data, &mut frame);
        self.queue(frame, op)
    }

    fn queue(&mut self, frame: Vec<u8>, op: Op) -> Result<(), CollectiveError> {
        let sent = match &self.to_writer {
            Some(tx) => tx.send(frame).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self
                .writer_failure(op)
                .unwrap_or_else(|| CollectiveError::PeerDisconnected {
                    peer: self.next_rank,
                    addr: self.next_addr,
                    op: op.name(),
                    source: std::io::Error::new(ErrorKind::BrokenPipe, "writer thread has stopped"),
                }))
        }
    }

    fn writer_failure(&self, op: Op) -> Option<CollectiveError> {
        let source = self.writer_error.lock().ok()?.take()?;
        Some(CollectiveError::PeerDisconnected {
            peer: self.next_rank,
            addr: self.next_addr,
            op: op.name(),
            source,
        })
    }

    /// Reads the next frame from the previous rank, skipping keepalives, checks it is
    /// `expected` (or an abort) and returns its payload.
    fn receive(
        &mut self,
        expected: Header,
        op: Op,
        op_timeout: Duration,
    ) -> Result<&[u8], CollectiveError> {
        let ctx = PollCtx {
            op,
            op_timeout,
            prev_rank: self.prev_rank,
            prev_addr: self.prev_addr,
            to_writer: self.to_writer.as_ref(),
            keepalive_every: self.keepalive_every,
            last_keepalive: &self.last_keepalive,
        };
        let header = loop {
            let mut head = [0u8; HEADER_BYTES];
            read_polled(&mut self.prev, &mut head, &ctx)?;
            let header = Header::decode(&head).map_err(|detail| ctx.protocol(detail))?;
            if header.kind != Kind::Keepalive {
                break header;
            }
        };
        let len = match header.kind {
            Kind::Abort => header.count as usize,
            _ => 4 * header.count as usize,
        };
        if header.kind == Kind::Abort && len > wire::MAX_REASON_BYTES {
            return Err(ctx.protocol(format!("abort reason of {len} bytes")));
        }
        if header.kind != Kind::Abort {
            if header.total_len != expected.total_len {
                return Err(CollectiveError::LengthMismatch {
                    peer: self.prev_rank,
                    ours: expected.total_len as usize,
                    theirs: header.total_len as usize,
                });
            }
            if header != expected {
                return Err(ctx.protocol(format!(
                    "expected {expected:?} (this rank is in {}), received {header:?}; ranks \
                     called different collectives or use different chunk sizes",
                    op.name()
                )));
            }
        }
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        read_polled(&mut self.prev, &mut self.scratch[..len], &ctx)?;
        if header.kind == Kind::Abort {
            return Err(CollectiveError::PeerFailed {
                failed_rank: header.offset as usize,
                reported_by: header.step as usize,
                reason: String::from_utf8_lossy(&self.scratch[..len]).into_owned(),
            });
        }
        Ok(&self.scratch[..len])
    }

    /// Best effort: queue an abort frame and close the queue so the writer exits after
    /// flushing it.
    fn send_abort(&mut self, failed_rank: usize, reported_by: usize, reason: &str) {
        let mut cut = reason.len().min(wire::MAX_REASON_BYTES);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &reason.as_bytes()[..cut];
        let mut frame = Vec::with_capacity(HEADER_BYTES + reason.len());
        Header {
            kind: Kind::Abort,
            op_seq: u64::MAX,
            total_len: 0,
            offset: failed_rank as u64,
            count: reason.len() as u32,
            step: reported_by as u32,
        }
        .encode(&mut frame);
        frame.extend_from_slice(reason);
        if let Some(tx) = self.to_writer.take() {
            let _ = tx.send(frame);
        }
    }

    /// Lets the writer flush what is queued (a successor still needs the last frames of a
    /// successful collective) and stops it. After a failure the wait is short and a stuck
    /// writer is cut off, so dropping a broken communicator never hangs.
    fn close(&mut self, poisoned: bool, op_timeout: Duration) {
        self.to_writer = None;
        let Some(writer) = self.writer.take() else {
            return;
        };
        let patience = if poisoned {
            Duration::from_secs(2)
        } else {
            op_timeout
        };
        let start = Instant::now();
        while !writer.is_finished() && start.elapsed() < patience {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !writer.is_finished() {
            let _ = self.next_shutdown.shutdown(Shutdown::Both);
        }
        let _ = writer.join();
    }
}

/// Why an incoming connection was not accepted as the previous rank.
enum AcceptError {
    /// Not a peer of this gang: ignore it and keep waiting.
    Stranger(String),
    /// The right peer with an incompatible configuration: give up.
    Fatal(String),
}

fn accept_hello(
    stream: &mut TcpStream,
    ours: &Hello,
    prev_rank: usize,
    deadline: Instant,
) -> Result<(), AcceptError> {
    let io = |e: std::io::Error| AcceptError::Stranger(format!("reading its hello: {e}"));
    stream.set_nonblocking(false).map_err(io)?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), Duration::from_secs(10));
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    let mut bytes = [0u8; HELLO_BYTES];
    stream.read_exact(&mut bytes).map_err(io)?;
    let theirs = Hello::decode(&bytes).map_err(AcceptError::Stranger)?;
    if theirs.session != ours.session || theirs.world_size != ours.world_size {
        return Err(AcceptError::Stranger(format!(
            "rank {} of {} from another gang (session tag differs)",
            theirs.rank, theirs.world_size
        )));
    }
    if theirs.rank as usize != prev_rank {
        return Err(AcceptError::Fatal(format!(
            "rank {} connected where rank {prev_rank} was expected; the rendezvous lists \
             inconsistent ranks",
            theirs.rank
        )));
    }
    if theirs.chunk_floats != ours.chunk_floats {
        return Err(AcceptError::Fatal(format!(
            "rank {prev_rank} uses chunks of {} floats, this rank {}; all ranks need the same \
             RingConfig::chunk_floats",
            theirs.chunk_floats, ours.chunk_floats
        )));
    }
    stream
        .write_all(&wire::encode_ack(ours.session))
        .map_err(|e| AcceptError::Fatal(format!("answering rank {prev_rank}: {e}")))
}

/// What a blocked read needs besides its socket: who is at the other ends, the writer's
/// state, and the queue for keepalives.
struct PollCtx<'a> {
    /// The collective in progress.
    op: Op,
    /// Longest silence accepted from the previous rank.
    op_timeout: Duration,
    /// Rank we read from.
    prev_rank: usize,
    /// Its address.
    prev_addr: SocketAddr,
    /// The writer queue, for keepalives; `None` after an abort.
    to_writer: Option<&'a mpsc::Sender<Vec<u8>>>,
    /// How often to send a keepalive while waiting.
    keepalive_every: Duration,
    /// When the last one went out.
    last_keepalive: &'a Cell<Instant>,
}

impl PollCtx<'_> {
    fn protocol(&self, detail: String) -> CollectiveError {
        CollectiveError::Protocol {
            peer: self.prev_rank,
            addr: self.prev_addr,
            detail,
        }
    }

    /// Tells the next rank "alive, in the collective, waiting" if the last keepalive is
    /// older than the poll interval.
    fn keepalive(&self) {
        let Some(tx) = self.to_writer else {
            return;
        };
        if self.last_keepalive.get().elapsed() < self.keepalive_every {
            return;
        }
        self.last_keepalive.set(Instant::now());
        let mut frame = Vec::with_capacity(HEADER_BYTES);
        Header {
            kind: Kind::Keepalive,
            op_seq: 0,
            total_len: 0,
            offset: 0,
            count: 0,
            step: 0,
        }
        .encode(&mut frame);
        let _ = tx.send(frame);
    }

    fn prev_disconnected(&self, source: std::io::Error) -> CollectiveError {
        CollectiveError::PeerDisconnected {
            peer: self.prev_rank,
            addr: self.prev_addr,
            op: self.op.name(),
            source,
        }
    }
}

/// Fills `buf` from `stream`, whose read timeout is the poll interval. Every poll
/// interval it tells the next rank we are alive and waiting (a keepalive), and it fails
/// once the previous rank has been silent for longer than the operation timeout.
///
/// It does not look at the writer: a keepalive written into the socket of a successor
/// that has finished the collective and closed its communicator fails, and that is
/// harmless. A successor that failed while it still needed our data is noticed when we
/// next queue data for it, or through the abort frame that travels round the ring.
fn read_polled(
    stream: &mut TcpStream,
    buf: &mut [u8],
    ctx: &PollCtx<'_>,
) -> Result<(), CollectiveError> {
    let mut filled = 0;
    let mut last_progress = Instant::now();
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(ctx.prev_disconnected(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed by the peer (process exited or aborted the ring)",
                )))
            }
            Ok(n) => {
                filled += n;
                last_progress = Instant::now();
                ctx.keepalive();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                let waited = last_progress.elapsed();
                if waited >= ctx.op_timeout {
                    return Err(CollectiveError::PeerTimeout {
                        peer: ctx.prev_rank,
                        addr: ctx.prev_addr,
                        op: ctx.op.name(),
                        waited,
                    });
                }
                ctx.keepalive();
            }
            Err(source) => return Err(ctx.prev_disconnected(source)),
        }
    }
    Ok(())
}

/// The writer thread: frames in order to the next rank, buffers back to the pool. On a
/// socket error it records the error and exits, which closes the queue: the next
/// attempt to queue a frame returns the error.
fn write_frames(
    mut next: TcpStream,
    frames: mpsc::Receiver<Vec<u8>>,
    pool: mpsc::Sender<Vec<u8>>,
    error: Arc<Mutex<Option<std::io::Error>>>,
) {
    for frame in frames {
        if let Err(e) = next.write_all(&frame) {
            if let Ok(mut slot) = error.lock() {
                *slot = Some(e);
            }
            let _ = next.shutdown(Shutdown::Both);
            return;
        }
        let _ = pool.send(frame);
    }
    let _ = next.flush();
}

/// The float range of segment `j` when `len` floats are cut into `n` segments, the first
/// `len % n` one float longer.
fn segment(len: usize, n: usize, j: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = j * base + j.min(extra);
    start..start + base + usize::from(j < extra)
}

/// `(offset, count)` of the chunks of `range`; an empty range is one empty chunk, so
/// every step still sends a frame (what makes an empty all-reduce a barrier).
fn chunks(range: std::ops::Range<usize>, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let len = range.len();
    let n_chunks = len.div_ceil(chunk).max(1);
    (0..n_chunks).map(move |i| {
        let offset = range.start + i * chunk;
        (offset, chunk.min(range.end - offset))
    })
}

#[cfg(test)]
mod tests;
