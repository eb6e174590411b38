//! `overinterp human build|serve|report`: the human classification benchmark.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::common::{DataArgs, DeviceArgs};
use crate::human::{self, BuildOptions};

/// The human classification benchmark (paper §3.4, S4): people classify backselect
/// pixel subsets in a browser; their accuracy is reported beside the models'.
#[derive(Args, Debug)]
pub struct HumanArgs {
    #[command(subcommand)]
    pub command: HumanCommand,
}

#[derive(Subcommand, Debug)]
pub enum HumanCommand {
    /// Choose the images and render the subsets of a new study.
    Build(BuildArgs),
    /// Serve a study to participants (and its results to the owner).
    Serve(ServeArgs),
    /// Write the study's report: accuracy per fraction, fit, confusion, models beside humans.
    Report(ReportArgs),
}

/// Build a study from SIS result stores: per class, `--per-class` test images the
/// store's model classifies correctly with confidence >= `--min-confidence`, spread
/// over the stores about equally; each image's backselect subsets at every fraction
/// rendered as PNGs (masked pixels at the dataset mean, nearest-neighbour upscaled).
/// With `--model`, each model's prediction on every subset is recorded for the report
/// (a model is tied to the store its content hash matches).
///
/// Examples:
///   overinterp human build --stores stores/r20-test,stores/r18-test,stores/vgg-test \
///       --data cifar10:data/cifar-10-batches-bin \
///       --model runs/r20 --model runs/r18 --model runs/vgg --out study/cifar
///   overinterp human build --stores stores/fmnist-test --data fashion-mnist \
///       --per-class 5 --min-confidence 0.9 --out study/fmnist
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct BuildArgs {
    /// SIS result stores (one per model), comma-separated, all on the same dataset split.
    #[arg(long, value_delimiter = ',', required = true)]
    pub stores: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Kept fractions, shown as batches in increasing order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.05, 0.3, 0.5])]
    pub fractions: Vec<f64>,
    /// Images per class.
    #[arg(long, default_value_t = 10)]
    pub per_class: usize,
    /// Minimum confidence of the choosing model on the full image.
    #[arg(long, default_value_t = 0.99)]
    pub min_confidence: f32,
    /// Seed of the image choice and of every participant's shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only these classes (labels), e.g. 10 of ImageNet's 1000; default all.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<i64>>,
    /// A file with one class name per line, by label (default: the dataset's names).
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
    /// A model to evaluate on every subset (checkpoint dir, TorchScript file or
    /// ensemble:A,B); repeat for each.
    #[arg(long = "model")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The new study directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Serve a study: prints the participants' URL and the admin URL and token. Answers
/// are stored in STUDY/responses.sqlite before the next image is shown; restart on
/// the same STUDY and everyone continues where they left off.
///
/// Example:
///   overinterp human serve study/fmnist --listen 0.0.0.0:8080
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    /// The study directory (from `human build`).
    pub study: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The URL participants use (e.g. https://study.example.org behind a TLS proxy); only printed.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Send the admin cookie only over HTTPS (set this behind a TLS proxy).
    #[arg(long)]
    pub secure_cookie: bool,
}

/// Write the study's report (markdown, HTML, JSON, figure).
///
/// Example:
///   overinterp human report study/fmnist      # → study/fmnist/report/report.html
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportArgs {
    /// The study directory.
    pub study: PathBuf,
    /// Output directory (default STUDY/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: HumanArgs) -> anyhow::Result<()> {
    match args.command {
        HumanCommand::Build(a) => build(a),
        HumanCommand::Serve(a) => human::server::run(
            &a.study,
            &a.listen,
            &human::server::ServeOptions {
                secure_cookie: a.secure_cookie,
                public_url: a.public_url,
            },
        )
        .with_context(|| format!("serving the study {}", a.study.display())),
        HumanCommand::Report(a) => {
            let out = a.out.unwrap_or_else(|| a.study.join("report"));
            let files = human::report::write_report(&a.study, &out)
                .with_context(|| format!("reporting on the study {}", a.study.display()))?;
            println!("{}", files.html.display());
            println!("{}", files.markdown.display());
            Ok(())
        }
    }
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let class_names = match &a.class_names {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--class-names {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        ),
        None => None,
    };
    let opts = BuildOptions {
        stores: a.stores,
        data: a.data.spec()?,
        data_text: a.data.data.clone(),
        fractions: a.fractions,
        per_class: a.per_class,
        min_confidence: a.min_confidence,
        seed: a.seed,
        classes: a.classes,
        class_names,
        models: a.models,
        device: a.device.apply(),
        out: a.out,
    };
    let study = human::build_study(&opts)
        .with_context(|| format!("building the study {}", opts.out.display()))?;
    println!(
        "{} images × {} fractions = {} trials per participant; study written to {}",
        study.images.len(),
        study.fractions.len(),
        study.trials_per_participant(),
        opts.out.display()
    );
    Ok(())
}
