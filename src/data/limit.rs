//! [`Limited`]: the first `n` images of a source (`?limit=N`, `?test-limit=M`),
//! without copying them: reads, labels, CIFAR-10-C groups and ImageNet bad-file
//! reports go to the source itself.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{check_read, BadFile, DataError, ImageSource, Normalization};

/// The index range `0..n` of another source.
pub struct Limited {
    inner: Box<dyn ImageSource>,
    n: usize,
    /// `"<source>[:n]"`.
    name: String,
    /// Computed when first asked (it may read every image, see [`ImageSource::prefix_hash`]).
    hash: OnceLock<String>,
}

impl Limited {
    /// The first `n` images of `inner` (`n` at most its length).
    pub fn new(inner: Box<dyn ImageSource>, n: usize) -> Self {
        let n = n.min(inner.len());
        Self {
            name: format!("{}[:{n}]", inner.name()),
            inner,
            n,
            hash: OnceLock::new(),
        }
    }

    fn check(&self, index: usize) -> Result<(), DataError> {
        if index < self.n {
            Ok(())
        } else {
            Err(DataError::OutOfRange { index, len: self.n })
        }
    }
}

/// SHA-256 of the first `n` images' pixels followed by their labels as little-endian
/// int64 — the same value as [`super::memory::hash_pixels_and_labels`] of a copy —
/// read 256 images at a time.
pub fn hash_prefix_by_reading(source: &dyn ImageSource, n: usize) -> Result<String, DataError> {
    const CHUNK: usize = 256;
    let image = source.shape().iter().product::<usize>();
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(CHUNK) {
        buf.resize(chunk.len() * image, 0);
        source.read_pixels(chunk, &mut buf)?;
        h.update(&buf);
    }
    for i in 0..n {
        h.update(source.label(i)?.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

impl ImageSource for Limited {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.n
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn normalization(&self) -> Normalization {
        self.inner.normalization()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        self.check(index)?;
        self.inner.label(index)
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        check_read(self.n, self.shape().iter().product(), indices, out)?;
        self.inner.read_pixels(indices, out)
    }
    fn content_hash(&self) -> String {
        self.hash
            .get_or_init(|| match self.inner.prefix_hash(self.n) {
                Some(h) => h,
                None => hash_prefix_by_reading(self.inner.as_ref(), self.n).unwrap_or_else(|e| {
                    // A read error here also fails the reads that follow, with context.
                    tracing::warn!(source = %self.name, error = %e, "cannot hash the limited dataset");
                    format!("unreadable:{}", self.inner.content_hash())
                }),
            })
            .clone()
    }
    fn group(&self, index: usize) -> Option<String> {
        (index < self.n).then(|| self.inner.group(index)).flatten()
    }
    fn bad_files(&self) -> Vec<BadFile> {
        self.inner
            .bad_files()
            .into_iter()
            .filter(|b| b.index.is_none_or(|i| i < self.n))
            .collect()
    }
    fn prefix_hash(&self, n: usize) -> Option<String> {
        self.inner.prefix_hash(n.min(self.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::memory::hash_pixels_and_labels;
    use crate::data::{open_dataset, DatasetSpec, InMemory, Split};

    fn in_memory(n: usize) -> InMemory {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 251) as u8).collect();
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
        InMemory::new(
            "toy",
            [1, 2, 2],
            3,
            Normalization {
                mean: vec![0.5],
                std: vec![0.25],
            },
            pixels,
            labels,
        )
        .unwrap()
    }

    #[test]
    fn a_limit_reads_in_place_and_hashes_like_a_copy() {
        let full = in_memory(10);
        let expected_hash = hash_pixels_and_labels(&full.pixels()[..16], &full.labels()[..4]);
        let limited = Limited::new(Box::new(full), 4);
        assert_eq!((limited.len(), limited.name()), (4, "toy[:4]".to_string()));
        assert_eq!(limited.content_hash(), expected_hash);
        let mut out = vec![0u8; 8];
        limited.read_pixels(&[3, 0], &mut out).unwrap();
        assert_eq!(out[..4], in_memory(10).pixels()[12..16]);
        assert!(matches!(
            limited.label(4),
            Err(DataError::OutOfRange { index: 4, len: 4 })
        ));
        assert!(limited.read_pixels(&[4], &mut out[..4]).is_err());
    }

    #[test]
    fn a_limited_cifar10c_keeps_its_corruption_groups() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cifar10c");
        let mut spec: DatasetSpec = format!("cifar10c:{root}").parse().unwrap();
        let full = open_dataset(&spec, Split::Test).unwrap();
        spec.set_option("test-limit=7").unwrap();
        let limited = open_dataset(&spec, Split::Test).unwrap();
        assert_eq!(limited.len(), 7);
        for i in 0..7 {
            assert!(limited.group(i).is_some(), "image {i} lost its group");
            assert_eq!(limited.group(i), full.group(i));
        }
        assert_eq!(limited.group(7), None);
    }
}
