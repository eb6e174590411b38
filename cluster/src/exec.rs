//! The [`Executor`] trait: what a worker runs on a shard. The ML side implements it
//! with the SIS engine; tests implement it with a synthetic one.

use std::sync::atomic::AtomicBool;

/// Why `emit` refused a result: the worker can no longer deliver it, so the executor
/// should stop and return (its error is ignored; the shard goes back to the queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The connection to the leader is closed.
    #[error("the leader connection is closed; stop this shard")]
    Disconnected,
    /// `index` is not in the assignment being run (an executor bug).
    #[error("image index {index} is not in the current assignment")]
    NotAssigned {
        /// The offending index.
        index: u64,
    },
}

/// An executor failure on one shard. The worker reports it to the leader, which
/// requeues the shard a bounded number of times and then fails the job with this text.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// What went wrong, naming the image, file or option at fault.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ExecError {
    /// An error with a message only.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error wrapping `source`, with `context` saying what was being done.
    pub fn wrap(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: format!("{}: {source}", context.into()),
            source: Some(Box::new(source)),
        }
    }
}

/// Runs a job's computation on the images of one shard.
///
/// `run` is synchronous and is called on a dedicated blocking thread, one shard at a
/// time, so it may hold a GPU, a model and large buffers across calls (it is `&mut self`
/// and the same value serves every shard of the worker's life).
///
/// Contract:
/// - `job_spec` is the job's TOML text exactly as the leader got it; parse it once and
///   cache whatever it describes (the model, the dataset) keyed by the text.
/// - `shard_indices` is ascending and lists only images not yet accepted by the leader.
/// - Call `emit(index, payload)` once per image as soon as it is finished; payloads are
///   opaque bytes that reach the leader's [`crate::sink::ResultSink`] unchanged.
///   `emit` blocks when the leader (or its disk) is slower than the executor: that is
///   the backpressure, do not buffer around it. If it returns an error, return promptly.
/// - Check `stop` between mini-batches; when it is set (SIGTERM, or the shard was
///   finished by a faster twin), finish the current mini-batch, emit its results and
///   return `Ok(())`. Results emitted before stopping are kept; the rest of the shard
///   goes to another worker.
/// - Return `Err` for a failure of this shard (an unreadable image); the leader retries
///   the shard elsewhere a bounded number of times.
///
/// Results must be a deterministic function of `(job_spec, index)`: a shard can be
/// run twice (reassignment, speculation) and the first copy of each image wins.
pub trait Executor: Send + 'static {
    /// Opens what `job_spec` describes (model, dataset) and returns the content
    /// hashes of what it opened, computed here, on this node. The worker calls it
    /// once per connection, before any shard, and is admitted only if the result
    /// equals the job's identity. Cache the opened state keyed by the spec text.
    /// The default has no inputs to hash (synthetic executors).
    fn prepare(&mut self, job_spec: &str) -> Result<crate::proto::Identity, ExecError> {
        let _ = job_spec;
        Ok(crate::proto::Identity { parts: Vec::new() })
    }

    /// Processes `shard_indices`, emitting one result per image. See the trait docs.
    fn run(
        &mut self,
        job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), ExecError>;
}
