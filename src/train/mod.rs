//! Training and evaluation on one node.
//!
//! [`train`] runs SGD epochs over an [`ImageSource`], optionally through a
//! [`MaskSource`] (pixel-subset datasets), writes a checkpoint and a metrics line
//! after every epoch and resumes from the last checkpoint in its directory. A run is
//! reproducible on CPU: data order, crops and flips come from [`SplitMix64`]
//! streams keyed by (seed, epoch), libtorch's RNG is reseeded at each epoch, and the
//! optimizer's momentum is checkpointed, so a resumed run equals an uninterrupted one.
//!
//! [`parallel::train_data_parallel`] runs the same loop as one rank of a data-parallel
//! gang (gradients averaged over ranks each step; see [`parallel`]).

pub mod augment;
pub mod checkpoint;
pub mod eval;
pub mod parallel;
pub mod schedule;
pub mod sgd;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{self, DataError, ImageSource};
use crate::models::{Classifier, ModelError};
use crate::subsets::{MaskSource, SubsetError};
use crate::util::{Progress, SplitMix64};
use checkpoint::{CheckpointConfig, DataRecord, Versions};
pub use schedule::StepSchedule;
use sgd::Sgd;

/// Errors of training and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Subset(#[from] SubsetError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A collective of the data-parallel gang failed: a rank died or hung. The gang must
    /// restart from the last checkpoint (the CLI exits with
    /// [`parallel::EXIT_GANG_LOST`]).
    #[error("rank {rank} of {world_size}: gang collective failed: {source}; restart the gang from the last checkpoint with a fresh rendezvous directory")]
    Collective {
        rank: usize,
        world_size: usize,
        source: overinterp_cluster::collective::CollectiveError,
    },
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Hyperparameters of a training run. Defaults are the paper's CIFAR-10 settings:
/// SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 divided by 5 at epochs
/// 60/120/160 of 200, batch 128, random crop (pad 4) and horizontal flip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub schedule: StepSchedule,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Random crop (padding `crop_padding`) and horizontal flip. The paper trains on
    /// pixel-subset datasets without augmentation.
    pub augment: bool,
    pub crop_padding: i64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            batch_size: 128,
            schedule: StepSchedule {
                lr: 0.1,
                milestones: vec![60, 120, 160],
                gamma: 0.2,
            },
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            augment: true,
            crop_padding: 4,
            seed: 0,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: Option<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Data-parallel runs: ranks in the gang and mean seconds per gradient all-reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_seconds_per_step: Option<f64>,
}

/// Where and what to train.
pub struct TrainJob<'a> {
    pub model: &'a mut dyn Classifier,
    /// The model's configuration as JSON, recorded in `config.json` for reloading.
    pub model_config: serde_json::Value,
    pub train_set: &'a dyn ImageSource,
    pub train_masks: Option<&'a dyn MaskSource>,
    /// Evaluated after each epoch when given.
    pub test_set: Option<&'a dyn ImageSource>,
    pub test_masks: Option<&'a dyn MaskSource>,
    pub config: TrainConfig,
    /// Checkpoint directory; a checkpoint already there with the same configuration
    /// is resumed.
    pub out_dir: PathBuf,
}

/// Trains to `config.epochs`, resuming from `out_dir` if it holds an earlier
/// checkpoint of the same run. Returns the metrics of the epochs run now.
pub fn train(job: TrainJob<'_>) -> Result<Vec<EpochMetrics>, TrainError> {
    train_loop(job, None)
}

/// The training loop of one node (`gang` = None) or of one rank of a gang.
pub(crate) fn train_loop(
    job: TrainJob<'_>,
    mut gang: Option<&mut parallel::Gang>,
) -> Result<Vec<EpochMetrics>, TrainError> {
    let (rank, world_size) = gang.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    // Only rank 0 writes metrics and checkpoints (shared storage).
    let writer = rank == 0;
    let TrainJob {
        model,
        model_config,
        train_set,
        train_masks,
        test_set,
        test_masks,
        config,
        out_dir,
    } = job;
    if config.batch_size == 0 || train_set.is_empty() {
        return Err(TrainError::Invalid(
            "batch size and training set must be non-empty".into(),
        ));
    }
    let device = model.device();
    let data_record = DataRecord {
        name: train_set.name(),
        content_hash: train_set.content_hash(),
        images: train_set.len(),
        masks: train_masks.map(|m| m.describe()),
    };
    let norm = train_set.normalization();
    let describe = model.describe();
    let vs = model.var_store_mut().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{describe} has no trainable parameters here; train a native architecture"
        ))
    })?;

    let mut start_epoch = 0;
    let mut sgd = Sgd::new(vs, config.momentum, config.nesterov, config.weight_decay);
    if let Some(previous) = checkpoint::read_config(&out_dir)? {
        if previous.model != model_config
            || previous.data != data_record
            || previous.train.seed != config.seed
        {
            return Err(TrainError::Invalid(format!(
                "{} holds a checkpoint of a different run (model, data, masks or seed differ); choose another --out",
                out_dir.display()
            )));
        }
        let state = checkpoint::load(&out_dir, vs)?;
        sgd = Sgd::new(vs, config.momentum, config.nesterov, config.weight_decay);
        sgd.load_state(state).map_err(|p| TrainError::Checkpoint {
            path: out_dir.clone(),
            problem: p,
        })?;
        start_epoch = previous.epochs_done;
        tracing::info!(dir = %out_dir.display(), epoch = start_epoch, "resuming from checkpoint");
    }
    let metrics_path = out_dir.join("metrics.jsonl");
    if writer {
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        keep_metrics_until(&metrics_path, start_epoch)?;
    }
    if let Some(g) = gang.as_deref_mut() {
        parallel::sync_start(g, vs, start_epoch)?;
    }

    let mut all = Vec::new();
    for epoch in start_epoch..config.epochs {
        let span = tracing::info_span!("epoch", epoch);
        let _enter = span.enter();
        tch::manual_seed(
            config
                .seed
                .wrapping_add(epoch as u64)
                .wrapping_add((rank as u64) << 32) as i64,
        );
        let mut rng = SplitMix64::stream(config.seed, epoch as u64);
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        rng.shuffle(&mut order);
        let lr = config.schedule.lr_at(epoch);
        let started = Instant::now();
        let allreduce_before = gang.as_ref().map(|g| g.allreduce_time());
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0usize);
        let mut progress = Progress::new(
            &format!("epoch {}/{}", epoch + 1, config.epochs),
            order.len() as u64,
        );
        for global in order.chunks(config.batch_size) {
            // This rank's contiguous slice of the global batch (all of it on one node).
            let part = parallel::slice_of(global.len(), rank, world_size);
            // An empty slice (a last batch shorter than the gang) steps on one row with
            // weight 0, so this rank still has gradients to all-reduce.
            let (chunk, weight) = if part.is_empty() {
                (&global[..1], 0.0)
            } else {
                (&global[part.clone()], 1.0)
            };
            let (mut xs, ys) = data::batch(train_set, chunk, device)?;
            if let Some(masks) = train_masks {
                xs *= masks.masks(chunk)?.to_device(device);
            }
            if config.augment {
                parallel::skip_augment_draws(&mut rng, part.start, config.crop_padding);
                xs = augment::crop_and_flip(&xs, config.crop_padding, &norm, &mut rng);
                if part.is_empty() {
                    // The dummy row drew too; the rest of the batch follows.
                    parallel::skip_augment_draws(
                        &mut rng,
                        (global.len() - part.start).saturating_sub(1),
                        config.crop_padding,
                    );
                } else {
                    parallel::skip_augment_draws(
                        &mut rng,
                        global.len() - part.end,
                        config.crop_padding,
                    );
                }
            }
            let (slice_loss_sum, hits) = {
                let logits = model.forward(&xs, true)?;
                let per_row = logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss(
                    &ys,
                    None::<Tensor>,
                    tch::Reduction::None,
                    -100,
                )?;
                // One node: the mean. A gang: N·Σ_slice/b, whose mean over ranks is the
                // global batch's mean loss (see `parallel`).
                let loss = if world_size == 1 {
                    per_row.f_mean(Kind::Float)?
                } else {
                    per_row.f_sum(Kind::Float)? * (weight * world_size as f64 / global.len() as f64)
                };
                let hits = logits
                    .argmax(-1, false)
                    .eq_tensor(&ys)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                sgd.zero_grad();
                loss.backward();
                (
                    per_row.detach().sum(Kind::Double).double_value(&[]) * weight,
                    hits,
                )
            };
            if let Some(g) = gang.as_deref_mut() {
                parallel::all_reduce_gradients(g, model.var_store().expect("checked above"))?;
            }
            sgd.step(lr);
            let rows = if weight == 0.0 { 0 } else { chunk.len() };
            loss_sum += slice_loss_sum;
            correct += if rows == 0 { 0 } else { hits };
            seen += rows;
            progress.inc(rows as u64);
        }
        progress.finish();
        let mut allreduce_seconds_per_step = None;
        if let Some(g) = gang.as_deref_mut() {
            let totals = parallel::sync_epoch_end(
                g,
                model.var_store().expect("checked above"),
                [loss_sum, correct as f64, seen as f64],
            )?;
            loss_sum = totals[0];
            correct = totals[1] as i64;
            seen = totals[2] as usize;
            let (s0, n0) = allreduce_before.unwrap_or_default();
            let (s1, n1) = g.allreduce_time();
            allreduce_seconds_per_step = Some((s1 - s0) / (n1 - n0).max(1) as f64);
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let test_accuracy = match test_set {
            Some(test) if writer => Some(eval::evaluate(model, test, test_masks, 256)?.top1),
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            test_accuracy,
            seconds: train_seconds,
            images_per_second: seen as f64 / train_seconds,
            world_size: gang.as_ref().map(|g| g.world_size()),
            allreduce_seconds_per_step,
        };
        tracing::info!(rank, epoch = metrics.epoch, lr, loss = metrics.train_loss, train_acc = metrics.train_accuracy,
            test_acc = ?metrics.test_accuracy, img_per_s = metrics.images_per_second.round(), "epoch done");
        let vs = model.var_store().expect("checked above");
        let cfg = CheckpointConfig {
            model: model_config.clone(),
            train: config.clone(),
            data: data_record.clone(),
            epochs_done: epoch + 1,
            versions: Versions::current(),
        };
        if writer {
            // Metrics first: a crash before the checkpoint lands leaves a line for an
            // epoch that will rerun, which the resume drops (see `keep_metrics_until`).
            append_line(
                &metrics_path,
                &serde_json::to_string(&metrics).expect("metrics serialize"),
            )?;
            checkpoint::save(&out_dir, vs, &sgd.state(), &cfg)?;
        }
        all.push(metrics);
    }
    Ok(all)
}

/// Drops lines of epochs after `epochs_done` (written before a crash that lost
/// their checkpoint), so `metrics.jsonl` has one line per completed epoch.
fn keep_metrics_until(path: &Path, epochs_done: usize) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<EpochMetrics>(l).is_ok_and(|m| m.epoch <= epochs_done))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        std::fs::write(path, kept).map_err(|e| TrainError::io(path, e))?;
    }
    Ok(())
}

fn append_line(path: &Path, line: &str) -> Result<(), TrainError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))
}

/// The device a model lives on, as a string for logs.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

/// Convenience for tests and tools: logits of `xs` in eval mode without a tape.
pub fn logits(model: &dyn Classifier, xs: &Tensor) -> Result<Tensor, ModelError> {
    tch::no_grad(|| model.forward(xs, false))
}
