//! `overinterp train`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::common::{input_shape, DataArgs, DeviceArgs};
use crate::data::Split;
use crate::models::{self, Arch, ModelConfig};
use crate::subsets::open_masks;
use crate::train::parallel::{
    resolve_host, train_data_parallel, Backend, Gang, GangConfig, EXIT_GANG_LOST,
};
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
///
/// Data-parallel (each rank trains on its slice of every global batch; gradients are
/// averaged over ranks each step; only rank 0 writes to --out, which all ranks share):
///   srun -N 4 overinterp train ... --out /shared/runs/r20        (ranks from SLURM_PROCID/NTASKS)
///   overinterp train ... --world-size 2 --rank 0 --rendezvous /shared/rv/attempt-1
///   overinterp train ... --local-ranks 2      (spawns 2 ranks here, restarts with 1 if one dies)
/// A rank whose gang lost a member exits with status 75: restart the gang from the last
/// checkpoint with a fresh --rendezvous directory (slurm/train.sbatch does this).
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
    /// Ranks in the data-parallel gang (default: SLURM_NTASKS under Slurm, else 1).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// This process's rank (default: SLURM_PROCID under Slurm, else 0).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Rendezvous directory shared by the ranks, fresh for every gang attempt
    /// (default: OUT/rendezvous/slurm-JOB.STEP under Slurm, else OUT/rendezvous/default).
    #[arg(long)]
    pub rendezvous: Option<PathBuf>,
    /// Address the other ranks reach this one at (default: this node's name under Slurm,
    /// else 127.0.0.1).
    #[arg(long)]
    pub ring_host: Option<String>,
    /// All-reduce backend: nccl (default for CUDA models) or ring (CPU, TCP).
    #[arg(long)]
    pub backend: Option<String>,
    /// Seconds to wait for all ranks to reach the rendezvous.
    #[arg(long, default_value_t = 300)]
    pub rendezvous_timeout: u64,
    /// Spawn this many rank processes on this machine and restart the gang from the last
    /// checkpoint, with the ranks that survived, when one dies.
    #[arg(long, conflicts_with_all = ["world_size", "rank", "rendezvous"])]
    pub local_ranks: Option<usize>,
    /// With --local-ranks: gang attempts after the first.
    #[arg(long, default_value_t = 3)]
    pub max_restarts: usize,
}

/// Rank and world size from the flags, or Slurm's task variables when --world-size is
/// not given.
fn gang_shape(args: &TrainArgs) -> anyhow::Result<(usize, usize)> {
    let env = |name: &str| -> anyhow::Result<Option<usize>> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse()
                .map(Some)
                .with_context(|| format!("environment variable {name}={v:?} is not a number")),
            Err(_) => Ok(None),
        }
    };
    let (rank, world) = match args.world_size {
        Some(w) => (args.rank.unwrap_or(0), w),
        None => match (env("SLURM_PROCID")?, env("SLURM_NTASKS")?) {
            (Some(r), Some(n)) => (args.rank.unwrap_or(r), n),
            _ => (args.rank.unwrap_or(0), 1),
        },
    };
    if world == 0 || rank >= world {
        bail!("--rank {rank} is outside a gang of --world-size {world}");
    }
    Ok((rank, world))
}

/// The ranks of a gang on one multi-GPU machine (`--local-ranks`, or several Slurm
/// tasks sharing a node's GPUs) take GPUs in turn from the one asked for: rank r
/// uses `cuda:(d + r) mod gpus`. With one visible GPU (a task per GPU) nothing changes.
fn spread_over_gpus(device: tch::Device, rank: usize, world_size: usize) -> tch::Device {
    let gpus = tch::Cuda::device_count().max(0) as usize;
    match device {
        tch::Device::Cuda(d) if world_size > 1 && gpus > 1 => tch::Device::Cuda((d + rank) % gpus),
        other => other,
    }
}

fn default_rendezvous(out: &std::path::Path) -> PathBuf {
    match (
        std::env::var("SLURM_JOB_ID"),
        std::env::var("SLURM_STEP_ID"),
    ) {
        (Ok(job), Ok(step)) => out.join("rendezvous").join(format!("slurm-{job}.{step}")),
        (Ok(job), Err(_)) => out.join("rendezvous").join(format!("slurm-{job}")),
        _ => out.join("rendezvous").join("default"),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(n) = args.local_ranks {
        return run_local_gang(n, args.max_restarts, &args.out);
    }
    let (rank, world_size) = gang_shape(&args)?;
    let device = spread_over_gpus(args.device.apply(), rank, world_size);
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
    let job = TrainJob {
        model: model.as_mut(),
        model_config: serde_json::to_value(&config).context("model config")?,
        train_set: train_set.as_ref(),
        train_masks: train_masks.as_deref(),
        test_set: test_set.as_deref(),
        test_masks: test_masks.as_deref(),
        config: train_config,
        out_dir: args.out.clone(),
    };
    let metrics = if world_size == 1 {
        train::train(job)?
    } else {
        let backend = match &args.backend {
            Some(b) => b.parse().map_err(anyhow::Error::msg)?,
            None => Backend::for_device(device),
        };
        let config = GangConfig {
            rank,
            world_size,
            rendezvous_dir: args
                .rendezvous
                .clone()
                .unwrap_or_else(|| default_rendezvous(&args.out)),
            host: resolve_host(args.ring_host.as_deref()).map_err(anyhow::Error::msg)?,
            backend,
            device,
            rendezvous_timeout: std::time::Duration::from_secs(args.rendezvous_timeout),
            ring: Default::default(),
        };
        tracing::info!(rank, world_size, rendezvous = %config.rendezvous_dir.display(), ?backend, "joining the gang");
        let result = Gang::join(&config)
            .map_err(|source| train::TrainError::Collective {
                rank,
                world_size,
                source,
            })
            .and_then(|mut gang| train_data_parallel(job, &mut gang));
        match result {
            Ok(m) => m,
            Err(err @ train::TrainError::Collective { .. }) => {
                let failed = match &err {
                    train::TrainError::Collective { source, .. } => source.failed_rank(),
                    _ => None,
                };
                eprintln!(
                    "error: {err}\n  failed rank: {}; checkpoint: {}; exiting with status {EXIT_GANG_LOST} (gang lost a member)",
                    failed.map_or("unknown".into(), |r| r.to_string()),
                    args.out.display()
                );
                std::process::exit(EXIT_GANG_LOST);
            }
            Err(err) => return Err(err.into()),
        }
    };
    if rank != 0 {
        return Ok(());
    }
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

/// `--local-ranks N`: runs the gang as N child processes of this binary on this machine
/// and, when a rank dies, restarts it from the last checkpoint with the ranks that
/// survived (those that exited with [`EXIT_GANG_LOST`]), in a fresh rendezvous
/// directory, at most `max_restarts` times. The local equivalent of `slurm/train.sbatch`.
fn run_local_gang(n: usize, max_restarts: usize, out: &std::path::Path) -> anyhow::Result<()> {
    if n == 0 {
        bail!("--local-ranks must be at least 1");
    }
    let exe = std::env::current_exe().context("locating this executable to spawn ranks")?;
    let mut base = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--local-ranks" || a == "--max-restarts" {
            args.next();
        } else if !(a.starts_with("--local-ranks=") || a.starts_with("--max-restarts=")) {
            base.push(a);
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut world = n;
    for attempt in 1..=max_restarts + 1 {
        let rendezvous = out
            .join("rendezvous")
            .join(format!("local-{stamp}-attempt-{attempt}"));
        let from = train::checkpoint::read_config(out)?.map_or(0, |c| c.epochs_done);
        eprintln!(
            "gang attempt {attempt}: {world} rank(s) from epoch {from}, rendezvous {}",
            rendezvous.display()
        );
        let mut children = Vec::with_capacity(world);
        for rank in 0..world {
            let child = std::process::Command::new(&exe)
                .args(&base)
                .arg("--world-size")
                .arg(world.to_string())
                .arg("--rank")
                .arg(rank.to_string())
                .arg("--rendezvous")
                .arg(&rendezvous)
                .spawn()
                .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
            eprintln!("gang attempt {attempt}: rank {rank} pid {}", child.id());
            children.push(child);
        }
        let (mut ok, mut survivors) = (0, 0);
        for (rank, mut child) in children.into_iter().enumerate() {
            let status = child
                .wait()
                .with_context(|| format!("waiting for rank {rank}"))?;
            match status.code() {
                Some(0) => ok += 1,
                Some(EXIT_GANG_LOST) => survivors += 1,
                _ => {}
            }
            eprintln!(
                "gang attempt {attempt}: rank {rank} {}",
                match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => format!("killed ({status})"),
                }
            );
        }
        if ok == world {
            return Ok(());
        }
        if survivors == 0 {
            bail!("gang attempt {attempt} failed and no rank is restartable (none exited with {EXIT_GANG_LOST}); see the ranks' errors above");
        }
        if attempt == max_restarts + 1 {
            break;
        }
        world = survivors;
        eprintln!(
            "restarting the gang with {world} rank(s) from the last checkpoint in {}",
            out.display()
        );
    }
    bail!(
        "the gang failed {} times (--max-restarts {max_restarts}); the last checkpoint is in {}",
        max_restarts + 1,
        out.display()
    )
}
