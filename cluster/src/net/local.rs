//! The embedded default: a leader and N workers in one process over loopback, with
//! the same code paths (QUIC, TLS, secret) as a cluster run.

use std::net::SocketAddr;

use serde::Serialize;

use super::leader::{JobReport, Leader, LeaderConfig};
use super::worker::{run_worker, WorkerConfig, WorkerReport};
use super::{NetError, ShutdownHandle};
use crate::exec::Executor;
use crate::sink::ResultSink;

/// What a local run did.
#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    /// The leader's report.
    pub job: JobReport,
    /// Each worker's report (or its error, as text).
    pub workers: Vec<Result<WorkerReport, String>>,
}

/// Runs the job with `workers` local workers, built by `make_executor(i)`. The leader
/// binds `127.0.0.1:0` whatever `config.listen` says; `shutdown` drains the workers
/// and stops the leader (the job resumes on the next run).
pub async fn run_local<S, E, F>(
    mut config: LeaderConfig,
    sink: S,
    workers: usize,
    mut make_executor: F,
    shutdown: ShutdownHandle,
) -> Result<LocalReport, NetError>
where
    S: ResultSink,
    E: Executor,
    F: FnMut(usize) -> E,
{
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let job_dir = config.job_dir.clone();
    let idle = config.idle_timeout;
    let leader = Leader::bind(config, sink)?;
    let addr = leader.local_addr();
    let leader_stop = leader.shutdown_handle();
    let mut tasks = Vec::new();
    for i in 0..workers {
        let mut wc = WorkerConfig::new(job_dir.clone(), format!("local-{i}"));
        wc.leader_addr = Some(addr);
        wc.idle_timeout = idle;
        tasks.push(tokio::spawn(run_worker(
            wc,
            make_executor(i),
            shutdown.subscribe(),
        )));
    }
    let mut stop = shutdown.subscribe();
    let watcher = tokio::spawn(async move {
        stop.recv().await;
        // Give workers a moment to return their shards before the leader stops.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        leader_stop.trigger();
    });
    let job = leader.run().await;
    watcher.abort();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(match t.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("worker task failed: {e}")),
        });
    }
    Ok(LocalReport {
        job: job?,
        workers: reports,
    })
}
