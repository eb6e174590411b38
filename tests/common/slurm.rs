//! A real Slurm cluster for integration tests, driven through the scripts that start it.
//!
//! `scripts/slurm-up` starts (once per machine, idempotently) munged, slurmctld and
//! emulated slurmd's on this host and prints the `SLURM_CONF` to use; every Slurm command
//! a test runs must carry that variable, which [`SlurmCluster::command`] sets. Jobs are
//! waited for with `scripts/slurm-wait-job`, since the cluster keeps no accounting
//! (`sacct`): finished jobs stay visible to `scontrol` for ten minutes.
//!
//! Tests running in parallel may all call [`SlurmCluster::up`] with the same node count:
//! the script serializes them and the first one starts the cluster. A different node
//! count restarts the cluster and kills the other tests' jobs. Needs root.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// What went wrong talking to the test cluster; each names the command and its output.
#[derive(Debug)]
pub enum SlurmError {
    /// A command could not be run at all (not installed, not executable).
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command ran and failed, or printed something we cannot read.
    Command { command: String, detail: String },
    /// The job did not reach the awaited state in time; `last_state` is what it was.
    Timeout { job: u64, last_state: String },
    /// slurmctld does not know the job (a wrong id, or purged after MinJobAge).
    UnknownJob { job: u64 },
}

impl fmt::Display for SlurmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlurmError::Spawn { command, source } => write!(f, "cannot run {command}: {source}"),
            SlurmError::Command { command, detail } => write!(f, "{command} failed: {detail}"),
            SlurmError::Timeout { job, last_state } => {
                write!(
                    f,
                    "Slurm job {job} still {last_state} when the wait timed out"
                )
            }
            SlurmError::UnknownJob { job } => write!(f, "slurmctld does not know job {job}"),
        }
    }
}

impl std::error::Error for SlurmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SlurmError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The running test cluster: where its scripts are and which `slurm.conf` it uses.
pub struct SlurmCluster {
    /// The repository root, for `scripts/slurm-*`.
    root: PathBuf,
    /// The `slurm.conf` every Slurm command must be given (as `SLURM_CONF`).
    conf: PathBuf,
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn run(mut cmd: Command) -> Result<(String, Output), SlurmError> {
    let command = describe(&cmd);
    let output = cmd.output().map_err(|source| SlurmError::Spawn {
        command: command.clone(),
        source,
    })?;
    Ok((command, output))
}

fn failure(command: String, output: &Output) -> SlurmError {
    SlurmError::Command {
        command,
        detail: format!(
            "{}; stdout: {}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

impl SlurmCluster {
    /// Starts the cluster with `nodes` emulated nodes (node1..nodeN) unless one of that
    /// size is already up, and waits until every node is idle or busy with jobs.
    pub fn up(nodes: usize) -> Result<Self, SlurmError> {
        Self::start(nodes, None)
    }

    /// A cluster of its own, with its state in `dir` and slurmctld on `port` (node K
    /// on port + K): starting it never restarts the shared cluster of [`Self::up`],
    /// whatever its size, and the two run side by side.
    pub fn up_at(nodes: usize, dir: &Path, port: u16) -> Result<Self, SlurmError> {
        Self::start(nodes, Some((dir, port)))
    }

    fn start(nodes: usize, own: Option<(&Path, u16)>) -> Result<Self, SlurmError> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(root.join("scripts/slurm-up"));
        cmd.arg(nodes.to_string());
        if let Some((dir, port)) = own {
            cmd.env("OVERINTERP_SLURM_DIR", dir)
                .env("OVERINTERP_SLURM_PORT", port.to_string());
        }
        let (command, output) = run(cmd)?;
        if !output.status.success() {
            return Err(failure(command, &output));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .ok_or_else(|| failure(command.clone(), &output))?;
        Ok(Self {
            root,
            conf: PathBuf::from(conf.trim()),
        })
    }

    /// The `slurm.conf` of the cluster.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A command (`sbatch`, `scancel`, `scontrol`, ...) set up to talk to this cluster.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Submits a batch job (`sbatch --parsable ARGS...`) and returns its id. The job
    /// inherits this process's environment, `SLURM_CONF` included; its working
    /// directory is this process's unless `ARGS` has `-D`.
    pub fn sbatch<I, S>(&self, args: I) -> Result<u64, SlurmError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command("sbatch");
        cmd.arg("--parsable").args(args);
        let (command, output) = run(cmd)?;
        if !output.status.success() {
            return Err(failure(command, &output));
        }
        // --parsable prints "JOBID" or "JOBID;CLUSTER".
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| failure(command, &output))
    }

    /// Waits until the job has ended and returns its final state (`COMPLETED`,
    /// `FAILED`, `CANCELLED`, `TIMEOUT`, ...). A requeued job is not ended.
    pub fn wait(&self, job: u64, timeout: Duration) -> Result<String, SlurmError> {
        self.wait_job(job, timeout, false)
    }

    /// Waits until the job is RUNNING; returns `RUNNING`, or the final state of a job
    /// that ended before it was seen running.
    pub fn wait_running(&self, job: u64, timeout: Duration) -> Result<String, SlurmError> {
        self.wait_job(job, timeout, true)
    }

    fn wait_job(&self, job: u64, timeout: Duration, running: bool) -> Result<String, SlurmError> {
        let mut cmd = self.command(self.root.join("scripts/slurm-wait-job"));
        if running {
            cmd.arg("--running");
        }
        // Whole seconds, rounded up, at least 1.
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        cmd.arg(job.to_string()).arg(secs.max(1).to_string());
        let (command, output) = run(cmd)?;
        let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
        // Exit 0: COMPLETED (or RUNNING); 1: another final state; 3: unknown; 124: timeout.
        match output.status.code() {
            Some(0 | 1) if !state.is_empty() => Ok(state),
            Some(3) => Err(SlurmError::UnknownJob { job }),
            Some(124) => Err(SlurmError::Timeout {
                job,
                last_state: state,
            }),
            _ => Err(failure(command, &output)),
        }
    }

    /// One field of `scontrol show job` (`ExitCode`, `NodeList`, `Restarts`, ...).
    pub fn job_field(&self, job: u64, field: &str) -> Result<String, SlurmError> {
        let mut cmd = self.command("scontrol");
        cmd.args(["-o", "show", "job", &job.to_string()]);
        let (command, output) = run(cmd)?;
        if !output.status.success() {
            return Err(failure(command, &output));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let prefix = format!("{field}=");
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(prefix.as_str()))
            .map(str::to_string)
            .ok_or_else(|| SlurmError::Command {
                command,
                detail: format!("no {field}= in: {}", stdout.trim()),
            })
    }

    /// Sends `scancel ARGS... JOB` (e.g. `["--signal=USR1", "--batch"]`, or none to cancel).
    pub fn scancel(&self, job: u64, args: &[&str]) -> Result<(), SlurmError> {
        let mut cmd = self.command("scancel");
        cmd.args(args).arg(job.to_string());
        let (command, output) = run(cmd)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(failure(command, &output))
        }
    }
}
