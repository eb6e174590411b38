//! Pixel subsets read from a SIS result store: the backselect top-q subset (the
//! last `⌈q·p⌉` pixels BackSelect removed) or the SIS for a threshold τ. Derived
//! without the model, once, when the source is built, so training reads them at
//! memory speed every epoch.

use std::collections::HashMap;

use tch::Tensor;

use super::{MaskSource, SubsetError};
use crate::store::StoreReader;

/// What to keep of each image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The last `⌈q·p⌉` pixels removed by BackSelect (the paper's "BS" subsets).
    BackselectTop(f64),
    /// The first SIS for threshold τ; images without one (f(x) < τ) keep nothing.
    Sis(f32),
}

/// Kept pixels of every image in a store.
#[derive(Debug)]
pub struct StoredSubsets {
    kept: HashMap<usize, Vec<u32>>,
    height: usize,
    width: usize,
    describe: String,
}

impl StoredSubsets {
    /// Derives the subsets of every image in `store`.
    pub fn from_store(store: &StoreReader, selection: Selection) -> Result<Self, SubsetError> {
        if let Selection::BackselectTop(q) = selection {
            super::check_fraction(q)?;
        }
        let meta = store.meta();
        let mut kept = HashMap::with_capacity(store.len());
        for index in store.indices() {
            let pixels = match selection {
                Selection::BackselectTop(q) => store.top_fraction_pixels(index, q),
                Selection::Sis(tau) => store.sis_for_threshold(index, tau).map(Option::unwrap_or_default),
            }
            .map_err(|e| SubsetError::Invalid(format!("store {}: {e}", store.dir().display())))?;
            kept.insert(index as usize, pixels);
        }
        let what = match selection {
            Selection::BackselectTop(q) => format!("backselect top {q}"),
            Selection::Sis(tau) => format!("SIS at threshold {tau}"),
        };
        Ok(Self {
            kept,
            height: meta.height as usize,
            width: meta.width as usize,
            describe: format!("{what} of {} ({})", store.dir().display(), meta.describe()),
        })
    }

    /// Kept pixels (row-major indices) of image `index`.
    pub fn pixels(&self, index: usize) -> Result<&[u32], SubsetError> {
        self.kept.get(&index).map(Vec::as_slice).ok_or_else(|| {
            SubsetError::Invalid(format!(
                "{}: no SIS result for image {index}; run `overinterp sis` over the whole split first",
                self.describe
            ))
        })
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

impl MaskSource for StoredSubsets {
    fn masks(&self, indices: &[usize]) -> Result<Tensor, SubsetError> {
        let p = self.height * self.width;
        let mut keep = vec![0f32; indices.len() * p];
        for (row, &index) in indices.iter().enumerate() {
            for &pixel in self.pixels(index)? {
                keep[row * p + pixel as usize] = 1.0;
            }
        }
        Ok(Tensor::from_slice(&keep).view([indices.len() as i64, 1, self.height as i64, self.width as i64]))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
