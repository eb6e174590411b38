//! SIS size (as a fraction of the image's pixels) against the threshold τ (the
//! paper's Figure 5) and for correctly vs. wrongly classified images (Figure 4),
//! read from the stored confidence histories with FindSIS (no model calls).

use super::super::analyses::{CorrectVsWrong, MeanCi, SisSizeCurve};
use super::stats::{welch_diff_ci, Running};
use crate::sis::ImageSis;
use crate::store::{StoreError, StoreReader};

/// The SIS size of `rec` at `tau` as a fraction of its pixels; `None` if `f(x) < τ`.
fn size_fraction(rec: &ImageSis, tau: f32) -> Option<f64> {
    let p = (rec.height as usize * rec.width as usize).max(1) as f64;
    rec.find_sis(tau).map(|s| s.len() as f64 / p)
}

/// Accumulates the mean SIS size at each threshold of a sweep.
#[derive(Debug)]
pub struct SizeCurve {
    thresholds: Vec<f32>,
    sums: Vec<f64>,
    counts: Vec<usize>,
}

impl SizeCurve {
    pub fn new(thresholds: &[f32]) -> Self {
        Self {
            thresholds: thresholds.to_vec(),
            sums: vec![0.0; thresholds.len()],
            counts: vec![0; thresholds.len()],
        }
    }

    pub fn add(&mut self, rec: &ImageSis) {
        for (i, &tau) in self.thresholds.iter().enumerate() {
            if let Some(f) = size_fraction(rec, tau) {
                self.sums[i] += f;
                self.counts[i] += 1;
            }
        }
    }

    pub fn finish(self, model: &str) -> SisSizeCurve {
        SisSizeCurve {
            model: model.to_string(),
            mean_fraction: self
                .sums
                .iter()
                .zip(&self.counts)
                .map(|(s, &n)| s / n.max(1) as f64)
                .collect(),
            images_with_sis: self.counts,
            thresholds: self.thresholds,
        }
    }
}

/// Accumulates SIS sizes at τ separately for images the model classifies
/// correctly (predicted = label) and wrongly.
#[derive(Debug)]
pub struct CorrectVsWrongAcc {
    tau: f32,
    correct: Running,
    wrong: Running,
}

impl CorrectVsWrongAcc {
    pub fn new(tau: f32) -> Self {
        Self {
            tau,
            correct: Running::default(),
            wrong: Running::default(),
        }
    }

    pub fn add(&mut self, rec: &ImageSis) {
        if let Some(f) = size_fraction(rec, self.tau) {
            if rec.predicted == rec.label {
                self.correct.add(f);
            } else {
                self.wrong.add(f);
            }
        }
    }

    pub fn finish(self, model: &str) -> CorrectVsWrong {
        let (c, w) = (self.correct.stat(), self.wrong.stat());
        let increase = welch_diff_ci(&c, &w)
            .filter(|_| w.mean > 0.0)
            .map(|d| MeanCi {
                mean: d.mean / w.mean,
                lo: d.lo / w.mean,
                hi: d.hi / w.mean,
                n: d.n,
            });
        CorrectVsWrong {
            model: model.to_string(),
            threshold: self.tau,
            correct: self.correct.mean_ci(),
            wrong: self.wrong.mean_ci(),
            increase,
        }
    }
}

/// Correct vs. wrong at `tau` over a whole store in one pass: the corrupted set's SIS
/// stage (the paper's Figure S3), which needs none of the test store's other analyses.
pub fn correct_vs_wrong(
    model: &str,
    store: &StoreReader,
    tau: f32,
) -> Result<CorrectVsWrong, StoreError> {
    let mut acc = CorrectVsWrongAcc::new(tau);
    for rec in store.iter() {
        acc.add(&rec?);
    }
    Ok(acc.finish(model))
}
