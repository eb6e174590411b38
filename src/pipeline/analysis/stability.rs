//! Stability of backselect subsets between two BackSelect runs over the same test
//! images: the mean Jaccard index of their top-`q` subsets with a t interval, one
//! image at a time (memory independent of the number of images).

use super::super::analyses::MeanCi;
use super::stats::Running;
use crate::store::{StoreError, StoreReader};
use crate::subsets::stability::jaccard;

/// Mean Jaccard (95% t interval) and the smallest one over the images both stores
/// hold; `None` when they share none.
pub fn mean_jaccard(
    a: &StoreReader,
    b: &StoreReader,
    q: f64,
) -> Result<Option<(MeanCi, f64)>, StoreError> {
    let (ma, mb) = (a.meta(), b.meta());
    if (&ma.dataset_sha256, &ma.split, ma.height, ma.width)
        != (&mb.dataset_sha256, &mb.split, mb.height, mb.width)
    {
        return Err(StoreError::InvalidArgument(format!(
            "stores {} and {} are not of the same images",
            a.dir().display(),
            b.dir().display()
        )));
    }
    let mut r = Running::default();
    let mut min = f64::INFINITY;
    for index in b.indices() {
        if !a.contains(index) {
            continue;
        }
        let j = jaccard(
            &a.top_fraction_pixels(index, q)?,
            &b.top_fraction_pixels(index, q)?,
        );
        min = min.min(j);
        r.add(j);
    }
    Ok(r.mean_ci().map(|ci| (ci, min)))
}
