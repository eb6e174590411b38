//! Where the leader puts accepted results: the [`ResultSink`] trait and a generic
//! file-backed implementation, [`FileSink`].

mod file;

pub use file::{FileSink, FileSinkError};

/// A sink failure. The leader stops the job on it (results it cannot make durable must
/// not be acknowledged), and prints this error, which names the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct SinkError {
    /// What the sink was doing, naming the file or record.
    pub context: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// Wraps `source` with `context`.
    pub fn new(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// The leader's durable result store. The SIS result store in the root crate
/// implements it; [`FileSink`] is a small generic one.
///
/// The leader calls it from one dedicated blocking thread, in this order: any number
/// of `append`s, then `sync`; only after `sync` returns `Ok` does it acknowledge the
/// shards whose results were appended. So `append` may buffer, but `sync` must make
/// every appended record durable (fsync the data and whatever index points to it).
pub trait ResultSink: Send + 'static {
    /// Indices already durable in the store, read when the leader starts. The leader
    /// resumes from this set: shards whose indices are all here are not run again.
    fn durable_indices(&self) -> Vec<u64>;

    /// Stores one image's result. Returns `Ok(false)` if the store already holds `index`
    /// (the record is ignored, never written twice), `Ok(true)` if it was appended.
    fn append(&mut self, index: u64, payload: &[u8]) -> Result<bool, SinkError>;

    /// Makes everything appended so far durable. After `Ok`, a crash loses nothing.
    fn sync(&mut self) -> Result<(), SinkError>;

    /// A check the leader runs on every result payload *before* the coordinator
    /// accepts it (on the connection's task, off the sink thread): a payload it
    /// refuses closes the sending worker and counts as that worker's fault, so a bad
    /// worker can never make `append` fail and stop the job. `None`: no check.
    fn payload_check(&self) -> Option<PayloadCheck> {
        None
    }
}

/// See [`ResultSink::payload_check`]: `(index, payload)` → `Err(what is wrong)`.
pub type PayloadCheck =
    std::sync::Arc<dyn Fn(u64, &[u8]) -> Result<(), String> + Send + Sync + 'static>;
