//! `overinterp run`, `leader`, `worker` and `status`: SIS jobs on the cluster runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use overinterp_cluster::net::{self, ShutdownHandle, WorkerConfig};

use crate::exec::{self, runtime, shutdown_on_signals, SisExecutor};
use crate::job::SisJob;
use crate::util::progress::{human_duration, worker_rates};

/// Cluster tuning shared by `run` and `leader`.
#[derive(Args, Debug, Clone)]
pub struct LeaderTuning {
    /// Images per shard (workers pull one shard at a time).
    #[arg(long, default_value_t = 64)]
    pub shard_size: u64,
    /// Seconds a worker may go silent before its shards go back to the queue.
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// Job directory for credentials (cert.der, secret) and leader.addr; on a
    /// cluster it must be on storage every node sees. Default: `<store>.job`.
    #[arg(long)]
    pub job_dir: Option<PathBuf>,
    /// A worker that fails this many shards in a row is quarantined (unless the same
    /// shards failed on other workers too); `status` shows why, `status --lift`
    /// lifts it.
    #[arg(long, default_value_t = 2)]
    pub quarantine_after: u32,
    /// Seconds a shard that failed on every connected worker waits for another
    /// worker before the job fails (a shard failing on 3 workers fails it at once).
    #[arg(long, default_value_t = 300)]
    pub failure_grace_secs: u64,
}

impl LeaderTuning {
    fn to_tuning(&self) -> exec::Tuning {
        exec::Tuning {
            shard_size: self.shard_size,
            lease_secs: self.lease_secs,
            job_dir: self.job_dir.clone(),
            quarantine_after: self.quarantine_after,
            failure_grace_secs: self.failure_grace_secs,
        }
    }
}

/// Run a SIS job (TOML, see the README) with a leader and N workers in this
/// process over loopback QUIC — the same code paths as a cluster run. Rerunning
/// resumes; Ctrl-C drains the workers and stops.
///
/// Example:
///   overinterp run job.toml --local-workers 2
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The job spec (TOML).
    pub job: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub local_workers: usize,
    #[command(flatten)]
    pub tuning: LeaderTuning,
}

/// Lead a SIS job on a cluster: bind ADDR, write `leader.addr` and the job's
/// certificate and secret to the job directory, hand out shards, and merge results
/// into the store. Killed and restarted on the same store, it resumes.
///
/// Example:
///   overinterp leader --job job.toml --listen 0.0.0.0:0 --out stores/r20-test
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct LeaderArgs {
    #[arg(long)]
    pub job: PathBuf,
    /// Address to bind (port 0: any free port; the real one goes to leader.addr).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Result store directory (overrides the job's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the job report (counters, per-shard assignments, lapsed leases,
    /// dropped duplicates, failures, quarantines) as JSON to this file at the end.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: LeaderTuning,
}

/// Work for a SIS job's leader: pull shards, compute, stream results back. SIGTERM
/// finishes the current mini-batch, returns the shard and leaves.
///
/// Example:
///   overinterp worker --job-dir stores/r20-test.job --device cuda:0
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct WorkerArgs {
    /// The leader's address (default: read `leader.addr` in the job directory).
    #[arg(long)]
    pub leader: Option<SocketAddr>,
    /// Job directory holding cert.der and secret (or set OVERINTERP_SECRET).
    #[arg(long)]
    pub job_dir: PathBuf,
    /// Device for this worker (overrides the job's).
    #[arg(long)]
    pub device: Option<String>,
    /// Name in status and logs (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// CPU threads for libtorch.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Show a job's progress: shards done/leased/pending, images/s, ETA, per-worker
/// throughput, and quarantined workers with the reason. When no leader answers
/// (finished, crashed, not started) it reads the store instead: images done of
/// total, complete or not.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub job_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Lift the quarantine of the worker with this name first (it may rejoin).
    #[arg(long, value_name = "NAME")]
    pub lift: Option<String>,
}

fn read_job(path: &Path, out: Option<&PathBuf>) -> anyhow::Result<(SisJob, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading job spec {}", path.display()))?;
    let mut job =
        SisJob::from_toml(&text).with_context(|| format!("job spec {}", path.display()))?;
    if let Some(out) = out {
        job.out = out.clone();
    }
    let spec = job.to_toml();
    Ok((job, spec))
}

pub fn run_local(args: RunArgs) -> anyhow::Result<()> {
    let (job, _) = read_job(&args.job, None)?;
    let workers = args.local_workers.max(1);
    let report = exec::run_job_local(&job, workers, &args.tuning.to_tuning())?;
    let s = &report.job.status;
    println!(
        "job done: {} of {} images in the store ({} resumed), {:.2} images/s, {} worker(s); store: {}",
        s.images_done,
        s.images_total,
        s.images_resumed,
        s.images_per_s,
        workers,
        job.out.display()
    );
    for (i, w) in report.workers.iter().enumerate() {
        if let Err(e) = w {
            eprintln!("worker {i} failed: {e}");
        }
    }
    Ok(())
}

pub fn run_leader(args: LeaderArgs) -> anyhow::Result<()> {
    let (job, spec) = read_job(&args.job, args.out.as_ref())?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let (config, sink) = exec::leader_setup(&job, spec, args.listen, &args.tuning.to_tuning())?;
        let job_dir = config.job_dir.clone();
        let leader = net::Leader::bind(config, sink)?;
        shutdown_on_signals(leader.shutdown_handle());
        println!(
            "leader listening on {}; job directory {}",
            leader.local_addr(),
            job_dir.display()
        );
        leader.run().await.map_err(anyhow::Error::from)
    })?;
    if let Some(path) = &args.report {
        let mut json = serde_json::to_value(&report)?;
        // The leader's peak resident memory, for sizing its node (and the flood test).
        json["peak_rss_kib"] = crate::util::peak_rss_kib().into();
        let json = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the job report {}", path.display()))?;
    }
    println!(
        "job done: {} of {} images, {} refused connection(s), {:.1} s",
        report.status.images_done, report.status.images_total, report.refused, report.elapsed_s
    );
    Ok(())
}

pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::env::var("SLURMD_NODENAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let mut config = WorkerConfig::new(&args.job_dir, name);
    config.leader_addr = args.leader;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let shutdown = ShutdownHandle::new();
        shutdown_on_signals(shutdown.clone());
        net::run_worker(
            config,
            SisExecutor::new(args.device.clone()),
            shutdown.subscribe(),
        )
        .await
    })?;
    println!(
        "worker done ({:?}): {} shard(s), {} image(s), {} reconnect(s)",
        report.outcome, report.shards_acked, report.images_emitted, report.reconnects
    );
    Ok(())
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let live = rt.block_on(net::query_status_lifting(
        &args.job_dir,
        None,
        args.lift.clone(),
    ));
    let status = match live {
        Ok(status) => status,
        Err(e) if args.job_dir.is_dir() && args.lift.is_none() => {
            return print_stored_status(&args, &e.to_string())
        }
        Err(e) => {
            return Err(anyhow::Error::from(e))
                .with_context(|| format!("asking the leader of {}", args.job_dir.display()))
        }
    };
    let eta = status.eta_s.map_or("unknown".into(), human_duration);
    if args.json {
        // The wire snapshot plus fields for people (additive: old readers ignore them).
        let mut value = serde_json::to_value(&status)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("leader_running".into(), true.into());
            map.insert("eta".into(), eta.into());
            map.insert("worker_rates".into(), worker_rates(&status).into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{} / {} images ({} resumed), {:.2} images/s, ETA {eta}; shards: {} done, {} syncing, {} leased, {} pending",
        status.images_done,
        status.images_total,
        status.images_resumed,
        status.images_per_s,
        status.shards.done,
        status.shards.syncing,
        status.shards.leased,
        status.shards.pending
    );
    println!("workers: {}", worker_rates(&status));
    for w in &status.workers {
        println!("  {}", serde_json::to_string(w)?);
    }
    for q in &status.quarantined {
        println!("  quarantined {}: {}", q.name, q.reason);
    }
    Ok(())
}

/// What the store of a job whose leader does not answer holds.
#[derive(Debug, serde::Serialize)]
struct StoredStatus {
    leader_running: bool,
    /// Why the leader did not answer.
    leader_error: String,
    store: PathBuf,
    images_done: u64,
    images_total: u64,
    complete: bool,
}

/// `status` when no leader answers (finished, crashed, not started): reads the
/// store named by the job directory's `job.toml` (or `<store>.job` → `<store>`).
fn print_stored_status(args: &StatusArgs, leader_error: &str) -> anyhow::Result<()> {
    let spec_path = args.job_dir.join(exec::JOB_SPEC_FILE);
    let (store, range) = match std::fs::read_to_string(&spec_path) {
        Ok(text) => {
            let job = SisJob::from_toml(&text)
                .with_context(|| format!("job spec {}", spec_path.display()))?;
            (job.out.clone(), Some(job))
        }
        Err(_) => {
            let name = args.job_dir.file_name().and_then(|n| n.to_str());
            match name.and_then(|n| n.strip_suffix(".job")) {
                Some(stem) => (args.job_dir.with_file_name(stem), None),
                None => anyhow::bail!(
                    "no leader answered for {} ({leader_error}), and the job directory has no {} \
                     naming the store",
                    args.job_dir.display(),
                    exec::JOB_SPEC_FILE
                ),
            }
        }
    };
    let reader = crate::store::StoreReader::open(&store).with_context(|| {
        format!(
            "no leader answered for {} ({leader_error}); reading its store",
            args.job_dir.display()
        )
    })?;
    let n = reader.meta().num_images;
    let range = match range {
        Some(job) => job.range(n as usize)?,
        None => 0..n,
    };
    let done = reader
        .indices()
        .iter()
        .filter(|i| range.contains(i))
        .count() as u64;
    let total = range.end - range.start;
    let s = StoredStatus {
        leader_running: false,
        leader_error: leader_error.to_string(),
        store,
        images_done: done,
        images_total: total,
        complete: done == total,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "leader not running ({}); store {}: {} / {} images, {}",
            s.leader_error,
            s.store.display(),
            s.images_done,
            s.images_total,
            if s.complete {
                "complete"
            } else {
                "not complete"
            }
        );
    }
    Ok(())
}
