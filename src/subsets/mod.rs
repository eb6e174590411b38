//! Pixel-subset datasets built from SIS results: which pixels of each image are kept.
//!
//! Training and evaluation see subsets only through [`MaskSource`]: a keep-mask per
//! image, applied to the normalized, un-augmented pixels (masked = 0 = dataset mean).

pub mod export;
pub mod kept_file;
pub mod mask_only;
pub mod npz;
pub mod random;
pub mod stability;
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

/// Opens the mask source a `--masks` flag names:
///
/// - `random:Q[:SEED]` — `⌈Q·p⌉` uniform pixels per image (seed 0 by default);
/// - `backselect:STORE:Q` — the last `⌈Q·p⌉` pixels BackSelect removed, from a SIS store;
/// - `sis:STORE:TAU` — the first SIS at threshold τ from a SIS store;
/// - `DIR` — a subset dataset written by `overinterp subsets`.
///
/// `(height, width)` is the image size of the dataset the masks apply to.
pub fn open_masks(
    spec: &str,
    (height, width): (usize, usize),
) -> Result<Box<dyn MaskSource>, SubsetError> {
    let number = |what: &str, v: &str| {
        v.parse::<f64>().map_err(|_| {
            SubsetError::Invalid(format!("--masks {spec}: {what} {v:?} is not a number"))
        })
    };
    let check_size = |s: &StoredSubsets| {
        if s.image_size() == (height, width) {
            Ok(())
        } else {
            Err(SubsetError::Invalid(format!(
                "--masks {spec}: subsets are for {:?} images but the dataset has {height}×{width}",
                s.image_size()
            )))
        }
    };
    let from_store =
        |dir: &str, selection: Selection| -> Result<Box<dyn MaskSource>, SubsetError> {
            let store = crate::store::StoreReader::open(dir)
                .map_err(|e| SubsetError::Invalid(format!("--masks {spec}: {e}")))?;
            let subsets = StoredSubsets::from_store(&store, selection)?;
            check_size(&subsets)?;
            Ok(Box::new(subsets))
        };
    match spec.split_once(':') {
        Some(("random", rest)) => {
            let (q, seed) = match rest.split_once(':') {
                Some((q, seed)) => (
                    q,
                    seed.parse().map_err(|_| {
                        SubsetError::Invalid(format!(
                            "--masks {spec}: seed {seed:?} is not an integer"
                        ))
                    })?,
                ),
                None => (rest, 0),
            };
            Ok(Box::new(RandomSubset::new(
                number("fraction", q)?,
                seed,
                height,
                width,
            )?))
        }
        Some(("backselect", rest)) => {
            let (dir, q) = rest.rsplit_once(':').ok_or_else(|| {
                SubsetError::Invalid(format!("--masks {spec}: write backselect:STORE:FRACTION"))
            })?;
            from_store(dir, Selection::BackselectTop(number("fraction", q)?))
        }
        Some(("sis", rest)) => {
            let (dir, tau) = rest.rsplit_once(':').ok_or_else(|| {
                SubsetError::Invalid(format!("--masks {spec}: write sis:STORE:THRESHOLD"))
            })?;
            from_store(dir, Selection::Sis(number("threshold", tau)? as f32))
        }
        _ => {
            let subsets = StoredSubsets::load(std::path::Path::new(spec))?;
            check_size(&subsets)?;
            Ok(Box::new(subsets))
        }
    }
}

pub(crate) fn check_fraction(q: f64) -> Result<(), SubsetError> {
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(SubsetError::Invalid(format!(
            "subset fraction must be in (0, 1], got {q}"
        )))
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
