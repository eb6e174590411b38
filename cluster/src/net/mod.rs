//! The network side: QUIC endpoints over rustls, and the async drivers that pump the
//! sans-io [`crate::coord::Coord`] (leader) and run an [`crate::Executor`] (worker).
//!
//! - [`error`]: [`NetError`], the subsystem's one error enum.
//! - [`tls`]: per-job credentials in the job directory, the pinned-certificate
//!   verifier, QUIC transport settings.
//! - [`frames`]: reading and writing [`crate::proto`] frames on QUIC streams.
//! - [`shutdown`]: the shutdown signal (broadcast) and handle.
//! - [`leader`]: [`run_leader`] / [`Leader`]: accept, authenticate, pump the coordinator,
//!   feed the sink on its own thread.
//! - [`conn`]: one leader-side connection: handshake, reader, writer.
//! - [`worker`]: [`run_worker`]: pull shards, run the executor on a blocking thread,
//!   stream results, drain on shutdown.
//! - [`status`]: [`query_status`], the authenticated status client.
//! - [`local`]: [`run_local`], leader and N workers in one process over loopback.

pub mod conn;
pub mod error;
pub mod frames;
pub mod leader;
pub mod local;
pub mod shutdown;
pub mod status;
pub mod tls;
pub mod worker;

pub use error::NetError;
pub use leader::{run_leader, JobReport, Leader, LeaderConfig, StatusHandle};
pub use local::{run_local, LocalReport};
pub use shutdown::{Shutdown, ShutdownHandle};
pub use status::{query_status, query_status_lifting, ProgressHook};
pub use tls::{Credentials, SECRET_ENV};
pub use worker::{run_worker, WorkerConfig, WorkerOutcome, WorkerReport};
