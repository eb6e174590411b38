//! overinterp's distributed runtime: a leader shards a job's image indices across
//! workers that pull shards, run an [`Executor`] and stream per-image results back over
//! QUIC; the leader makes them durable in a [`ResultSink`] exactly once per image.
//! No libtorch here: the ML side plugs in through the two traits.
//!
//! # Layout
//!
//! - [`proto`]: wire messages and the length-prefixed, bounded bincode codec.
//! - [`coord`]: the sans-io leader state machine (shards, leases, dedup, speculation);
//!   no tokio, no sockets, no clock.
//! - [`net`]: QUIC endpoints, TLS with a pinned per-job certificate and a secret, the
//!   leader and worker drivers, status queries, shutdown, and [`net::run_local`].
//! - [`exec`]: the [`Executor`] trait workers run.
//! - [`sink`]: the [`ResultSink`] trait and [`sink::FileSink`], a generic durable sink.
//! - [`collective`]: gradient all-reduce (TCP ring on CPU, NCCL on GPU) and the file rendezvous.

pub mod collective;
pub mod coord;
pub mod exec;
pub mod net;
pub mod proto;
pub mod sink;

pub use exec::{EmitError, ExecError, Executor};
pub use sink::{PayloadCheck, ResultSink, SinkError};
