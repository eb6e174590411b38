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
//! - [`gallery`]: one SIS per predicted class and its PNG (Figure 1).
//! - [`table1`]: the Table 1 analog's columns from evaluation summaries.
//! - [`settings`]: the settings table a reader needs to judge the numbers.

pub mod gallery;
pub mod heatmaps;
pub mod settings;
pub mod sis_size;
pub mod stats;
pub mod table1;

use super::analyses::{CorrectVsWrong, Heatmap, SisSizeCurve};
use crate::sis::ImageSis;
use crate::store::{StoreError, StoreReader};

/// What one pass over a model's test store gives.
#[derive(Debug)]
pub struct StoreAnalyses {
    pub sis_size: SisSizeCurve,
    pub correct_vs_wrong: CorrectVsWrong,
    pub heatmaps: Vec<Heatmap>,
    pub gallery: gallery::GalleryPicks,
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
    let mut images = 0;
    for rec in records {
        let rec = rec?;
        sizes.add(&rec);
        cvw.add(&rec);
        heat.add(&rec);
        picks.add(&rec);
        images += 1;
    }
    Ok(StoreAnalyses {
        sis_size: sizes.finish(model),
        correct_vs_wrong: cvw.finish(model),
        heatmaps: heat.finish(model),
        gallery: picks,
        images,
    })
}
