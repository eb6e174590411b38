//! CPU lanes (`src/sis/lanes.rs`) on the small CNN trained on real Fashion-MNIST:
//! - a BackSelect split across two lanes equals, bit for bit, each part run on its own
//!   as a separate batch with one thread (computed here without lanes), and the second
//!   part's forwards ran on another thread with the lane's own copy of the model;
//! - `overinterp sis` fixes `--lanes auto` from `--threads`, records it in the store,
//!   keeps it when a resume runs with other threads, and refuses a resume that asks for
//!   another count.
//!
//! Agreement with the independent reference in lanes is in `tests/reference.rs`.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use common::cli::{run_ok, BIN};
use common::fmnist14;
use overinterp::models::{self, Classifier, ModelError};
use overinterp::sis::engine::BackSelectInput;
use overinterp::sis::exact::exact_backselect;
use overinterp::sis::gradient::gradient_backselect;
use overinterp::sis::lanes::in_lanes;
use overinterp::sis::{BackSelectTrace, Evaluator, Lane, Lanes, Objective, SisError};
use tch::{Device, Tensor};

type Threads = Arc<Mutex<HashSet<ThreadId>>>;

/// A copy of the fixture model that notes in `threads` which threads called its forward.
struct Recording {
    inner: Box<dyn Classifier>,
    threads: Threads,
}

impl Recording {
    fn load(threads: &Threads) -> Self {
        let inner = models::load_model(&fmnist14::model_path(), Device::Cpu, [1, 14, 14]).unwrap();
        Self {
            inner,
            threads: threads.clone(),
        }
    }
}

impl Classifier for Recording {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.threads
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        self.inner.forward(xs, train)
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn input_shape(&self) -> [i64; 3] {
        self.inner.input_shape()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

type Method = fn(&Evaluator, &BackSelectInput) -> Result<Vec<BackSelectTrace>, SisError>;

fn gradient_k4(
    eval: &Evaluator,
    input: &BackSelectInput,
) -> Result<Vec<BackSelectTrace>, SisError> {
    gradient_backselect(eval, input, Objective::LogOdds, 4, None)
}

/// Exact BackSelect's first 12 steps (the whole run is p²/2 forwards).
fn exact_12(eval: &Evaluator, input: &BackSelectInput) -> Result<Vec<BackSelectTrace>, SisError> {
    exact_backselect(eval, input, Objective::LogOdds, 64, Some(12))
}

fn input<'a>(
    xs: &'a Tensor,
    present: &'a [Vec<bool>],
    targets: &'a [i64],
    keys: &'a [u64],
) -> BackSelectInput<'a> {
    BackSelectInput {
        xs,
        present,
        targets,
        noise_keys: keys,
        images: keys,
    }
}

#[test]
fn two_lanes_compute_each_part_as_its_own_batch_on_its_own_thread() {
    // Five images: the parts are images 0..2 and 2..5.
    let indices: Vec<u64> = (0..5).collect();
    let xs = fmnist14::images(&indices);
    let main = Recording::load(&Threads::default());
    let present = vec![vec![true; 196]; 5];
    let targets: Vec<i64> = tch::no_grad(|| main.forward(&xs, false))
        .unwrap()
        .argmax(1, false)
        .try_into()
        .unwrap();
    let methods: [(&str, Method); 2] = [("gradient k=4", gradient_k4), ("exact", exact_12)];
    for (name, method) in methods {
        // Expected: each part alone, one thread, no lanes, in this thread.
        tch::set_num_threads(1);
        let alone = Evaluator::new(&main);
        let mut expected = Vec::new();
        for r in [0..2, 2..5] {
            let part = xs.narrow(0, r.start as i64, r.len() as i64);
            let inp = input(&part, &present[r.clone()], &targets[r.clone()], &indices[r]);
            expected.extend(method(&alone, &inp).unwrap());
        }
        let first = xs.narrow(0, 0, 1);
        let one = input(&first, &present[..1], &targets[..1], &indices[..1]);
        let expected_one = method(&alone, &one).unwrap().remove(0);
        let (main_threads, lane_threads) = (Threads::default(), Threads::default());
        let main = Recording::load(&main_threads);
        let lanes = Lanes::new(vec![Lane {
            model: Box::new(Recording::load(&lane_threads)),
            reduced: None,
        }]);
        tch::set_num_threads(2);
        let eval = Evaluator::new(&main).with_lanes(&lanes);
        let got = in_lanes(&eval, &input(&xs, &present, &targets, &indices), method).unwrap();
        assert_eq!(
            tch::get_num_threads(),
            2,
            "{name}: the caller's threads are restored"
        );
        assert_eq!(got.len(), 5);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.order, e.order, "{name}, image {i}: removal order");
            assert_eq!(g.block_ends, e.block_ends, "{name}, image {i}: blocks");
            assert_eq!(
                g.history, e.history,
                "{name}, image {i}: confidence history"
            );
        }
        // A single image in two lanes is computed with one thread, as alone.
        let single = in_lanes(&eval, &one, method).unwrap();
        assert_eq!(
            single[0].order, expected_one.order,
            "{name}: one image in lanes"
        );
        assert_eq!(
            single[0].history, expected_one.history,
            "{name}: one image in lanes"
        );
        // Who computed what: the caller's model on this thread only, the lane's copy
        // only on one other thread.
        let here = std::thread::current().id();
        assert_eq!(
            *main_threads.lock().unwrap(),
            HashSet::from([here]),
            "{name}: lane 0"
        );
        let other = lane_threads.lock().unwrap().clone();
        assert_eq!(other.len(), 1, "{name}: lane 1 ran on one thread");
        assert!(
            !other.contains(&here),
            "{name}: lane 1 ran on another thread"
        );
        eprintln!("{name}: 5 images in 2 lanes, identical to the parts run alone");
    }
}

/// `extra.lanes` in a store's meta, if it records one.
fn store_lanes(store: &std::path::Path) -> Option<String> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("meta.json")).unwrap()).unwrap();
    meta["extra"]["lanes"].as_str().map(String::from)
}

/// `overinterp sis` of gradient k=16 on the fixture into `store`, with `args`.
fn sis(store: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["sis", "--model", &fmnist14::model_path()])
        .args(["--data", &format!("fashion-mnist:{}", fmnist14::DATA)])
        .args(["--method", "gradient", "--k", "16", "--out"])
        .arg(store)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn auto_lanes_follow_threads_are_recorded_and_kept_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let ok = |mut cmd: Command| run_ok(&mut cmd, "overinterp sis");
    // --threads 2, lanes left to auto: two lanes, recorded.
    let two = dir.path().join("two");
    ok(sis(&two, &["--threads", "2", "--end", "4", "--batch", "4"]));
    assert_eq!(store_lanes(&two).as_deref(), Some("2"));
    // A resume with one thread keeps the store's two lanes, and computes the rest.
    ok(sis(&two, &["--threads", "1", "--end", "8", "--batch", "4"]));
    assert_eq!(store_lanes(&two).as_deref(), Some("2"));
    let records = overinterp::store::StoreReader::open(&two)
        .unwrap()
        .indices();
    assert_eq!(records, (0..8).collect::<Vec<u64>>());
    // Asking for one lane on that store is refused, naming what differs.
    let refused = sis(&two, &["--lanes", "1", "--end", "12", "--batch", "4"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("extra") && err.contains("lanes"), "{err}");
    // --threads 1: one lane, which stores record as before lanes existed (nothing).
    let one = dir.path().join("one");
    ok(sis(&one, &["--threads", "1", "--end", "4", "--batch", "4"]));
    assert_eq!(store_lanes(&one), None);
    // --batch caps the lanes: never more lanes than images in a mini-batch.
    let capped = dir.path().join("capped");
    ok(sis(
        &capped,
        &[
            "--lanes",
            "0",
            "--threads",
            "8",
            "--end",
            "4",
            "--batch",
            "3",
        ],
    ));
    assert_eq!(store_lanes(&capped).as_deref(), Some("3"));
}
