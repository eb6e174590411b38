//! Loopback integration tests of the cluster runtime with real QUIC and real
//! `overinterp leader` / `overinterp worker` processes on a small real job: a
//! small CNN trained for one epoch on 300 Fashion-MNIST images, Batched Gradient
//! SIS (k = 16, one SIS per image) over 128 test images in 8-image shards with a
//! 3 s lease. Whatever is done to the processes (kill -9, SIGSTOP past the lease,
//! leader killed and restarted, workers added, a forged secret, SIGTERM), the
//! merged store must equal, image by image, the store of one uninterrupted
//! single-process `overinterp sis` run of the same job.
//!
//! The tests run one at a time (a process-wide lock): each starts three
//! processes, and the machine running them may have only two cores. Every wait is
//! bounded; progress is observed by polling the store, never by sleeping.
//! Needs Debian's Fashion-MNIST at /usr/share/datasets/fashion-mnist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use overinterp::store::StoreReader;

mod common;

use common::cli::{model_and_reference, sis_command, BIN, DATA};
const IMAGES: usize = 128;
/// Bound on any one job finishing once its disturbance is over.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The trained model and the reference store, made once per test binary.
struct Fixture {
    /// Keeps the directory alive for the whole run.
    _dir: tempfile::TempDir,
    model: PathBuf,
    reference: PathBuf,
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let (model, reference) = model_and_reference(dir.path());
        Fixture {
            _dir: dir,
            model,
            reference,
        }
    })
}

/// One test's files: job spec, store, job directory, process logs.
struct Case {
    dir: tempfile::TempDir,
    job: PathBuf,
    store: PathBuf,
    job_dir: PathBuf,
}

fn case() -> Case {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    let job_dir = dir.path().join("job");
    let job = dir.path().join("job.toml");
    let spec = format!(
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
        fx.model.display(),
        store.display()
    );
    std::fs::write(&job, spec).expect("write job.toml");
    Case {
        dir,
        job,
        store,
        job_dir,
    }
}

/// A child process killed (SIGKILL, then CONT in case it is stopped) when dropped,
/// so a failing test leaves nothing running.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            signal(&self.child, "CONT");
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

impl Proc {
    fn spawn(name: &str, case: &Case, mut cmd: Command) -> Self {
        let log = case.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit and returns its status.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                t0.elapsed() < timeout,
                "{} still running after {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "{} exited {status}; log:\n{}",
            self.name,
            self.log()
        );
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

fn leader(case: &Case, name: &str) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("leader")
        .arg("--job")
        .arg(&case.job)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shard-size",
            "8",
            "--lease-secs",
            "3",
        ])
        .arg("--out")
        .arg(&case.store)
        .arg("--job-dir")
        .arg(&case.job_dir);
    Proc::spawn(name, case, cmd)
}

fn worker(case: &Case, name: &str) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("worker")
        .arg("--job-dir")
        .arg(&case.job_dir)
        .args(["--threads", "1", "--name", name]);
    Proc::spawn(name, case, cmd)
}

/// Images durable in the store now (0 while it does not exist yet).
fn stored(store: &Path) -> usize {
    StoreReader::open(store).map_or(0, |r| r.len())
}

/// Polls until the store holds at least `n` images; fails after `timeout`,
/// showing the logs of `procs`.
fn wait_stored(store: &Path, n: usize, timeout: Duration, procs: &[&Proc]) -> usize {
    let t0 = Instant::now();
    loop {
        let have = stored(store);
        if have >= n {
            return have;
        }
        if t0.elapsed() > timeout {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.name, p.log()))
                .collect();
            panic!(
                "store {} holds {have} < {n} images after {timeout:?}\n{}",
                store.display(),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The merged store equals the reference, image by image.
fn assert_same_as_reference(store: &Path) {
    let fx = fixture();
    let want = StoreReader::open(&fx.reference).expect("reference store");
    let got = StoreReader::open(store).expect("merged store");
    assert_eq!(want.len(), IMAGES, "reference store size");
    assert_eq!(
        got.indices(),
        want.indices(),
        "the merged store must hold every image exactly once"
    );
    for i in want.indices() {
        let w = want.require(i).expect("reference record");
        let g = got.require(i).expect("merged record");
        assert_eq!(g.removal_step, w.removal_step, "image {i}: removal_step");
        assert_eq!(
            g.confidence_history, w.confidence_history,
            "image {i}: confidence_history"
        );
        assert_eq!(g.predicted, w.predicted, "image {i}: predicted");
        assert_eq!(g.confidence, w.confidence, "image {i}: confidence");
        assert_eq!(g.collections, w.collections, "image {i}: collections");
        assert_eq!(g, w, "image {i}: whole record");
    }
}

/// Number in `"... N <what>"` in a process's output, e.g. `N shard(s)`.
fn number_before(text: &str, what: &str) -> Option<u64> {
    let at = text.rfind(what)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

#[test]
fn kill9_worker_mid_shard() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader");
    let mut w1 = worker(&c, "w1");
    let mut w2 = worker(&c, "w2");
    wait_stored(&c.store, 16, JOB_TIMEOUT, &[&l, &w1, &w2]);
    w1.kill9();
    l.wait_success(JOB_TIMEOUT);
    w2.wait_success(JOB_TIMEOUT);
    assert_same_as_reference(&c.store);
}

#[test]
fn sigstop_worker_past_its_lease() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader");
    let mut w1 = worker(&c, "w1");
    let mut w2 = worker(&c, "w2");
    wait_stored(&c.store, 16, JOB_TIMEOUT, &[&l, &w1, &w2]);
    signal(&w2.child, "STOP");
    let stopped_at = Instant::now();
    let before = stored(&c.store);
    // The other worker goes on (three more shards) and the stopped one's lease
    // (3 s) runs out before it resumes; its late results are then duplicates.
    wait_stored(
        &c.store,
        (before + 24).min(IMAGES - 8),
        JOB_TIMEOUT,
        &[&l, &w1],
    );
    while stopped_at.elapsed() < Duration::from_secs(5) && stored(&c.store) < IMAGES {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&w2.child, "CONT");
    l.wait_success(JOB_TIMEOUT);
    w1.wait_success(JOB_TIMEOUT);
    // The resumed worker either finishes (job complete) or finds its connection
    // gone and the job complete; it must not hang.
    w2.wait(JOB_TIMEOUT);
    assert_same_as_reference(&c.store);
}

#[test]
fn kill9_leader_and_restart() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader1");
    let mut w1 = worker(&c, "w1");
    let mut w2 = worker(&c, "w2");
    wait_stored(&c.store, 24, JOB_TIMEOUT, &[&l, &w1, &w2]);
    l.kill9();
    let resumed_from = stored(&c.store);
    assert!(
        resumed_from < IMAGES,
        "the job ended before the leader was killed"
    );
    let mut l2 = leader(&c, "leader2");
    l2.wait_success(JOB_TIMEOUT);
    // The workers reconnected to the new leader (re-reading leader.addr).
    w1.wait_success(JOB_TIMEOUT);
    w2.wait_success(JOB_TIMEOUT);
    let log = l2.log();
    assert!(
        log.contains(&format!("{IMAGES} of {IMAGES} images")),
        "restarted leader's report: {log}"
    );
    assert_same_as_reference(&c.store);
}

#[test]
fn add_worker_mid_job() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader");
    let mut w1 = worker(&c, "w1");
    wait_stored(&c.store, 16, JOB_TIMEOUT, &[&l, &w1]);
    let mut w2 = worker(&c, "w2");
    l.wait_success(JOB_TIMEOUT);
    w1.wait_success(JOB_TIMEOUT);
    w2.wait_success(JOB_TIMEOUT);
    let late = w2.log();
    let shards = number_before(&late, "shard(s)").unwrap_or(0);
    assert!(
        shards >= 1,
        "the added worker did no shard; its log:\n{late}"
    );
    assert_same_as_reference(&c.store);
}

#[test]
fn wrong_secret_is_refused_and_job_completes() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader");
    let mut w1 = worker(&c, "w1");
    wait_stored(&c.store, 8, JOB_TIMEOUT, &[&l, &w1]);
    let mut forged = Command::new(BIN);
    forged
        .arg("worker")
        .arg("--job-dir")
        .arg(&c.job_dir)
        .args(["--threads", "1", "--name", "forged"])
        .env("OVERINTERP_SECRET", "not-the-secret");
    let mut bad = Proc::spawn("forged", &c, forged);
    let status = bad.wait(JOB_TIMEOUT);
    assert!(
        !status.success(),
        "a worker with a wrong secret must fail; log:\n{}",
        bad.log()
    );
    l.wait_success(JOB_TIMEOUT);
    w1.wait_success(JOB_TIMEOUT);
    let log = l.log();
    let refused = number_before(&log, "refused connection(s)");
    assert!(
        refused.is_some_and(|n| n >= 1),
        "the leader should report the refusal: {log}"
    );
    assert_same_as_reference(&c.store);
}

#[test]
fn sigterm_drains_worker_and_another_finishes() {
    let _g = serial();
    let c = case();
    let mut l = leader(&c, "leader");
    let mut w1 = worker(&c, "w1");
    wait_stored(&c.store, 16, JOB_TIMEOUT, &[&l, &w1]);
    signal(&w1.child, "TERM");
    w1.wait_success(Duration::from_secs(60));
    let log = w1.log();
    assert!(log.contains("Drained"), "w1 did not drain: {log}");
    assert!(
        stored(&c.store) < IMAGES,
        "the job ended before the drain mattered"
    );
    let mut w2 = worker(&c, "w2");
    l.wait_success(JOB_TIMEOUT);
    w2.wait_success(JOB_TIMEOUT);
    assert_same_as_reference(&c.store);
}

#[test]
fn sis_cli_killed_and_rerun_equals_uninterrupted() {
    let _g = serial();
    let fx = fixture();
    let c = case();
    let mut first = Proc::spawn("sis1", &c, sis_command(&fx.model, &c.store));
    wait_stored(&c.store, 16, JOB_TIMEOUT, &[&first]);
    first.kill9();
    let partial = stored(&c.store);
    assert!(partial < IMAGES, "the run ended before the kill");
    let mut second = Proc::spawn("sis2", &c, sis_command(&fx.model, &c.store));
    second.wait_success(JOB_TIMEOUT);
    assert_same_as_reference(&c.store);
}
