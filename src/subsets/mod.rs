//! Pixel-subset datasets built from SIS results: which pixels of each image are kept.
//!
//! Training and evaluation see subsets only through [`MaskSource`]: a keep-mask per
//! image, applied to the normalized, un-augmented pixels (masked = 0 = dataset mean).

use tch::Tensor;

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
