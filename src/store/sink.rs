//! The store as the cluster leader's [`ResultSink`]: a payload is one
//! [`ImageSis`](crate::sis::ImageSis) encoded by [`encode_payload`](super::encode_payload),
//! and `sync` is [`StoreWriter::flush`], so the leader acknowledges a shard only once
//! its records are durable here.

use overinterp_cluster::{ResultSink, SinkError};

use super::StoreWriter;

impl ResultSink for StoreWriter {
    fn durable_indices(&self) -> Vec<u64> {
        StoreWriter::durable_indices(self)
    }

    fn append(&mut self, index: u64, payload: &[u8]) -> Result<bool, SinkError> {
        self.append_payload(index, payload).map_err(|e| {
            SinkError::new(
                format!("result store {}: image {index}", self.dir().display()),
                e,
            )
        })
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.flush()
            .map(|_| ())
            .map_err(|e| SinkError::new(format!("result store {}: sync", self.dir().display()), e))
    }
}
