//! What the driver remembers (`OUT/slurm/jobs.json`: the job of each unit) and what
//! it asks Slurm (`scontrol show job`, falling back to `sacct` once slurmctld has
//! forgotten a finished job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The last job submitted for each unit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub units: BTreeMap<String, Submitted>,
}

/// One submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submitted {
    pub job: u64,
    /// Array tasks submitted (replicates), for arrays.
    #[serde(default)]
    pub tasks: Vec<usize>,
    /// Automatic resubmissions after a preemption, time limit or node failure.
    #[serde(default)]
    pub resubmits: usize,
}

impl Record {
    pub fn path(out: &Path) -> PathBuf {
        out.join("slurm").join("jobs.json")
    }

    pub fn load(out: &Path) -> anyhow::Result<Self> {
        let path = Self::path(out);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a job record; delete it to start afresh",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written after every submission, so a driver killed mid-way forgets nothing.
    pub fn save(&self, out: &Path) -> anyhow::Result<()> {
        let path = Self::path(out);
        let tmp = path.with_extension("json.tmp");
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// A job (or array task) as Slurm reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, ...
    pub state: String,
    /// Why it is pending (`Dependency`, `DependencyNeverSatisfied`, `Resources`, ...).
    pub reason: String,
    /// `exit:signal` of the batch script.
    pub exit_code: String,
    /// This task's own job id (an array task's differs from the array's).
    pub job_id: u64,
}

impl JobInfo {
    /// Queued or running: Slurm will still do something with it.
    pub fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SUSPENDED"
                | "STAGE_OUT"
                | "SIGNALING"
        )
    }

    /// Pending on a dependency that failed: it will never start.
    pub fn stranded(&self) -> bool {
        self.state == "PENDING" && self.reason == "DependencyNeverSatisfied"
    }

    /// Ended for a reason of the cluster's, not the stage's: resubmitting resumes it.
    pub fn transient(&self) -> bool {
        matches!(
            self.state.as_str(),
            "TIMEOUT" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" | "DEADLINE"
        )
    }
}

/// The tasks of job `job` by array task id (`None` for a plain job), or an empty
/// map when Slurm no longer knows it.
pub fn query(job: u64) -> anyhow::Result<BTreeMap<Option<usize>, JobInfo>> {
    let out = Command::new("scontrol")
        .args(["-o", "show", "job", &job.to_string()])
        .output()
        .context("running scontrol (is Slurm installed and SLURM_CONF set?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && !text.trim().is_empty() {
        let mut tasks = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                    .unwrap_or_default()
                    .to_string()
            };
            let info = JobInfo {
                state: field("JobState"),
                reason: field("Reason"),
                exit_code: field("ExitCode"),
                job_id: field("JobId").parse().unwrap_or(job),
            };
            let task_field = field("ArrayTaskId");
            if task_field.is_empty() {
                tasks.insert(None, info);
            } else {
                for t in expand_tasks(&task_field) {
                    tasks.insert(Some(t), info.clone());
                }
            }
        }
        return Ok(tasks);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.contains("Invalid job id") {
        anyhow::bail!("scontrol show job {job} failed: {}", stderr.trim());
    }
    Ok(from_sacct(job))
}

/// `0-3,5%2` → 0, 1, 2, 3, 5 (the `%` limit is ignored).
fn expand_tasks(field: &str) -> Vec<usize> {
    let field = field.split('%').next().unwrap_or_default();
    let mut out = Vec::new();
    for part in field.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

/// A finished job from accounting (clusters with slurmdbd); empty when there is none.
fn from_sacct(job: u64) -> BTreeMap<Option<usize>, JobInfo> {
    let mut tasks = BTreeMap::new();
    let Ok(out) = Command::new("sacct")
        .args([
            "-X",
            "-n",
            "-P",
            "-o",
            "JobID,State,ExitCode,JobIDRaw",
            "-j",
            &job.to_string(),
        ])
        .output()
    else {
        return tasks;
    };
    if !out.status.success() {
        return tasks;
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 4 {
            continue;
        }
        let task = f[0].split_once('_').and_then(|(_, t)| t.parse().ok());
        // "CANCELLED by 0" → CANCELLED
        let state = f[1]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        tasks.insert(
            task,
            JobInfo {
                state,
                reason: String::new(),
                exit_code: f[2].to_string(),
                job_id: f[3].parse().unwrap_or(job),
            },
        );
    }
    tasks
}

/// `scancel` the given job ids (ignoring ones that already ended).
pub fn cancel(jobs: &[u64]) -> anyhow::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let status = Command::new("scancel")
        .args(jobs.iter().map(u64::to_string))
        .status()
        .context("running scancel")?;
    anyhow::ensure!(status.success(), "scancel {jobs:?} failed ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_task_lists_expand() {
        assert_eq!(expand_tasks("0-2,5%2"), vec![0, 1, 2, 5]);
        assert_eq!(expand_tasks("3"), vec![3]);
    }
}
