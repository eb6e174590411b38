//! The paper's experiment as cached stages, and its report.
//!
//! - [`spec`]: the pipeline spec (TOML).
//! - [`stages`]: stage caching by content hash, and the stage bodies.
//! - [`run`]: the order of the stages ([`run::run_pipeline`]).
//! - [`analyses`]: Table 1, confidence drop, SIS sizes, heatmaps, transfer — as data.
//! - [`analysis`]: the maths behind them, in one streaming pass over each store.
//! - [`report`] and [`figures`]: `report.md`, `report.html` and the PNG figures.

pub mod analyses;
pub mod analysis;
pub mod figures;
pub mod report;
pub mod run;
pub mod spec;
pub mod stages;

/// A fraction as a percentage without trailing zeros: 0.05 → "5", 0.125 → "12.5".
pub fn report_pct(fraction: f64) -> String {
    let s = format!("{:.2}", fraction * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
