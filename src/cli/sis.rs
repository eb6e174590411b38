//! `overinterp sis`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::data::Split;
use crate::job::SisJob;
use crate::sis::{Method, Objective, Precision, SisParams};

/// Candidates per step of `--method screened` when `--screen` is not given.
pub const DEFAULT_SCREEN: u32 = 32;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    /// Exact BackSelect (Carter et al. 2019): every remaining pixel tried each step.
    Exact,
    /// Batched Gradient BackSelect (paper S5): k pixels per step by the mask gradient.
    Gradient,
    /// Screened exact BackSelect: each step evaluates exactly only the --screen
    /// pixels one mask gradient ranks best (about p·M forwards instead of p²/2).
    Screened,
}

/// Compute the BackSelect order and SIS of every image of a dataset split into a
/// result store. Rerunning the same command resumes: images already in the store
/// are skipped, and a killed run loses at most one mini-batch.
///
/// Examples:
///   overinterp sis --model runs/resnet20 --data cifar10:data/cifar-10-batches-bin \
///       --split test --method exact --threshold 0.99 --out stores/r20-test
///   overinterp sis --model inception_v3.pt --data imagenet:/data/ilsvrc2012?crop=299 \
///       --split val --method gradient --k 100 --threshold 0.9 --device cuda --out stores/incv3-val
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SisArgs {
    /// A checkpoint directory, a TorchScript .pt file, or ensemble:A,B,...
    #[arg(long)]
    pub model: String,
    /// Dataset as KIND:PATH (see `overinterp train --help`).
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, value_enum, default_value = "exact")]
    pub method: MethodArg,
    /// What BackSelect ranks candidates by: log-odds (L = logsumexp over j≠c of
    /// z_j − z_c, from the logits; does not saturate) or confidence (the softmax f
    /// itself, the paper's literal form, which rounds to 1.0 for confident models).
    #[arg(long, default_value = "log-odds")]
    pub objective: Objective,
    /// Pixels removed per step (gradient method; the paper uses 100 on ImageNet).
    #[arg(long, default_value_t = 1)]
    pub k: u32,
    /// Candidates evaluated exactly per step (screened method; M ≥ pixels is exact).
    #[arg(long)]
    pub screen: Option<u32>,
    /// SIS confidence thresholds τ (comma-separated or repeated).
    #[arg(long = "threshold", value_delimiter = ',', default_values_t = vec![0.99f32])]
    pub thresholds: Vec<f32>,
    /// Images per mini-batch (the paper's Batched Gradient SIS uses 32).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Masked candidates per forward pass (exact method); size it to memory.
    #[arg(long, default_value_t = 256)]
    pub candidate_batch: usize,
    /// Only the first SIS per threshold, not the whole disjoint collection.
    #[arg(long)]
    pub no_collection: bool,
    /// Seed of the gradient method's tie-break noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// fp32, bf16, fp16 or auto: the arithmetic of the steps that may run in reduced
    /// precision (exact ranks candidates in it and re-evaluates the best --rerank in
    /// fp32; gradient steps run in it; every SIS is re-checked in fp32). auto picks a
    /// reduced kind only where native (CUDA; CPUs with AVX512-BF16 or AMX) and
    /// measured faster, else fp32; the store records what was used. Default fp32:
    /// auto is a timing decision and may differ between two runs.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// Candidates re-evaluated in fp32 per exact step in reduced precision.
    #[arg(long, default_value_t = crate::sis::precision::DEFAULT_RERANK)]
    pub rerank: u32,
    /// CPU lanes: each BackSelect's images split across this many threads, each
    /// with its own copy of the model and one libtorch thread (faster than one
    /// model on many threads for small CNNs; results differ in the last bits only,
    /// so the store records the count and a resume keeps it). Default: auto =
    /// libtorch's thread count (--threads) on CPU, at most --batch; 1 on a GPU.
    #[arg(long)]
    pub lanes: Option<u32>,
    /// First image index to process.
    #[arg(long)]
    pub start: Option<u64>,
    /// One past the last image index to process.
    #[arg(long)]
    pub end: Option<u64>,
    /// The result store directory (created or resumed).
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl SisArgs {
    pub fn job(&self) -> anyhow::Result<SisJob> {
        if self.k != 1 && !matches!(self.method, MethodArg::Gradient) {
            bail!("--k applies to --method gradient only");
        }
        if self.screen.is_some() && !matches!(self.method, MethodArg::Screened) {
            bail!("--screen applies to --method screened only");
        }
        let method = match self.method {
            MethodArg::Exact => Method::Exact,
            MethodArg::Gradient => Method::Gradient { k: self.k },
            MethodArg::Screened => Method::Screened {
                screen: self.screen.unwrap_or(DEFAULT_SCREEN),
            },
        };
        let split: Split = self.split.parse()?;
        Ok(SisJob {
            model: self.model.clone(),
            data: self.data.clone(),
            split,
            out: self.out.clone(),
            device: self.device.clone(),
            start: self.start,
            end: self.end,
            sis: SisParams {
                method,
                objective: self.objective,
                thresholds: self.thresholds.clone(),
                batch_size: self.batch,
                candidate_batch: self.candidate_batch,
                seed: self.seed,
                collection: !self.no_collection,
                precision: self.precision,
                rerank: self.rerank,
                lanes: self.lanes.unwrap_or(0),
            },
        })
    }
}

pub fn run(args: SisArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let job = args.job()?;
    let stop = Arc::new(AtomicBool::new(false));
    super::stop_on_signals(stop.clone())?;
    let started = std::time::Instant::now();
    let done = job.run_local(&stop)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "computed SIS for {done} image(s) in {secs:.1} s ({:.2} images/s); store: {}",
        done as f64 / secs.max(1e-9),
        job.out.display()
    );
    Ok(())
}
