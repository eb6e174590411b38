//! The ML side of the cluster runtime: [`SisExecutor`] computes SIS on a worker,
//! [`StoreSink`] makes results durable in the result store on the leader.
//!
//! The leader's coordinator numbers images `0..num_images`. A job with a range
//! `start..end` runs with `num_images = end`, and the sink reports indices below
//! `start` as already durable, so the coordinator never schedules them.

use std::sync::atomic::AtomicBool;

use overinterp_cluster::{EmitError, ExecError, Executor, ResultSink, SinkError};

use crate::job::{Opened, SisJob};
use crate::store::{encode_payload, StoreWriter};

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
    fn run(
        &mut self,
        job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), ExecError> {
        let (_, job, opened) = self.open(job_spec)?;
        crate::job::compute(opened, shard_indices, &job.sis, stop, |rec| {
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
}

impl StoreSink {
    pub fn new(writer: StoreWriter, start: u64) -> Self {
        Self { writer, start }
    }
}

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
        self.writer.append_payload(index, payload).map_err(|e| {
            SinkError::new(
                format!("store {}: image {index}", self.writer.dir().display()),
                e,
            )
        })
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.writer
            .flush()
            .map(|_| ())
            .map_err(|e| SinkError::new(format!("store {}: flush", self.writer.dir().display()), e))
    }
}
