//! `overinterp pipeline`: embedded runs, `--slurm` runs, `--status`, and the
//! `--stage` entry point that Slurm jobs and local rank processes run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::pipeline::experiment::{Experiment, Ranks};
use crate::pipeline::plan::{self, StageKind};
use crate::pipeline::slurm::{self, jobs::Paths, Driver};
use crate::pipeline::stages::{GangLost, Stages};
use crate::pipeline::{run::run_pipeline, spec::PipelineSpec};
use crate::train::parallel::{resolve_host, Backend, GangConfig, EXIT_GANG_LOST};

/// Run the paper's whole experiment for a dataset and a set of models: train →
/// backselect every train and test image and the corrupted set (on the embedded
/// cluster) → backselect
/// and random pixel subsets → evaluate → retrain on subsets (replicates) →
/// evaluate → analyses → report.html / report.md. Every stage is cached by the
/// hash of its inputs: rerunning after a crash, or with one more replicate, redoes
/// only what changed. The whole spec is checked before anything runs.
/// Example specs: scripts/pipelines/*.toml.
///
/// On Slurm (--slurm), every stage becomes a job chained with --dependency=afterok
/// into the same stage directories: training as data-parallel gangs
/// (slurm/train.sbatch), SIS with a leader and workers (slurm/sis.sbatch), the
/// replicates of a subset kind as a job array, evaluations and the report as small
/// jobs, sized by the spec's [slurm] table. Rerunning submits only what is missing
/// (and resubmits what failed or was cancelled, cancelling jobs stranded behind it).
///
/// Examples:
///   overinterp pipeline scripts/pipelines/fashion-mnist-demo.toml
///   overinterp pipeline scripts/pipelines/cifar10-paper.toml --slurm --dry-run
///   overinterp pipeline scripts/pipelines/cifar10-paper.toml --slurm   (submits, exits)
///   overinterp pipeline scripts/pipelines/cifar10-paper.toml --status
///   overinterp pipeline scripts/pipelines/cifar10-paper.toml --slurm --wait
///   overinterp pipeline scripts/pipelines/cifar10-paper.toml --cancel
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PipelineArgs {
    /// The pipeline spec (TOML).
    pub spec: PathBuf,
    /// Output directory (overrides the spec's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Submit the stages to Slurm instead of running them here.
    #[arg(long)]
    pub slurm: bool,
    /// With --slurm: print the sbatch commands (as a shell script) without submitting.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// With --slurm: stay until the report is written, resubmitting stages the cluster
    /// ended (time limit, preemption, node failure); stop with the reason when a
    /// stage fails by itself.
    #[arg(long, requires = "slurm")]
    pub wait: bool,
    /// Seconds between checks with --wait.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Show each stage: done, queued, running (with progress) or failed (with its log).
    #[arg(long, conflicts_with_all = ["slurm", "cancel", "stage"])]
    pub status: bool,
    /// Cancel every queued or running Slurm job of the pipeline.
    #[arg(long, conflicts_with_all = ["slurm", "stage"])]
    pub cancel: bool,
    /// Run only this stage (Slurm jobs and rank processes run this); `{task}` in the
    /// name stands for SLURM_ARRAY_TASK_ID.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
    /// With --stage of a SIS stage: create its directory and job file and print the
    /// job file and store (shell-quoted) for slurm/sis.sbatch.
    #[arg(long, requires = "stage")]
    pub prepare_sis: bool,
    /// With --stage: ranks of the training gang (default: SLURM_NTASKS under srun).
    #[arg(long, requires = "stage")]
    pub world_size: Option<usize>,
    /// With --stage: this process's rank (default: SLURM_PROCID under srun).
    #[arg(long, requires = "stage")]
    pub rank: Option<usize>,
    /// With --stage: the gang's rendezvous directory (fresh for each attempt).
    #[arg(long, requires = "stage")]
    pub rendezvous: Option<PathBuf>,
    /// With --stage: the device of this rank (slurm/train.sbatch gives each GPU rank
    /// its own); the spec's `device` otherwise.
    #[arg(long, requires = "stage")]
    pub device: Option<String>,
    /// With --stage: the address other ranks reach this one at (default:
    /// OVERINTERP_RING_HOST, else this node's name under Slurm).
    #[arg(long, requires = "stage")]
    pub ring_host: Option<String>,
    /// CPU threads for libtorch in every stage process (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
}

pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let (spec, text) = load(&args)?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    if let Some(stage) = &args.stage {
        return match run_stage(&args, &spec, &text, stage) {
            Err(e) if e.chain().any(|c| c.is::<GangLost>()) => {
                eprintln!("error: {e:#}");
                std::process::exit(EXIT_GANG_LOST)
            }
            other => other,
        };
    }
    spec.check_inputs()
        .with_context(|| format!("{}", args.spec.display()))?;
    if args.status || args.cancel || args.slurm {
        let paths = paths(&args, &spec)?;
        let mut driver = Driver::new(&spec, paths)?;
        if args.status {
            for line in driver.status()? {
                println!("{line}");
            }
        } else if args.cancel {
            let ids = driver.cancel()?;
            println!("cancelled {} job(s): {ids:?}", ids.len());
        } else {
            slurm_run(&args, &spec, &text, &mut driver)?;
        }
        return Ok(());
    }
    let report = run_pipeline(&spec, &text, args.threads)?;
    println!("report: {}", report.join("report.html").display());
    println!("        {}", report.join("report.md").display());
    Ok(())
}

/// The validated spec (with --out applied) and the text to quote in the report.
fn load(args: &PipelineArgs) -> anyhow::Result<(PipelineSpec, String)> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let mut spec =
        PipelineSpec::from_toml(&text).with_context(|| format!("{}", args.spec.display()))?;
    if let Some(out) = &args.out {
        spec.out = out.clone();
    }
    // A stage job reads the spec the driver wrote; the report quotes the user's text.
    let source = args.spec.with_file_name("spec.source.toml");
    let text = match (&args.stage, std::fs::read_to_string(&source)) {
        (Some(_), Ok(original)) => original,
        _ => text,
    };
    Ok((spec, text))
}

/// Where the jobs find the binary, the scripts and the spec.
fn paths(args: &PipelineArgs, spec: &PipelineSpec) -> anyhow::Result<Paths> {
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = spec.slurm.bin.clone().unwrap_or(exe.clone());
    let scripts = match &spec.slurm.scripts {
        Some(dir) => workdir.join(dir),
        None => {
            let here = workdir.join("slurm");
            // target/release/overinterp → the repository's slurm/
            let built = exe
                .parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(|repo| repo.join("slurm"));
            match built {
                Some(b) if !here.join("sis.sbatch").exists() && b.join("sis.sbatch").exists() => b,
                _ => here,
            }
        }
    };
    Ok(Paths {
        bin,
        scripts,
        spec_file: workdir.join(&spec.out).join("slurm").join("spec.toml"),
        out: spec.out.clone(),
        workdir,
        threads: args.threads,
    })
}

/// `--slurm`: write the spec the jobs read, submit what is missing, maybe wait.
fn slurm_run(
    args: &PipelineArgs,
    spec: &PipelineSpec,
    text: &str,
    driver: &mut Driver,
) -> anyhow::Result<()> {
    if !args.dry_run {
        let dir = spec.out.join("slurm");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, content) in [
            ("spec.toml", spec.to_toml()),
            ("spec.source.toml", text.to_string()),
        ] {
            std::fs::write(dir.join(file), content)
                .with_context(|| format!("writing {}", dir.join(file).display()))?;
        }
    }
    let lines = driver.submit(args.dry_run, false)?;
    if args.dry_run {
        println!("#!/bin/sh\n# The jobs `overinterp pipeline --slurm` would submit (set -e stops at the first failure).\nset -e");
    }
    for line in lines {
        println!("{line}");
    }
    if args.dry_run {
        return Ok(());
    }
    println!(
        "watch: overinterp pipeline {} --status{}",
        args.spec.display(),
        args.out
            .as_ref()
            .map_or(String::new(), |o| format!(" --out {}", o.display()))
    );
    if args.wait {
        driver.wait(std::time::Duration::from_secs_f64(args.poll.max(0.1)))?;
        println!(
            "report: {}",
            spec.out.join("report").join("report.html").display()
        );
    }
    Ok(())
}

/// `--stage NAME`: runs one stage (a Slurm job, or a rank of a gang).
fn run_stage(
    args: &PipelineArgs,
    spec: &PipelineSpec,
    text: &str,
    name: &str,
) -> anyhow::Result<()> {
    let plan = plan::plan(spec);
    let stage = plan::find(&plan, name)?.clone();
    let (ranks, rank) = ranks(args, spec)?;
    let stages = Stages {
        root: spec.out.clone(),
        policy: plan::policy_for(&stage.name, rank == 0),
    };
    let mut exp = Experiment::open(spec, stages, ranks)?;
    exp.device_override = args.device.clone();
    exp.threads = args.threads;
    if args.prepare_sis {
        let StageKind::Sis(set) = stage.kind else {
            anyhow::bail!("--prepare-sis needs a SIS stage, not {}", stage.name);
        };
        let m = spec
            .models
            .iter()
            .find(|m| Some(&m.name) == stage.model.as_ref())
            .context("the SIS stage's model is not in the spec")?;
        let model = exp.model(m)?;
        let (job, store) = exp.sis_prepare(m, &model, set)?;
        println!(
            "{}",
            slurm::jobs::shell_join([job.display().to_string(), store.display().to_string()])
        );
        return Ok(());
    }
    plan::run_stage(&exp, &stage, text)?;
    if stage.kind == StageKind::Report {
        slurm::write_report_stamp(spec)?;
    }
    Ok(())
}

/// How this stage process trains: one rank of a gang (--world-size, or srun's tasks),
/// or on its own (with the spec's local_ranks).
fn ranks(args: &PipelineArgs, spec: &PipelineSpec) -> anyhow::Result<(Ranks, usize)> {
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
        None => match (
            env("SLURM_PROCID")?,
            env("SLURM_NTASKS")?,
            std::env::var("SLURM_STEP_ID"),
        ) {
            // Inside an srun step (train.sbatch's ranks), not the batch script itself.
            (Some(r), Some(n), Ok(_)) => (args.rank.unwrap_or(r), n),
            _ => {
                let spec_file = spec.out.join("pipeline-spec.toml");
                return Ok((Ranks::Local { spec_file }, 0));
            }
        },
    };
    anyhow::ensure!(
        world >= 1 && rank < world,
        "--rank {rank} is outside a gang of --world-size {world}"
    );
    let device = crate::util::parse_device(args.device.as_deref().unwrap_or(&spec.device))
        .map_err(anyhow::Error::msg)?;
    let rendezvous = match &args.rendezvous {
        Some(r) => r.clone(),
        None => {
            let job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "local".into());
            let step = std::env::var("SLURM_STEP_ID").unwrap_or_else(|_| "0".into());
            spec.out.join("slurm").join("rendezvous").join(format!(
                "{}-{job}.{step}",
                args.stage.as_deref().unwrap_or("stage")
            ))
        }
    };
    let config = GangConfig {
        rank,
        world_size: world,
        rendezvous_dir: rendezvous,
        host: resolve_host(
            args.ring_host
                .clone()
                .or_else(|| std::env::var("OVERINTERP_RING_HOST").ok())
                .as_deref(),
        )
        .map_err(anyhow::Error::msg)?,
        backend: Backend::for_device(device),
        device,
        rendezvous_timeout: std::time::Duration::from_secs(300),
        ring: Default::default(),
    };
    Ok((Ranks::Member(config), rank))
}
