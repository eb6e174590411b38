//! `slurm/sis.sbatch` and `slurm/add-workers.sbatch` against a real Slurm (Debian's
//! slurmctld/slurmd, two emulated nodes on this host, started by `scripts/slurm-up`):
//! a SIS job submitted with `sbatch -N1`, more workers joining from a second
//! allocation while it runs, and the merged store equal, image by image, to a
//! single-process `overinterp sis` store of the same job.
//!
//! Needs root (slurmd runs jobs as their submitter; apt-get installs Slurm). Without
//! root the test fails, saying so, unless `OVERINTERP_SKIP_SLURM=1` is set. Needs
//! Debian's Fashion-MNIST at /usr/share/datasets/fashion-mnist.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::slurm::SlurmCluster;
use overinterp::store::StoreReader;

const BIN: &str = env!("CARGO_BIN_EXE_overinterp");
const DATA: &str = "fashion-mnist?limit=128";

fn run_ok(cmd: &mut Command, what: &str) {
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn sis_sbatch_with_added_workers_equals_single_process() {
    if !is_root() {
        if std::env::var("OVERINTERP_SKIP_SLURM").as_deref() == Ok("1") {
            eprintln!("skipped: not root and OVERINTERP_SKIP_SLURM=1");
            return;
        }
        panic!(
            "the Slurm test needs root (it installs and starts slurmctld/slurmd); \
             run it as root, or set OVERINTERP_SKIP_SLURM=1 to skip it"
        );
    }
    let t0 = Instant::now();
    let cluster = SlurmCluster::up(2).unwrap_or_else(|e| panic!("starting Slurm: {e}"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Under /tmp, which every emulated node (this host) sees: the "shared storage".
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();

    let model = d.join("model");
    run_ok(
        Command::new(BIN)
            .args(["train", "--arch", "small-cnn", "--data"])
            .arg("fashion-mnist?limit=300")
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
    let reference = d.join("reference");
    run_ok(
        Command::new(BIN)
            .args(["sis", "--model"])
            .arg(&model)
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
            .arg(&reference),
        "overinterp sis (reference store)",
    );

    let store = d.join("store");
    let job_dir = d.join("store.job");
    let job = d.join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"model = "{}"
data = "{DATA}"
split = "test"
out = "{}"
device = "cpu"
[sis]
method = {{ kind = "gradient", k = 16 }}
thresholds = [0.3]
batch_size = 8
candidate_batch = 256
collection = false
"#,
            model.display(),
            store.display()
        ),
    )
    .expect("write job.toml");

    let export = format!(
        "--export=ALL,OVERINTERP_BIN={BIN},OVERINTERP_SHARD_SIZE=8,OVERINTERP_LEASE_SECS=3,OVERINTERP_WORKER_THREADS=1"
    );
    let leader_out = d.join("sis.out");
    let sis_job = cluster
        .sbatch([
            "-N1".as_ref(),
            export.as_ref(),
            "-D".as_ref(),
            d.as_os_str(),
            "-o".as_ref(),
            leader_out.as_os_str(),
            root.join("slurm/sis.sbatch").as_os_str(),
            job.as_os_str(),
            store.as_os_str(),
        ])
        .unwrap_or_else(|e| panic!("sbatch sis.sbatch: {e}"));
    let state = cluster
        .wait_running(sis_job, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("sis job {sis_job}: {e}; output:\n{}", read(&leader_out)));
    assert_eq!(state, "RUNNING", "output:\n{}", read(&leader_out));

    // Workers from a second allocation, submitted while the job runs.
    let workers_out = d.join("workers.out");
    let add_job = cluster
        .sbatch([
            "-N1".as_ref(),
            export.as_ref(),
            "-D".as_ref(),
            d.as_os_str(),
            "-o".as_ref(),
            workers_out.as_os_str(),
            root.join("slurm/add-workers.sbatch").as_os_str(),
            job_dir.as_os_str(),
        ])
        .unwrap_or_else(|e| panic!("sbatch add-workers.sbatch: {e}"));

    let state = cluster
        .wait(sis_job, Duration::from_secs(100))
        .unwrap_or_else(|e| panic!("sis job {sis_job}: {e}; output:\n{}", read(&leader_out)));
    assert_eq!(
        state,
        "COMPLETED",
        "sis job output:\n{}\nadd-workers output:\n{}",
        read(&leader_out),
        read(&workers_out)
    );
    let state = cluster
        .wait(add_job, Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "add-workers job {add_job}: {e}; output:\n{}",
                read(&workers_out)
            )
        });
    assert_eq!(
        state,
        "COMPLETED",
        "add-workers output:\n{}",
        read(&workers_out)
    );
    let log = read(&leader_out);
    assert!(
        log.contains("job done: 128 of 128 images"),
        "sis job output:\n{log}"
    );

    let want = StoreReader::open(&reference).expect("reference store");
    let got = StoreReader::open(&store).expect("merged store");
    assert_eq!(want.len(), 128);
    assert_eq!(got.indices(), want.indices(), "every image exactly once");
    for i in want.indices() {
        let w = want.require(i).expect("reference record");
        let g = got.require(i).expect("merged record");
        assert_eq!(g.removal_step, w.removal_step, "image {i}: removal_step");
        assert_eq!(
            g.confidence_history, w.confidence_history,
            "image {i}: confidence_history"
        );
        assert_eq!(g, w, "image {i}: whole record");
    }
    eprintln!(
        "slurm test: {:.1} s; added workers' output:\n{}",
        t0.elapsed().as_secs_f64(),
        read(&workers_out)
    );
}
