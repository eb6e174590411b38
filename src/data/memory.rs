//! [`InMemory`]: a dataset whose pixels and labels sit in one `Vec` each. The small
//! real datasets (CIFAR-10, Fashion-MNIST) are read into one; tests build synthetic
//! ones; [`subset`] copies any chosen images of any source into one.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{check_read, DataError, ImageSource, Normalization};

/// A dataset held in memory: `u8` CHW pixels, one image after the other, and
/// int64 labels.
#[derive(Debug)]
pub struct InMemory {
    /// Used in logs, store keys and checkpoint configs.
    name: String,
    /// (C, H, W) of every image.
    shape: [usize; 3],
    /// Labels lie in `0..num_classes`.
    num_classes: usize,
    /// The statistics [`super::batch`] normalizes with.
    normalization: Normalization,
    /// `len * C*H*W` bytes.
    pixels: Vec<u8>,
    /// One label per image.
    labels: Vec<i64>,
    /// Hashing 150 MB takes a moment, so the hash is computed once, when first asked.
    hash: OnceLock<String>,
}

impl InMemory {
    /// Checks that `pixels` holds exactly `labels.len()` images of `shape`, that
    /// every label is in `0..num_classes`, and that the normalization has one mean
    /// and one std per channel.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        num_classes: usize,
        normalization: Normalization,
        pixels: Vec<u8>,
        labels: Vec<i64>,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let image_bytes = shape.iter().product::<usize>();
        if image_bytes == 0 {
            return Err(DataError::Invalid(format!(
                "{name}: image shape {shape:?} is empty"
            )));
        }
        if pixels.len() != labels.len() * image_bytes {
            return Err(DataError::Invalid(format!(
                "{name}: {} pixel bytes do not make {} images of shape {shape:?} ({} bytes)",
                pixels.len(),
                labels.len(),
                labels.len() * image_bytes
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l < 0 || l as usize >= num_classes)
        {
            return Err(DataError::Invalid(format!(
                "{name}: image {i}: label {l} is outside 0..{num_classes}"
            )));
        }
        if normalization.mean.len() != shape[0] || normalization.std.len() != shape[0] {
            return Err(DataError::Invalid(format!(
                "{name}: normalization has {} means and {} stds for {} channels",
                normalization.mean.len(),
                normalization.std.len(),
                shape[0]
            )));
        }
        Ok(Self {
            name,
            shape,
            num_classes,
            normalization,
            pixels,
            labels,
            hash: OnceLock::new(),
        })
    }

    /// The same data under another name (for example after subsetting).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// All pixels, `len * C*H*W` bytes in CHW order, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The CHW pixels of image `index`.
    pub fn image(&self, index: usize) -> Result<&[u8], DataError> {
        let n = self.image_bytes();
        self.pixels
            .get(index * n..(index + 1) * n)
            .ok_or(DataError::OutOfRange {
                index,
                len: self.labels.len(),
            })
    }

    fn image_bytes(&self) -> usize {
        self.shape.iter().product()
    }
}

/// SHA-256 of the pixel bytes followed by the labels as little-endian int64, in hex.
/// Python computes the same value as
/// `hashlib.sha256(pixels.tobytes() + labels.astype('<i8').tobytes()).hexdigest()`.
pub fn hash_pixels_and_labels(pixels: &[u8], labels: &[i64]) -> String {
    let mut h = Sha256::new();
    h.update(pixels);
    for l in labels {
        h.update(l.to_le_bytes());
    }
    hex::encode(h.finalize())
}

impl ImageSource for InMemory {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn normalization(&self) -> Normalization {
        self.normalization.clone()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        self.labels
            .get(index)
            .copied()
            .ok_or(DataError::OutOfRange {
                index,
                len: self.len(),
            })
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let n = self.image_bytes();
        check_read(self.len(), n, indices, out)?;
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(n)) {
            dst.copy_from_slice(&self.pixels[i * n..(i + 1) * n]);
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        self.hash
            .get_or_init(|| hash_pixels_and_labels(&self.pixels, &self.labels))
            .clone()
    }
}

/// Copies the images `indices` of `source` (in that order, repeats allowed) into an
/// [`InMemory`] named `"<source>/subset<N>"`, with the source's classes and
/// normalization. Reads in chunks so a large ImageNet subset decodes in parallel
/// without holding two copies.
pub fn subset(source: &dyn ImageSource, indices: &[usize]) -> Result<InMemory, DataError> {
    const CHUNK: usize = 256;
    let shape = source.shape();
    let n = shape.iter().product::<usize>();
    let mut pixels = vec![0u8; indices.len() * n];
    for (idx, out) in indices.chunks(CHUNK).zip(pixels.chunks_mut(CHUNK * n)) {
        source.read_pixels(idx, out)?;
    }
    let labels = indices
        .iter()
        .map(|&i| source.label(i))
        .collect::<Result<Vec<_>, _>>()?;
    InMemory::new(
        format!("{}/subset{}", source.name(), indices.len()),
        shape,
        source.num_classes(),
        source.normalization(),
        pixels,
        labels,
    )
}

/// Implements [`ImageSource`] for a reader that holds its split as an [`InMemory`]
/// in field `$field`, by forwarding every method to it.
macro_rules! delegate_image_source {
    ($ty:ty, $field:ident) => {
        impl $crate::data::ImageSource for $ty {
            fn name(&self) -> String {
                self.$field.name()
            }
            fn len(&self) -> usize {
                self.$field.len()
            }
            fn shape(&self) -> [usize; 3] {
                self.$field.shape()
            }
            fn num_classes(&self) -> usize {
                self.$field.num_classes()
            }
            fn normalization(&self) -> $crate::data::Normalization {
                self.$field.normalization()
            }
            fn label(&self, index: usize) -> Result<i64, $crate::data::DataError> {
                self.$field.label(index)
            }
            fn read_pixels(
                &self,
                indices: &[usize],
                out: &mut [u8],
            ) -> Result<(), $crate::data::DataError> {
                self.$field.read_pixels(indices, out)
            }
            fn content_hash(&self) -> String {
                self.$field.content_hash()
            }
        }
    };
}
pub(crate) use delegate_image_source;
