//! A (re)training stage as a data-parallel gang of rank processes on this machine
//! (the spec's `local_ranks`): each rank is `overinterp pipeline SPEC --stage NAME
//! --world-size N --rank R --rendezvous DIR`, the same stage entry point a rank of
//! `slurm/train.sbatch` runs. When a rank dies the others exit with
//! [`EXIT_GANG_LOST`]; the gang restarts from the last checkpoint with the ranks that
//! survived, as `overinterp train --local-ranks` and `train.sbatch` do.

use std::path::Path;

use anyhow::{bail, Context};

use crate::train::parallel::EXIT_GANG_LOST;

/// Gang attempts after the first.
const MAX_RESTARTS: usize = 2;

/// Trains stage `stage` (directory `dir`) of the spec in `spec_file` with `n` local ranks.
pub fn run_local_gang(
    spec_file: &Path,
    stage: &str,
    n: usize,
    threads: Option<i32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this executable to spawn ranks")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut world = n;
    for attempt in 1..=MAX_RESTARTS + 1 {
        let rendezvous = dir
            .join("rendezvous")
            .join(format!("local-{stamp}-attempt-{attempt}"));
        tracing::info!(stage, attempt, ranks = world, rendezvous = %rendezvous.display(), "local gang");
        let mut children = Vec::with_capacity(world);
        for rank in 0..world {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("pipeline")
                .arg(spec_file)
                .args(["--stage", stage, "--world-size"])
                .arg(world.to_string())
                .arg("--rank")
                .arg(rank.to_string())
                .arg("--rendezvous")
                .arg(&rendezvous);
            if let Some(t) = threads {
                cmd.arg("--threads").arg(t.to_string());
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting rank {rank} of {stage} ({})", exe.display()))?;
            children.push(child);
        }
        let (mut ok, mut survivors) = (0, 0);
        for (rank, mut child) in children.into_iter().enumerate() {
            let status = child
                .wait()
                .with_context(|| format!("waiting for rank {rank} of {stage}"))?;
            match status.code() {
                Some(0) => ok += 1,
                Some(EXIT_GANG_LOST) => survivors += 1,
                _ => tracing::warn!(stage, rank, %status, "rank failed"),
            }
        }
        if ok == world {
            return Ok(());
        }
        if survivors == 0 {
            bail!("stage {stage}: gang attempt {attempt} failed and no rank is restartable (none exited with {EXIT_GANG_LOST}); see the ranks' errors above");
        }
        world = survivors;
        tracing::warn!(
            stage,
            ranks = world,
            "gang lost a member; restarting from the last checkpoint"
        );
    }
    bail!(
        "stage {stage}: the gang failed {} times; the last checkpoint is in {}",
        MAX_RESTARTS + 1,
        dir.display()
    )
}
