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
//! - a replicate statistic is `mean ± std (n)`, both in percent;
//! - a 95% interval is `mean [lo, hi] (n)`, all in percent;
//! - thresholds τ are shown as written in the spec (`f32` shortest form);
//! - counts are integers.
//!
//! The one derived column, the confidence drop, is `full − backselect`
//! computed before rounding.
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

/// `mean ± std (n)` in percent.
pub fn fmt_stat(s: &Stat) -> String {
    format!("{} ± {} ({})", pct(s.mean), pct(s.std), s.n)
}

/// `mean [lo, hi] (n)` in percent.
pub fn fmt_ci(m: &MeanCi) -> String {
    format!("{} [{}, {}] ({})", pct(m.mean), pct(m.lo), pct(m.hi), m.n)
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
            format!("Test accuracy of each model by the data it was trained on (groups) and evaluated on (bars): full images, backward-selection (BS) {q}% subsets and random {q}% subsets. Error bars: ±1 standard deviation over replicate models (none for a single replicate). Numbers in the Table 1 analog above."),
        );
        figures::table1_bars(&analyses.table1, &p)?;
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
        figures::correct_vs_wrong(&analyses.correct_vs_wrong, &p)?;
    }
    if !analyses.heatmaps.is_empty() {
        let p = add(
            "pixel_heatmaps.png",
            format!("How often each pixel location is among the {q}% kept by backward selection, over all test images (first column) and over test images predicted as each class (n = images). One colour scale for all panels (cf. the paper's Figure 2). Mass on the borders or background, away from the object, is the pathology the paper describes."),
        );
        figures::heatmap_grid(&analyses.heatmaps, &p)?;
    }
    if let Some(t) = &analyses.transfer {
        let p = add(
            "transfer_matrix.png",
            "Accuracy (%) of each evaluating model (columns) on the backward-selection test subsets selected by each source model (rows); the diagonal is a model on its own subsets.".into(),
        );
        figures::transfer_matrix(t, &p)?;
    }

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
