//! `overinterp pipeline`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::pipeline::{run::run_pipeline, spec::PipelineSpec};

/// Run the paper's whole experiment for a dataset and a set of models: train →
/// backselect every train and test image (on the embedded cluster) → backselect
/// and random pixel subsets → evaluate → retrain on subsets (replicates) →
/// evaluate → analyses → report.html / report.md. Every stage is cached by the
/// hash of its inputs: rerunning after a crash, or with one more replicate, redoes
/// only what changed. Example specs: scripts/pipelines/*.toml.
///
/// Example:
///   overinterp pipeline scripts/pipelines/fashion-mnist-demo.toml
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PipelineArgs {
    /// The pipeline spec (TOML).
    pub spec: PathBuf,
    /// Output directory (overrides the spec's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let mut spec =
        PipelineSpec::from_toml(&text).with_context(|| format!("{}", args.spec.display()))?;
    if let Some(out) = args.out {
        spec.out = out;
    }
    let report = run_pipeline(&spec, &text)?;
    println!("report: {}", report.join("report.html").display());
    println!("        {}", report.join("report.md").display());
    Ok(())
}
