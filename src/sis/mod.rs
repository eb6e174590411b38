//! Sufficient Input Subsets (Carter et al. 2019; paper §3.2, S5).
//!
//! A feature is a pixel (all channels together). The target class is the model's
//! predicted class on the full image and `f` is its softmax probability.
//!
//! - [`exact`]: exact BackSelect, every remaining pixel tried at every step
//!   (`p(p+1)/2` forwards, evaluated in large no-grad batches).
//! - [`gradient`]: Batched Gradient BackSelect (S5), `k` pixels per step by the
//!   largest mask gradient, one backward per step for a whole mini-batch.
//! - [`screened`]: exact BackSelect's choice among the `M` pixels one gradient pass
//!   ranks best (`p·M` forwards instead of `p²/2`), and its [`screened::agreement`]
//!   with exact.
//! - [`findsis`]: FindSIS from the recorded confidence history (no model calls)
//!   and the explicit pop-and-re-evaluate form of S5 it is checked against.
//! - [`precision`]: `--precision fp32|bf16|fp16|auto`: which steps may run in
//!   reduced precision, how `auto` decides, and the fp32 re-ranking of exact.
//! - [`objective`]: what candidates are compared by: `L = logsumexp_{j≠c}(z_j − z_c)`
//!   (default), which does not saturate where an fp32 `f` rounds to 1.
//! - [`lanes`]: a BackSelect's images split across CPU threads, each with its own
//!   copy of the model and one libtorch thread.
//! - [`engine`]: [`run_sis`], which turns image indices of a dataset into
//!   [`ImageSis`] records, SIS collections included, and streams them out.

use serde::{Deserialize, Serialize};

pub mod engine;
pub mod exact;
pub mod findsis;
pub mod gradient;
pub mod lanes;
pub mod objective;
pub mod precision;
pub mod screened;
#[cfg(test)]
mod tests;

pub use engine::{run_sis, run_sis_with, sis_batch, Evaluator, SisRunSummary};
pub use findsis::{find_sis, find_sis_by_reevaluation, BackSelectTrace};
pub use lanes::{Lane, Lanes};
pub use objective::Objective;
pub use precision::Precision;

/// Everything the engine learns about one image; what the result store keeps and
/// what a cluster worker streams back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSis {
    /// Position of the image in its dataset split.
    pub index: u64,
    /// True label from the dataset.
    pub label: i64,
    /// The model's predicted class on the full image: the SIS target.
    pub predicted: i64,
    /// `f(x)`: softmax probability of `predicted` on the full image.
    pub confidence: f32,
    /// Image height and width (pixels are indexed row-major, `p = h·w`).
    pub height: u32,
    pub width: u32,
    /// For each pixel, the BackSelect step at which it was removed (0 = first).
    /// Exact BackSelect removes one pixel per step; Batched Gradient removes `k`,
    /// so `k` pixels share a step. The last pixels removed are the most important.
    pub removal_step: Vec<u32>,
    /// For each pixel, its rank inside the block removed at its step: 0 for the
    /// pixel with the highest score (`−∇L` plus noise), counted as removed first,
    /// as `k = 1` steps would have removed it; the block's lowest score is kept
    /// longest. Sorting by `(removal_step, rank_in_block)` gives the total removal
    /// order, which decides where a subset fraction cuts a block. Empty when no
    /// block holds more than one pixel (exact BackSelect, `k = 1`) or nothing was
    /// recorded (stores of format 1): pixels of a block then follow by index.
    #[serde(default)]
    pub rank_in_block: Vec<u32>,
    /// `f` after each step: `confidence_history[s]` is the confidence once the
    /// pixels of steps `0..=s` are masked. Its length is the number of steps.
    pub confidence_history: Vec<f32>,
    /// SIS collections for the requested thresholds (each SIS a sorted pixel list;
    /// SISes of one collection are disjoint). Empty when `confidence < threshold`.
    pub collections: Vec<SisCollection>,
}

impl ImageSis {
    /// The first SIS for threshold `threshold`, re-derived from the recorded
    /// BackSelect without the model (see [`find_sis`]); `None` when
    /// `confidence < threshold`.
    pub fn find_sis(&self, threshold: f32) -> Option<Vec<u32>> {
        find_sis(
            &self.removal_step,
            &self.confidence_history,
            self.confidence,
            threshold,
        )
    }

    /// The pixels in removal order, first removed first (see
    /// [`crate::store::removal_order`]).
    pub fn removal_order(&self) -> Vec<u32> {
        crate::store::removal_order(&self.removal_step, &self.rank_in_block)
    }

    /// The backselect subset of fraction `q`: the `⌈q·p⌉` pixels removed last, sorted
    /// by pixel index (see [`crate::store::top_fraction`]). `q` must lie in `[0, 1]`.
    pub fn top_fraction(&self, q: f64) -> Vec<u32> {
        crate::store::top_fraction(&self.removal_step, &self.rank_in_block, q)
    }
}

/// The disjoint SISes found for one threshold τ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SisCollection {
    pub threshold: f32,
    pub sis: Vec<Vec<u32>>,
}

/// How BackSelect orders pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// Carter et al. 2019: at each step try removing every remaining pixel and keep
    /// the removal that leaves the highest `f` (the smallest `L`, see [`Objective`]).
    /// Exact, `p(p+1)/2` forwards per BackSelect, so meant for CIFAR-size images.
    Exact,
    /// Paper S5: remove the `k` pixels with the largest `∇_M f(x ⊙ (1−M))` (by
    /// default the largest `−∇_M L`, same order per image, see [`Objective`]) per
    /// step; `⌈p/k⌉` forward+backward passes per BackSelect.
    Gradient {
        /// Pixels removed per step (the paper uses 100 on ImageNet).
        k: u32,
    },
    /// Screened exact BackSelect (new, not in the paper): per step one mask
    /// gradient ranks the remaining pixels and only the best `screen` (`M`) are
    /// evaluated exactly; the smallest `L` among them is removed. One pixel per
    /// step, about `p·M` forwards; exact BackSelect itself when `M ≥ p`.
    Screened {
        /// Candidates evaluated exactly per step (`M`).
        screen: u32,
    },
}

impl Method {
    /// Pixels removed per BackSelect step: `k` for gradient, 1 otherwise.
    pub fn pixels_per_step(self) -> u32 {
        match self {
            Method::Gradient { k } => k,
            Method::Exact | Method::Screened { .. } => 1,
        }
    }

    /// `exact`, `gradient k=K` or `screened M=32`, as a user would read it.
    pub fn describe(self) -> String {
        match self {
            Method::Exact => "exact".into(),
            Method::Gradient { k } => format!("gradient k={k}"),
            Method::Screened { screen } => format!("screened M={screen}"),
        }
    }
}

/// What one SIS run computes; saved next to the results so a store says how it
/// was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SisParams {
    /// Exact or Batched Gradient BackSelect.
    pub method: Method,
    /// What candidates are ranked by: `log-odds` (`L`, default) or `confidence`
    /// (`f`, the paper's literal form, which saturates). Fixed by the job: every
    /// worker and every resume of a store must use the same one.
    pub objective: Objective,
    /// SIS thresholds τ, each in `(0, 1]`; one [`SisCollection`] per entry, in
    /// this order.
    pub thresholds: Vec<f32>,
    /// Images processed together: the gradient mini-batch (paper: 32). Exact
    /// BackSelect also pools the candidates of this many images into its batches.
    pub batch_size: usize,
    /// Masked candidates per forward pass in exact BackSelect and in the
    /// verification forwards. Sized to the device's memory: activations of this
    /// many images must fit.
    pub candidate_batch: usize,
    /// Seeds the Gaussian tie-break noise (std 1e-6) of Batched Gradient BackSelect.
    /// The noise of a pixel depends only on (seed, image index, round, step, pixel),
    /// so a result does not depend on which other images share its mini-batch. It is
    /// added to `−∇L`: relative to the gradient it is the paper's noise on `∇f`
    /// scaled by `1/(f(1−f))`, so it decides near-ties only, not the whole order.
    pub seed: u64,
    /// Find the whole SIS collection (repeat on the remaining pixels until
    /// `f < τ`); `false` keeps only the first SIS per threshold.
    pub collection: bool,
    /// Arithmetic of the steps that may run in reduced precision (see
    /// [`precision`]). `auto` is resolved by the job (the leader) before any
    /// worker computes; the engine itself reads `auto` as fp32 and never looks at
    /// the machine.
    pub precision: Precision,
    /// Exact BackSelect in reduced precision: candidates re-evaluated in fp32 per
    /// step, the best of the reduced-precision ranking (default 8).
    pub rerank: u32,
    /// CPU lanes each BackSelect is split across (see [`lanes`]); 0 = `auto`,
    /// resolved by the job like `precision` (the engine reads it as 1). Changes
    /// results in the last bits only, so a store records it and keeps it. Not
    /// written when 1, so specs and pipeline stage keys from before lanes stay the same.
    #[serde(skip_serializing_if = "is_one")]
    pub lanes: u32,
}

impl Default for SisParams {
    fn default() -> Self {
        Self {
            method: Method::Exact,
            objective: Objective::default(),
            thresholds: vec![0.99],
            batch_size: 32,
            candidate_batch: 256,
            seed: 0,
            collection: true,
            precision: Precision::default(),
            rerank: precision::DEFAULT_RERANK,
            lanes: 1,
        }
    }
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl SisParams {
    /// Rejects parameters the algorithms cannot run with, saying which and why.
    pub fn validate(&self) -> Result<(), SisError> {
        if let Method::Gradient { k: 0 } = self.method {
            return Err(SisError::Params(
                "method gradient needs k ≥ 1 pixels per step".into(),
            ));
        }
        if let Method::Screened { screen: 0 } = self.method {
            return Err(SisError::Params(
                "method screened needs screen ≥ 1 candidates per step".into(),
            ));
        }
        if self.rerank == 0 {
            return Err(SisError::Params(
                "rerank must be at least 1 candidate re-evaluated in fp32".into(),
            ));
        }
        if self.thresholds.is_empty() {
            return Err(SisError::Params("at least one threshold is needed".into()));
        }
        for &t in &self.thresholds {
            // τ ≤ 0 would make the empty set sufficient for every image.
            if !(t > 0.0 && t <= 1.0) {
                return Err(SisError::Params(format!("threshold {t} is not in (0, 1]")));
            }
        }
        if self.batch_size == 0 {
            return Err(SisError::Params("batch_size must be at least 1".into()));
        }
        if self.candidate_batch == 0 {
            return Err(SisError::Params(
                "candidate_batch must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Errors of the SIS engine. Each names the model or images at fault.
#[derive(Debug, thiserror::Error)]
pub enum SisError {
    #[error("invalid SIS parameters: {0}")]
    Params(String),
    #[error(
        "dataset {dataset} has images of shape {got:?} (C, H, W) but model \
         {model} expects {expected:?}"
    )]
    InputShape {
        dataset: String,
        model: String,
        got: [i64; 3],
        expected: [i64; 3],
    },
    #[error(
        "model {model} returned logits of shape {got:?} for a batch of {batch} images; \
         expected [{batch}, {classes}] (images {images:?})"
    )]
    OutputShape {
        model: String,
        got: Vec<i64>,
        batch: i64,
        classes: i64,
        images: Vec<u64>,
    },
    #[error("model {model} returned NaN or infinite {what} for images {images:?}")]
    NonFinite {
        model: String,
        what: &'static str,
        images: Vec<u64>,
    },
    #[error("model {model}: {source}")]
    Model {
        model: String,
        #[source]
        source: crate::models::ModelError,
    },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("tensor operation failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("the result consumer failed on image {index}: {source}")]
    Emit {
        index: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
