//! `overinterp pipeline SPEC --slurm`: every stage as Slurm work, chained with
//! `--dependency=afterok`, into the same stage directories (same hashes) as an
//! embedded run.
//!
//! - [`jobs`]: stages grouped into jobs (replicates as arrays) and their sbatch lines.
//! - [`state`]: the job of each unit (`OUT/slurm/jobs.json`) and Slurm's view of it.
//! - [`status`]: `--status`, one line per stage.
//!
//! The driver is stateless apart from `jobs.json`: each run probes which stages are
//! done (their `done.json`, as an embedded run would), keeps jobs that are still
//! queued or running, cancels jobs stranded behind a failed dependency, and submits
//! what is missing. With `--wait` it stays and does the same every few seconds,
//! resubmitting stages the cluster ended (time limit, preemption, node failure) and
//! stopping with the reason when a stage itself failed.

pub mod jobs;
pub mod state;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::experiment::{Experiment, Ranks};
use super::plan::{self, names, PlannedStage, StageKind};
use super::spec::PipelineSpec;
use super::stages::{NotDone, Policy, Stages};
use jobs::{Paths, Unit};
use state::{JobInfo, Record, Submitted};

/// Automatic resubmissions of one job after the cluster ended it.
const MAX_RESUBMITS: usize = 3;

/// Where a stage stands, as far as its files tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Done,
    /// Not done; its inputs are, so its directory is known.
    Ready(PathBuf),
    /// An input is not done yet (its directory depends on that input's result).
    Blocked,
}

/// The driver: the spec, the plan, its jobs and what Slurm says of them.
pub struct Driver<'a> {
    pub exp: Experiment<'a>,
    pub paths: Paths,
    pub plan: Vec<PlannedStage>,
    pub units: Vec<Unit>,
    pub record: Record,
}

impl<'a> Driver<'a> {
    /// Opens the pipeline for probing only: this process runs no stage.
    pub fn new(spec: &'a PipelineSpec, paths: Paths) -> anyhow::Result<Self> {
        let stages = Stages {
            root: spec.out.clone(),
            policy: Policy::Only {
                stages: Vec::new(),
                record: false,
            },
        };
        let ranks = Ranks::Local {
            spec_file: spec.out.join("pipeline-spec.toml"),
        };
        let exp = Experiment::open(spec, stages, ranks)?;
        let plan = plan::plan(spec);
        let units = jobs::units(&plan);
        let record = Record::load(&spec.out)?;
        Ok(Self {
            exp,
            paths,
            plan,
            units,
            record,
        })
    }

    /// Whether stage `stage` is done, and where it is when its inputs are.
    pub fn probe(&self, stage: &PlannedStage) -> anyhow::Result<Probe> {
        if stage.kind == StageKind::Report {
            return Ok(if report_done(&self.exp.spec.out, self.exp.spec)? {
                Probe::Done
            } else {
                Probe::Blocked
            });
        }
        match plan::run_stage(&self.exp, stage, "") {
            Ok(()) => Ok(Probe::Done),
            Err(e) => match e.downcast_ref::<NotDone>() {
                Some(nd) if nd.name == stage.name => Ok(Probe::Ready(nd.dir.clone())),
                Some(_) => Ok(Probe::Blocked),
                None => Err(e),
            },
        }
    }

    /// The planned stage called `name` (units name only planned stages).
    fn stage(&self, name: &str) -> &PlannedStage {
        self.plan
            .iter()
            .find(|s| s.name == name)
            .expect("units are made of planned stages")
    }

    /// Submits every job whose stages are not done and that no queued or running job
    /// covers; cancels jobs stranded behind failed dependencies. `watching`: only
    /// resubmit jobs the cluster ended (time limit, preemption, node failure), and
    /// fail with the reason when a stage failed by itself. Returns what it did, one
    /// line per job; with `dry_run`, a shell script of the sbatch commands instead.
    pub fn submit(&mut self, dry_run: bool, watching: bool) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        // The job id each unit's dependents wait for (a shell variable in a dry run).
        let mut job_of: BTreeMap<String, String> = BTreeMap::new();
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for unit in self.units.clone() {
            let rec = self.record.units.get(&unit.name).cloned();
            // Slurm first, files second: a job that ends in between is seen done.
            let tasks = match &rec {
                Some(r) if !dry_run => state::query(r.job)?,
                _ => BTreeMap::new(),
            };
            let mut missing = Vec::new();
            for (i, name) in unit.stages.iter().enumerate() {
                if self.probe(self.stage(name))? != Probe::Done {
                    missing.push(i);
                }
            }
            if missing.is_empty() {
                if !watching {
                    lines.push(format!("{:<32} done", unit.name));
                }
                continue;
            }
            let info = |i: usize| tasks.get(&unit.array.then_some(i));
            let covered = rec.is_some()
                && missing
                    .iter()
                    .all(|&i| info(i).is_some_and(|j| j.active() && !j.stranded()));
            let deps_changed = unit.deps.iter().any(|d| changed.contains(d));
            if covered && !deps_changed {
                let job = rec.as_ref().expect("covered implies a record").job;
                job_of.insert(unit.name.clone(), job.to_string());
                if !watching {
                    lines.push(format!("{:<32} queued or running as job {job}", unit.name));
                }
                continue;
            }
            let mut resubmits = 0;
            if let (true, Some(r)) = (watching && !deps_changed, &rec) {
                // Ended tasks: resume those the cluster ended, stop on the others.
                for &i in &missing {
                    match info(i) {
                        Some(j) if j.active() => {}
                        Some(j) if j.transient() && r.resubmits < MAX_RESUBMITS => {}
                        ended => {
                            let stage = &unit.stages[i];
                            self.cancel_dependents(&unit.name)?;
                            return Err(self.failure(&unit, r, i, stage, ended));
                        }
                    }
                }
                resubmits = r.resubmits + 1;
            }
            if let Some(r) = &rec {
                if !dry_run && tasks.values().any(JobInfo::active) {
                    state::cancel(&[r.job])?;
                    lines.push(format!(
                        "{:<32} cancelled job {} (stranded)",
                        unit.name, r.job
                    ));
                }
            }
            let after: Vec<String> = unit
                .deps
                .iter()
                .filter_map(|d| job_of.get(d).cloned())
                .collect();
            let cmd = jobs::sbatch_command(self.exp.spec, &self.paths, &unit, &missing, &after)?;
            let var = shell_var(&unit.name);
            if dry_run {
                // Dependencies stay unquoted so that the shell expands `$JOB_...`.
                let words: Vec<String> = cmd
                    .iter()
                    .map(|w| match w.starts_with("--dependency=") {
                        true => w.clone(),
                        false => jobs::shell_quote(w),
                    })
                    .collect();
                lines.push(format!("{var}=$({})", words.join(" ")));
                job_of.insert(unit.name.clone(), format!("${var}"));
            } else {
                std::fs::create_dir_all(self.paths.logs())?;
                let job = sbatch(&cmd)?;
                self.record.units.insert(
                    unit.name.clone(),
                    Submitted {
                        job,
                        tasks: missing.clone(),
                        resubmits,
                    },
                );
                self.record.save(&self.exp.spec.out)?;
                let deps = if after.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", after.join(", "))
                };
                let what = if unit.array {
                    format!(" (array tasks {missing:?})")
                } else {
                    String::new()
                };
                lines.push(format!("{:<32} submitted job {job}{what}{deps}", unit.name));
                job_of.insert(unit.name.clone(), job.to_string());
            }
            changed.insert(unit.name.clone());
        }
        Ok(lines)
    }

    /// Why a stage's job ended without finishing it, with the tail of its log.
    fn failure(
        &self,
        unit: &Unit,
        rec: &Submitted,
        task: usize,
        stage: &str,
        info: Option<&JobInfo>,
    ) -> anyhow::Error {
        let task = unit.array.then_some(task);
        let log = self.paths.log(&unit.name, rec.job, task);
        let what = match info {
            Some(j) if j.transient() => format!(
                "{} {MAX_RESUBMITS} times already (resubmitted after the cluster ended it)",
                j.state
            ),
            Some(j) => format!("{} with exit code {}", j.state, j.exit_code),
            None => "and Slurm no longer knows how".into(),
        };
        anyhow::anyhow!(
            "stage {stage}: job {}{} ended {what}; not resubmitting. Log {}:\n{}\n\
             Fix the cause, then run `overinterp pipeline SPEC --slurm` again: it resubmits \
             what is missing and resumes from the stage caches.",
            rec.job,
            task.map_or(String::new(), |t| format!("_{t}")),
            log.display(),
            status::tail(&log, 15)
        )
    }

    /// Cancels the queued jobs of every unit that (transitively) depends on `unit`.
    fn cancel_dependents(&self, unit: &str) -> anyhow::Result<()> {
        let mut blocked: BTreeSet<&str> = [unit].into();
        let mut ids = Vec::new();
        for u in &self.units {
            if u.deps.iter().any(|d| blocked.contains(d.as_str())) {
                blocked.insert(&u.name);
                if let Some(r) = self.record.units.get(&u.name) {
                    if state::query(r.job)?.values().any(JobInfo::active) {
                        ids.push(r.job);
                    }
                }
            }
        }
        state::cancel(&ids)
    }

    /// Cancels every queued or running job of the pipeline; returns their ids.
    pub fn cancel(&self) -> anyhow::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for r in self.record.units.values() {
            if state::query(r.job)?.values().any(JobInfo::active) {
                ids.push(r.job);
            }
        }
        state::cancel(&ids)?;
        Ok(ids)
    }

    /// Stays until the report is written: every `poll`, resubmits what the cluster
    /// ended and fails with the reason when a stage failed.
    pub fn wait(&mut self, poll: Duration) -> anyhow::Result<()> {
        let report = self
            .plan
            .iter()
            .find(|s| s.kind == StageKind::Report)
            .expect("the plan ends with the report")
            .clone();
        loop {
            if self.probe(&report)? == Probe::Done {
                return Ok(());
            }
            for line in self.submit(false, true)? {
                println!("{line}");
            }
            std::thread::sleep(poll);
        }
    }
}

/// `JOB_train_cnn` for unit `train-cnn`.
fn shell_var(unit: &str) -> String {
    let mut v = String::from("JOB_");
    v.extend(
        unit.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    v
}

/// Runs `sbatch --parsable ...` and returns the job id.
fn sbatch(cmd: &[String]) -> anyhow::Result<u64> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .context("running sbatch (is Slurm installed and SLURM_CONF set?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        jobs::shell_join(cmd.iter().cloned()),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // --parsable prints "JOBID" or "JOBID;CLUSTER".
    stdout
        .trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("sbatch printed no job id: {stdout:?}"))
}

/// `OUT/slurm/report.json`: the spec the report was written for.
fn report_stamp(out: &Path) -> PathBuf {
    out.join("slurm").join("report.json")
}

/// Records that the report job wrote the report for this spec.
pub fn write_report_stamp(spec: &PipelineSpec) -> anyhow::Result<()> {
    let path = report_stamp(&spec.out);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let stamp =
        serde_json::json!({ "spec_sha256": crate::util::sha256_hex(spec.to_toml().as_bytes()) });
    std::fs::write(&path, serde_json::to_vec_pretty(&stamp)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The report is done when its stamp names this spec and no stage finished after it.
pub fn report_done(out: &Path, spec: &PipelineSpec) -> anyhow::Result<bool> {
    let path = report_stamp(out);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(false);
    };
    let stamp: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if stamp["spec_sha256"] != crate::util::sha256_hex(spec.to_toml().as_bytes()) {
        return Ok(false);
    }
    if !out.join("report").join("report.md").exists() {
        return Ok(false);
    }
    let written = std::fs::metadata(&path)?.modified()?;
    let Ok(entries) = std::fs::read_dir(out.join("stages")) else {
        return Ok(true);
    };
    for e in entries.flatten() {
        if let Ok(t) = std::fs::metadata(e.path().join("done.json")).and_then(|m| m.modified()) {
            if t > written {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The report stage's name, for callers outside.
pub fn is_report(stage: &str) -> bool {
    stage == names::REPORT
}
