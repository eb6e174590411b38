//! Progress for logs: a SIS run whose stderr is a file (no terminal) writes progress
//! lines at the interval `OVERINTERP_PROGRESS_INTERVAL` sets — done/total, rate, ETA,
//! and for a leader each worker's throughput — with no ANSI escape codes; and
//! `status` on a job whose leader has exited reads the store instead of failing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::{fixture_model as model, sis_command, BIN, DATA};

/// Runs `cmd` with stderr into `log` (a file: not a terminal) and a 0.2 s progress
/// interval; returns the log.
fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> String {
    let file = std::fs::File::create(log).expect("log file");
    cmd.env("OVERINTERP_PROGRESS_INTERVAL", "0.2")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(file);
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = std::fs::read_to_string(log).expect("read log");
    assert!(status.success(), "{what} failed ({status}):\n{text}");
    text
}

/// Progress lines whose ETA is a duration (not "unknown": something was done).
fn progress_lines_with_eta(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("progress"))
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.starts_with("eta=") && w[4..].starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

#[test]
fn logs_without_a_terminal_carry_progress_lines_and_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());

    // Single process: `overinterp sis`.
    let log = run_logged(
        &mut sis_command(&model, &dir.path().join("store-sis")),
        &dir.path().join("sis.log"),
        "overinterp sis",
    );
    assert!(!log.contains('\x1b'), "escape codes in a log file:\n{log}");
    let lines = progress_lines_with_eta(&log);
    assert!(
        lines.len() >= 2,
        "fewer than 2 progress lines with an ETA:\n{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("done=") && l.contains("total=128") && l.contains("rate=")),
        "{lines:#?}"
    );

    // Leader + 2 workers: `overinterp run`, with each worker's throughput.
    let store = dir.path().join("store-run");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "model = \"{}\"\ndata = \"{DATA}\"\nsplit = \"test\"\nout = \"{}\"\ndevice = \"cpu\"\n\
             [sis]\nmethod = {{ kind = \"gradient\", k = 16 }}\nthresholds = [0.3]\n\
             batch_size = 8\ncandidate_batch = 256\ncollection = false\n",
            model.display(),
            store.display()
        ),
    )
    .unwrap();
    let log = run_logged(
        Command::new(BIN)
            .arg("run")
            .arg(&job)
            .args(["--local-workers", "2", "--shard-size", "8"]),
        &dir.path().join("run.log"),
        "overinterp run",
    );
    assert!(!log.contains('\x1b'), "escape codes in a log file:\n{log}");
    let lines = progress_lines_with_eta(&log);
    assert!(
        lines.len() >= 2,
        "fewer than 2 leader progress lines with an ETA:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("local-0 ") && l.contains("/s (") && l.contains("total=128")),
        "no per-worker throughput in the leader's lines:\n{lines:#?}"
    );

    // The leader has exited: `status` reads the store and says the job is complete.
    let job_dir = dir.path().join("store-run.job");
    let out = Command::new(BIN)
        .args(["status", "--json", "--job-dir"])
        .arg(&job_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status without a leader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["leader_running"], false, "{status}");
    assert_eq!(status["images_done"], 128, "{status}");
    assert_eq!(status["images_total"], 128, "{status}");
    assert_eq!(status["complete"], true, "{status}");
}
