//! The paper's analyses as plain data: what `report` renders and what
//! `analyses.json` holds. Every number in the report comes from here.

use serde::{Deserialize, Serialize};

/// Mean, standard deviation, range and count over replicates (std is 0 for one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
    /// Smallest and largest value (the report shows the range under 3 replicates).
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub max: f64,
    /// For a proportion of one model (`n = 1`): (successes, images), so the report
    /// shows a Wilson interval over images instead of a zero-width spread.
    #[serde(default)]
    pub count: Option<(usize, usize)>,
}

/// A mean over images with a 95% t interval (`t₀.₉₇₅(n−1)·sd/√n`); with `n < 2`
/// there is no interval (`lo = hi = mean`) and the report says "too few images".
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

/// Mean confidence of the original model in the class it predicts on the full
/// image, on full test images and on its subsets, each with a 95% t interval over
/// images. The drop is `full − backselect`, in that same class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceDrop {
    pub model: String,
    pub full: MeanCi,
    pub backselect: MeanCi,
    pub random: MeanCi,
}

/// Accuracy per corruption and severity of the corrupted test set, for one row
/// of the Table 1 analog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorruptionRow {
    pub model: String,
    pub train_on: String,
    /// (`"<corruption>/<severity>"`, accuracy over replicates).
    pub groups: Vec<(String, Stat)>,
}

/// How much the backselect `q` subsets of one model move between two BackSelect
/// runs over the same test images (beyond the paper): mean Jaccard index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    pub model: String,
    /// What is compared, e.g. "gradient BackSelect, noise seed 0 vs. 1".
    pub comparison: String,
    /// Mean Jaccard over the images compared, with a 95% t interval.
    pub jaccard: MeanCi,
    /// Smallest per-image Jaccard.
    pub min_jaccard: f64,
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

/// SIS size of correctly vs. wrongly classified test images (Figure 4), or images
/// of the corrupted set (Figure S3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrectVsWrong {
    pub model: String,
    pub threshold: f32,
    /// SIS size as a fraction of the image, with 95% CI; `None` if no image.
    pub correct: Option<MeanCi>,
    pub wrong: Option<MeanCi>,
    /// The paper's measure (Figures 4 and S3): the increase of the correct images' mean
    /// SIS size over the misclassified ones', as a fraction of the latter, with the 95%
    /// Welch interval of the difference in means scaled the same way; `None` under 2
    /// images in either group or a misclassified mean of 0.
    #[serde(default)]
    pub increase: Option<MeanCi>,
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
    /// SIS re-evaluated with the model before being shown, and how many of them had
    /// `f(x_S) ≥ τ`; only verified ones are drawn.
    #[serde(default)]
    pub checked: usize,
    #[serde(default)]
    pub verified: usize,
}

/// Confidence in the predicted class along BackSelect (Figure S10): points
/// (fraction of pixels removed, f), from the full image to the fully masked one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceHistory {
    pub model: String,
    /// The mean over all test images, step by step.
    pub mean: Vec<(f64, f64)>,
    /// (image index, its history) of the first images in store order.
    pub sample: Vec<(usize, Vec<(f64, f64)>)>,
    /// Images in the mean.
    pub images: usize,
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
    /// Class names from the data, by class index (`C` = its length).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// The subset fraction q (0.05 = 5%).
    pub fraction: f64,
    /// Settings a reader needs to judge the numbers (k, epochs, replicates, ...),
    /// as (name, value) in display order.
    pub settings: Vec<(String, String)>,
    pub table1: Vec<Table1Row>,
    /// The corrupted set per corruption and severity (CIFAR-10-C), per Table 1 row.
    #[serde(default)]
    pub corruption: Vec<CorruptionRow>,
    /// Stability of the backselect subsets between two BackSelect runs.
    #[serde(default)]
    pub stability: Vec<Stability>,
    pub confidence: Vec<ConfidenceDrop>,
    pub sis_size: Vec<SisSizeCurve>,
    pub correct_vs_wrong: Vec<CorrectVsWrong>,
    /// The same on the corrupted test set, where configured (Figure S3).
    #[serde(default)]
    pub corrupted_correct_vs_wrong: Vec<CorrectVsWrong>,
    pub heatmaps: Vec<Heatmap>,
    /// Confidence along BackSelect per model (Figure S10).
    #[serde(default)]
    pub confidence_history: Vec<ConfidenceHistory>,
    pub transfer: Option<TransferMatrix>,
    pub galleries: Vec<Gallery>,
    /// The full pipeline spec (TOML text) that produced this.
    pub spec: String,
}
