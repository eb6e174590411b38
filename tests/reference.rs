//! The SIS engine against an independent implementation: `scripts/reference_sis.py`,
//! plain PyTorch written from the papers' pseudo-code, sharing no code with `src/sis`.
//!
//! On a small CNN trained on real Fashion-MNIST (14×14, `scripts/make-reference-fixture`)
//! and real test images:
//! - exact BackSelect: removal orders identical up to the first step whose two best
//!   candidates' `L` differ by less than 1e-6 (the reference reports that step; it is
//!   printed), and every SIS of every collection identical where no near-tie occurred;
//! - Batched Gradient BackSelect (k = 4): removal steps and in-block ranks identical up
//!   to the first near-tie (two deciding scores within 1e-5, where the two sides'
//!   independent tie-break noises may decide), collections likewise.
//!
//! And one model whose SIS collection is known by hand (see the fixture script), on both
//! sides, so a misreading shared by the two implementations cannot pass.

use std::process::Command;
use std::sync::atomic::AtomicBool;

use overinterp::data::{self, ImageSource, Split};
use overinterp::models;
use overinterp::sis::{run_sis_with, ImageSis, Lane, Lanes, Method, SisParams};
use serde_json::Value;
use tch::Device;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture(path: &str) -> String {
    format!("{ROOT}/tests/fixtures/{path}")
}

/// Our engine, in process: one record per index, each BackSelect split across
/// `params.lanes` CPU lanes (a copy of the model for each lane beyond the first).
fn ours(model: &str, data_dir: &str, indices: &[u64], params: SisParams) -> Vec<ImageSis> {
    tch::set_num_threads(1);
    let spec: data::DatasetSpec = format!("fashion-mnist:{}", fixture(data_dir))
        .parse()
        .unwrap();
    let source: Box<dyn ImageSource> = data::open_dataset(&spec, Split::Test).unwrap();
    let [c, h, w] = source.shape();
    let load = || {
        models::load_model(&fixture(model), Device::Cpu, [c as i64, h as i64, w as i64]).unwrap()
    };
    let lanes = Lanes::new(
        (1..params.lanes)
            .map(|_| Lane {
                model: load(),
                reduced: None,
            })
            .collect(),
    );
    let model = load();
    let mut out = Vec::new();
    run_sis_with(
        model.as_ref(),
        None,
        &lanes,
        source.as_ref(),
        indices,
        &params,
        |r| {
            out.push(r);
            Ok::<_, std::io::Error>(())
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    out
}

/// The reference script's JSON for the same run.
fn reference(model: &str, data_dir: &str, indices: &[u64], args: &[&str]) -> Value {
    let out = tempfile::NamedTempFile::new().unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let list: Vec<String> = indices.iter().map(u64::to_string).collect();
    let run = Command::new(&python)
        .arg(format!("{ROOT}/scripts/reference_sis.py"))
        .args(["--model", &fixture(model), "--images", &fixture(data_dir)])
        .args(["--indices", &list.join(","), "--threads", "1"])
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (source scripts/env first): {e}"));
    assert!(
        run.status.success(),
        "reference_sis.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Our collection for threshold `tau` as sorted pixel lists, and the reference's.
fn collections(rec: &ImageSis, refr: &Value, tau: f32) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, bool) {
    let ours = rec
        .collections
        .iter()
        .find(|c| c.threshold == tau)
        .map(|c| c.sis.clone())
        .unwrap_or_default();
    let r = &refr["collections"][format!("{tau}")];
    let theirs: Vec<Vec<u32>> = serde_json::from_value(r["sis"].clone()).unwrap();
    (ours, theirs, r["near_tie"].as_bool().unwrap())
}

/// Compares one method's records with the reference's; returns (images whose whole
/// order matched, collections compared).
fn compare(method: &str, recs: &[ImageSis], refr: &Value, k: usize, tau: f32) -> (usize, usize) {
    let images = refr["images"].as_array().unwrap();
    assert_eq!(images.len(), recs.len());
    let (mut whole, mut compared) = (0, 0);
    for (rec, r) in recs.iter().zip(images) {
        assert_eq!(r["index"], rec.index);
        assert_eq!(r["predicted"], rec.predicted, "image {}", rec.index);
        let conf = r["confidence"].as_f64().unwrap() as f32;
        assert!(
            (conf - rec.confidence).abs() <= 1e-6,
            "image {}: f(x)",
            rec.index
        );
        let steps = rec.confidence_history.len();
        let tie = r["first_near_tie"].as_u64().map(|t| t as usize);
        let agree = tie.unwrap_or(steps);
        // Blocks 0..agree are comparable: pixel by pixel in removal order.
        let order = rec.removal_order();
        let ref_order = u32s(&r["order"]);
        let n = (agree * k).min(order.len());
        assert_eq!(
            order[..n],
            ref_order[..n],
            "{method}, image {}: orders differ before the first near-tie (step {agree})",
            rec.index
        );
        let hist: Vec<f32> = serde_json::from_value(r["confidence_history"].clone()).unwrap();
        let pairs = hist.iter().zip(&rec.confidence_history).take(agree);
        for (s, (theirs, mine)) in pairs.enumerate() {
            assert!(
                (theirs - mine).abs() <= 1e-5,
                "{method}, image {} step {s}: f {mine} vs {theirs}",
                rec.index
            );
        }
        whole += usize::from(tie.is_none());
        let (mine, theirs, near) = collections(rec, r, tau);
        if !near && tie.is_none() {
            assert_eq!(
                mine, theirs,
                "{method}, image {}: SIS collection",
                rec.index
            );
            compared += 1;
        }
        eprintln!(
            "{method} image {}: first near-tie at step {} of {steps} ({}); \
             collection at τ={tau}: {} SIS, {}",
            rec.index,
            tie.map_or("none".into(), |t| t.to_string()),
            if tie.is_none() {
                "whole order identical"
            } else {
                "identical before it"
            },
            mine.len(),
            if !near && tie.is_none() {
                "identical to the reference"
            } else {
                "not compared: a near-tie in some round"
            }
        );
    }
    (whole, compared)
}

const CNN: &str = "models/fmnist14_cnn.pt";
const IMAGES: &str = "fmnist14";

#[test]
fn exact_backselect_and_collections_match_the_reference() {
    let indices = [0u64, 1, 2, 3];
    let tau = 0.9f32;
    let refr = reference(
        CNN,
        IMAGES,
        &indices,
        &["--method", "exact", "--thresholds", "0.9"],
    );
    // One lane, and each BackSelect split across two (the CPU lanes lever).
    for lanes in [1, 2] {
        let recs = ours(
            CNN,
            IMAGES,
            &indices,
            SisParams {
                thresholds: vec![tau],
                lanes,
                ..SisParams::default()
            },
        );
        let (whole, compared) = compare(&format!("exact, {lanes} lane(s)"), &recs, &refr, 1, tau);
        eprintln!(
            "exact, {lanes} lane(s): {whole} of {} orders identical throughout; {compared} \
             collections compared ({} reference forwards in {:.1} s)",
            recs.len(),
            refr["forwards"],
            refr["seconds"].as_f64().unwrap()
        );
        // The comparison must have had something to compare.
        assert!(compared >= 1 && recs.iter().any(|r| !r.collections[0].sis.is_empty()));
    }
}

#[test]
fn gradient_backselect_and_collections_match_the_reference() {
    let indices: Vec<u64> = (0..8).collect();
    let tau = 0.9f32;
    let refr = reference(
        CNN,
        IMAGES,
        &indices,
        &["--method", "gradient", "--k", "4", "--thresholds", "0.9"],
    );
    for lanes in [1, 2] {
        let recs = ours(
            CNN,
            IMAGES,
            &indices,
            SisParams {
                method: Method::Gradient { k: 4 },
                thresholds: vec![tau],
                lanes,
                ..SisParams::default()
            },
        );
        let what = format!("gradient k=4, {lanes} lane(s)");
        let (whole, compared) = compare(&what, &recs, &refr, 4, tau);
        eprintln!(
            "{what}: {whole} of {} orders identical throughout; {compared} collections compared",
            recs.len()
        );
        assert!(whole >= 1 && compared >= 1);
    }
}

#[test]
fn hand_model_sis_known_by_hand_on_both_sides() {
    // Derivation in scripts/make-reference-fixture: A = {8, 21, 27} alone gives
    // f = 0.983, B = {4, 15, 33} alone 0.978 (with A masked), two pixels of a group
    // f < 0.5; so at τ = 0.9 the collection is [A, B] for exact and gradient alike.
    let model = "models/hand_group6.pt";
    let want = vec![vec![8u32, 21, 27], vec![4, 15, 33]];
    for (method, args) in [
        (Method::Exact, vec!["--method", "exact"]),
        (
            Method::Gradient { k: 3 },
            vec!["--method", "gradient", "--k", "3"],
        ),
    ] {
        let recs = ours(
            model,
            "hand6",
            &[0],
            SisParams {
                method,
                thresholds: vec![0.9],
                ..SisParams::default()
            },
        );
        assert_eq!(recs[0].collections[0].sis, want, "ours, {method:?}");
        let mut args = args;
        args.extend(["--thresholds", "0.9"]);
        let refr = reference(model, "hand6", &[0], &args);
        let r = &refr["images"][0]["collections"]["0.9"]["sis"];
        let theirs: Vec<Vec<u32>> = serde_json::from_value(r.clone()).unwrap();
        assert_eq!(theirs, want, "reference, {method:?}");
        // f(x) = σ(4·0.5·v), v = (1 − 0.2860)/0.3530, on both sides.
        let v = (1.0f64 - 0.2860) / 0.3530;
        let f = 1.0 / (1.0 + (-2.0 * v).exp());
        assert!((f64::from(recs[0].confidence) - f).abs() < 1e-5);
        assert!((refr["images"][0]["confidence"].as_f64().unwrap() - f).abs() < 1e-5);
    }
}
