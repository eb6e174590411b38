//! The ML side of the cluster runtime: [`SisExecutor`] computes SIS on a worker,
//! [`StoreSink`] makes results durable in the result store on the leader.
//!
//! The leader's coordinator numbers images `0..num_images`. A job with a range
//! `start..end` runs with `num_images = end`, and the sink reports indices below
//! `start` as already durable, so the coordinator never schedules them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use overinterp_cluster::net::{self, LeaderConfig, LocalReport, ShutdownHandle};
use overinterp_cluster::proto::Identity;
use overinterp_cluster::{EmitError, ExecError, Executor, PayloadCheck, ResultSink, SinkError};

use crate::job::{Opened, SisJob};
use crate::store::{decode_payload, encode_payload, StoreMeta, StoreWriter};

/// Leader settings beyond the job itself.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Images per shard.
    pub shard_size: u64,
    /// Seconds before a silent worker's shards return to the queue.
    pub lease_secs: u64,
    /// Credentials and `leader.addr`; default `<store>.job`.
    pub job_dir: Option<PathBuf>,
    /// Failed shards in a row before a worker is quarantined.
    pub quarantine_after: u32,
    /// Seconds a shard that failed on every connected worker waits for another.
    pub failure_grace_secs: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            shard_size: 64,
            lease_secs: 30,
            job_dir: None,
            quarantine_after: 2,
            failure_grace_secs: 300,
        }
    }
}

/// A tokio runtime for the cluster's drivers (two threads: they only pump I/O).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
}

/// Triggers `handle` on SIGTERM or SIGINT. Call inside the runtime.
pub fn shutdown_on_signals(handle: ShutdownHandle) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return tracing::warn!(error = %e, "cannot listen for SIGTERM"),
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: draining");
        handle.trigger();
    });
}

/// Opens the job on the leader (on the CPU: it only needs the store's identity)
/// and returns the leader configuration and the store sink.
pub fn leader_setup(
    job: &SisJob,
    spec: String,
    listen: SocketAddr,
    tuning: &Tuning,
) -> anyhow::Result<(LeaderConfig, StoreSink)> {
    let requested = job.sis.clone();
    // The leader fixes `precision = auto` (on the job's device, where it has it) and
    // `lanes = auto`; workers receive the fixed spec and compute in what it says.
    let mut job = job.clone();
    job.fix_auto()?;
    let spec = if job.sis == requested {
        spec
    } else {
        job.to_toml()
    };
    let job = &job;
    let mut local = job.clone();
    local.device = "cpu".into();
    let opened = local.open()?;
    let range = job.range(opened.source.len())?;
    let writer = StoreWriter::open(&job.out, opened.meta.clone())
        .with_context(|| format!("store {}", job.out.display()))?;
    let job_dir = tuning
        .job_dir
        .clone()
        .unwrap_or_else(|| default_job_dir(&job.out));
    // The spec beside the credentials lets `status` find the store when no leader runs.
    std::fs::create_dir_all(&job_dir)
        .and_then(|()| std::fs::write(job_dir.join(JOB_SPEC_FILE), &spec))
        .with_context(|| format!("writing {}", job_dir.join(JOB_SPEC_FILE).display()))?;
    let mut config = LeaderConfig::new(listen, job_dir, spec, range.end);
    // Whole mini-batch groups per shard (see `job::compute`): a group split over two
    // shards would be computed in both.
    let batch = job.sis.batch_size.max(1) as u64;
    config.shard_size = tuning.shard_size.max(1).div_ceil(batch) * batch;
    if config.shard_size != tuning.shard_size {
        tracing::info!(
            asked = tuning.shard_size,
            shard_size = config.shard_size,
            batch,
            "shard size rounded up to whole mini-batches"
        );
    }
    config.lease = Duration::from_secs(tuning.lease_secs.max(1));
    config.quarantine_after = tuning.quarantine_after.max(1);
    config.failure_grace = Duration::from_secs(tuning.failure_grace_secs);
    config.identity = Some(identity(&local, &opened)?);
    tracing::info!(identity = ?config.identity, "job identity");
    config.progress = Some(crate::util::progress::leader_hook(&format!(
        "sis {}",
        job.split
    )));
    Ok((config, StoreSink::new(writer, range.start)))
}

/// The job spec the leader last ran, in the job directory (read by `status`).
pub const JOB_SPEC_FILE: &str = "job.toml";

/// What decides a job's results, hashed on this node: the model files, the dataset
/// split's content and the SIS settings as this binary parsed them (method,
/// thresholds, seed, objective, precision: whatever `[sis]` holds). The leader
/// sends its own; a worker whose own differs is refused.
pub fn identity(job: &SisJob, opened: &Opened) -> anyhow::Result<Identity> {
    use overinterp_cluster::proto::IdentityPart;
    let settings =
        serde_json::to_string(&(&job.split, &job.sis)).context("serializing the SIS settings")?;
    let resolve = |p: &str| {
        std::fs::canonicalize(p).map_or_else(|_| p.to_string(), |a| a.display().to_string())
    };
    Ok(Identity {
        parts: vec![
            IdentityPart {
                what: "model".into(),
                file: resolve(&job.model),
                sha256: opened.meta.model_sha256.clone(),
            },
            IdentityPart {
                what: "dataset".into(),
                file: format!("{} ({} split)", resolve_data(&job.data), job.split),
                sha256: opened.meta.dataset_sha256.clone(),
            },
            IdentityPart {
                what: "settings".into(),
                file: settings.clone(),
                sha256: crate::util::sha256_hex(settings.as_bytes()),
            },
        ],
    })
}

/// `KIND:PATH?opts` with PATH made absolute where it exists, for messages.
fn resolve_data(spec: &str) -> String {
    let Some((kind, rest)) = spec.split_once(':') else {
        return spec.to_string();
    };
    let (path, opts) = rest
        .split_once('?')
        .map_or((rest, None), |(p, o)| (p, Some(o)));
    let abs =
        std::fs::canonicalize(path).map_or_else(|_| path.to_string(), |a| a.display().to_string());
    match opts {
        Some(o) => format!("{kind}:{abs}?{o}"),
        None => format!("{kind}:{abs}"),
    }
}

/// `<store>.job`, beside the store.
pub fn default_job_dir(store: &Path) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(".job");
    store.with_file_name(name)
}

/// Runs `job` with a leader and `workers` workers in this process over loopback
/// QUIC (the embedded cluster). The cores are shared among the workers: libtorch
/// has one thread pool per process.
pub fn run_job_local(job: &SisJob, workers: usize, tuning: &Tuning) -> anyhow::Result<LocalReport> {
    let workers = workers.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let previous = tch::get_num_threads();
    tch::set_num_threads((cores / workers).max(1) as i32);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let (config, sink) = leader_setup(
            job,
            job.to_toml(),
            "127.0.0.1:0".parse().expect("valid"),
            tuning,
        )?;
        let shutdown = ShutdownHandle::new();
        shutdown_on_signals(shutdown.clone());
        let gpus = tch::Cuda::device_count().max(0) as usize;
        net::run_local(
            config,
            sink,
            workers,
            |i| SisExecutor::new(Some(local_worker_device(&job.device, i, gpus))),
            shutdown,
        )
        .await
        .map_err(anyhow::Error::from)
    });
    tch::set_num_threads(previous);
    let report = report?;
    if let Some(Err(e)) = report.workers.iter().find(|w| w.is_err()) {
        tracing::warn!(error = %e, "a local worker failed");
    }
    Ok(report)
}

/// The device of local worker `i`: a job on `cuda` spreads its workers over the
/// `gpus` visible GPUs (`cuda:i mod gpus`); any other device is used as written.
pub fn local_worker_device(device: &str, i: usize, gpus: usize) -> String {
    if device == "cuda" && gpus > 1 {
        format!("cuda:{}", i % gpus)
    } else {
        device.to_string()
    }
}

/// Computes SIS for the shards a worker is given. The model and dataset are opened
/// on the first shard and kept while the job spec stays the same.
pub struct SisExecutor {
    /// Overrides the job's device (each worker of a node takes its own GPU).
    device: Option<String>,
    /// The job spec text and what it opened.
    opened: Option<(String, SisJob, Opened)>,
}

impl SisExecutor {
    pub fn new(device: Option<String>) -> Self {
        Self {
            device,
            opened: None,
        }
    }

    fn open(&mut self, job_spec: &str) -> Result<&(String, SisJob, Opened), ExecError> {
        if self
            .opened
            .as_ref()
            .is_none_or(|(spec, _, _)| spec != job_spec)
        {
            let mut job =
                SisJob::from_toml(job_spec).map_err(|e| ExecError::msg(format!("{e:#}")))?;
            if let Some(device) = &self.device {
                job.device = device.clone();
            }
            let opened = job
                .open()
                .map_err(|e| ExecError::msg(format!("opening the job's model and data: {e:#}")))?;
            tracing::info!(model = %opened.meta.model, data = %opened.meta.dataset, device = %job.device, "worker opened job");
            self.opened = Some((job_spec.to_string(), job, opened));
        }
        Ok(self.opened.as_ref().expect("just set"))
    }
}

impl Executor for SisExecutor {
    fn prepare(&mut self, job_spec: &str) -> Result<Identity, ExecError> {
        let (_, job, opened) = self.open(job_spec)?;
        identity(job, opened).map_err(|e| ExecError::msg(format!("{e:#}")))
    }

    fn run(
        &mut self,
        job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), ExecError> {
        let (_, job, opened) = self.open(job_spec)?;
        let range = job
            .range(opened.source.len())
            .map_err(|e| ExecError::msg(format!("{e:#}")))?;
        crate::job::compute(opened, shard_indices, range, &job.sis, stop, |rec| {
            emit(rec.index, encode_payload(&rec))
        })
        .map_err(|e| ExecError::wrap("computing SIS", e))?;
        Ok(())
    }
}

/// The leader's sink: the job's result store.
pub struct StoreSink {
    writer: StoreWriter,
    /// Indices below this are outside the job (see the module doc).
    start: u64,
    /// The store's meta: payloads are checked against its shape and thresholds.
    meta: StoreMeta,
}

impl StoreSink {
    pub fn new(writer: StoreWriter, start: u64) -> Self {
        let meta = writer.meta().clone();
        Self {
            writer,
            start,
            meta,
        }
    }
}

/// Delegates to the store's own [`ResultSink`] implementation, adding the indices
/// outside the job's range to the durable set.
impl ResultSink for StoreSink {
    fn durable_indices(&self) -> Vec<u64> {
        let mut done: Vec<u64> = (0..self.start).collect();
        done.extend(
            self.writer
                .durable_indices()
                .into_iter()
                .filter(|&i| i >= self.start),
        );
        done
    }

    fn append(&mut self, index: u64, payload: &[u8]) -> Result<bool, SinkError> {
        ResultSink::append(&mut self.writer, index, payload)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        ResultSink::sync(&mut self.writer)
    }

    /// A payload must decode to an [`crate::sis::ImageSis`] of the image it is sent
    /// for, inside the job, with the store's image shape and thresholds; anything
    /// else is the sending worker's fault and never reaches the store.
    fn payload_check(&self) -> Option<PayloadCheck> {
        let meta = self.meta.clone();
        let start = self.start;
        Some(std::sync::Arc::new(move |index: u64, payload: &[u8]| {
            if index < start {
                return Err(format!(
                    "image {index} is before the job's first image {start}"
                ));
            }
            let rec = decode_payload(index, payload).map_err(|e| e.to_string())?;
            crate::store::normalize_record(rec, &meta)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }))
    }
}
