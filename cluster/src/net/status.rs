//! `overinterp status`: ask a running leader for a [`JobStatus`] over an authenticated
//! connection (same certificate pinning and secret as a worker).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
