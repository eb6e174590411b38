//! The `overinterp` binary in integration tests: running it, and the small model and
//! single-process reference store the cluster and Slurm tests compare against.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_overinterp");
/// The test split the SIS jobs cover: 128 real Fashion-MNIST test images.
pub const DATA: &str = "fashion-mnist?limit=128";

/// Runs `cmd` and fails the test with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The single-process `overinterp sis` of the tests' job: gradient k=16, τ 0.3,
/// mini-batches of 8, no collections, one thread (the job TOML uses the same).
pub fn sis_command(model: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["sis", "--model"])
        .arg(model)
        .args(["--data", DATA, "--split", "test", "--method", "gradient"])
        .args(["--k", "16", "--threshold", "0.3", "--batch", "8"])
        .args([
            "--candidate-batch",
            "256",
            "--no-collection",
            "--threads",
            "1",
        ])
        .arg("--out")
        .arg(out);
    cmd
}

/// Trains a small CNN for one epoch on 300 Fashion-MNIST images into `dir/model`
/// and computes the reference store `dir/reference` in one process.
pub fn model_and_reference(dir: &Path) -> (PathBuf, PathBuf) {
    let model = fixture_model(dir);
    let reference = dir.join("reference");
    run_ok(
        &mut sis_command(&model, &reference),
        "overinterp sis (reference store)",
    );
    (model, reference)
}

/// Trains the tests' small CNN (one epoch on 300 Fashion-MNIST images) into `dir/model`.
pub fn fixture_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    run_ok(
        Command::new(BIN)
            .args([
                "train",
                "--arch",
                "small-cnn",
                "--data",
                "fashion-mnist?limit=300",
            ])
            .args([
                "--epochs",
                "1",
                "--no-augment",
                "--no-eval",
                "--threads",
                "1",
            ])
            .arg("--out")
            .arg(&model),
        "overinterp train (fixture model)",
    );
    model
}
