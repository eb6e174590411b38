//! `overinterp pipeline SPEC --status`: one line per stage — done, queued (job id
//! and why it waits), running (progress from its files), failed (the job's state,
//! exit code and the tail of its log), or not submitted.

use std::path::Path;

use super::state::{self, JobInfo};
use super::{Driver, Probe};
use crate::pipeline::plan::StageKind;

impl Driver<'_> {
    /// The status lines of every stage.
    pub fn status(&self) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        for unit in &self.units {
            let rec = self.record.units.get(&unit.name);
            let tasks = match rec {
                Some(r) => state::query(r.job)?,
                None => Default::default(),
            };
            for (i, name) in unit.stages.iter().enumerate() {
                let stage = self.stage(name);
                let probe = self.probe(stage)?;
                let task = unit.array.then_some(i);
                let info = tasks.get(&task);
                let job = rec.map(|r| match task {
                    Some(t) => format!("{}_{t}", r.job),
                    None => r.job.to_string(),
                });
                let progress = match &probe {
                    Probe::Ready(dir) => progress(stage.kind, dir, self.exp.spec),
                    _ => None,
                };
                let what = match (&probe, info, job) {
                    (Probe::Done, ..) => "done".to_string(),
                    (_, Some(j), Some(id)) if j.state == "RUNNING" => format!(
                        "running  job {id}{}",
                        progress.map_or(String::new(), |p| format!(": {p}"))
                    ),
                    (_, Some(j), Some(id)) if j.active() => {
                        format!("queued   job {id} ({}, {})", j.state, j.reason)
                    }
                    (_, Some(j), Some(id)) => {
                        let log = self
                            .paths
                            .log(&unit.name, rec.expect("has a job").job, task);
                        failed(&id, j, &log)
                    }
                    (_, None, Some(id)) => format!("ended    job {id} (Slurm no longer knows it)"),
                    (_, _, None) => match progress {
                        Some(p) => format!("not submitted ({p})"),
                        None => "not submitted".into(),
                    },
                };
                lines.push(format!("{name:<36} {what}"));
            }
        }
        Ok(lines)
    }
}

fn failed(id: &str, j: &JobInfo, log: &Path) -> String {
    let tail = tail(log, 5)
        .lines()
        .map(|l| format!("\n      | {l}"))
        .collect::<String>();
    let word = if j.state == "CANCELLED" {
        "cancelled"
    } else {
        "failed  "
    };
    format!(
        "{word} job {id}: {}, exit code {}; log {}{tail}",
        j.state,
        j.exit_code,
        log.display()
    )
}

/// Progress of an unfinished stage from its files.
fn progress(
    kind: StageKind,
    dir: &Path,
    spec: &crate::pipeline::spec::PipelineSpec,
) -> Option<String> {
    match kind {
        StageKind::Sis(_) => {
            let reader = crate::store::StoreReader::open(dir.join("store")).ok()?;
            Some(format!(
                "{} of {} images; more workers: sbatch -N2 slurm/add-workers.sbatch {}",
                reader.len(),
                reader.meta().num_images,
                dir.join("store.job").display()
            ))
        }
        StageKind::Train | StageKind::Retrain(..) => {
            let epochs = if kind == StageKind::Train {
                spec.train.epochs
            } else {
                spec.retrain.epochs
            };
            let done = std::fs::read_to_string(dir.join("metrics.jsonl"))
                .map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count());
            Some(format!("epoch {done} of {epochs}"))
        }
        _ => None,
    }
}

/// The last `n` lines of a log (or why there are none).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
