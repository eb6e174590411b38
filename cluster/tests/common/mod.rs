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
use overinterp_cluster::net::{LeaderConfig, WorkerConfig};
use overinterp_cluster::proto::{Digest, Identity, ToLeader, ToWorker};
use overinterp_cluster::{EmitError, ExecError, Executor};

/// The digest of an empty identity: what a synthetic executor's results carry.
pub const NO_IDENTITY: Digest = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `Ready` with no hashes, for hand-driven peers of a leader without an identity.
pub fn ready() -> ToLeader {
    ToLeader::Ready {
        identity: Identity { parts: Vec::new() },
    }
}

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
    /// What `prepare` reports: the hashes of its "inputs", or why it cannot open them.
    pub identity: Result<Identity, String>,
    /// After this many good shards, every shard fails (its data broke after admission).
    pub fail_after: Option<usize>,
    /// Emit payloads that do not belong to their image (a broken worker).
    pub corrupt: bool,
    /// Shards run so far.
    pub shards_run: usize,
    /// On its first shard, after the first image, ignore `stop` and stall this long
    /// (an executor that outlives its session); the flag is set when it starts.
    pub stall: Option<(Duration, Arc<AtomicBool>)>,
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
            identity: Ok(Identity { parts: Vec::new() }),
            fail_after: None,
            corrupt: false,
            shards_run: 0,
            stall: None,
        }
    }
}

impl Executor for Synth {
    fn prepare(&mut self, _job_spec: &str) -> Result<Identity, ExecError> {
        self.identity.clone().map_err(ExecError::msg)
    }

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
        self.shards_run += 1;
        if self.fail_after.is_some_and(|n| self.shards_run > n) {
            return Err(ExecError::msg(format!(
                "cannot read /data/images-{}.bin: Input/output error (os error 5)",
                shard_indices[0]
            )));
        }
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
                let bytes = if self.corrupt {
                    payload(i + 1, self.payload_len)
                } else {
                    payload(i, self.payload_len)
                };
                emit(i, bytes).map_err(|e| ExecError::wrap("emit", e))?;
                if self.shards_run == 1 {
                    if let Some((time, flag)) = self.stall.take() {
                        flag.store(true, Ordering::SeqCst);
                        std::thread::sleep(time);
                    }
                }
            }
        }
        Ok(())
    }
}

/// An identity with one part, for admission tests.
pub fn identity_of(model_sha: &str) -> Identity {
    Identity {
        parts: vec![overinterp_cluster::proto::IdentityPart {
            what: "model".into(),
            file: "/models/r20".into(),
            sha256: model_sha.into(),
        }],
    }
}

/// The sink's check for [`payload`]s: the first 8 bytes name the image.
pub fn synth_payload_check() -> overinterp_cluster::PayloadCheck {
    Arc::new(|index: u64, bytes: &[u8]| {
        let head: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or("payload shorter than 8 bytes")?;
        match u64::from_le_bytes(head) {
            i if i == index => Ok(()),
            i => Err(format!("payload holds image {i}")),
        }
    })
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

/// A [`overinterp_cluster::sink::FileSink`] that checks payloads like a real store does.
pub struct CheckedSink(pub overinterp_cluster::sink::FileSink);

impl overinterp_cluster::ResultSink for CheckedSink {
    fn durable_indices(&self) -> Vec<u64> {
        overinterp_cluster::ResultSink::durable_indices(&self.0)
    }

    fn append(
        &mut self,
        index: u64,
        payload: &[u8],
    ) -> Result<bool, overinterp_cluster::SinkError> {
        // A payload that got past the check would be stored under the wrong image:
        // fail loudly, as a real store does.
        synth_payload_check()(index, payload).map_err(|e| {
            overinterp_cluster::SinkError::new("checked sink", std::io::Error::other(e))
        })?;
        overinterp_cluster::ResultSink::append(&mut self.0, index, payload)
    }

    fn sync(&mut self) -> Result<(), overinterp_cluster::SinkError> {
        overinterp_cluster::ResultSink::sync(&mut self.0)
    }

    fn payload_check(&self) -> Option<overinterp_cluster::PayloadCheck> {
        Some(synth_payload_check())
    }
}

/// A worker of the job in `dir` pointed at `addr`, with test-sized timeouts.
pub fn worker_config(dir: &Path, name: &str, addr: SocketAddr) -> WorkerConfig {
    let mut wc = WorkerConfig::new(dir, name);
    wc.leader_addr = Some(addr);
    wc.idle_timeout = Duration::from_secs(5);
    wc
}
