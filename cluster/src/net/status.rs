//! `overinterp status`: ask a running leader for a [`JobStatus`] over an authenticated
//! connection (same certificate pinning and secret as a worker); and
//! [`ProgressHook`], the leader's periodic in-process status report.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::leader::StatusHandle;
use super::tls::{read_leader_addr, ClientCredentials};
use super::worker::status_exchange;
use super::NetError;
use crate::proto::JobStatus;

/// Queries the leader of the job in `job_dir` (address from `leader.addr` unless
/// given). The result serializes to JSON with serde for `--json`.
pub async fn query_status(
    job_dir: &Path,
    leader_addr: Option<SocketAddr>,
) -> Result<JobStatus, NetError> {
    query_status_lifting(job_dir, leader_addr, None).await
}

/// [`query_status`] that first lifts the quarantine of the worker named `lift`.
pub async fn query_status_lifting(
    job_dir: &Path,
    leader_addr: Option<SocketAddr>,
    lift: Option<String>,
) -> Result<JobStatus, NetError> {
    let creds = ClientCredentials::load(job_dir)?;
    let addr = match leader_addr {
        Some(a) => a,
        None => read_leader_addr(job_dir)?,
    };
    status_exchange(addr, &creds, Duration::from_secs(5), lift).await
}

/// A callback the leader calls with a [`JobStatus`] every `every` while it runs, so
/// the caller can draw a bar or log a progress line (the cluster crate draws nothing).
#[derive(Clone)]
pub struct ProgressHook {
    /// Time between reports.
    pub every: Duration,
    /// Receives each snapshot.
    pub report: Arc<dyn Fn(&JobStatus) + Send + Sync>,
}

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressHook")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Reports the leader's status through `hook` until the leader stops answering.
/// Holds only a weak sender between reports, so it never keeps the leader's event
/// channel open while the leader winds down.
pub(crate) fn spawn_progress(handle: StatusHandle, hook: ProgressHook) {
    let weak = handle.events.downgrade();
    drop(handle);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(hook.every).await;
            let Some(events) = weak.upgrade() else { return };
            let status = StatusHandle { events }.status().await;
            match status {
                Some(status) => (hook.report)(&status),
                None => return,
            }
        }
    });
}
