//! Tests of the models. Expected parameter counts and layouts come from torchvision
//! or from hand computation (quoted at each test); expected TorchScript logits and
//! gradients from torch itself (`scripts/make-torchscript-fixture`).

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use super::*;
use crate::util::SplitMix64;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// A raw little-endian f32 file written by the fixture script, as a tensor of `shape`.
fn read_f32(name: &str, shape: &[i64]) -> Result<Tensor, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(fixture(name))?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_slice(&values).reshape(shape))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn native(arch: Arch, classes: i64, shape: [i64; 3]) -> NativeModel {
    NativeModel::new(ModelConfig::new(arch, classes, shape), Device::Cpu).expect("valid config")
}

/// Builds `arch`, checks its parameter count and that a batch of 2 gives `[2, K]`
/// logits in eval mode (and in train mode when `train_too`).
fn check_arch(
    arch: Arch,
    classes: i64,
    expected_params: i64,
    train_too: bool,
) -> Result<NativeModel, ModelError> {
    let shape = arch.default_input_shape();
    let model = native(arch, classes, shape);
    assert_eq!(
        model.num_parameters(),
        expected_params,
        "{arch} parameter count"
    );
    let [c, h, w] = shape;
    let xs = Tensor::randn([2, c, h, w], (Kind::Float, Device::Cpu));
    let logits = tch::no_grad(|| model.forward(&xs, false))?;
    assert_eq!(logits.size(), [2, classes], "{arch} eval output");
    if train_too {
        let logits = model.forward(&xs, true)?;
        assert_eq!(logits.size(), [2, classes], "{arch} train output");
    }
    Ok(model)
}

// ResNet20, option A, 10 classes — by hand (He et al. 2016a, Table 6: 0.27M):
//   stem conv 3·16·9 = 432, BN 32
//   stage 1: 3 blocks × 2 × (16·16·9 + 32)              = 14,016
//   stage 2: (16·32·9 + 64) + (32·32·9 + 64) + 2·2·(32·32·9 + 64) = 51,072
//   stage 3: (32·64·9 + 128) + (64·64·9 + 128) + 2·2·(64·64·9 + 128) = 203,520
//   linear 64·10 + 10 = 650                               total 269,722
// (Option B's 1×1 projection shortcuts with BN would add 576 + 2,176 = 272,474.)
#[test]
fn resnet20_has_269722_parameters() -> TestResult {
    check_arch(Arch::ResNet20, 10, 269_722, true)?;
    Ok(())
}

// Pre-activation ResNet18, 10 classes ("11.2M"). The common PyTorch port
// (PreActResNet18 without the final BN) counts 11,171,146, as
//   sum(p.numel() for p in PreActResNet(PreActBlock, [2,2,2,2]).parameters());
// we add the final BN(512) of He et al. 2016b: + 2·512 = 11,172,170.
#[test]
fn preact_resnet18_has_11_2m_parameters() -> TestResult {
    check_arch(Arch::ResNet18, 10, 11_172_170, true)?;
    Ok(())
}

// VGG16-BN for CIFAR, 10 classes ("14.7M"): 13 convs with bias
//   1,792 + 36,928 + 73,856 + 147,584 + 295,168 + 2·590,080 + 1,180,160 + 5·2,359,808
//   = 14,714,688; BN 2·(2·64 + 2·128 + 3·256 + 6·512) = 8,448; linear 512·10 + 10 = 5,130
//   total 14,728,266.
#[test]
fn vgg16_bn_has_14_7m_parameters() -> TestResult {
    check_arch(Arch::Vgg16, 10, 14_728_266, true)?;
    Ok(())
}

// Small CNN, 1×28×28, 10 classes: conv1 1·32·9 = 288, BN 64, conv2 32·64·9 = 18,432,
// BN 128, fc1 (64·7·7)·128 + 128 = 401,536, fc2 128·10 + 10 = 1,290 → 421,738.
#[test]
fn small_cnn_has_421738_parameters() -> TestResult {
    check_arch(Arch::SmallCnn, 10, 421_738, true)?;
    Ok(())
}

/// `(parameter or buffer name, shape)`, sorted by name.
type KeyShapes = Vec<(String, Vec<i64>)>;

/// Reads `torchvision_<name>_keys.txt` (written by the fixture script from torchvision
/// 0.26.0's `state_dict()`, `num_batches_tracked` left out) as sorted `(key, shape)`.
fn torchvision_keys(name: &str) -> Result<KeyShapes, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(fixture(&format!("torchvision_{name}_keys.txt")))?;
    let mut keys = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, dims) = line.split_once(' ').ok_or("malformed key line")?;
        let dims = if dims.is_empty() {
            vec![]
        } else {
            dims.split(',').map(str::parse).collect::<Result<_, _>>()?
        };
        keys.push((key.to_string(), dims));
    }
    keys.sort();
    Ok(keys)
}

fn our_keys(vs: &nn::VarStore) -> KeyShapes {
    let mut keys: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    keys.sort();
    keys
}

// torchvision 0.26.0: sum(p.numel() for p in torchvision.models.resnet50().parameters())
// = 25,557,032; every state_dict key and shape must match ours.
#[test]
fn resnet50_matches_torchvision() -> TestResult {
    let model = check_arch(Arch::ResNet50, 1000, 25_557_032, false)?;
    assert_eq!(
        our_keys(model.var_store().ok_or("no var store")?),
        torchvision_keys("resnet50")?
    );
    Ok(())
}

// torchvision 0.26.0: inception_v3(aux_logits=False, init_weights=False) has
// 23,834,568 parameters (with the auxiliary classifier: 27,161,264, the "27.2M").
#[test]
fn inception_v3_matches_torchvision() -> TestResult {
    let model = check_arch(Arch::InceptionV3, 1000, 23_834_568, false)?;
    assert_eq!(
        our_keys(model.var_store().ok_or("no var store")?),
        torchvision_keys("inception_v3")?
    );
    Ok(())
}

#[test]
fn arch_names_parse_and_unknown_names_list_the_valid_ones() {
    for arch in Arch::ALL {
        assert_eq!(arch.name().parse::<Arch>().ok(), Some(arch));
        assert_eq!(arch.to_string(), arch.name());
    }
    assert_eq!("ResNet20".parse::<Arch>().ok(), Some(Arch::ResNet20));
    let err = "resnet19"
        .parse::<Arch>()
        .expect_err("not an architecture")
        .to_string();
    assert!(err.contains("resnet19"), "{err}");
    for arch in Arch::ALL {
        assert!(err.contains(arch.name()), "{err} should list {arch}");
    }
}

#[test]
fn model_config_json_uses_cli_names_and_defaults_the_seed() -> TestResult {
    let config = ModelConfig::new(Arch::SmallCnn, 10, [1, 28, 28]).with_input_dropout(0.8, 7);
    let json = serde_json::to_value(&config)?;
    assert_eq!(json["arch"], "small-cnn");
    assert_eq!(serde_json::from_value::<ModelConfig>(json)?, config);
    let old: ModelConfig = serde_json::from_str(
        r#"{"arch":"inception-v3","num_classes":1000,"input_shape":[3,299,299],"input_dropout":null}"#,
    )?;
    assert_eq!(
        old,
        ModelConfig::new(Arch::InceptionV3, 1000, [3, 299, 299])
    );
    Ok(())
}

#[test]
fn configs_the_architecture_cannot_take_are_refused() {
    let bad = [
        ModelConfig::new(Arch::SmallCnn, 10, [1, 2, 2]),
        ModelConfig::new(Arch::Vgg16, 10, [3, 16, 16]),
        ModelConfig::new(Arch::InceptionV3, 1000, [3, 64, 64]),
        ModelConfig::new(Arch::ResNet20, 1, [3, 32, 32]),
        ModelConfig::new(Arch::ResNet20, 10, [0, 32, 32]),
        ModelConfig::new(Arch::ResNet20, 10, [3, 32, 32]).with_input_dropout(0.0, 0),
        ModelConfig::new(Arch::ResNet20, 10, [3, 32, 32]).with_input_dropout(1.5, 0),
    ];
    for config in bad {
        assert!(
            build(&config, Device::Cpu).is_err(),
            "{config:?} should be refused"
        );
    }
    // Other shapes an architecture can take are fine: the small CNN on CIFAR-sized
    // colour images, ResNet20 on 1×28×28.
    for config in [
        ModelConfig::new(Arch::SmallCnn, 10, [3, 32, 32]),
        ModelConfig::new(Arch::ResNet20, 10, [1, 28, 28]),
    ] {
        let model = build(&config, Device::Cpu).expect("valid");
        let [c, h, w] = config.input_shape;
        let logits = model
            .forward(
                &Tensor::zeros([3, c, h, w], (Kind::Float, Device::Cpu)),
                false,
            )
            .expect("forward");
        assert_eq!(logits.size(), [3, 10]);
    }
}

#[test]
fn wrong_input_shape_is_a_typed_error() {
    let model = native(Arch::SmallCnn, 10, [1, 28, 28]);
    for shape in [vec![2, 3, 28, 28], vec![2, 1, 32, 32], vec![1, 28, 28]] {
        let xs = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        match model.forward(&xs, false) {
            Err(ModelError::InputShape { got, expected }) => {
                assert_eq!(got, shape);
                assert_eq!(expected, [1, 28, 28]);
            }
            other => panic!("expected InputShape for {shape:?}, got {other:?}"),
        }
    }
}

#[test]
fn channels_last_changes_nothing_but_rounding() -> TestResult {
    tch::manual_seed(1);
    let mut model = native(Arch::ResNet20, 10, [3, 32, 32]);
    let xs = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    model.set_channels_last(true);
    let a = tch::no_grad(|| model.forward(&xs, false))?;
    model.set_channels_last(false);
    let b = tch::no_grad(|| model.forward(&xs, false))?;
    assert!(max_abs_diff(&a, &b) < 1e-4, "{}", max_abs_diff(&a, &b));
    Ok(())
}

#[test]
fn frozen_native_model_differentiates_the_input_only() -> TestResult {
    let mut model = native(Arch::ResNet20, 10, [3, 32, 32]);
    model.freeze();
    let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    // A logit, not a softmax output: with random weights the softmax may saturate
    // (exactly 0 or 1 in fp32), and its gradient with it.
    model
        .forward(&xs, false)?
        .select(1, 0)
        .sum(Kind::Float)
        .backward();
    let g = xs.grad();
    assert!(
        g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "input gradient: defined {}, |g| sum {:?}",
        g.defined(),
        g.defined()
            .then(|| g.abs().sum(Kind::Float).double_value(&[])),
    );
    let vs = model.var_store().ok_or("no var store")?;
    for (name, t) in vs.variables() {
        assert!(!t.requires_grad(), "{name} still requires grad");
        assert!(!t.grad().defined(), "{name} got a gradient");
    }
    Ok(())
}

/// Uniform values in [-1, 1) from `rng`: concurrent tests reseed libtorch's global
/// RNG, and a comparison of rounding must see the same model and inputs every run.
pub(crate) fn uniform(size: &[i64], rng: &mut SplitMix64) -> Tensor {
    let n: i64 = size.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (2.0 * rng.unit() - 1.0) as f32).collect();
    Tensor::from_slice(&values).reshape(size)
}

/// Sets every tensor of `vs` from `rng`: He-uniform weights, and batch norms with
/// trained-looking statistics and affine parameters (fresh ones are the identity map,
/// which would leave folding little to do).
pub(crate) fn deterministic_weights(vs: &nn::VarStore, rng: &mut SplitMix64) {
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, t) in variables {
            let size = t.size();
            let u = uniform(&size, rng);
            let value = if name.ends_with("running_var") {
                u.abs() + 0.5
            } else if size.len() == 1 {
                u * 0.3 + f64::from(name.ends_with("weight") as u8)
            } else {
                let fan_in: i64 = size[1..].iter().product();
                u * (6.0 / fan_in as f64).sqrt()
            };
            t.shallow_clone().copy_(&value);
        }
    });
}

/// Logits and the gradient of logit 3 (summed over the batch) with respect to `xs`,
/// in the model's dtype.
fn logits_and_grad(model: &NativeModel, xs: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
    let x = xs.detach().set_requires_grad(true);
    let logits = model.forward(&x, false)?;
    let objective = logits.select(1, 3).sum(logits.kind());
    let grad = Tensor::run_backward(&[objective], &[&x], false, false);
    Ok((logits.detach(), grad[0].shallow_clone()))
}

/// Frozen, each architecture with conv → batch norm units evaluates them folded, and
/// is as close to the model evaluated as trained in double precision (the reference)
/// as the fp32 model evaluated as trained is: folding changes only rounding.
/// Weights and inputs are deterministic, so the test sees the same rounding each run.
#[test]
fn frozen_native_models_fold_batch_norm_and_change_only_rounding() -> TestResult {
    // (architecture, input, conv → BN units: counted from the architecture files).
    let cases = [
        (Arch::ResNet20, [3, 32, 32], 19),
        (Arch::SmallCnn, [1, 28, 28], 2),
        (Arch::Vgg16, [3, 32, 32], 13),
        (Arch::ResNet50, [3, 64, 64], 53),
        (Arch::InceptionV3, [3, 75, 75], 94),
        (Arch::ResNet18, [3, 32, 32], 8),
    ];
    let folds = || FOLDS.with(|n| n.get());
    for (arch, [c, h, w], units) in cases {
        let mut rng = SplitMix64::new(5);
        let mut model = native(arch, 10, [c, h, w]);
        deterministic_weights(model.var_store().ok_or("no var store")?, &mut rng);
        let xs = uniform(&[2, c, h, w], &mut rng) * 2.0;
        let trained = logits_and_grad(&model, &xs)?;
        model.freeze();
        let before = folds();
        let folded = logits_and_grad(&model, &xs)?;
        assert_eq!(folds() - before, units, "{arch}: units folded");
        let before = folds();
        let again = logits_and_grad(&model, &xs)?;
        assert_eq!(folds() - before, 0, "{arch}: the fold is cached");
        assert_eq!(max_abs_diff(&again.0, &folded.0), 0.0, "{arch}: same fold");

        let vs = model.var_store_mut().ok_or("no var store")?;
        vs.unfreeze();
        vs.set_kind(Kind::Double);
        let before = folds();
        let (r_logits, r_grad) = logits_and_grad(&model, &xs.to_kind(Kind::Double))?;
        assert_eq!(
            folds() - before,
            0,
            "{arch}: training parameters are not folded"
        );
        // A ReLU input within rounding of zero may take either side in either fp32
        // path: that moves the input gradient by up to about 1% (seen on Inception) but
        // the logits by no more than rounding. So the logits are held to rounding and
        // the gradient to what rules out a wrong or detached fold.
        for (what, reference, trained, folded, slack) in [
            ("logits", r_logits, &trained.0, &folded.0, 1e-5),
            ("input gradient", r_grad, &trained.1, &folded.1, 3e-2),
        ] {
            let reference = reference.to_kind(Kind::Float);
            let norm = reference.norm().double_value(&[]);
            let error = |t: &Tensor| (t - &reference).norm().double_value(&[]) / norm;
            let (e_trained, e_folded) = (error(trained), error(folded));
            assert!(
                e_folded <= 4.0 * e_trained + slack,
                "{arch} {what}: relative error {e_folded:.2e} folded, {e_trained:.2e} as trained"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- TorchScript

const TINY_SHAPE: [i64; 3] = [3, 16, 16];

/// As saved and with its batch norms folded, the module gives torch's logits and
/// input gradient (folding changes only the rounding of the folded weights).
#[test]
fn torchscript_gives_torchs_logits_and_input_gradient() -> TestResult {
    for fold in [false, true] {
        let model =
            TorchScriptModel::load_with(fixture("tiny_cnn.pt"), Device::Cpu, TINY_SHAPE, fold)?;
        assert_eq!(model.folded(), fold);
        // Both of the fixture's batch norms follow a convolution: both are folded.
        assert_eq!(model.batch_norms_left(), 0);
        assert_eq!(model.num_classes(), 5);
        assert_eq!(model.input_shape(), TINY_SHAPE);
        let xs = read_f32("tiny_cnn_input.f32", &[2, 3, 16, 16])?;
        let expected = read_f32("tiny_cnn_logits.f32", &[2, 5])?;
        let logits = model.forward(&xs, false)?;
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff < 1e-5, "fold {fold}: logits differ by {diff}");

        // Autograd through the input, as SIS needs: d(sum logits[:, 0]) / dx as torch computed it.
        let xs = xs.set_requires_grad(true);
        model
            .forward(&xs, false)?
            .select(1, 0)
            .sum(Kind::Float)
            .backward();
        let expected_grad = read_f32("tiny_cnn_grad.f32", &[2, 3, 16, 16])?;
        let diff = max_abs_diff(&xs.grad(), &expected_grad);
        assert!(diff < 1e-5, "fold {fold}: input gradient differs by {diff}");
    }
    Ok(())
}

/// A batch norm before a ReLU cannot be folded: freezing keeps it (and says so) and
/// folds the one after the convolution; the logits stay torch's.
#[test]
fn batch_norms_freezing_cannot_fold_are_counted_and_kept() -> TestResult {
    let model = TorchScriptModel::load(fixture("preact_bn.pt"), Device::Cpu, TINY_SHAPE)?;
    assert!(model.folded());
    assert_eq!(model.batch_norms_left(), 1);
    let xs = read_f32("tiny_cnn_input.f32", &[2, 3, 16, 16])?;
    let expected = read_f32("preact_bn_logits.f32", &[2, 5])?;
    let diff = max_abs_diff(&model.forward(&xs, false)?, &expected);
    assert!(diff < 1e-5, "logits differ by {diff}");
    Ok(())
}

/// The folding shim's errors reach Rust as libtorch's reason without its backtrace.
#[test]
fn folding_errors_are_reported_without_a_backtrace() {
    let err = super::fold::load_folded(&fixture("not_a_model.pt"), Device::Cpu, None)
        .err()
        .expect("a text file is not a TorchScript archive");
    assert!(!err.is_empty() && !err.contains("frame #"), "{err}");
    let err = super::fold::load_folded(&fixture("tiny_cnn.pt"), Device::Mps, None)
        .err()
        .expect("folding runs on the CPU or CUDA");
    assert!(err.contains("Mps"), "{err}");
}

/// A folded module cast to bf16 is frozen again in bf16 (its weights are constants
/// `to` cannot cast) and stays within bf16 rounding of torch's fp32 logits.
#[test]
fn folded_torchscript_runs_in_bfloat16() -> TestResult {
    let mut model = TorchScriptModel::load(fixture("tiny_cnn.pt"), Device::Cpu, TINY_SHAPE)?;
    assert!(model.folded());
    model.set_kind(Kind::BFloat16)?;
    let xs = read_f32("tiny_cnn_input.f32", &[2, 3, 16, 16])?;
    let expected = read_f32("tiny_cnn_logits.f32", &[2, 5])?;
    let logits = model.forward(&xs.to_kind(Kind::BFloat16), false)?;
    assert_eq!(logits.kind(), Kind::BFloat16);
    let scale = expected.abs().max().double_value(&[]);
    let diff = max_abs_diff(&logits.to_kind(Kind::Float), &expected);
    // bf16 keeps 8 significant bits: a few units of 2^-8 relative to the logits' scale.
    assert!(
        diff < 0.05 * scale,
        "bf16 logits differ by {diff} (scale {scale})"
    );
    Ok(())
}

#[test]
fn torchscript_parameters_are_frozen_and_training_is_refused() -> TestResult {
    let model =
        TorchScriptModel::load_with(fixture("tiny_cnn.pt"), Device::Cpu, TINY_SHAPE, false)?;
    let params = model.named_parameters()?;
    assert!(!params.is_empty());
    for (name, p) in params {
        assert!(!p.requires_grad(), "{name} requires grad");
    }
    // Folding made every parameter a constant of the frozen graph.
    let folded = TorchScriptModel::load(fixture("tiny_cnn.pt"), Device::Cpu, TINY_SHAPE)?;
    assert!(folded.named_parameters()?.is_empty());
    let xs = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    for m in [&model, &folded] {
        assert!(matches!(m.forward(&xs, true), Err(ModelError::Invalid(_))));
    }
    Ok(())
}

#[test]
fn malformed_torchscript_file_is_an_error_naming_it() {
    let path = fixture("not_a_model.pt");
    let err = TorchScriptModel::load(&path, Device::Cpu, TINY_SHAPE).expect_err("not a model");
    assert!(matches!(err, ModelError::Load { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let missing = fixture("no_such_model.pt");
    let err = TorchScriptModel::load(&missing, Device::Cpu, TINY_SHAPE).expect_err("missing");
    assert!(err.to_string().contains("no_such_model.pt"), "{err}");
}

#[test]
fn torchscript_output_that_is_not_batch_by_classes_is_refused() {
    match TorchScriptModel::load(fixture("features_only.pt"), Device::Cpu, TINY_SHAPE) {
        Err(ModelError::OutputShape { got, .. }) => assert_eq!(got, [2, 4, 8, 8]),
        other => panic!("expected OutputShape, got {other:?}"),
    }
}

#[test]
fn torchscript_with_the_wrong_input_shape_fails_at_load() {
    // The traced linear layer expects 16·4·4 features; 3×32×32 gives 16·8·8.
    let err = TorchScriptModel::load(fixture("tiny_cnn.pt"), Device::Cpu, [3, 32, 32])
        .expect_err("wrong shape");
    assert!(err.to_string().contains("tiny_cnn.pt"), "{err}");
}

// ---------------------------------------------------------------- Ensemble

#[test]
fn ensemble_averages_member_logits() -> TestResult {
    tch::manual_seed(3);
    let a = native(Arch::SmallCnn, 5, TINY_SHAPE);
    let b = TorchScriptModel::load(fixture("tiny_cnn.pt"), Device::Cpu, TINY_SHAPE)?;
    let c = native(Arch::ResNet20, 5, TINY_SHAPE);
    let xs = Tensor::randn([3, 3, 16, 16], (Kind::Float, Device::Cpu));
    let (la, lb, lc) = (
        a.forward(&xs, false)?,
        b.forward(&xs, false)?,
        c.forward(&xs, false)?,
    );
    let expected = (&la + &lb + &lc) / 3.0;
    let ensemble = Ensemble::new(vec![Box::new(a), Box::new(b), Box::new(c)])?;
    assert_eq!(ensemble.num_classes(), 5);
    let got = ensemble.forward(&xs, false)?;
    assert!(max_abs_diff(&got, &expected) < 1e-6);
    // And not, say, the mean of probabilities.
    let probs =
        (la.softmax(-1, Kind::Float) + lb.softmax(-1, Kind::Float) + lc.softmax(-1, Kind::Float))
            / 3.0;
    assert!(max_abs_diff(&got.softmax(-1, Kind::Float), &probs) > 1e-4);
    Ok(())
}

#[test]
fn ensemble_members_must_agree() {
    let err = Ensemble::new(vec![
        Box::new(native(Arch::SmallCnn, 10, [1, 28, 28])),
        Box::new(native(Arch::SmallCnn, 5, [1, 28, 28])),
    ])
    .expect_err("classes differ");
    assert!(
        err.to_string().contains("member 1") && err.to_string().contains("5 classes"),
        "{err}"
    );
    let err = Ensemble::new(vec![
        Box::new(native(Arch::SmallCnn, 10, [1, 28, 28])),
        Box::new(native(Arch::SmallCnn, 10, [3, 28, 28])),
    ])
    .expect_err("shapes differ");
    assert!(err.to_string().contains("input shape [3, 28, 28]"), "{err}");
    assert!(Ensemble::new(vec![]).is_err());
}

// ---------------------------------------------------------------- Input dropout

/// A classifier whose "logits" are its input, flattened: shows exactly what the
/// wrapped model receives.
struct Echo([i64; 3]);

impl Classifier for Echo {
    fn forward(&self, xs: &Tensor, _train: bool) -> Result<Tensor, ModelError> {
        Ok(xs.flatten(1, -1))
    }
    fn num_classes(&self) -> i64 {
        self.0.iter().product()
    }
    fn input_shape(&self) -> [i64; 3] {
        self.0
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn describe(&self) -> String {
        "echo".into()
    }
}

/// Per image and pixel: `true` if every channel equals the input's, `false` if every
/// channel is 0; panics if a pixel is partly dropped or rescaled.
fn kept_pixels(input: &Tensor, seen: &Tensor) -> Vec<Vec<bool>> {
    let [n, c, h, w] = input.size()[..] else {
        panic!("4-d")
    };
    let input = Vec::<f32>::try_from(input.flatten(0, -1)).expect("f32");
    let seen = Vec::<f32>::try_from(seen.flatten(0, -1)).expect("f32");
    let (c, hw) = (c as usize, (h * w) as usize);
    (0..n as usize)
        .map(|i| {
            (0..hw)
                .map(|p| {
                    let at = |ch: usize| i * c * hw + ch * hw + p;
                    let kept = (0..c).all(|ch| seen[at(ch)] == input[at(ch)]);
                    let dropped = (0..c).all(|ch| seen[at(ch)] == 0.0);
                    assert!(
                        kept || dropped,
                        "image {i} pixel {p} is neither kept unchanged nor dropped in all channels"
                    );
                    kept
                })
                .collect()
        })
        .collect()
}

fn dropped_fraction(kept: &[bool]) -> f64 {
    kept.iter().filter(|k| !**k).count() as f64 / kept.len() as f64
}

#[test]
fn input_dropout_at_eval_drops_a_fixed_fifth_of_pixels_without_rescaling() -> TestResult {
    let shape = [3, 32, 32];
    let model = InputDropout::new(Box::new(Echo(shape)), 0.8, 11)?;
    // Inputs bounded away from 0, so a dropped pixel is told apart from a kept one.
    let xs = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) + 0.5;
    let first = model.forward(&xs, false)?;
    let second = model.forward(&xs, false)?;
    assert!(first.equal(&second), "evaluation must be deterministic");
    let kept = kept_pixels(&xs, &first.reshape([4, 3, 32, 32]));
    // The same pixels in every image, those of the documented mask.
    let mask: Vec<bool> = eval_keep_mask(32, 32, 0.8, 11)
        .iter()
        .map(|&m| m == 1.0)
        .collect();
    for image in &kept {
        assert_eq!(image, &mask);
    }
    // 1024 Bernoulli(0.2) drops: mean 204.8, sd 12.8; ±4 sd is 0.15..0.25.
    let f = dropped_fraction(&mask);
    assert!((0.15..0.25).contains(&f), "dropped fraction {f}");
    // Another seed, another mask; the same seed, the same mask.
    assert_ne!(
        eval_keep_mask(32, 32, 0.8, 12),
        eval_keep_mask(32, 32, 0.8, 11)
    );
    assert_eq!(
        eval_keep_mask(32, 32, 0.8, 11),
        eval_keep_mask(32, 32, 0.8, 11)
    );
    Ok(())
}

#[test]
fn input_dropout_at_train_draws_fresh_pixel_masks() -> TestResult {
    let shape = [3, 32, 32];
    let model = InputDropout::new(Box::new(Echo(shape)), 0.8, 11)?;
    let xs = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu)) + 0.5;
    let a = kept_pixels(&xs, &model.forward(&xs, true)?.reshape([8, 3, 32, 32]));
    let b = kept_pixels(&xs, &model.forward(&xs, true)?.reshape([8, 3, 32, 32]));
    assert_ne!(a, b, "each call draws new masks");
    assert_ne!(a[0], a[1], "each image gets its own mask");
    let all: Vec<bool> = a.concat();
    // 8192 drops of probability 0.2: sd 0.0044, so 0.18..0.22 is ±4.5 sd.
    let f = dropped_fraction(&all);
    assert!((0.18..0.22).contains(&f), "dropped fraction {f}");
    Ok(())
}

#[test]
fn input_dropout_trains_the_inner_model_and_records_itself() -> TestResult {
    let config = ModelConfig::new(Arch::SmallCnn, 10, [1, 28, 28]).with_input_dropout(0.8, 5);
    let mut model = build(&config, Device::Cpu)?;
    assert_eq!(model.model_config(), Some(config));
    assert!(model
        .var_store()
        .is_some_and(|vs| num_parameters(vs) == 421_738));
    model.freeze();
    assert!(model
        .var_store()
        .is_some_and(|vs| vs.trainable_variables().iter().all(|t| !t.requires_grad())));
    Ok(())
}

// ---------------------------------------------------------------- Checkpoints

/// Saves `model` as training does: `model.safetensors` and `config.json` with the
/// model configuration under "model" (other keys are the trainer's).
fn save_checkpoint(model: &dyn Classifier, dir: &Path) -> TestResult {
    std::fs::create_dir_all(dir)?;
    model
        .var_store()
        .ok_or("no var store")?
        .save(dir.join(WEIGHTS_FILE))?;
    let json = serde_json::json!({ "model": model.model_config(), "epochs_done": 3 });
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ckpt");
    tch::manual_seed(4);
    let config = ModelConfig::new(Arch::SmallCnn, 10, [1, 28, 28]).with_input_dropout(0.8, 9);
    let model = build(&config, Device::Cpu)?;
    // Move the batch-norm statistics off their initial values: they must be saved too.
    let xs = Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = model.forward(&xs, true)?;
    save_checkpoint(model.as_ref(), &dir)?;
    let want = model.forward(&xs, false)?;

    for spec in [dir.clone(), dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)] {
        let loaded = load_checkpoint(&spec, Device::Cpu)?;
        assert_eq!(loaded.model_config(), Some(config.clone()));
        assert!(
            loaded.forward(&xs, false)?.equal(&want),
            "{}",
            spec.display()
        );
    }
    let loaded = load_model(dir.to_str().ok_or("path")?, Device::Cpu, [1, 28, 28])?;
    assert!(loaded.forward(&xs, false)?.equal(&want));
    Ok(())
}

#[test]
fn checkpoint_of_another_model_is_refused_with_the_file_and_tensor() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ckpt");
    save_checkpoint(&native(Arch::SmallCnn, 10, [1, 28, 28]), &dir)?;
    // Same architecture, other class count: fc2 differs in shape.
    let config = serde_json::json!({ "model": ModelConfig::new(Arch::SmallCnn, 5, [1, 28, 28]) });
    std::fs::write(dir.join(CONFIG_FILE), config.to_string())?;
    let err = load_checkpoint(&dir, Device::Cpu)
        .expect_err("shape mismatch")
        .to_string();
    assert!(err.contains(WEIGHTS_FILE) && err.contains("fc2"), "{err}");
    // Another architecture: names differ.
    let config = serde_json::json!({ "model": ModelConfig::new(Arch::ResNet20, 10, [1, 28, 28]) });
    std::fs::write(dir.join(CONFIG_FILE), config.to_string())?;
    let err = load_checkpoint(&dir, Device::Cpu)
        .expect_err("names differ")
        .to_string();
    assert!(
        err.contains("missing") && err.contains("layer1.0.bn1.weight"),
        "{err}"
    );
    // No "model" entry, or no weights.
    std::fs::write(dir.join(CONFIG_FILE), "{\"epochs_done\": 1}")?;
    let err = load_checkpoint(&dir, Device::Cpu)
        .expect_err("no model")
        .to_string();
    assert!(
        err.contains(CONFIG_FILE) && err.contains("\"model\""),
        "{err}"
    );
    std::fs::write(dir.join(CONFIG_FILE), config.to_string())?;
    std::fs::remove_file(dir.join(WEIGHTS_FILE))?;
    let err = load_checkpoint(&dir, Device::Cpu)
        .expect_err("no weights")
        .to_string();
    assert!(err.contains(WEIGHTS_FILE), "{err}");
    Ok(())
}

#[test]
fn load_model_reads_every_spec_form() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    save_checkpoint(&native(Arch::SmallCnn, 5, TINY_SHAPE), &a)?;
    save_checkpoint(&native(Arch::ResNet20, 5, TINY_SHAPE), &b)?;
    let ts = fixture("tiny_cnn.pt");
    let xs = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let mut members = Vec::new();
    for path in [&a, &b, &ts] {
        let spec = path.to_str().ok_or("path")?;
        members.push(load_model(spec, Device::Cpu, TINY_SHAPE)?.forward(&xs, false)?);
    }
    let spec = format!("ensemble:{},{}, {}", a.display(), b.display(), ts.display());
    let ensemble = load_model(&spec, Device::Cpu, TINY_SHAPE)?;
    let expected = (&members[0] + &members[1] + &members[2]) / 3.0;
    assert!(max_abs_diff(&ensemble.forward(&xs, false)?, &expected) < 1e-6);

    // Errors name what is wrong.
    let err = load_model(a.to_str().ok_or("path")?, Device::Cpu, [3, 32, 32])
        .expect_err("shape")
        .to_string();
    assert!(
        err.contains("[3, 16, 16]") && err.contains("[3, 32, 32]"),
        "{err}"
    );
    let err = load_model("/no/such/model.pt", Device::Cpu, TINY_SHAPE)
        .expect_err("missing")
        .to_string();
    assert!(err.contains("/no/such/model.pt"), "{err}");
    assert!(load_model("ensemble:", Device::Cpu, TINY_SHAPE).is_err());
    Ok(())
}
