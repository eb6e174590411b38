//! The report a researcher reads: `report.md` and `report.html` with the
//! paper's tables and figures for this run, one paragraph of findings written
//! from the numbers, the settings and the full pipeline spec; plus
//! `analyses.json` (the numbers themselves) and the figures under `figures/`.
//!
//! # Number formatting
//!
//! Every number shown comes straight from [`Analyses`] with one fixed format,
//! so a reader (or a test) can check it against `analyses.json`:
//!
//! - accuracies, confidences, SIS sizes and transfer accuracies are fractions
//!   in `[0, 1]` in the analyses and are shown as percentages with two
//!   decimals, without the `%` sign in table cells (`0.92518` → `92.52`);
//! - a statistic over replicate models is `mean ± std (n)` with 3 or more, `mean
//!   (min–max)` with 2, and for one model `value [lo, hi]`, its 95% Wilson interval
//!   over the images (see [`fmt_stat`]);
//! - a mean over images is `mean [lo, hi] (n)` with a 95% Student t interval, and
//!   `mean (too few images, n = 1)` under two images;
//! - thresholds τ are shown as written in the spec (`f32` shortest form);
//! - counts are integers.
//!
//! The derived numbers — the confidence drop `full − backselect` (in the class the
//! original model predicts on the full image) and the share of BS accuracy the mask
//! shape explains, `(acc_mask − 1/C) / (acc_BS − 1/C)` — are computed before rounding.
//!
//! Both documents are rendered from one list of [`blocks::Block`]s so they cannot
//! disagree.
//!
//! # Parts
//!
//! - [`prose`]: the findings paragraph, every clause conditional on the numbers.
//! - [`blocks`]: the report as a list of [`blocks::Block`]s (headings, tables,
//!   figures, code).
//! - [`markdown`] and [`html`]: the two renderers of that list.

mod blocks;
mod html;
mod markdown;
mod prose;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use super::analyses::{Analyses, MeanCi, Stat};
use super::figures::{self, FigureError};

use blocks::build_blocks;
use html::to_html;
use markdown::to_markdown;
pub use prose::findings;

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serialising the analyses to {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Figure(#[from] FigureError),
}

/// What [`write_report`] wrote; all paths are inside the report directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    /// The figure PNGs, in the order the report shows them.
    pub figures: Vec<PathBuf>,
}

/// A percentage with two decimals: the one format every fraction in the report uses.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// A ratio in `[0, 1]` such as a Jaccard index, with three decimals.
pub fn fmt_ratio(x: f64) -> String {
    format!("{x:.3}")
}

/// A statistic over replicate models, in percent: with 3 or more replicates
/// `mean ± std (n)`; with 2, `mean (min–max)`: a std of two values says little; with
/// one, the value and its 95% Wilson interval over the images it was measured on,
/// `value [lo, hi]`; `—` without any.
pub fn fmt_stat(s: &Stat) -> String {
    match s.n {
        0 => "—".into(),
        1 => match s
            .count
            .and_then(|(k, n)| super::analysis::stats::wilson(k, n))
        {
            Some((lo, hi)) => format!("{} [{}, {}]", pct(s.mean), pct(lo), pct(hi)),
            None => pct(s.mean),
        },
        2 => format!("{} ({}–{})", pct(s.mean), pct(s.min), pct(s.max)),
        n => format!("{} ± {} ({n})", pct(s.mean), pct(s.std),),
    }
}

/// `mean [lo, hi] (n)` in percent; under 2 images `mean (too few images, n = 1)`.
pub fn fmt_ci(m: &MeanCi) -> String {
    if m.n < 2 {
        format!("{} (too few images, n = {})", pct(m.mean), m.n)
    } else {
        format!("{} [{}, {}] ({})", pct(m.mean), pct(m.lo), pct(m.hi), m.n)
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `analyses.json`, the figures under `figures/`, `report.md` and
/// `report.html` into `dir` (created if missing). Galleries are referenced by
/// the relative paths in `analyses.galleries`; they must already be in `dir`.
pub fn write_report(analyses: &Analyses, dir: &Path) -> Result<ReportFiles, ReportError> {
    let fig_dir = dir.join("figures");
    fs::create_dir_all(&fig_dir).map_err(|source| ReportError::Io {
        path: fig_dir.clone(),
        source,
    })?;
    let json = dir.join("analyses.json");
    let text = serde_json::to_string_pretty(analyses).map_err(|source| ReportError::Json {
        path: json.clone(),
        source,
    })?;
    write_file(&json, &text)?;

    let (figs, paths) = draw_figures(analyses, &fig_dir)?;
    let blocks = build_blocks(analyses, dir, &figs);
    let markdown = dir.join("report.md");
    write_file(&markdown, &to_markdown(&blocks))?;
    let html = dir.join("report.html");
    write_file(
        &html,
        &to_html(
            &format!("Overinterpretation report: {}", analyses.name),
            &blocks,
        ),
    )?;
    Ok(ReportFiles {
        markdown,
        html,
        json,
        figures: paths,
    })
}

/// (path relative to the report, caption) of each figure drawn, and its files.
type Figures = (Vec<(String, String)>, Vec<PathBuf>);

/// Draws the report's figures into `fig_dir`; returns each one's (path relative to the
/// report, caption) and its file.
fn draw_figures(analyses: &Analyses, fig_dir: &Path) -> Result<Figures, ReportError> {
    let q = pct(analyses.fraction);
    let q = q.trim_end_matches('0').trim_end_matches('.').to_string();
    // (relative path, caption) of each figure drawn.
    let mut figs: Vec<(String, String)> = Vec::new();
    let mut paths = Vec::new();
    let mut add = |name: &str, caption: String| {
        let p = fig_dir.join(name);
        figs.push((format!("figures/{name}"), caption));
        paths.push(p.clone());
        p
    };
    if !analyses.table1.is_empty() {
        let p = add(
            "accuracy.png",
            format!("Test accuracy of each model by the data it was trained on (groups) and evaluated on (bars): full images, backward-selection (BS) {q}% subsets and random {q}% subsets; the mask-only control group saw only the shape of the BS subsets (no full-image bar). Error bars as in the Table 1 analog above: the 95% Wilson interval of the one model trained on full images, the range (min–max) over 2 replicate models, ±1 standard deviation over 3 or more."),
        );
        // Agreement is not an accuracy: the bars show accuracies only.
        let accuracy: Vec<_> = analyses
            .table1
            .iter()
            .map(|r| super::analyses::Table1Row {
                eval_on: r
                    .eval_on
                    .iter()
                    .filter(|(e, _)| !e.starts_with("Agreement"))
                    .cloned()
                    .collect(),
                ..r.clone()
            })
            .collect();
        figures::table1_bars(&accuracy, &p)?;
    }
    if !analyses.sis_size.is_empty() {
        let p = add(
            "sis_size_vs_threshold.png",
            "Mean SIS size (% of the image's pixels) as the SIS threshold τ varies, over test images predicted with confidence ≥ τ (cf. the paper's Figure 5). A small SIS at a high threshold means the model is confident from very few pixels.".into(),
        );
        figures::sis_size_curves(&analyses.sis_size, &p)?;
    }
    if !analyses.correct_vs_wrong.is_empty() {
        let p = add(
            "sis_size_correct_vs_wrong.png",
            "Mean SIS size of correctly (blue) and wrongly (red) classified test images; error bars are 95% confidence intervals of the mean (cf. the paper's Figure 4).".into(),
        );
        figures::correct_vs_wrong(&analyses.correct_vs_wrong, "test images", &p)?;
    }
    if !analyses.corrupted_correct_vs_wrong.is_empty() {
        let p = add(
            "sis_size_correct_vs_wrong_corrupted.png",
            "The same on the corrupted test set: mean SIS size of its correctly (blue) and wrongly (red) classified images; error bars are 95% confidence intervals of the mean (cf. the paper's Figure S3).".into(),
        );
        figures::correct_vs_wrong(&analyses.corrupted_correct_vs_wrong, "corrupted images", &p)?;
    }
    if !analyses.heatmaps.is_empty() {
        let p = add(
            "pixel_heatmaps.png",
            format!("How often each pixel location is among the {q}% kept by backward selection, over all test images (first column) and over test images predicted as each class (n = images). One colour scale for all panels (cf. the paper's Figure 2). Mass on the borders or background, away from the object, is the pathology the paper describes."),
        );
        figures::heatmap_grid(&analyses.heatmaps, &analyses.class_names, &p)?;
    }
    if !analyses.confidence_history.is_empty() {
        let p = add(
            "confidence_history.png",
            "Confidence of the original model in the class it predicts on the full image, as backward selection removes pixels (cf. the paper's Figure S10): the bold line is the mean over all test images at each step, thin lines are single test images (the first in the store). The right end is the fully masked image; a curve that stays high until few pixels are left is a model confident from very few pixels.".into(),
        );
        super::history_figure::confidence_history(&analyses.confidence_history, &p)?;
    }
    if let Some(t) = &analyses.transfer {
        let p = add(
            "transfer_matrix.png",
            "Accuracy (%) of each evaluating model (columns) on the backward-selection test subsets selected by each source model (rows); the diagonal is a model on its own subsets.".into(),
        );
        figures::transfer_matrix(t, &p)?;
    }
    Ok((figs, paths))
}
