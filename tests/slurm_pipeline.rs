//! `overinterp pipeline --slurm` against a real Slurm (Debian's slurmctld/slurmd, three
//! emulated nodes on this host, a cluster of its own next to the shared one of
//! tests/slurm.rs): the planted-shortcut pipeline with retraining gangs of 2 ranks,
//! the replicates of each subset kind as a job array and SIS with 2 workers; the SIS
//! job of the training split is cancelled mid-stage and the rerun resumes it. The
//! report must equal an embedded run's with the same rank counts (2 local ranks, 2
//! local workers, one libtorch thread per process, so the arithmetic is the same:
//! no tolerance is needed, data-parallel BN and dropout included, since both runs'
//! gangs split batches and seed dropout the same way), the resumed store must equal
//! the embedded one image for image, and an embedded run over the Slurm run's output
//! must find every stage cached.
//!
//! The emulated nodes' names resolve to 127.0.0.1, so the gangs' ranks are told to
//! listen there (OVERINTERP_RING_HOST).
//!
//! Needs root (as tests/slurm.rs); without it the Slurm test fails unless
//! `OVERINTERP_SKIP_SLURM=1`. The other tests here need no Slurm.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cli::BIN;
use common::slurm::SlurmCluster;
use overinterp::store::StoreReader;

/// The `[slurm]` table of the test spec.
const SLURM_SETTINGS: &str = r#"
[slurm]
sbatch = ["--time=20"]

[slurm.train]
nodes = 2
env = { OVERINTERP_RING_HOST = "127.0.0.1" }

[slurm.retrain]
nodes = 2
env = { OVERINTERP_RING_HOST = "127.0.0.1" }

[slurm.sis]
nodes = 2
env = { OVERINTERP_LEASE_SECS = "10" }
"#;

/// The planted-shortcut fixture with the `[slurm]` table and 2 local ranks per
/// training stage (the Slurm gangs' size); returns the dir and the spec.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let (dir, _) = common::planted::fixture(SLURM_SETTINGS);
    let spec = dir.path().join("spec.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains("local_workers = 2\n"));
    std::fs::write(
        &spec,
        text.replace(
            "local_workers = 2\n",
            "local_workers = 2\nlocal_ranks = 2\n",
        ),
    )
    .unwrap();
    (dir, spec)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn may_run() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("OVERINTERP_SKIP_SLURM").as_deref() == Ok("1") {
        eprintln!("skipped: not root and OVERINTERP_SKIP_SLURM=1");
        return false;
    }
    panic!("the Slurm tests need root; set OVERINTERP_SKIP_SLURM=1 to skip them");
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `overinterp pipeline SPEC --out OUT --threads 1 ARGS...`, talking to `cluster`.
fn pipeline(cluster: Option<&SlurmCluster>, spec: &Path, out: &Path, args: &[&str]) -> Output {
    let mut cmd = match cluster {
        Some(c) => c.command(BIN),
        None => Command::new(BIN),
    };
    cmd.arg("pipeline")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1"])
        .args(args)
        .env("RUST_LOG", "warn")
        // The jobs find slurm/*.sbatch from the repository root.
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.output().expect("running overinterp pipeline")
}

fn ok(out: Output, what: &str) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{what} failed ({}):\n{t}", out.status);
    t
}

fn jobs_json(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("slurm/jobs.json")).expect("jobs.json"))
        .expect("jobs.json is JSON")
}

fn job_of(out: &Path, unit: &str) -> u64 {
    jobs_json(out)["units"][unit]["job"]
        .as_u64()
        .unwrap_or_else(|| {
            panic!(
                "no job for {unit} in {}",
                out.join("slurm/jobs.json").display()
            )
        })
}

fn stage_dir(out: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(out.join("stages"))
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.len() == 13 && rest.starts_with('-'))
        })
}

/// Stage directory names and their done.json modification times.
fn stage_snapshot(out: &Path) -> Vec<(String, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(out.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let t = std::fs::metadata(p.join("done.json"))
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{}: no done.json: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().to_string(), t)
        })
        .collect();
    v.sort();
    v
}

/// report.md without the lines naming the output directory (the spec's text).
/// What differs between two runs' stores of stage `prefix`: the models' hashes and
/// the indices whose records differ.
fn compare_stores(a: &Path, b: &Path, prefix: &str) -> String {
    let open = |out: &Path| StoreReader::open(stage_dir(out, prefix)?.join("store")).ok();
    let (Some(x), Some(y)) = (open(a), open(b)) else {
        return format!("{prefix}: a store is missing");
    };
    let differ: Vec<u64> = x
        .indices()
        .into_iter()
        .filter(|&i| x.get(i).ok().flatten() != y.get(i).ok().flatten())
        .collect();
    format!(
        "model sha256 {} vs {}; {} of {} records differ (first: {:?})",
        x.meta().model_sha256,
        y.meta().model_sha256,
        differ.len(),
        x.len(),
        &differ[..differ.len().min(10)]
    )
}

fn report(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("report/report.md")).expect("report.md");
    let dir = out.parent().unwrap().to_string_lossy().to_string();
    text.lines()
        .filter(|l| !l.contains(&dir))
        .collect::<Vec<_>>()
        .join("\n")
}

/// sacct's job-completion records (`sacct -c`, from jobcomp/filetxt: the test
/// cluster has no slurmdbd) as (job id, name, nodes, state).
fn sacct(cluster: &SlurmCluster) -> Vec<(u64, String, usize, String)> {
    let out = cluster
        .command("sacct")
        .args(["-c", "-n", "-P", "-o", "JobID,JobName,NNodes,State"])
        .output()
        .expect("running sacct");
    assert!(out.status.success(), "sacct -c failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.to_string(),
            ))
        })
        .collect()
}

/// The array job of each finished array task, from the records sacct -c reads.
fn array_tasks(conf: &Path, array_job: u64) -> Vec<u64> {
    let jobcomp = conf.with_file_name("jobcomp.txt");
    let text = std::fs::read_to_string(&jobcomp).expect("jobcomp.txt");
    let mut tasks: Vec<u64> = text
        .lines()
        .filter(|l| {
            l.contains(&format!(" ArrayJobId={array_job} ")) && l.contains("JobState=COMPLETED")
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("ArrayTaskId="))
                .and_then(|t| t.parse().ok())
        })
        .collect();
    tasks.sort();
    tasks
}

#[test]
fn planted_pipeline_on_slurm_equals_embedded_and_resumes_a_cancelled_sis_stage() {
    if !may_run() {
        return;
    }
    let t0 = Instant::now();
    let cluster = SlurmCluster::up_at(3, Path::new("/tmp/overinterp-slurm-pipeline"), 6917)
        .unwrap_or_else(|e| panic!("starting Slurm: {e}"));
    let (dir, spec) = fixture();
    // The test cluster's job-completion records outlive a run: count only this run's.
    let earlier_jobs = sacct(&cluster).iter().map(|r| r.0).max().unwrap_or(0);

    // The reference: an embedded run with the same rank and worker counts.
    let reference = dir.path().join("embedded");
    ok(pipeline(None, &spec, &reference, &[]), "embedded pipeline");
    let t_embedded = t0.elapsed();

    // Submit everything, then cancel the SIS job of the training split mid-stage.
    let out = dir.path().join("slurm");
    let submitted = ok(
        pipeline(Some(&cluster), &spec, &out, &["--slurm"]),
        "pipeline --slurm",
    );
    let sis_job = job_of(&out, "sis-cnn-train");
    let deadline = Instant::now() + Duration::from_secs(240);
    let stored_at_cancel = loop {
        let stored = stage_dir(&out, "sis-cnn-train")
            .and_then(|d| StoreReader::open(d.join("store")).ok())
            .map_or(0, |r| r.len());
        if stored >= 64 {
            assert!(
                stored < 600,
                "the SIS stage finished before it could be cancelled"
            );
            cluster
                .scancel(sis_job, &[])
                .unwrap_or_else(|e| panic!("{e}"));
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "the SIS stage of the training split never stored 64 images; submission:\n{submitted}\nstatus:\n{}",
            text(&pipeline(Some(&cluster), &spec, &out, &["--status"]))
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let state = cluster
        .wait(sis_job, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("sis job {sis_job}: {e}"));
    assert_eq!(state, "CANCELLED");
    let status = ok(
        pipeline(Some(&cluster), &spec, &out, &["--status"]),
        "--status",
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("sis-cnn-train ") && l.contains("CANCELLED")),
        "--status does not show the cancelled SIS stage:\n{status}"
    );
    let stranded = job_of(&out, "retrain-cnn-backselect");
    let before = StoreReader::open(stage_dir(&out, "sis-cnn-train").unwrap().join("store"))
        .unwrap()
        .len();
    assert!(before >= stored_at_cancel && before < 600);

    // The rerun cancels the stranded dependents, resubmits from the caches and waits.
    let rerun = ok(
        pipeline(
            Some(&cluster),
            &spec,
            &out,
            &["--slurm", "--wait", "--poll", "1"],
        ),
        "pipeline --slurm --wait (rerun)",
    );
    assert!(
        rerun.contains(&format!("cancelled job {stranded} (stranded)")),
        "the rerun did not cancel the stranded retraining array:\n{rerun}"
    );
    assert!(
        rerun
            .lines()
            .any(|l| l.starts_with("train-cnn ") && l.contains("done")),
        "training was not reused:\n{rerun}"
    );
    let resumed_job = job_of(&out, "sis-cnn-train");
    assert_ne!(resumed_job, sis_job);
    let sis_log =
        std::fs::read_to_string(out.join(format!("slurm/logs/sis-cnn-train-{resumed_job}.out")))
            .expect("log of the resumed SIS job");
    // Its workers computed only the images the cancelled job had not stored.
    let computed: usize = sis_log
        .lines()
        .filter_map(|l| l.strip_prefix("worker done ("))
        .filter_map(|l| {
            l.split("shard(s), ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(sis_log.contains("job done: 600 of 600 images"), "{sis_log}");
    assert_eq!(
        computed,
        600 - before,
        "the resubmitted SIS job did not resume the {before} stored images:\n{sis_log}"
    );

    // Same numbers as the embedded run, all of them: the gangs compute with the same
    // thread count, and SIS mini-batches are fixed by image index, so the cancelled
    // and resumed store is image for image the embedded one.
    let (ours, theirs) = (report(&out), report(&reference));
    assert_eq!(
        ours,
        theirs,
        "report.md differs from the embedded run's; the test stores: {}; the training-split stores: {}",
        compare_stores(&out, &reference, "sis-cnn-test"),
        compare_stores(&out, &reference, "sis-cnn-train")
    );
    let row = ours
        .lines()
        .find(|l| l.starts_with("| cnn | BS 1% |"))
        .expect("BS row");
    let bs_on_bs: f64 = row
        .split('|')
        .nth(4)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        bs_on_bs > 60.0,
        "BS-retrained models lost the planted shortcut: {row}"
    );
    let store =
        |d: &Path| StoreReader::open(stage_dir(d, "sis-cnn-train").unwrap().join("store")).unwrap();
    let (a, b) = (store(&out), store(&reference));
    let differing = (0..600u64)
        .filter(|&i| a.require(i).unwrap() != b.require(i).unwrap())
        .count();
    assert_eq!(
        differing, 0,
        "the resumed training-split store differs from the embedded run's in {differing} of 600 images"
    );

    // Gangs and arrays as sacct -c records them.
    let records: Vec<_> = sacct(&cluster)
        .into_iter()
        .filter(|r| r.0 > earlier_jobs)
        .collect();
    let named = |name: &str| -> Vec<&(u64, String, usize, String)> {
        records
            .iter()
            .filter(|r| r.1 == format!("overinterp-{name}"))
            .collect()
    };
    for (name, nodes) in [("train-cnn", 2), ("sis-cnn-test", 2)] {
        let runs = named(name);
        assert!(
            runs.iter().any(|r| r.2 == nodes && r.3 == "COMPLETED"),
            "{name}: no COMPLETED job on {nodes} nodes in sacct -c: {runs:?}"
        );
    }
    for kind in ["backselect", "random"] {
        let unit = format!("retrain-cnn-{kind}");
        let runs = named(&unit);
        let done: Vec<_> = runs.iter().filter(|r| r.3 == "COMPLETED").collect();
        assert_eq!(
            done.len(),
            2,
            "{unit}: two COMPLETED replicates in sacct -c: {runs:?}"
        );
        assert!(
            done.iter().all(|r| r.2 == 2),
            "{unit}: each replicate a gang on 2 nodes: {runs:?}"
        );
        let array = job_of(&out, &unit);
        assert_eq!(
            array_tasks(cluster.conf(), array),
            vec![0, 1],
            "{unit}: one array, tasks 0 and 1"
        );
        let log =
            std::fs::read_to_string(out.join(format!("slurm/logs/{unit}-{array}_1.out"))).unwrap();
        assert!(
            log.contains("attempt 1: 2 node(s)"),
            "{unit}: gang of 2:\n{log}"
        );
    }

    // An embedded run over the Slurm run's output finds every stage cached.
    let stages = stage_snapshot(&out);
    let embedded_stages: Vec<String> = stage_snapshot(&reference)
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(stages.len(), embedded_stages.len());
    ok(
        pipeline(None, &spec, &out, &[]),
        "embedded pipeline over the Slurm output",
    );
    assert_eq!(
        stage_snapshot(&out),
        stages,
        "an embedded rerun redid a stage"
    );
    eprintln!(
        "slurm pipeline test: {:.1} s (embedded reference {:.1} s); {stored_at_cancel} images stored at the cancel, {before} resumed",
        t0.elapsed().as_secs_f64(),
        t_embedded.as_secs_f64()
    );
}

#[test]
fn dry_run_prints_the_jobs_and_their_dependencies() {
    let (dir, spec) = fixture();
    common::planted::add_corrupted(dir.path());
    let out = dir.path().join("out");
    let script = ok(
        pipeline(None, &spec, &out, &["--slurm", "--dry-run"]),
        "--dry-run",
    );
    let line = |unit: &str| -> String {
        script
            .lines()
            .find(|l| l.starts_with(&format!("JOB_{}=", unit.replace('-', "_"))))
            .unwrap_or_else(|| panic!("no job for {unit} in:\n{script}"))
            .to_string()
    };
    let train = line("train-cnn");
    assert!(
        train.contains("--nodes=2") && train.contains("train.sbatch pipeline"),
        "{train}"
    );
    assert!(!train.contains("--dependency"), "{train}");
    let sis = line("sis-cnn-train");
    assert!(sis.contains("--dependency=afterok:$JOB_train_cnn"), "{sis}");
    assert!(
        sis.contains("--requeue") && sis.contains("sis.sbatch"),
        "{sis}"
    );
    let corrupted = line("sis-cnn-corrupted");
    assert!(
        corrupted.contains("--dependency=afterok:$JOB_train_cnn")
            && corrupted.contains("sis.sbatch"),
        "{corrupted}"
    );
    let retrain = line("retrain-cnn-random");
    assert!(
        retrain.contains("--array=0,1") && retrain.contains("retrain-cnn-random-{task}"),
        "{retrain}"
    );
    let report = line("report");
    for unit in [
        "eval-cnn",
        "sis-cnn-corrupted",
        "retrain-cnn-backselect-eval",
        "retrain-cnn-random-eval",
    ] {
        assert!(
            report.contains(&format!("$JOB_{}", unit.replace('-', "_"))),
            "{report}"
        );
    }
    assert!(!out.join("stages").exists(), "a dry run ran a stage");
}

#[test]
fn a_bad_threshold_stops_the_pipeline_before_any_stage() {
    let (dir, _) = common::planted::fixture("");
    let spec = dir.path().join("spec.toml");
    let bad = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("threshold = 0.9", "threshold = 1.5");
    std::fs::write(&spec, bad).unwrap();
    let out = dir.path().join("out");
    for args in [&[][..], &["--slurm", "--dry-run"][..]] {
        let t = Instant::now();
        let result = pipeline(None, &spec, &out, args);
        let t = t.elapsed();
        let msg = text(&result);
        assert!(!result.status.success(), "{args:?}: accepted threshold 1.5");
        assert!(
            msg.contains("threshold = 1.5 is not in (0, 1]"),
            "{args:?}: {msg}"
        );
        assert!(!out.exists(), "{args:?}: wrote {} ({t:?})", out.display());
    }
}
