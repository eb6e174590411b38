//! The pipeline end to end on a synthetic dataset with a planted shortcut, written
//! in the real MNIST IDX format: each class lights up its own three pixels on a
//! noisy background, so those pixels alone decide the label.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::planted::planted;
use overinterp::store::StoreReader;

fn fixture() -> (tempfile::TempDir, PathBuf) {
    common::planted::fixture("")
}

fn pipeline(spec: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_overinterp"));
    c.arg("pipeline").arg(spec).env("RUST_LOG", "warn");
    c
}

fn stage_dir(out: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(out.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no stage {prefix} in {}", out.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn planted_shortcut_is_found_learned_and_reported() {
    let (dir, _) = fixture();
    let out = dir.path().join("out");
    let status = pipeline(&dir.path().join("spec.toml")).status().unwrap();
    assert!(status.success());

    // 1. BS subsets (1% of 784 = 8 pixels) hold the planted pixels of the label
    //    for most correctly classified test images.
    let store = StoreReader::open(stage_dir(&out, "sis-cnn-test").join("store")).unwrap();
    let (mut hits, mut total) = (0, 0);
    for rec in store.iter() {
        let rec = rec.unwrap();
        if rec.predicted != rec.label {
            continue;
        }
        let kept = store.top_fraction_pixels(rec.index, 0.01).unwrap();
        total += 1;
        if planted(rec.label as usize)
            .iter()
            .all(|p| kept.contains(&(*p as u32)))
        {
            hits += 1;
        }
    }
    assert!(
        total >= 100,
        "the model should classify most images correctly ({total} of 200)"
    );
    assert!(
        hits as f64 >= 0.8 * total as f64,
        "planted pixels in BS subsets of {hits} of {total} images"
    );

    // 2. Retrained on BS subsets ≫ retrained on random subsets (on their own test subsets).
    let analyses = json(&out.join("report/analyses.json"));
    let row = |train_on: &str| {
        analyses["table1"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["train_on"] == train_on)
            .unwrap()
            .clone()
    };
    let acc = |row: &serde_json::Value, col: &str| {
        row["eval_on"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == col)
            .unwrap()[1]["mean"]
            .as_f64()
            .unwrap()
    };
    let bs = acc(&row("BS 1%"), "BS 1% test");
    let random = acc(&row("Random 1%"), "Random 1% test");
    assert!(
        bs > 0.8 && random < 0.4 && bs - random > 0.4,
        "BS-trained {bs}, random-trained {random}"
    );

    // 3. Every Table 1 cell of report.md is "mean ± std (n)" of the stage outputs
    //    it came from (the evaluation stages of the original and retrained models),
    //    recomputed here from their done.json files.
    let report = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let mut groups: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for stage in std::fs::read_dir(out.join("stages")).unwrap() {
        let stage = stage.unwrap().path();
        let name = stage.file_name().unwrap().to_string_lossy().to_string();
        let group = if name.starts_with("eval-") {
            "original".to_string()
        } else if let Some(i) = name.find("-eval-") {
            // retrain-cnn-backselect-0-eval-HASH → retrain-cnn-backselect
            name[..i].rsplit_once('-').unwrap().0.to_string()
        } else {
            continue;
        };
        groups
            .entry(group)
            .or_default()
            .push(json(&stage.join("done.json")));
    }
    assert_eq!(groups.len(), 3, "{:?}", groups.keys());
    let mut row_cells = 0;
    for (group, evals) in &groups {
        let cells: Vec<String> = ["full", "backselect", "random"]
            .iter()
            .map(|view| {
                let xs: Vec<f64> = evals
                    .iter()
                    .map(|e| e[view]["top1"].as_f64().unwrap() * 100.0)
                    .collect();
                let n = xs.len() as f64;
                let mean = xs.iter().sum::<f64>() / n;
                let std = if xs.len() > 1 {
                    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                } else {
                    0.0
                };
                format!("{mean:.2} ± {std:.2} ({})", xs.len())
            })
            .collect();
        let row = format!("| {} |", cells.join(" | "));
        assert!(
            report.contains(&row),
            "{group}: row {row} is not in report.md"
        );
        row_cells += cells.len();
    }
    assert_eq!(row_cells, 9);
    let _ = dir;
}

#[test]
fn a_killed_pipeline_resumes_to_the_same_report() {
    let (dir, _) = fixture();
    let spec_path = dir.path().join("spec.toml");
    let out = dir.path().join("out");

    // Uninterrupted reference, in its own output directory.
    let reference = dir.path().join("reference.toml");
    std::fs::write(
        &reference,
        std::fs::read_to_string(&spec_path).unwrap().replace(
            &*out.to_string_lossy(),
            &dir.path().join("ref").to_string_lossy(),
        ),
    )
    .unwrap();
    assert!(pipeline(&reference).status().unwrap().success());

    // Kill -9 once the SIS stage of the training split has started.
    let mut child = pipeline(&spec_path).spawn().unwrap();
    let started = Instant::now();
    loop {
        let sis_started = std::fs::read_dir(out.join("stages")).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                e.file_name().to_string_lossy().starts_with("sis-cnn-train")
                    && e.path().join("store").exists()
            })
        });
        if sis_started || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "SIS stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(pipeline(&spec_path).status().unwrap().success());

    let normalize = |p: PathBuf| {
        std::fs::read_to_string(p)
            .unwrap()
            .replace(&*dir.path().to_string_lossy(), "")
    };
    let a = normalize(dir.path().join("ref/report/report.md"));
    let b = normalize(out.join("report/report.md"));
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("/ref") && !l.contains("/out"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&a), strip(&b));
}
