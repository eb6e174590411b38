//! `overinterp eval`.

use std::path::PathBuf;

use clap::Args;

use super::common::{input_shape, load_model, write_json, DataArgs, DeviceArgs};
use crate::data::Split;
use crate::subsets::open_masks;
use crate::train::eval;

/// Evaluate a model on a dataset split: top-1/top-5 accuracy, mean confidence,
/// and (with --predictions) one CSV row per image: index,label,predicted,confidence,top5.
/// Read it in Python with `pandas.read_csv(path)` or
/// `numpy.genfromtxt(path, delimiter=",", names=True)`.
///
/// Examples:
///   overinterp eval --model runs/fmnist --data fashion-mnist:/usr/share/datasets/fashion-mnist
///   overinterp eval --model inception_v3.pt --data imagenet:/data/ilsvrc2012 --split val
///   overinterp eval --model ensemble:runs/a,runs/b --data cifar10c:data/CIFAR-10-C --json out.json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct EvalArgs {
    /// A checkpoint directory, a TorchScript .pt file, or ensemble:A,B,...
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// train or test (ImageNet: val = test).
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Evaluate on pixel subsets: a subset dataset DIR, backselect:STORE:Q,
    /// sis:STORE:TAU or random:Q[:SEED].
    #[arg(long)]
    pub masks: Option<String>,
    /// Write per-image predictions to this CSV file.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Write the summary (and per-group accuracy for CIFAR-10-C) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.apply();
    let split: Split = args.split.parse()?;
    let source = args.data.open(split)?;
    let mut model = load_model(&args.model, device, input_shape(source.as_ref()))?;
    // Evaluation only: no parameter gradients, and native batch norms fold.
    model.freeze();
    let [_, h, w] = source.shape();
    let masks = args
        .masks
        .as_deref()
        .map(|s| open_masks(s, (h, w)))
        .transpose()?;
    let report = eval::evaluate(
        model.as_ref(),
        source.as_ref(),
        masks.as_deref(),
        args.batch_size,
    )?;
    println!(
        "{}: {} images, top-1 {:.4}, top-5 {:.4}, mean confidence {:.4}",
        source.name(),
        report.images,
        report.top1,
        report.top5,
        report.mean_confidence
    );
    // CIFAR-10-C images carry a group ("fog/3"); report accuracy per group too.
    let grouped = report
        .predictions
        .first()
        .is_some_and(|p| source.group(p.index).is_some());
    let groups = grouped
        .then(|| eval::by_group(&report.predictions, |i| source.group(i).unwrap_or_default()));
    if let Some(groups) = &groups {
        for (group, r) in groups {
            println!("  {group}: top-1 {:.4} ({} images)", r.top1, r.images);
        }
    }
    if let Some(path) = &args.predictions {
        eval::write_predictions_csv(path, &report.predictions)?;
    }
    if let Some(path) = &args.json {
        let summary = serde_json::json!({
            "model": model.describe(),
            "data": source.name(),
            "images": report.images,
            "top1": report.top1,
            "top5": report.top5,
            "mean_confidence": report.mean_confidence,
            "groups": groups.as_ref().map(|g| g.iter().map(|(k, r)| (k.clone(), serde_json::json!({"images": r.images, "top1": r.top1, "top5": r.top5}))).collect::<serde_json::Map<_, _>>()),
        });
        write_json(path, &summary)?;
    }
    Ok(())
}
