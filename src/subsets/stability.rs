//! Stability of backselect subsets (beyond the paper): how much the top-q subsets of
//! two SIS runs over the same images overlap — two noise seeds of the gradient method,
//! or exact against gradient BackSelect. A subset that moves with the tie-break seed is
//! chosen by noise, not by the model.

use crate::store::{StoreError, StoreReader};

/// Jaccard index `|A ∩ B| / |A ∪ B|` of two pixel sets given as ascending lists;
/// 1 for two empty sets (they agree).
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

/// Mean Jaccard of the backselect top-`q` subsets over the images both stores hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SubsetStability {
    /// Mean of the per-image Jaccard indices.
    pub mean_jaccard: f64,
    /// Smallest per-image Jaccard.
    pub min_jaccard: f64,
    /// Images compared (held by both stores).
    pub images: usize,
}

/// Compares the top-`q` backselect subsets of the images held by both `a` and `b`,
/// one image at a time (memory independent of the number of images). The stores must
/// be of the same dataset split and image size. `None` when they share no image.
pub fn subset_stability(
    a: &StoreReader,
    b: &StoreReader,
    q: f64,
) -> Result<Option<SubsetStability>, StoreError> {
    let (mut sum, mut min, mut n) = (0.0, f64::INFINITY, 0usize);
    for_each_jaccard(a, b, q, |j| {
        sum += j;
        min = min.min(j);
        n += 1;
    })?;
    Ok((n > 0).then(|| SubsetStability {
        mean_jaccard: sum / n as f64,
        min_jaccard: min,
        images: n,
    }))
}

/// Calls `each` with the Jaccard index of the top-`q` subsets of every image held by
/// both stores, in `a`'s index order, after checking they are of the same images.
pub fn for_each_jaccard(
    a: &StoreReader,
    b: &StoreReader,
    q: f64,
    mut each: impl FnMut(f64),
) -> Result<(), StoreError> {
    let (ma, mb) = (a.meta(), b.meta());
    if ma.dataset_sha256 != mb.dataset_sha256
        || ma.split != mb.split
        || (ma.height, ma.width) != (mb.height, mb.width)
    {
        return Err(StoreError::InvalidArgument(format!(
            "stores {} and {} are not of the same images ({} split {} {}x{} vs {} split {} {}x{})",
            a.dir().display(),
            b.dir().display(),
            ma.dataset,
            ma.split,
            ma.height,
            ma.width,
            mb.dataset,
            mb.split,
            mb.height,
            mb.width
        )));
    }
    for index in a.indices() {
        if b.contains(index) {
            each(jaccard(
                &a.top_fraction_pixels(index, q)?,
                &b.top_fraction_pixels(index, q)?,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_known_answers() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5); // {2,3} / {1,2,3,4}
        assert_eq!(jaccard(&[0, 5], &[0, 5]), 1.0);
        assert_eq!(jaccard(&[0], &[1]), 0.0);
        assert_eq!(jaccard(&[], &[]), 1.0);
        assert_eq!(jaccard(&[7], &[]), 0.0);
        assert!((jaccard(&[1, 3, 5, 7, 9], &[3, 4, 5]) - 2.0 / 6.0).abs() < 1e-15);
    }

    fn store(dir: &std::path::Path, records: &[(u64, [u32; 6])]) -> StoreReader {
        use crate::sis::{ImageSis, Method, Objective};
        use crate::store::{StoreMeta, StoreWriter, FORMAT_VERSION};
        let meta = StoreMeta {
            format_version: FORMAT_VERSION,
            model: "m".into(),
            model_sha256: "00".into(),
            dataset: "d".into(),
            dataset_sha256: "11".into(),
            split: "test".into(),
            method: Method::Gradient { k: 2 },
            thresholds: vec![0.5],
            height: 2,
            width: 3,
            num_images: 4,
            seed: 0,
            objective: Objective::LogOdds,
            precision: "fp32".into(),
            created_by: None,
            extra: Default::default(),
        };
        let mut w = StoreWriter::open(dir, meta).unwrap();
        for &(index, rank) in records {
            let rec = ImageSis {
                index,
                label: 0,
                predicted: 0,
                confidence: 0.9,
                height: 2,
                width: 3,
                removal_step: vec![1, 0, 2, 2, 0, 1],
                rank_in_block: rank.to_vec(),
                confidence_history: vec![0.9, 0.8, 0.1],
                collections: Vec::new(),
            };
            let _ = w.append(rec).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        StoreReader::open(dir).unwrap()
    }

    #[test]
    fn stability_of_two_stores_known_answer() {
        // Blocks {1,4}, {0,5}, {2,3}. Ranks A: order [4,1,0,5,3,2]; B: [4,1,0,5,2,3].
        // Top half: both {2,3,5} (J = 1). Last pixel: A {2}, B {3} (J = 0).
        // Image 1 is the same in both (J = 1); image 2 is only in A (not compared).
        let tmp = tempfile::tempdir().unwrap();
        let ra = [0, 1, 1, 0, 0, 1];
        let rb = [0, 1, 0, 1, 0, 1];
        let a = store(&tmp.path().join("a"), &[(0, ra), (1, ra), (2, ra)]);
        let b = store(&tmp.path().join("b"), &[(0, rb), (1, ra)]);
        let half = subset_stability(&a, &b, 0.5).unwrap().unwrap();
        assert_eq!(
            (half.mean_jaccard, half.min_jaccard, half.images),
            (1.0, 1.0, 2)
        );
        let last = subset_stability(&a, &b, 1.0 / 6.0).unwrap().unwrap();
        assert_eq!(
            (last.mean_jaccard, last.min_jaccard, last.images),
            (0.5, 0.0, 2)
        );
        let empty = store(&tmp.path().join("c"), &[(3, ra)]);
        assert_eq!(subset_stability(&a, &empty, 0.5).unwrap(), None);
    }
}
