//! The pipeline's stages grouped into Slurm jobs, and the `sbatch` command of each.
//!
//! One job per training stage (a data-parallel gang through `slurm/train.sbatch`),
//! per SIS stage (`slurm/sis.sbatch`: a leader and a worker per node or GPU), per
//! evaluation of an original model, and for the report; the replicates of one
//! subset kind form one job array (`--array`), as do their evaluations. Every job
//! runs `overinterp pipeline SPEC --stage NAME`, which computes the stage's directory
//! when it starts (downstream hashes depend on upstream results).

use std::path::{Path, PathBuf};

use crate::pipeline::plan::{PlannedStage, StageKind};
use crate::pipeline::spec::{PipelineSpec, SlurmResources};

/// The kind of a job: which script runs it and which `[slurm.*]` table sizes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Train,
    Retrain,
    Sis,
    Eval,
    Report,
}

impl JobKind {
    pub fn resources(self, spec: &PipelineSpec) -> &SlurmResources {
        let s = &spec.slurm;
        match self {
            JobKind::Train => &s.train,
            JobKind::Retrain => &s.retrain,
            JobKind::Sis => &s.sis,
            JobKind::Eval => &s.eval,
            JobKind::Report => &s.report,
        }
    }
}

/// One Slurm job (or job array) of the pipeline.
#[derive(Clone, Debug)]
pub struct Unit {
    /// `train-cnn`, `sis-cnn-test`, `retrain-cnn-backselect` (an array), `report`, ...
    pub name: String,
    pub kind: JobKind,
    /// Its stages; for an array, stage `i` is array task `i`.
    pub stages: Vec<String>,
    pub array: bool,
    /// Units whose stages it reads.
    pub deps: Vec<String>,
}

/// Groups the plan's stages into jobs, in an order where every job follows those it
/// depends on.
pub fn units(plan: &[PlannedStage]) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of = std::collections::BTreeMap::<String, String>::new();
    for stage in plan {
        let (name, kind, array) = match stage.kind {
            StageKind::Train => (stage.name.clone(), JobKind::Train, false),
            StageKind::Sis(_) => (stage.name.clone(), JobKind::Sis, false),
            StageKind::Eval | StageKind::Stability => (stage.name.clone(), JobKind::Eval, false),
            StageKind::Report => (stage.name.clone(), JobKind::Report, false),
            // retrain-cnn-backselect-1 → retrain-cnn-backselect
            StageKind::Retrain(_, r) => (strip_replicate(&stage.name, r), JobKind::Retrain, true),
            // retrain-cnn-backselect-1-eval → retrain-cnn-backselect-eval
            StageKind::RetrainEval(_, r) => {
                let base = stage.name.trim_end_matches("-eval");
                (
                    format!("{}-eval", strip_replicate(base, r)),
                    JobKind::Eval,
                    true,
                )
            }
        };
        unit_of.insert(stage.name.clone(), name.clone());
        let deps: Vec<String> = stage
            .deps
            .iter()
            .filter_map(|d| unit_of.get(d).cloned())
            .filter(|d| d != &name)
            .collect();
        match units.iter_mut().find(|u| u.name == name) {
            Some(u) => {
                u.stages.push(stage.name.clone());
                for d in deps {
                    if !u.deps.contains(&d) {
                        u.deps.push(d);
                    }
                }
            }
            None => {
                let mut unique = Vec::new();
                for d in deps {
                    if !unique.contains(&d) {
                        unique.push(d);
                    }
                }
                units.push(Unit {
                    name,
                    kind,
                    stages: vec![stage.name.clone()],
                    array,
                    deps: unique,
                });
            }
        }
    }
    units
}

fn strip_replicate(name: &str, r: usize) -> String {
    name.strip_suffix(&format!("-{r}"))
        .unwrap_or(name)
        .to_string()
}

/// Where the driver and the jobs find things.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The `overinterp` binary the jobs run.
    pub bin: PathBuf,
    /// The directory of `train.sbatch` and `sis.sbatch`.
    pub scripts: PathBuf,
    /// The spec the jobs read: `OUT/slurm/spec.toml`.
    pub spec_file: PathBuf,
    /// The pipeline's output directory.
    pub out: PathBuf,
    /// The working directory of every job (the driver's), so relative paths of the
    /// spec mean the same in every job.
    pub workdir: PathBuf,
    /// `--threads` passed on to every stage process (and SIS workers).
    pub threads: Option<i32>,
}

impl Paths {
    /// `OUT/slurm/logs`: one log per job (array task).
    pub fn logs(&self) -> PathBuf {
        self.out.join("slurm").join("logs")
    }

    /// The log of a job, or of task `task` of an array job.
    pub fn log(&self, unit: &str, job: u64, task: Option<usize>) -> PathBuf {
        match task {
            Some(t) => self.logs().join(format!("{unit}-{job}_{t}.out")),
            None => self.logs().join(format!("{unit}-{job}.out")),
        }
    }
}

/// The `sbatch` command line (program first) submitting `unit` for the array tasks
/// `tasks`, after the jobs `after` (ids, or shell variables holding them in a dry run).
pub fn sbatch_command(
    spec: &PipelineSpec,
    paths: &Paths,
    unit: &Unit,
    tasks: &[usize],
    after: &[String],
) -> anyhow::Result<Vec<String>> {
    let res = unit.kind.resources(spec);
    let mut cmd = vec!["sbatch".to_string(), "--parsable".into()];
    if unit.kind == JobKind::Sis {
        // sis.sbatch's own #SBATCH options (signal, requeue, ...) first: ours override.
        cmd.extend(directives(&script(&paths.scripts, "sis.sbatch")?)?);
    }
    cmd.push(format!("--job-name=overinterp-{}", unit.name));
    cmd.push(format!("--chdir={}", paths.workdir.display()));
    let log = if unit.array {
        paths.logs().join(format!("{}-%A_%a.out", unit.name))
    } else {
        paths.logs().join(format!("{}-%j.out", unit.name))
    };
    cmd.push(format!("--output={}", log.display()));
    if let Some(p) = res.partition.as_ref().or(spec.slurm.partition.as_ref()) {
        cmd.push(format!("--partition={p}"));
    }
    if let Some(a) = &spec.slurm.account {
        cmd.push(format!("--account={a}"));
    }
    if let Some(t) = &res.time {
        cmd.push(format!("--time={t}"));
    }
    let nodes = match unit.kind {
        JobKind::Eval | JobKind::Report => res.nodes.min(1),
        _ => res.nodes,
    };
    cmd.push(format!("--nodes={nodes}"));
    if res.gpus_per_node > 0 {
        cmd.push(format!("--gres=gpu:{}", res.gpus_per_node));
    }
    if let Some(c) = res.cpus_per_task {
        cmd.push(format!("--cpus-per-task={c}"));
    }
    if !after.is_empty() {
        cmd.push(format!("--dependency=afterok:{}", after.join(":")));
    }
    if unit.array {
        let ids: Vec<String> = tasks.iter().map(usize::to_string).collect();
        cmd.push(format!("--array={}", ids.join(",")));
    }
    cmd.extend(spec.slurm.sbatch.iter().cloned());
    cmd.extend(res.sbatch.iter().cloned());

    let mut env = vec![format!("OVERINTERP_BIN={}", paths.bin.display())];
    if res.gpus_per_node > 0 {
        env.push(format!("OVERINTERP_GPUS_PER_NODE={}", res.gpus_per_node));
    }
    if let (JobKind::Sis, Some(t)) = (unit.kind, paths.threads) {
        if !res.env.contains_key("OVERINTERP_WORKER_THREADS") {
            env.push(format!("OVERINTERP_WORKER_THREADS={t}"));
        }
    }
    env.extend(res.env.iter().map(|(k, v)| format!("{k}={v}")));
    for e in &env {
        anyhow::ensure!(
            !e.contains(','),
            "[slurm] environment {e:?} contains a comma, which sbatch --export cannot pass"
        );
    }
    cmd.push(format!("--export=ALL,{}", env.join(",")));

    let stage = if unit.array {
        // retrain-cnn-backselect-{task}[-eval]: the task id picks the replicate.
        let first = &unit.stages[0];
        let base = unit.name.trim_end_matches("-eval");
        let suffix = if unit.name.ends_with("-eval") {
            "-eval"
        } else {
            ""
        };
        debug_assert!(first.starts_with(base));
        format!("{base}-{{task}}{suffix}")
    } else {
        unit.stages[0].clone()
    };
    let mut stage_args = vec![
        "pipeline".to_string(),
        paths.spec_file.display().to_string(),
        "--stage".into(),
        stage,
    ];
    if let Some(t) = paths.threads {
        stage_args.extend(["--threads".into(), t.to_string()]);
    }
    match unit.kind {
        JobKind::Train | JobKind::Retrain => {
            cmd.push(
                script(&paths.scripts, "train.sbatch")?
                    .display()
                    .to_string(),
            );
            stage_args.extend(["--out".into(), paths.out.display().to_string()]);
            cmd.extend(stage_args);
        }
        JobKind::Sis => {
            let sis = script(&paths.scripts, "sis.sbatch")?;
            // Work out the stage's store and job file, then become sis.sbatch (exec
            // keeps the batch shell's PID, so its signals and requeue work as usual).
            let prepare = shell_join(
                std::iter::once(paths.bin.display().to_string())
                    .chain(stage_args)
                    .chain(["--prepare-sis".to_string()]),
            );
            cmd.push(format!(
                "--wrap=args=$({prepare}) || exit 1; eval \"exec bash {} $args\"",
                shell_quote(&sis.display().to_string())
            ));
        }
        JobKind::Eval | JobKind::Report => {
            cmd.push("--ntasks=1".into());
            let run =
                shell_join(std::iter::once(paths.bin.display().to_string()).chain(stage_args));
            cmd.push(format!("--wrap=exec {run}"));
        }
    }
    Ok(cmd)
}

/// A script of the scripts directory, which must exist.
fn script(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} does not exist: set [slurm] scripts to the directory holding train.sbatch and sis.sbatch",
        path.display()
    );
    Ok(path)
}

/// The `#SBATCH` options at the top of a batch script, which sbatch reads only from
/// the script it submits (a SIS stage submits a wrapper that becomes the script).
pub fn directives(script: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(script)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", script.display()))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("#SBATCH") {
            out.extend(rest.split_whitespace().map(str::to_string));
        } else if !(line.starts_with('#') || line.is_empty()) {
            break; // sbatch stops at the first command
        }
    }
    Ok(out)
}

/// `s` quoted for a POSIX shell (unchanged when nothing needs quoting).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+{}".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn shell_join(words: impl IntoIterator<Item = String>) -> String {
    words
        .into_iter()
        .map(|w| shell_quote(&w))
        .collect::<Vec<_>>()
        .join(" ")
}
