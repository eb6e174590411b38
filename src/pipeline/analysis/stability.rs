//! Stability of backselect subsets between two BackSelect runs over the same test
//! images: the mean Jaccard index of their top-`q` subsets with a t interval, one
//! image at a time (memory independent of the number of images).

use super::super::analyses::MeanCi;
use super::stats::Running;
use crate::store::{StoreError, StoreReader};
use crate::subsets::stability::for_each_jaccard;

/// Mean Jaccard (95% t interval) and the smallest one over the images both stores
/// hold; `None` when they share none. The stores must have run at the same
/// precision: the comparison is meant to vary the noise seed only.
pub fn mean_jaccard(
    a: &StoreReader,
    b: &StoreReader,
    q: f64,
) -> Result<Option<(MeanCi, f64)>, StoreError> {
    let (pa, pb) = (&a.meta().precision, &b.meta().precision);
    if pa != pb {
        return Err(StoreError::InvalidArgument(format!(
            "stores {} ({pa}) and {} ({pb}) ran at different precisions",
            a.dir().display(),
            b.dir().display()
        )));
    }
    let mut r = Running::default();
    let mut min = f64::INFINITY;
    for_each_jaccard(a, b, q, |j| {
        min = min.min(j);
        r.add(j);
    })?;
    Ok(r.mean_ci().map(|ci| (ci, min)))
}
