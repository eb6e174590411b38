//! Pixel-subset datasets built from SIS results: which pixels of each image are kept.
//!
//! Training and evaluation see subsets only through [`MaskSource`]: a keep-mask per
//! image, applied to the normalized, un-augmented pixels (masked = 0 = dataset mean).

pub mod export;
pub mod npz;
pub mod random;
pub mod stored;

use tch::Tensor;

pub use crate::store::subset_size;
pub use random::RandomSubset;
pub use stored::{Selection, StoredSubsets};

/// Errors of subset construction and export.
#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Keep-masks for images of one dataset split.
pub trait MaskSource: Send + Sync {
    /// Float masks `[N, 1, H, W]` on the CPU, 1 where a pixel is kept, 0 where masked,
    /// for the dataset images `indices`.
    fn masks(&self, indices: &[usize]) -> Result<Tensor, SubsetError>;
    /// One line for logs and configs ("random 5% seed 0", "backselect top 5% of STORE").
    fn describe(&self) -> String;
}

pub(crate) fn check_fraction(q: f64) -> Result<(), SubsetError> {
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(SubsetError::Invalid(format!("subset fraction must be in (0, 1], got {q}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_sizes_match_the_paper() {
        assert_eq!(subset_size(0.05, 1024), 52); // CIFAR-10: 51.2 → 52
        assert_eq!(subset_size(0.10, 299 * 299), 8941); // ImageNet: 8940.1 → 8941
        assert_eq!(subset_size(0.05, 1000), 50);
        assert_eq!(subset_size(1.0, 784), 784);
    }

    #[test]
    fn random_subsets_are_fixed_per_image_and_differ_between_images() {
        let r = RandomSubset::new(0.05, 3, 32, 32).unwrap();
        assert_eq!(r.pixels(7), r.pixels(7));
        assert_ne!(r.pixels(7), r.pixels(8));
        let m = r.masks(&[7, 8]).unwrap();
        assert_eq!(m.size(), vec![2, 1, 32, 32]);
        assert_eq!(m.sum(tch::Kind::Float).double_value(&[]), 104.0);
        let other_seed = RandomSubset::new(0.05, 4, 32, 32).unwrap();
        assert_ne!(r.pixels(7), other_seed.pixels(7));
    }

    #[test]
    fn bad_fractions_are_refused() {
        assert!(RandomSubset::new(0.0, 0, 4, 4).is_err());
        assert!(RandomSubset::new(1.5, 0, 4, 4).is_err());
    }
}
