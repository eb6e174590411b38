//! The random baseline: `⌈q·p⌉` pixels per image drawn uniformly, fixed per image
//! by a seed, so every epoch and every rerun sees the same subset of an image.

use tch::Tensor;

use super::{subset_size, MaskSource, SubsetError};
use crate::util::SplitMix64;

/// Random pixel subsets of fraction `fraction` for images of shape `(h, w)`.
#[derive(Clone, Debug)]
pub struct RandomSubset {
    pub fraction: f64,
    pub seed: u64,
    pub height: usize,
    pub width: usize,
}

impl RandomSubset {
    pub fn new(fraction: f64, seed: u64, height: usize, width: usize) -> Result<Self, SubsetError> {
        super::check_fraction(fraction)?;
        Ok(Self {
            fraction,
            seed,
            height,
            width,
        })
    }

    /// Kept pixel indices (row-major, increasing) of image `index`.
    pub fn pixels(&self, index: usize) -> Vec<usize> {
        let p = self.height * self.width;
        SplitMix64::stream(self.seed, index as u64).sample(p, subset_size(self.fraction, p))
    }
}

impl MaskSource for RandomSubset {
    fn masks(&self, indices: &[usize]) -> Result<Tensor, SubsetError> {
        let p = self.height * self.width;
        let mut keep = vec![0f32; indices.len() * p];
        for (row, &index) in indices.iter().enumerate() {
            for pixel in self.pixels(index) {
                keep[row * p + pixel] = 1.0;
            }
        }
        Ok(Tensor::from_slice(&keep).view([
            indices.len() as i64,
            1,
            self.height as i64,
            self.width as i64,
        ]))
    }

    fn describe(&self) -> String {
        format!("random {:.4} of pixels, seed {}", self.fraction, self.seed)
    }
}
