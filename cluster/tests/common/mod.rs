//! Shared helpers for the loopback tests: a synthetic executor, a raw protocol client
//! for misbehaving peers, and bounded waits.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use overinterp_cluster::net::frames::{write_frame, FrameReader};
use overinterp_cluster::net::tls::{transport, ClientCredentials, SERVER_NAME};
use overinterp_cluster::net::LeaderConfig;
use overinterp_cluster::proto::{ToLeader, ToWorker};
use overinterp_cluster::{EmitError, ExecError, Executor};

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The synthetic result for an image: 8 bytes of index, then `len` bytes of a
/// splitmix64 stream seeded by the index (so a wrong or swapped payload is noticed).
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while out.len() < 8 + len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(8 + len);
    out
}

/// (phase it started in, indices) of one executor run.
pub type PhasedRun = (usize, Vec<u64>);

/// A deterministic executor: mini-batches of `batch`, optional delay per batch,
/// records every index it was asked to run.
#[derive(Clone)]
pub struct Synth {
    pub batch: usize,
    pub delay: Duration,
    pub payload_len: usize,
    pub seen: Arc<Mutex<Vec<u64>>>,
    /// When set, the executor blocks (as if hung) after emitting this many images.
    pub hang_after: Option<Arc<(AtomicUsize, AtomicBool)>>,
    /// A phase number the test bumps (e.g. at a leader restart); every run records
    /// the phase it started in next to its indices in `runs`.
    pub phase: Arc<AtomicUsize>,
    /// (phase, indices) of every run.
    pub runs: Arc<Mutex<Vec<PhasedRun>>>,
}

impl Synth {
    pub fn new(batch: usize, delay: Duration) -> Self {
        Self {
            batch,
            delay,
            payload_len: 56,
            seen: Arc::default(),
            hang_after: None,
            phase: Arc::default(),
            runs: Arc::default(),
        }
    }
}

impl Executor for Synth {
    fn run(
        &mut self,
        job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), ExecError> {
        if !job_spec.contains("synthetic") {
            return Err(ExecError::msg(format!("unexpected job spec {job_spec:?}")));
        }
        self.seen
            .lock()
            .expect("lock")
            .extend_from_slice(shard_indices);
        let phase = self.phase.load(Ordering::SeqCst);
        self.runs
            .lock()
            .expect("lock")
            .push((phase, shard_indices.to_vec()));
        for chunk in shard_indices.chunks(self.batch) {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            for &i in chunk {
                if let Some(h) = &self.hang_after {
                    if h.0.fetch_sub(1, Ordering::SeqCst) == 0 {
                        h.1.store(true, Ordering::SeqCst);
                        // Hang until the test ends (the worker task is aborted meanwhile).
                        while !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        return Ok(());
                    }
                }
                emit(i, payload(i, self.payload_len)).map_err(|e| ExecError::wrap("emit", e))?;
            }
        }
        Ok(())
    }
}

pub fn leader_config(job_dir: &Path, num_images: u64, shard_size: u64) -> LeaderConfig {
    let mut c = LeaderConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        job_dir,
        "synthetic = true\n",
        num_images,
    );
    c.shard_size = shard_size;
    c.lease = Duration::from_secs(2);
    c.speculate_after = None;
    c.idle_timeout = Duration::from_secs(5);
    c.linger = Duration::from_secs(3);
    c
}

/// A raw client that speaks the protocol by hand, for peers that misbehave.
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub reader: FrameReader<quinn::RecvStream>,
    pub addr: SocketAddr,
}

impl RawPeer {
    pub async fn connect(
        addr: SocketAddr,
        cert_der: Vec<u8>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let creds = ClientCredentials {
            cert_der,
            secret: String::new(),
        };
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint
            .set_default_client_config(creds.client_config(transport(Duration::from_secs(5))?)?);
        let conn = tokio::time::timeout(WAIT, endpoint.connect(addr, SERVER_NAME)?).await??;
        let (send, recv) = conn.open_bi().await?;
        Ok(Self {
            endpoint,
            conn,
            send,
            reader: FrameReader::new(recv, addr),
            addr,
        })
    }

    pub async fn send(&mut self, msg: &ToLeader) -> Result<(), Box<dyn std::error::Error>> {
        let mut scratch = Vec::new();
        write_frame(&mut self.send, msg, &mut scratch, self.addr).await?;
        Ok(())
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame from the leader (None when it closed), bounded by `WAIT`.
    pub async fn recv(&mut self) -> Option<ToWorker> {
        tokio::time::timeout(WAIT, self.reader.read::<ToWorker>())
            .await
            .ok()?
            .ok()?
    }
}

/// Polls `cond` every 20 ms until it holds, failing after `WAIT`.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
