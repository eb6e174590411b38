//! The paper's analyses as maths, apart from the orchestration in [`super::run`].
//!
//! Everything read from a SIS store is computed in **one pass** over the store's
//! segments ([`analyze_store`]): each analysis is an accumulator fed one record at a
//! time, holding state whose size depends on the image size and the number of
//! classes but never on the number of images. So 50,000 ImageNet validation
//! records (≈ 18 GB of removal steps) are analysed in the memory of one segment.
//!
//! - [`stats`]: mean ± std over replicates, mean with a 95% interval, streaming.
//! - [`sis_size`]: SIS size against τ (Figure 5) and for correct vs. wrong (Figure 4).
//! - [`heatmaps`]: pixel frequency in backselect subsets, overall and per class (Figure 2).
//! - [`history`]: confidence along BackSelect, sampled images and the mean (Figure S10).
//! - [`gallery`]: one SIS per predicted class and its PNG (Figure 1).
//! - [`classes`]: class names from the data files.
//! - [`stability`]: mean Jaccard of backselect subsets between two runs.
//! - [`table1`]: the Table 1 analog's columns from evaluation summaries.
//! - [`settings`]: the settings table a reader needs to judge the numbers.

pub mod classes;
pub mod gallery;
pub mod heatmaps;
pub mod history;
pub mod settings;
pub mod sis_size;
pub mod stability;
pub mod stats;
pub mod table1;

use super::analyses::{ConfidenceHistory, CorrectVsWrong, Heatmap, SisSizeCurve};
use crate::sis::ImageSis;
use crate::store::{StoreError, StoreReader};

/// What one pass over a model's test store gives.
#[derive(Debug)]
pub struct StoreAnalyses {
    pub sis_size: SisSizeCurve,
    pub correct_vs_wrong: CorrectVsWrong,
    pub heatmaps: Vec<Heatmap>,
    pub gallery: gallery::GalleryPicks,
    pub confidence_history: ConfidenceHistory,
    /// Records read.
    pub images: usize,
}

/// Runs every store analysis of `model` over `store` in one pass: SIS sizes at the
/// `sweep` thresholds, correct vs. wrong at `tau`, backselect-`q` heatmaps, and the
/// gallery's picks at `tau`.
pub fn analyze_store(
    model: &str,
    store: &StoreReader,
    sweep: &[f32],
    tau: f32,
    q: f64,
) -> Result<StoreAnalyses, StoreError> {
    analyze_records(model, store.iter(), sweep, tau, q)
}

/// [`analyze_store`] over any stream of records (in the store's order).
pub fn analyze_records(
    model: &str,
    records: impl Iterator<Item = Result<ImageSis, StoreError>>,
    sweep: &[f32],
    tau: f32,
    q: f64,
) -> Result<StoreAnalyses, StoreError> {
    let mut sizes = sis_size::SizeCurve::new(sweep);
    let mut cvw = sis_size::CorrectVsWrongAcc::new(tau);
    let mut heat = heatmaps::HeatmapAcc::new(q);
    let mut picks = gallery::GalleryPicks::new(tau);
    let mut history = history::HistoryAcc::default();
    let mut full_confidence = stats::Running::default();
    let mut images = 0;
    for rec in records {
        let rec = rec?;
        sizes.add(&rec);
        cvw.add(&rec);
        heat.add(&rec);
        picks.add(&rec);
        history.add(&rec);
        full_confidence.add(rec.confidence as f64);
        images += 1;
    }
    Ok(StoreAnalyses {
        sis_size: sizes.finish(model),
        correct_vs_wrong: cvw.finish(model),
        heatmaps: heat.finish(model),
        gallery: picks,
        confidence_history: history.finish(model, full_confidence.mean()),
        images,
    })
}
