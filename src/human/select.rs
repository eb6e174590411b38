//! Which images a study shows, as the paper chose them (S4): per class, images the
//! choosing model classifies correctly with high confidence, spread over the models
//! about equally, no image twice.

use crate::store::StoreReader;

use super::HumanError;

/// An image that qualifies for a store: its model predicts the true label with at
/// least the minimum confidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Index in the dataset split.
    pub index: u64,
    /// True label (= prediction).
    pub label: i64,
    /// The model's confidence on the full image.
    pub confidence: f32,
}

/// The qualifying images of one store, read record by record (the store is streamed
/// segment by segment, never held whole).
pub fn candidates(store: &StoreReader, min_confidence: f32) -> Result<Vec<Candidate>, HumanError> {
    let mut out = Vec::new();
    for rec in store.iter() {
        let rec = rec?;
        if rec.predicted == rec.label && rec.confidence >= min_confidence {
            out.push(Candidate {
                index: rec.index,
                label: rec.label,
                confidence: rec.confidence,
            });
        }
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// A chosen image: which store chose it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chosen {
    pub store: usize,
    pub candidate: Candidate,
}

/// Picks `per_class` images of each class in `classes` from the stores' candidates
/// (`candidates[s]` for store `s`). Image `j` of the `c`-th class comes from store
/// `(c + j) mod S`, so each store gets `per_class · |classes| / S` images, ± 1 per
/// class; within a store the images are drawn by a seeded shuffle. An image chosen
/// once is never chosen again (two stores may hold the same test image).
///
/// `store_names` and `class_names` only make the error readable: when a store runs
/// out of qualifying images of a class, the error names both and the counts.
pub fn choose(
    candidates: &[Vec<Candidate>],
    classes: &[i64],
    per_class: usize,
    seed: u64,
    store_names: &[String],
    class_name: impl Fn(i64) -> String,
    min_confidence: f32,
) -> Result<Vec<Chosen>, HumanError> {
    let stores = candidates.len();
    if stores == 0 {
        return Err(HumanError::Invalid("--stores names no store".into()));
    }
    let mut used = std::collections::HashSet::new();
    let mut chosen = Vec::with_capacity(classes.len() * per_class);
    for (ci, &class) in classes.iter().enumerate() {
        // One seeded shuffle of each store's candidates of this class.
        let mut pools: Vec<Vec<Candidate>> = candidates
            .iter()
            .enumerate()
            .map(|(s, cands)| {
                let mut pool: Vec<Candidate> =
                    cands.iter().filter(|c| c.label == class).copied().collect();
                let stream = (class as u64) << 16 | s as u64;
                crate::util::SplitMix64::stream(seed, stream).shuffle(&mut pool);
                pool
            })
            .collect();
        let needed: Vec<usize> = (0..stores)
            .map(|s| (0..per_class).filter(|j| (ci + j) % stores == s).count())
            .collect();
        for j in 0..per_class {
            let s = (ci + j) % stores;
            let pool = &mut pools[s];
            let pick = loop {
                match pool.pop() {
                    Some(c) if used.contains(&c.index) => continue,
                    Some(c) => break Some(c),
                    None => break None,
                }
            };
            let Some(c) = pick else {
                let qualifying = candidates[s].iter().filter(|c| c.label == class).count();
                return Err(HumanError::Invalid(format!(
                    "store {} has {qualifying} image(s) of class {class} ({}) classified \
                     correctly with confidence >= {min_confidence} not already chosen from \
                     another store, but the study needs {} from it ({per_class} per class \
                     over {stores} store(s)); lower --per-class or --min-confidence, or \
                     compute the store on more images",
                    store_names[s],
                    class_name(class),
                    needed[s],
                )));
            };
            used.insert(c.index);
            chosen.push(Chosen {
                store: s,
                candidate: c,
            });
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: u64, label: i64) -> Candidate {
        Candidate {
            index,
            label,
            confidence: 0.999,
        }
    }

    #[test]
    fn spreads_over_stores_and_never_repeats_an_image() {
        // Both stores qualify the same 6 images of each of 3 classes.
        let pool: Vec<Candidate> = (0..18).map(|i| cand(i, (i % 3) as i64)).collect();
        let chosen = choose(
            &[pool.clone(), pool],
            &[0, 1, 2],
            4,
            7,
            &["a".into(), "b".into()],
            |c| c.to_string(),
            0.99,
        )
        .unwrap();
        assert_eq!(chosen.len(), 12);
        let per_store = |s| chosen.iter().filter(|c| c.store == s).count();
        assert_eq!((per_store(0), per_store(1)), (6, 6));
        let mut idx: Vec<u64> = chosen.iter().map(|c| c.candidate.index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 12, "an image was chosen twice");
        for class in 0..3 {
            assert_eq!(
                chosen.iter().filter(|c| c.candidate.label == class).count(),
                4
            );
        }
    }

    #[test]
    fn too_few_qualifying_images_names_store_and_class() {
        let err = choose(
            &[vec![cand(0, 0), cand(1, 1)]],
            &[0, 1],
            2,
            0,
            &["stores/r20".into()],
            |c| ["cat", "dog"][c as usize].to_string(),
            0.99,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("stores/r20") && err.contains("class 0 (cat)"),
            "{err}"
        );
        assert!(err.contains("needs 2"), "{err}");
    }
}
