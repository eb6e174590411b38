//! The mask-only control (beyond the paper): a dataset whose every image is one
//! constant, so that through a subset's keep-mask a model sees *where* the kept
//! pixels are and nothing of their values. A model retrained on backselect subsets
//! this way measures how much of the subsets' learnable signal is mask shape alone
//! (the original model's prediction leaking through the selection), not pixel content.

use crate::data::{check_read, DataError, ImageSource, Normalization};

/// Every image of `inner` replaced by the constant that normalizes to about +1 in
/// every channel (`(mean + std)·255`, rounded to a `u8`); labels unchanged. Through
/// a keep-mask, kept pixels are ≈ +1 and masked ones 0 (the masked value).
pub struct MaskOnly<'a> {
    inner: &'a dyn ImageSource,
    /// The raw `u8` value of each channel.
    value: Vec<u8>,
}

impl<'a> MaskOnly<'a> {
    pub fn new(inner: &'a dyn ImageSource) -> Self {
        let norm = inner.normalization();
        Self {
            inner,
            value: kept_value(&norm),
        }
    }

    /// The normalized value of kept pixels per channel (≈ +1 after rounding to `u8`).
    pub fn normalized_value(&self) -> Vec<f32> {
        let norm = self.inner.normalization();
        self.value
            .iter()
            .zip(norm.mean.iter().zip(&norm.std))
            .map(|(&v, (m, s))| (v as f32 / 255.0 - m) / s)
            .collect()
    }
}

/// `(mean + std)·255` per channel, rounded and kept inside `0..=255`, never the
/// value that normalizes to the masked 0.
fn kept_value(norm: &Normalization) -> Vec<u8> {
    norm.mean
        .iter()
        .zip(&norm.std)
        .map(|(m, s)| {
            let raw = ((m + s) * 255.0).round().clamp(0.0, 255.0) as u8;
            if raw as f32 == (m * 255.0).round() {
                raw.saturating_add(1)
            } else {
                raw
            }
        })
        .collect()
}

impl ImageSource for MaskOnly<'_> {
    fn name(&self) -> String {
        format!("mask-only({})", self.inner.name())
    }
    fn len(&self) -> usize {
        self.inner.len()
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
        self.inner.label(index)
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let [c, h, w] = self.shape();
        check_read(self.len(), c * h * w, indices, out)?;
        for image in out.chunks_mut(c * h * w) {
            for (plane, &v) in image.chunks_mut(h * w).zip(&self.value) {
                plane.fill(v);
            }
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        crate::util::sha256_hex(format!("mask-only:{}", self.inner.content_hash()).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_pixels_normalize_to_about_one_in_every_channel() {
        let cifar = Normalization::cifar10();
        let v = kept_value(&cifar);
        // (125.3 + 63.0) = 188.3 → 188; (123.0 + 62.1) → 185; (113.9 + 66.7) → 181.
        assert_eq!(v, vec![188, 185, 181]);
        for ((&raw, m), s) in v.iter().zip(&cifar.mean).zip(&cifar.std) {
            let z = (raw as f32 / 255.0 - m) / s;
            assert!((z - 1.0).abs() < 0.01, "{z}");
        }
    }
}
