//! The paper's analyses as plain data: what `report` renders and what
//! `analyses.json` holds. Every number in the report comes from here.

use serde::{Deserialize, Serialize};

/// Mean, standard deviation and count over replicates (std is 0 for one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

/// A mean with a 95% confidence interval (normal approximation, `1.96·sd/√n`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// One row of the Table 1 analog: a model trained on `train_on` (full images,
/// backselect subsets, random subsets), evaluated on each of `eval_on`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table1Row {
    /// The architecture / model name from the pipeline spec.
    pub model: String,
    /// "Full", "BS 5%", "Random 5%".
    pub train_on: String,
    /// (column name, accuracy over replicates): "Full test", "BS 5% test",
    /// "Random 5% test", and a corrupted-test column where configured.
    pub eval_on: Vec<(String, Stat)>,
}

/// Mean confidence of the original model on full test images and on its subsets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceDrop {
    pub model: String,
    pub full: f64,
    pub backselect: f64,
    pub random: f64,
}

/// Mean SIS size (fraction of the image's pixels) against threshold τ (Figure 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SisSizeCurve {
    pub model: String,
    pub thresholds: Vec<f32>,
    /// Mean over images that have a SIS at τ.
    pub mean_fraction: Vec<f64>,
    /// How many test images have a SIS at τ (f(x) ≥ τ).
    pub images_with_sis: Vec<usize>,
}

/// SIS size of correctly vs. wrongly classified test images (Figure 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrectVsWrong {
    pub model: String,
    pub threshold: f32,
    /// SIS size as a fraction of the image, with 95% CI; `None` if no image.
    pub correct: Option<MeanCi>,
    pub wrong: Option<MeanCi>,
}

/// How often each pixel is in the backselect subset (Figure 2), over all test
/// images (`class: None`) or those predicted as one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    pub model: String,
    pub class: Option<i64>,
    pub height: usize,
    pub width: usize,
    /// Row-major frequencies in `[0, 1]`.
    pub values: Vec<f32>,
    pub images: usize,
}

/// Section 4.1: test accuracy of model `evaluators[j]` on the backselect test
/// subsets of model `sources[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferMatrix {
    pub sources: Vec<String>,
    pub evaluators: Vec<String>,
    pub accuracy: Vec<Vec<f64>>,
}

/// A gallery image written by the pipeline (Figure 1): rows of original | SIS
/// location | SIS image, one per class where the model has a SIS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gallery {
    pub model: String,
    pub threshold: f32,
    /// Path relative to the report directory.
    pub png: String,
    /// The (image index, true label, predicted class) of each row.
    pub rows: Vec<(usize, i64, i64)>,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analyses {
    /// Pipeline name.
    pub name: String,
    /// Dataset spec and split sizes, e.g. "fashion-mnist?limit=10000".
    pub dataset: String,
    pub train_images: usize,
    pub test_images: usize,
    /// The subset fraction q (0.05 = 5%).
    pub fraction: f64,
    /// Settings a reader needs to judge the numbers (k, epochs, replicates, ...),
    /// as (name, value) in display order.
    pub settings: Vec<(String, String)>,
    pub table1: Vec<Table1Row>,
    pub confidence: Vec<ConfidenceDrop>,
    pub sis_size: Vec<SisSizeCurve>,
    pub correct_vs_wrong: Vec<CorrectVsWrong>,
    pub heatmaps: Vec<Heatmap>,
    pub transfer: Option<TransferMatrix>,
    pub galleries: Vec<Gallery>,
    /// The full pipeline spec (TOML text) that produced this.
    pub spec: String,
}
