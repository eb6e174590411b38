//! The paper's experiment as cached stages, and its report.
//!
//! - [`spec`]: the pipeline spec (TOML) and its validation.
//! - [`stages`]: stage caching by content hash, and the stage bodies.
//! - [`experiment`]: the opened inputs and one method per kind of stage (its key).
//! - [`plan`]: the stages as a graph; running one stage by name (a stage job).
//! - [`gang`]: a training stage as a local data-parallel gang of rank processes.
//! - [`run`]: the experiment end to end ([`run::run_pipeline`]).
//! - [`slurm`]: the stages as Slurm jobs with dependencies (`pipeline --slurm`).
//! - [`views`]: a model on the test views, with agreement and original-class confidence.
//! - [`analyses`]: Table 1, confidence drop, SIS sizes, heatmaps, transfer — as data.
//! - [`analysis`]: the maths behind them, in one streaming pass over each store.
//! - [`history_figure`]: confidence along BackSelect (Figure S10).
//! - [`report`] and [`figures`]: `report.md`, `report.html` and the PNG figures.

pub mod analyses;
pub mod analysis;
pub mod experiment;
pub mod figures;
pub mod gang;
pub mod history_figure;
pub mod plan;
pub mod report;
pub mod run;
pub mod slurm;
pub mod spec;
pub mod stages;
pub mod views;

/// A fraction as a percentage without trailing zeros: 0.05 → "5", 0.125 → "12.5".
pub fn report_pct(fraction: f64) -> String {
    let s = format!("{:.2}", fraction * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
