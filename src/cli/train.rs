//! `overinterp train`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::common::{input_shape, DataArgs, DeviceArgs};
use crate::data::Split;
use crate::models::{self, Arch, ModelConfig};
use crate::subsets::open_masks;
use crate::train::{self, StepSchedule, TrainConfig, TrainJob};

/// Train one of the paper's architectures. Defaults are the paper's CIFAR-10
/// settings: SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 divided by 5
/// at epochs 60, 120 and 160 of 200, batch 128, random crop (pad 4) and flip.
///
/// A checkpoint (`model.safetensors`, `optimizer.safetensors`, `config.json`) and a
/// line of `metrics.jsonl` are written to --out after every epoch; rerunning the same
/// command resumes from the last completed epoch.
///
/// Examples:
///   overinterp train --arch resnet20 --data cifar10:data/cifar-10-batches-bin --out runs/resnet20
///   overinterp train --arch small-cnn --data fashion-mnist:/usr/share/datasets/fashion-mnist \
///       --epochs 6 --lr 0.05 --milestones 4 --no-augment --out runs/fmnist
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    /// Architecture: resnet20, resnet18, vgg16, small-cnn, resnet50, inception-v3.
    #[arg(long)]
    pub arch: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Checkpoint directory (resumed if it holds a checkpoint of the same run).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, default_value_t = 200)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Epochs at which the learning rate is multiplied by --gamma (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![60, 120, 160])]
    pub milestones: Vec<usize>,
    #[arg(long, default_value_t = 0.2)]
    pub gamma: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Plain momentum instead of Nesterov.
    #[arg(long)]
    pub no_nesterov: bool,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Disable random crop and flip (the paper trains pixel subsets without them).
    #[arg(long)]
    pub no_augment: bool,
    /// Padding of the random crop.
    #[arg(long, default_value_t = 4)]
    pub crop_padding: i64,
    /// Input dropout: probability of keeping each pixel at train and test time (paper: 0.8).
    #[arg(long)]
    pub input_dropout: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on pixel subsets: a subset dataset DIR (from `overinterp subsets`),
    /// backselect:STORE:Q, sis:STORE:TAU or random:Q[:SEED]. Usually with --no-augment.
    #[arg(long)]
    pub masks: Option<String>,
    /// Masks for the per-epoch test evaluation (same forms as --masks).
    #[arg(long)]
    pub test_masks: Option<String>,
    /// Skip the test-set evaluation after each epoch.
    #[arg(long)]
    pub no_eval: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = args.device.apply();
    let arch: Arch = args.arch.parse()?;
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    let train_set = args.data.open(Split::Train)?;
    let test_set = if args.no_eval {
        None
    } else {
        Some(args.data.open(Split::Test)?)
    };
    let [_, h, w] = train_set.shape();
    let open = |spec: &Option<String>| spec.as_deref().map(|s| open_masks(s, (h, w))).transpose();
    let train_masks = open(&args.masks)?;
    let test_masks = open(&args.test_masks)?;
    let mut config = ModelConfig::new(
        arch,
        train_set.num_classes() as i64,
        input_shape(train_set.as_ref()),
    );
    if let Some(p) = args.input_dropout {
        config = config.with_input_dropout(p, args.seed);
    }
    tch::manual_seed(args.seed as i64);
    let mut model = models::build(&config, device)?;
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        schedule: StepSchedule {
            lr: args.lr,
            milestones: args.milestones,
            gamma: args.gamma,
        },
        momentum: args.momentum,
        nesterov: !args.no_nesterov,
        weight_decay: args.weight_decay,
        augment: !args.no_augment,
        crop_padding: args.crop_padding,
        seed: args.seed,
    };
    let span = tracing::info_span!("train", arch = %arch, data = %train_set.name(), out = %args.out.display());
    let _enter = span.enter();
    tracing::info!(model = %model.describe(), images = train_set.len(), device = %train::device_name(device), "training");
    let metrics = train::train(TrainJob {
        model: model.as_mut(),
        model_config: serde_json::to_value(&config).context("model config")?,
        train_set: train_set.as_ref(),
        train_masks: train_masks.as_deref(),
        test_set: test_set.as_deref(),
        test_masks: test_masks.as_deref(),
        config: train_config,
        out_dir: args.out.clone(),
    })?;
    match metrics.last() {
        Some(m) => println!(
            "trained {} epoch(s); last epoch: train accuracy {:.4}, test accuracy {}, {:.0} images/s; checkpoint in {}",
            metrics.len(),
            m.train_accuracy,
            m.test_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            m.images_per_second,
            args.out.display()
        ),
        None => println!("{} already holds all {} epochs; nothing to do", args.out.display(), args.epochs),
    }
    Ok(())
}
