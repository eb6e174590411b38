//! A participant's image order, as in the paper's study (S4): one batch per kept
//! fraction in increasing order (so a larger subset of an image is never seen before
//! a smaller one), every image once per batch, shuffled within the batch by a seed of
//! the participant. The order is a pure function of the study seed and the
//! participant's code, so it needs no storage and survives any restart.

use sha2::{Digest, Sha256};

use super::manifest::{StudyManifest, TrialRef};

/// The participant's shuffle seed: the first 8 bytes of sha256(study seed, code).
pub fn participant_seed(study_seed: u64, code: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(study_seed.to_le_bytes());
    h.update(code.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

/// Every trial of the study in the order participant `code` sees them.
pub fn sequence(study: &StudyManifest, code: &str) -> Vec<TrialRef> {
    let seed = participant_seed(study.seed, code);
    let mut out = Vec::with_capacity(study.trials_per_participant());
    for fraction in 0..study.fractions.len() {
        let mut images: Vec<usize> = (0..study.images.len()).collect();
        crate::util::SplitMix64::stream(seed, fraction as u64).shuffle(&mut images);
        out.extend(images.into_iter().map(|image| TrialRef { image, fraction }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_ascend_every_trial_once_and_codes_shuffle_differently() {
        let study = crate::human::manifest::sample_study();
        let a = sequence(&study, "AAAAAAAA");
        assert_eq!(a.len(), study.trials_per_participant());
        assert!(a.windows(2).all(|w| w[0].fraction <= w[1].fraction));
        let mut seen: Vec<_> = a.iter().map(|t| (t.image, t.fraction)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), a.len());
        assert_eq!(
            a,
            sequence(&study, "AAAAAAAA"),
            "the order is a function of the code"
        );
        let orders: std::collections::HashSet<Vec<usize>> =
            ["AAAAAAAA", "BBBBBBBB", "CCCCCCCC", "DDDDDDDD"]
                .iter()
                .map(|c| sequence(&study, c)[..6].iter().map(|t| t.image).collect())
                .collect();
        assert!(orders.len() > 1, "every code got the same shuffle");
    }
}
