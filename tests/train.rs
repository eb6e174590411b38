//! Training on one node: learnability, checkpoints, resume.

mod common;

use common::{Mlp, Synthetic};
use overinterp::train::{self, eval, StepSchedule, TrainConfig, TrainJob};
use tch::Tensor;

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        schedule: StepSchedule {
            lr: 0.05,
            milestones: vec![6],
            gamma: 0.2,
        },
        augment: false,
        ..TrainConfig::default()
    }
}

fn run(
    model: &mut Mlp,
    data: &Synthetic,
    epochs: usize,
    dir: &std::path::Path,
) -> Vec<train::EpochMetrics> {
    train::train(TrainJob {
        model,
        model_config: serde_json::json!({"arch": "test-mlp"}),
        train_set: data,
        train_masks: None,
        test_set: None,
        test_masks: None,
        config: config(epochs),
        out_dir: dir.to_path_buf(),
    })
    .expect("training runs")
}

#[test]
fn tiny_model_learns_a_planted_pixel_to_near_perfect_accuracy() {
    let data = Synthetic::planted(512, 4, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut model = Mlp::new([1, 4, 4], 4, 0);
    let before = eval::evaluate(&model, &data, None, 128).unwrap().top1;
    let metrics = run(&mut model, &data, 8, dir.path());
    let after = eval::evaluate(&model, &data, None, 128).unwrap().top1;
    assert!(
        before < 0.5,
        "an untrained model is near chance (0.25), got {before}"
    );
    assert!(after >= 0.98, "trained accuracy {after}");
    assert_eq!(metrics.len(), 8);
    // The metrics file has one JSON line per epoch.
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8);
}

#[test]
fn checkpoint_reload_gives_identical_logits() {
    let data = Synthetic::planted(128, 4, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut model = Mlp::new([1, 4, 4], 4, 0);
    run(&mut model, &data, 2, dir.path());
    let mut fresh = Mlp::new([1, 4, 4], 4, 99);
    fresh.vs.load(dir.path().join("model.safetensors")).unwrap();
    let (xs, _) = overinterp::data::batch(&data, &[0, 1, 2, 3], tch::Device::Cpu).unwrap();
    let a = train::logits(&model, &xs).unwrap();
    let b = train::logits(&fresh, &xs).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(),
        Vec::<f32>::try_from(b.flatten(0, -1)).unwrap()
    );
}

#[test]
fn resume_continues_from_the_saved_epoch_and_equals_an_uninterrupted_run() {
    let data = Synthetic::planted(256, 4, 3);
    let straight = tempfile::tempdir().unwrap();
    let mut a = Mlp::new([1, 4, 4], 4, 0);
    run(&mut a, &data, 4, straight.path());

    let resumed = tempfile::tempdir().unwrap();
    let mut b = Mlp::new([1, 4, 4], 4, 0);
    run(&mut b, &data, 2, resumed.path());
    // A new process would rebuild the model from scratch: different initial weights.
    let mut c = Mlp::new([1, 4, 4], 4, 7);
    let rest = run(&mut c, &data, 4, resumed.path());
    assert_eq!(
        rest.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        vec![3, 4],
        "only epochs 3 and 4 run"
    );

    let (xs, _) =
        overinterp::data::batch(&data, &(0..16).collect::<Vec<_>>(), tch::Device::Cpu).unwrap();
    let la = Vec::<f32>::try_from(train::logits(&a, &xs).unwrap().flatten(0, -1)).unwrap();
    let lc = Vec::<f32>::try_from(train::logits(&c, &xs).unwrap().flatten(0, -1)).unwrap();
    for (x, y) in la.iter().zip(&lc) {
        assert!((x - y).abs() < 1e-5, "resumed {y} vs uninterrupted {x}");
    }
    let _ = Tensor::from(0); // keep tch linked in this test binary
}

#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let data = Synthetic::planted(64, 4, 4);
    let other = Synthetic::planted(64, 4, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mlp::new([1, 4, 4], 4, 0);
    run(&mut m, &data, 1, dir.path());
    let err = train::train(TrainJob {
        model: &mut m,
        model_config: serde_json::json!({"arch": "test-mlp"}),
        train_set: &other,
        train_masks: None,
        test_set: None,
        test_masks: None,
        config: config(2),
        out_dir: dir.path().to_path_buf(),
    })
    .unwrap_err();
    assert!(err.to_string().contains("different run"), "{err}");
}
