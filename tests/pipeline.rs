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

    // 3. Every Table 1 cell of report.md is recomputed here from the evaluation
    //    stages' done.json files: one model → accuracy [Wilson 95% interval over the
    //    test images]; two replicates → mean (min–max). The mask-only control has no
    //    full-image cell; every row has the agreement with the original model.
    let report = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let groups = eval_groups(&out);
    assert_eq!(
        groups.keys().collect::<Vec<_>>(),
        [
            "original",
            "retrain-cnn-backselect",
            "retrain-cnn-maskonly",
            "retrain-cnn-random"
        ]
    );
    let train_on = |g: &str| match g {
        "original" => "Full",
        "retrain-cnn-backselect" => "BS 1%",
        "retrain-cnn-random" => "Random 1%",
        _ => "Mask of BS 1% (control)",
    };
    for (group, evals) in &groups {
        let proportion = |k: &str, view: &str| -> Vec<(f64, f64)> {
            evals
                .iter()
                .map(|e| {
                    (
                        e[view][k].as_f64().unwrap(),
                        e[view]["images"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        let mut cells = Vec::new();
        if group != "retrain-cnn-maskonly" {
            cells.push(cell(&proportion("correct", "full")));
        } else {
            cells.push("—".to_string());
        }
        cells.push(cell(&proportion("correct", "backselect")));
        cells.push(cell(&proportion("correct", "random")));
        cells.push(cell(&proportion("agree", "backselect")));
        let row = format!("| cnn | {} | {} |", train_on(group), cells.join(" | "));
        assert!(
            report.contains(&row),
            "{group}: row {row} is not in report.md:\n{report}"
        );
    }

    // 4. Agreement, checked against an independent evaluation: `overinterp eval` of
    //    the first BS-retrained replicate on the BS test subsets, its predictions
    //    compared here with the original model's (the SIS targets in the store).
    let csv = dir.path().join("bs0.csv");
    let test_store = stage_dir(&out, "sis-cnn-test").join("store");
    let status = Command::new(env!("CARGO_BIN_EXE_overinterp"))
        .args(["eval", "--model"])
        .arg(
            std::fs::read_dir(out.join("stages"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().to_string();
                    n.starts_with("retrain-cnn-backselect-0-") && !n.contains("-eval")
                })
                .unwrap(),
        )
        .arg("--data")
        .arg(format!("mnist:{}", dir.path().join("data").display()))
        .arg("--masks")
        .arg(format!("backselect:{}:0.01", test_store.display()))
        .arg("--predictions")
        .arg(&csv)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let original: std::collections::HashMap<u64, i64> = store
        .iter()
        .map(|r| r.unwrap())
        .map(|r| (r.index, r.predicted))
        .collect();
    let agree = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            original[&f[0].parse::<u64>().unwrap()] == f[2].parse::<i64>().unwrap()
        })
        .count();
    let bs0 = json(&stage_dir(&out, "retrain-cnn-backselect-0-eval").join("done.json"));
    assert_eq!(bs0["backselect"]["agree"].as_u64().unwrap() as usize, agree);

    // 5. The planted pixels' positions alone decide the label, so the mask-only
    //    control learns it from the BS masks' shape: the findings say the shape
    //    explains (acc_mask − 1/C) / (acc_BS − 1/C) of the BS accuracy, computed
    //    here from the table's means.
    let mask = acc(&row("Mask of BS 1% (control)"), "BS 1% test");
    assert!(mask > 0.3, "mask-only control reached {mask} (chance 0.1)");
    let share = (mask - 0.1) / (bs - 0.1);
    let sentence = format!(
        "the shape alone explains {:.2}% of the BS accuracy above chance",
        100.0 * share
    );
    assert!(
        report.contains(&sentence),
        "no \"{sentence}\" in the findings"
    );

    // 6. The subsets' stability between two noise seeds is reported.
    let st = &analyses["stability"][0];
    assert_eq!(st["jaccard"]["n"], 200);
    assert!(report.contains("Stability of the backselect subsets"));
    let _ = dir;
}

/// The evaluation stages' results by group: `original` and `retrain-cnn-<kind>`.
fn eval_groups(out: &Path) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
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
    groups
}

/// A Table 1 cell from (successes, images) per replicate, computed independently of
/// the report code: one → `p [lo, hi]` (Wilson score interval, z = 1.959964), two →
/// `mean (min–max)`, all in percent with two decimals.
fn cell(xs: &[(f64, f64)]) -> String {
    let ps: Vec<f64> = xs.iter().map(|(k, n)| k / n).collect();
    match xs {
        [(k, n)] => {
            let (p, z) = (k / n, 1.959964f64);
            let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
            let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
            format!(
                "{:.2} [{:.2}, {:.2}]",
                100.0 * p,
                100.0 * (centre - half).max(0.0),
                100.0 * (centre + half).min(1.0)
            )
        }
        [_, _] => {
            let mean = (ps[0] + ps[1]) / 2.0;
            format!(
                "{:.2} ({:.2}–{:.2})",
                100.0 * mean,
                100.0 * ps[0].min(ps[1]),
                100.0 * ps[0].max(ps[1])
            )
        }
        _ => panic!("the spec has 2 replicates"),
    }
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
