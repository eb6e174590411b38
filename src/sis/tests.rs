//! Tests of the SIS engine. Expected values come from hand computation on models
//! built so the answer is obvious (comments give the derivation), from the explicit
//! S5 loop, or from re-evaluating the model directly in the test.

use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::exact::exact_backselect;
use super::gradient::{gradient_backselect, lowbias32, TieNoise};
use super::*;
use crate::data::{DataError, ImageSource, Normalization};
use crate::models::{Classifier, ModelError};
use engine::BackSelectInput;

// ---------------------------------------------------------------------------
// Fixtures: an in-memory dataset and hand-made classifiers.

/// Images held in memory; `u8` pixels normalized with the given statistics.
struct MemSource {
    shape: [usize; 3],
    pixels: Vec<u8>,
    labels: Vec<i64>,
    norm: Normalization,
}

impl MemSource {
    /// Every pixel 255 with mean 0 and std 1: normalized value 1.0 everywhere, so
    /// a model's logits are sums of its weights over the present pixels.
    fn ones(n: usize, shape: [usize; 3]) -> Self {
        let len = shape.iter().product::<usize>();
        Self {
            shape,
            pixels: vec![255; n * len],
            labels: (0..n as i64).collect(),
            norm: Normalization {
                mean: vec![0.0; shape[0]],
                std: vec![1.0; shape[0]],
            },
        }
    }
}

impl ImageSource for MemSource {
    fn name(&self) -> String {
        "memory/test".into()
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn normalization(&self) -> Normalization {
        self.norm.clone()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        self.labels
            .get(index)
            .copied()
            .ok_or(DataError::OutOfRange {
                index,
                len: self.labels.len(),
            })
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let len = self.shape.iter().product::<usize>();
        for (k, &i) in indices.iter().enumerate() {
            if i >= self.labels.len() {
                return Err(DataError::OutOfRange {
                    index: i,
                    len: self.labels.len(),
                });
            }
            out[k * len..(k + 1) * len].copy_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        "test".into()
    }
}

/// Two classes on a 1×H×W input. Class 0's logit is `s · max_g Σ_{q∈group g} x_q`,
/// class 1's is `2.5·s`. On an all-ones image with groups of 3 pixels, class 0 wins
/// with `f = σ(0.5·s)` while some group is complete and loses once none is: a model
/// whose SIS is a whole group. Pixels are picked with `index_select`, so removing a
/// pixel outside every group leaves the logits bit-identical (exact ties).
struct GroupModel {
    groups: Vec<Vec<i64>>,
    scale: f64,
    hw: i64,
}

impl Classifier for GroupModel {
    fn forward(&self, xs: &Tensor, _train: bool) -> Result<Tensor, ModelError> {
        let n = xs.size()[0];
        let flat = xs.f_view([n, self.hw * self.hw])?;
        let sums = self
            .groups
            .iter()
            .map(|g| {
                flat.f_index_select(1, &Tensor::from_slice(g))
                    .and_then(|t| t.f_sum_dim_intlist(1, false, Kind::Float))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (best, _) = Tensor::f_stack(&sums, 1)?.f_max_dim(1, false)?;
        let l0 = best.f_mul_scalar(self.scale)?;
        let l1 = l0.f_zeros_like()?.f_add_scalar(2.5 * self.scale)?;
        Ok(Tensor::f_stack(&[l0, l1], 1)?)
    }
    fn num_classes(&self) -> i64 {
        2
    }
    fn input_shape(&self) -> [i64; 3] {
        [1, self.hw, self.hw]
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn describe(&self) -> String {
        "group model".into()
    }
}

/// Two-class linear model over pixels: logit₀ = Σ_q w_q·x_q + b, logit₁ = 0 (C = 1).
struct LinearModel {
    w: Tensor,
    b: f64,
    hw: i64,
}

impl Classifier for LinearModel {
    fn forward(&self, xs: &Tensor, _train: bool) -> Result<Tensor, ModelError> {
        let n = xs.size()[0];
        let l0 = xs
            .f_view([n, self.hw * self.hw])?
            .f_matmul(&self.w)?
            .f_add_scalar(self.b)?;
        Ok(Tensor::f_stack(
            &[l0.shallow_clone(), l0.f_zeros_like()?],
            1,
        )?)
    }
    fn num_classes(&self) -> i64 {
        2
    }
    fn input_shape(&self) -> [i64; 3] {
        [1, self.hw, self.hw]
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn describe(&self) -> String {
        "linear model".into()
    }
}

/// A small random conv net (conv 3→4, ReLU, conv 4→4, ReLU, mean pool, linear)
/// built in a VarStore whose parameters require gradients, with weights from a
/// seeded host RNG (not the global libtorch seed, which tests share).
struct ConvNet {
    vs: nn::VarStore,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
    classes: i64,
    hw: i64,
}

impl ConvNet {
    fn new(seed: u64, classes: i64, hw: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv1 = nn::conv2d(&root / "c1", 3, 4, 3, cfg);
        let conv2 = nn::conv2d(&root / "c2", 4, 4, 3, cfg);
        let fc = nn::linear(&root / "fc", 4, classes, Default::default());
        let mut state = seed;
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let values: Vec<f32> = (0..v.numel())
                    .map(|_| 1.5 * (uniform(&mut state) - 0.5))
                    .collect();
                v.copy_(&Tensor::from_slice(&values).view(v.size().as_slice()));
            }
        });
        Self {
            vs,
            conv1,
            conv2,
            fc,
            classes,
            hw,
        }
    }
}

impl Classifier for ConvNet {
    fn forward(&self, xs: &Tensor, _train: bool) -> Result<Tensor, ModelError> {
        let h = self.conv1.forward(xs).relu();
        let h = self.conv2.forward(&h).relu();
        let h = h.f_mean_dim(&[2i64, 3][..], false, Kind::Float)?;
        Ok(self.fc.forward(&h).f_mul_scalar(3.0)?)
    }
    fn num_classes(&self) -> i64 {
        self.classes
    }
    fn input_shape(&self) -> [i64; 3] {
        [3, self.hw, self.hw]
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn var_store(&self) -> Option<&nn::VarStore> {
        Some(&self.vs)
    }
    fn describe(&self) -> String {
        "random conv net".into()
    }
}

/// Wraps a model and breaks its output: `Rows` adds a row, `NanWhenMasked(q)` makes
/// every logit NaN for inputs whose pixel `q` is masked.
enum Fault {
    Rows,
    NanWhenMasked(i64),
}

struct Faulty<M: Classifier> {
    inner: M,
    fault: Fault,
}

impl<M: Classifier> Classifier for Faulty<M> {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let out = self.inner.forward(xs, train)?;
        match self.fault {
            Fault::Rows => Ok(Tensor::f_cat(&[&out, &out.f_narrow(0, 0, 1)?], 0)?),
            Fault::NanWhenMasked(q) => {
                let n = xs.size()[0];
                let masked = xs
                    .f_view([n, -1])?
                    .f_select(1, q)?
                    .f_eq(0.0)?
                    .f_unsqueeze(1)?;
                Ok(out.f_masked_fill(&masked, f64::NAN)?)
            }
        }
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn input_shape(&self) -> [i64; 3] {
        self.inner.input_shape()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
}

/// splitmix64-based uniform in [0, 1) for test fixtures.
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn random_source(seed: u64, n: usize, shape: [usize; 3]) -> MemSource {
    let mut state = seed ^ 0x5151;
    let len = n * shape.iter().product::<usize>();
    MemSource {
        shape,
        pixels: (0..len)
            .map(|_| (uniform(&mut state) * 255.0) as u8)
            .collect(),
        labels: vec![0; n],
        norm: Normalization {
            mean: vec![0.5; shape[0]],
            std: vec![0.25; shape[0]],
        },
    }
}

fn collect(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    indices: &[u64],
    params: &SisParams,
) -> Result<Vec<ImageSis>, SisError> {
    let mut out = Vec::new();
    run_sis(
        model,
        source,
        indices,
        params,
        |r| {
            out.push(r);
            Ok::<(), std::io::Error>(())
        },
        &AtomicBool::new(false),
    )?;
    Ok(out)
}

/// `f(x_S)` computed here, independently of the engine: one image alone, only the
/// pixels of `sis` kept, softmax of the model's logits at `target`.
fn reevaluate(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    index: u64,
    sis: &[u32],
    target: i64,
) -> f32 {
    let (x, _) = crate::data::batch(source, &[index as usize], Device::Cpu).unwrap();
    let size = x.size();
    let mut keep = vec![0f32; (size[2] * size[3]) as usize];
    for &q in sis {
        keep[q as usize] = 1.0;
    }
    let keep = Tensor::from_slice(&keep).view([1, 1, size[2], size[3]]);
    let logits = tch::no_grad(|| model.forward(&(x * keep), false)).unwrap();
    logits.softmax(-1, Kind::Float).double_value(&[0, target]) as f32
}

fn sigmoid(z: f64) -> f32 {
    (1.0 / (1.0 + (-z).exp())) as f32
}

// ---------------------------------------------------------------------------
// Known answers.

#[test]
fn exact_backselect_finds_the_one_sufficient_group() -> Result<(), SisError> {
    // 4×4 image of ones; class 0 needs all of {5, 6, 9}; scale 10.
    // Removing any other pixel leaves f = σ(5) exactly, so ties go to the lowest
    // index: 0,1,2,3,4,7,8,10,...,15. Then each of 5, 6, 9 drops f to σ(-5)
    // (tie → 5), then σ(-15) (tie → 6), then 9 → σ(-25).
    let model = GroupModel {
        groups: vec![vec![5, 6, 9]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(1, [1, 4, 4]);
    let params = SisParams {
        thresholds: vec![0.9, 0.5],
        ..SisParams::default()
    };
    let result = collect(&model, &source, &[0], &params)?.remove(0);
    let expected_order = [0u32, 1, 2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 5, 6, 9];
    let mut step = vec![0u32; 16];
    for (s, &q) in expected_order.iter().enumerate() {
        step[q as usize] = s as u32;
    }
    assert_eq!(result.removal_step, step);
    let mut history = vec![sigmoid(5.0); 13];
    history.extend([sigmoid(-5.0), sigmoid(-15.0), sigmoid(-25.0)]);
    assert_eq!(result.confidence_history.len(), 16);
    for (got, want) in result.confidence_history.iter().zip(&history) {
        assert!((got - want).abs() < 1e-6, "history {got} vs {want}");
    }
    assert_eq!(result.predicted, 0);
    assert!((result.confidence - sigmoid(5.0)).abs() < 1e-6);
    // Masking {5,6,9} leaves f = σ(-25): one SIS per threshold.
    for c in &result.collections {
        assert_eq!(c.sis, vec![vec![5, 6, 9]], "threshold {}", c.threshold);
    }
    assert_eq!(result.find_sis(0.9), Some(vec![5, 6, 9]));
    assert_eq!(result.find_sis(0.999), None);
    Ok(())
}

#[test]
fn exact_collection_finds_both_groups_disjointly() -> Result<(), SisError> {
    // Class 0 is confident while either {1,2,3} or {10,11,12} is complete.
    // Round 1: ties everywhere while one group survives, so pixels go in index
    // order 0..9 (breaking {1,2,3} is free while {10,11,12} stands), then 13,14,15,
    // then 10,11,12: SIS₁ = {10,11,12}. Round 2 on the other 13 pixels: 0,4..9,
    // 13..15 go first, then 1,2,3: SIS₂ = {1,2,3}. Round 3: f = σ(-25) < τ, done.
    let model = GroupModel {
        groups: vec![vec![1, 2, 3], vec![10, 11, 12]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(1, [1, 4, 4]);
    let params = SisParams {
        thresholds: vec![0.9],
        ..SisParams::default()
    };
    let result = collect(&model, &source, &[0], &params)?.remove(0);
    assert_eq!(
        result.collections[0].sis,
        vec![vec![10, 11, 12], vec![1, 2, 3]]
    );
    let single = collect(
        &model,
        &source,
        &[0],
        &SisParams {
            collection: false,
            ..params
        },
    )?
    .remove(0);
    assert_eq!(single.collections[0].sis, vec![vec![10, 11, 12]]);
    Ok(())
}

#[test]
fn gradient_backselect_finds_the_group_with_at_most_k_minus_1_extra() -> Result<(), SisError> {
    // The group's pixels have negative mask gradient (masking lowers f); all others
    // have zero gradient plus noise, so the group is removed last. With k pixels per
    // step the SIS is the group plus at most k-1 pixels sharing its first block.
    let model = GroupModel {
        groups: vec![vec![5, 6, 9]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(2, [1, 4, 4]);
    for k in [1u32, 2, 3, 5] {
        let params = SisParams {
            method: Method::Gradient { k },
            thresholds: vec![0.9],
            ..SisParams::default()
        };
        for result in collect(&model, &source, &[0, 1], &params)? {
            let sis = &result.collections[0].sis;
            assert_eq!(sis.len(), 1, "k={k}: one SIS, masking it leaves σ(-25)");
            let s = &sis[0];
            assert!([5, 6, 9].iter().all(|q| s.contains(q)), "k={k}: {s:?}");
            assert!(s.len() < 3 + k as usize, "k={k}: {s:?}");
            assert_eq!(
                result.confidence_history.len(),
                16usize.div_ceil(k as usize)
            );
            // Every step removes k pixels except possibly the last.
            let mut sizes = vec![0usize; result.confidence_history.len()];
            for &s in &result.removal_step {
                sizes[s as usize] += 1;
            }
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&n| n == k as usize),
                "{sizes:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn gradient_collection_is_disjoint_and_each_sis_sufficient() -> Result<(), SisError> {
    let model = GroupModel {
        groups: vec![vec![1, 2, 3], vec![10, 11, 12]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(1, [1, 4, 4]);
    let params = SisParams {
        method: Method::Gradient { k: 1 },
        thresholds: vec![0.9],
        ..SisParams::default()
    };
    let result = collect(&model, &source, &[0], &params)?.remove(0);
    let sis = &result.collections[0].sis;
    let mut sorted = sis.clone();
    sorted.sort();
    assert_eq!(sorted, vec![vec![1, 2, 3], vec![10, 11, 12]]);
    Ok(())
}

#[test]
fn find_sis_from_a_record_matches_the_definition() {
    // Steps: pixel 2 at step 0, 0 at 1, 3 at 2, 1 at 3; history after each step.
    let step = [1, 3, 0, 2];
    let history = [0.95, 0.9, 0.4, 0.1];
    // τ=0.9: last state ≥ τ is after step 1, so the SIS is steps 2,3 = pixels {1,3}.
    assert_eq!(find_sis(&step, &history, 0.97, 0.9), Some(vec![1, 3]));
    // τ=0.95: after step 0 → steps 1..3 = {0,1,3}.
    assert_eq!(find_sis(&step, &history, 0.97, 0.95), Some(vec![0, 1, 3]));
    // τ=0.96: no recorded state reaches it but f(x) does: every pixel.
    assert_eq!(
        find_sis(&step, &history, 0.97, 0.96),
        Some(vec![0, 1, 2, 3])
    );
    // τ above f(x): no SIS.
    assert_eq!(find_sis(&step, &history, 0.97, 0.98), None);
    // Fully masked input already sufficient: the empty set.
    assert_eq!(find_sis(&step, &history, 0.97, 0.05), Some(vec![]));
}

// ---------------------------------------------------------------------------
// Equivalences and properties on random models.

/// Thresholds strictly between distinct recorded confidences (gap > 1e-4), so
/// rounding differences between batch sizes cannot flip a comparison.
fn safe_thresholds(history: &[f32], confidence: f32) -> Vec<f32> {
    let mut values: Vec<f32> = history.iter().copied().chain([confidence]).collect();
    values.sort_by(f32::total_cmp);
    values.dedup();
    values
        .windows(2)
        .filter(|w| w[1] - w[0] > 1e-4)
        .map(|w| 0.5 * (w[0] + w[1]))
        .collect()
}

fn check_history_equals_reevaluation(method: Method, seed: u64) -> Result<usize, SisError> {
    let model = ConvNet::new(seed, 3, 5);
    let source = random_source(seed, 2, [3, 5, 5]);
    let eval = Evaluator::new(&model);
    let (x, _) = crate::data::batch(&source, &[0, 1], Device::Cpu)?;
    let (predicted, confidence) = eval.predict(&x, &[0, 1])?;
    let present = vec![vec![true; 25]; 2];
    let input = BackSelectInput {
        xs: &x,
        present: &present,
        targets: &predicted,
        noise_keys: &[seed, seed + 1],
        images: &[0, 1],
    };
    let traces = match method {
        Method::Exact => exact_backselect(&eval, &input, Objective::LogOdds, 7, None)?,
        Method::Gradient { k } => gradient_backselect(&eval, &input, Objective::LogOdds, k, None)?,
        Method::Screened { screen } => super::screened::screened_backselect(
            &eval,
            &eval,
            &input,
            Objective::LogOdds,
            screen,
            7,
            None,
        )?,
    };
    let mut compared = 0;
    for i in 0..2 {
        for tau in safe_thresholds(&traces[i].history, confidence[i]) {
            if tau > confidence[i] {
                continue;
            }
            let explicit = find_sis_by_reevaluation(
                &eval,
                &x.get(i as i64),
                &traces[i],
                predicted[i],
                tau,
                i as u64,
            )?;
            assert_eq!(
                Some(traces[i].find_sis(tau)),
                explicit,
                "image {i} τ={tau} {method:?}"
            );
            let record = find_sis(
                &traces[i].removal_step(25),
                &traces[i].history,
                confidence[i],
                tau,
            );
            assert_eq!(record, explicit);
            compared += 1;
        }
    }
    Ok(compared)
}

#[test]
fn find_sis_from_history_equals_pop_and_reevaluate() -> Result<(), SisError> {
    for method in [
        Method::Exact,
        Method::Gradient { k: 1 },
        Method::Gradient { k: 4 },
        Method::Screened { screen: 5 },
    ] {
        let mut compared = 0;
        for seed in 1..5 {
            compared += check_history_equals_reevaluation(method, seed)?;
        }
        assert!(
            compared >= 8,
            "{method:?}: only {compared} thresholds compared"
        );
    }
    Ok(())
}

fn check_every_sis_sufficient(
    seed: u64,
    method: Method,
    classes: i64,
    fractions: &[f32],
) -> Result<(), TestCaseError> {
    let model = ConvNet::new(seed, classes, 5);
    let source = random_source(seed, 3, [3, 5, 5]);
    let eval = Evaluator::new(&model);
    let (x, _) = crate::data::batch(&source, &[0, 1, 2], Device::Cpu).unwrap();
    let (_, confidence) = eval.predict(&x, &[0, 1, 2]).unwrap();
    // Thresholds relative to the least confident image so every image has SISes.
    let low = confidence.iter().copied().fold(1.0f32, f32::min);
    let thresholds: Vec<f32> = fractions.iter().map(|f| f * low).collect();
    let params = SisParams {
        method,
        thresholds,
        batch_size: 2,
        candidate_batch: 11,
        seed,
        ..SisParams::default()
    };
    let results = collect(&model, &source, &[0, 1, 2], &params).unwrap();
    prop_assert_eq!(
        results.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for r in &results {
        // removal_step covers every pixel; the history has one entry per step.
        let steps = r.confidence_history.len();
        prop_assert!(r.removal_step.iter().all(|&s| (s as usize) < steps));
        for c in &r.collections {
            prop_assert!(
                !c.sis.is_empty(),
                "τ={} ≤ f(x) must give an SIS",
                c.threshold
            );
            let mut seen = [false; 25];
            for s in &c.sis {
                prop_assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
                for &q in s {
                    prop_assert!(!seen[q as usize], "collection not disjoint: pixel {}", q);
                    seen[q as usize] = true;
                }
                let f = reevaluate(&model, &source, r.index, s, r.predicted);
                prop_assert!(
                    f >= c.threshold,
                    "f(x_S) = {} < τ = {} for {:?}",
                    f,
                    c.threshold,
                    s
                );
            }
            if c.sis == [Vec::<u32>::new()] {
                // The fully masked image already reaches τ: the empty set is the
                // SIS (checked above) and the collection ends there.
                continue;
            }
            // The pixels left after the collection fall below τ.
            let rest: Vec<u32> = (0..25).filter(|&q| !seen[q as usize]).collect();
            let f = reevaluate(&model, &source, r.index, &rest, r.predicted);
            prop_assert!(
                f < c.threshold + 1e-5,
                "remaining pixels still reach τ: {} (τ = {})",
                f,
                c.threshold
            );
            prop_assert_eq!(Some(c.sis[0].clone()), r.find_sis(c.threshold));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_exact_sis_is_sufficient(seed in 0u64..10_000, classes in 2i64..5) {
        check_every_sis_sufficient(seed, Method::Exact, classes, &[0.5, 0.9])?;
    }

    #[test]
    fn every_gradient_sis_is_sufficient(seed in 0u64..10_000, classes in 2i64..5, k in 1u32..6) {
        check_every_sis_sufficient(seed, Method::Gradient { k }, classes, &[0.6, 0.999])?;
    }

    /// Two-class linear model, k = 1: gradient and exact BackSelect agree.
    ///
    /// f = σ(±g) with g(M) = Σ_q a_q (1 − M_q) + b, a_q = w_q·x_q: the logit
    /// difference is linear in the mask. Exact removal of q gives σ(±(g − a_q)),
    /// largest for the smallest ±a_q; the mask gradient is σ'(±g)·(∓a_q), largest
    /// for the same q because σ' > 0 is common to all pixels. So both orders are
    /// "ascending ±a_q" at every step. (With 3+ classes f is no longer monotone in
    /// one linear function of the mask and the orders can differ.) The a_q are a
    /// shuffled grid with spacing 0.02 and zero sum, keeping |g| ≤ 4.5 so σ'·0.02
    /// stays far above the 1e-6 tie-break noise and f32 rounding.
    #[test]
    fn gradient_k1_order_equals_exact_on_linear_model(
        perm in Just((0..36).collect::<Vec<usize>>()).prop_shuffle(),
        pixels in proptest::collection::vec(64u8..=255, 36),
        b in -1.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let hw = 6;
        let a: Vec<f32> = perm.iter().map(|&i| (i as f32 - 17.5) * 0.02).collect();
        let x: Vec<f32> = pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
        let w: Vec<f32> = a.iter().zip(&x).map(|(a, x)| a / x).collect();
        let model = LinearModel { w: Tensor::from_slice(&w), b, hw };
        let source = MemSource {
            shape: [1, 6, 6],
            pixels: pixels.clone(),
            labels: vec![0],
            norm: Normalization { mean: vec![0.0], std: vec![1.0] },
        };
        let thresholds = vec![0.5];
        let exact = collect(&model, &source, &[0], &SisParams { thresholds: thresholds.clone(), ..SisParams::default() }).unwrap();
        let grad = collect(&model, &source, &[0], &SisParams { method: Method::Gradient { k: 1 }, thresholds, seed, ..SisParams::default() }).unwrap();
        prop_assert_eq!(&exact[0].removal_step, &grad[0].removal_step);
        // Expected order from the derivation: ascending ±a_q.
        let sign = if exact[0].predicted == 0 { 1.0 } else { -1.0 };
        let mut by_a: Vec<usize> = (0..36).collect();
        by_a.sort_by(|&i, &j| (sign * a[i]).total_cmp(&(sign * a[j])));
        for (s, &q) in by_a.iter().enumerate() {
            prop_assert_eq!(exact[0].removal_step[q], s as u32);
        }
        for (e, g) in exact[0].confidence_history.iter().zip(&grad[0].confidence_history) {
            prop_assert!((e - g).abs() < 1e-5);
        }
    }

    /// With k > 1 the in-block ranks make the gradient method's total removal order
    /// the exact one on a linear model (the score `−∇L = ∓a_q` is the same at every
    /// step): blocks are consecutive runs of the exact order, and inside a block the
    /// highest score counts as removed first, as k = 1 steps would remove it.
    #[test]
    fn gradient_blocks_with_ranks_follow_the_exact_order_on_linear_model(
        perm in Just((0..36).collect::<Vec<usize>>()).prop_shuffle(),
        pixels in proptest::collection::vec(64u8..=255, 36),
        k in 2u32..7,
        seed in any::<u64>(),
    ) {
        let a: Vec<f32> = perm.iter().map(|&i| (i as f32 - 17.5) * 0.02).collect();
        let x: Vec<f32> = pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
        let w: Vec<f32> = a.iter().zip(&x).map(|(a, x)| a / x).collect();
        let model = LinearModel { w: Tensor::from_slice(&w), b: 0.3, hw: 6 };
        let source = MemSource {
            shape: [1, 6, 6],
            pixels,
            labels: vec![0],
            norm: Normalization { mean: vec![0.0], std: vec![1.0] },
        };
        let thresholds = vec![0.5];
        let exact = collect(&model, &source, &[0], &SisParams { thresholds: thresholds.clone(), ..SisParams::default() }).unwrap();
        let grad = collect(&model, &source, &[0], &SisParams { method: Method::Gradient { k }, thresholds, seed, ..SisParams::default() }).unwrap();
        let order = exact[0].removal_order();
        prop_assert_eq!(&grad[0].removal_order(), &order);
        for (pos, &q) in order.iter().enumerate() {
            prop_assert_eq!(grad[0].removal_step[q as usize], pos as u32 / k);
            prop_assert_eq!(grad[0].rank_in_block[q as usize], pos as u32 % k);
        }
        // So a fraction cutting a block keeps exact BackSelect's pixels: 5 of 36.
        prop_assert_eq!(grad[0].top_fraction(5.0 / 36.0), exact[0].top_fraction(5.0 / 36.0));
    }
}

// ---------------------------------------------------------------------------
// Engine behaviour and bad input.

#[test]
fn gradient_backselect_accumulates_no_parameter_gradient() -> Result<(), SisError> {
    let model = ConvNet::new(7, 3, 5);
    assert!(model
        .vs
        .trainable_variables()
        .iter()
        .all(|v| v.requires_grad()));
    let source = random_source(7, 2, [3, 5, 5]);
    let params = SisParams {
        method: Method::Gradient { k: 3 },
        thresholds: vec![0.2],
        ..SisParams::default()
    };
    collect(&model, &source, &[0, 1], &params)?;
    for v in model.vs.trainable_variables() {
        assert!(!v.grad().defined(), "a parameter gradient was accumulated");
    }
    Ok(())
}

#[test]
fn results_repeat_and_do_not_depend_on_batch_composition() -> Result<(), SisError> {
    let model = ConvNet::new(11, 4, 5);
    let source = random_source(11, 4, [3, 5, 5]);
    let params = SisParams {
        method: Method::Gradient { k: 2 },
        thresholds: vec![0.3],
        seed: 5,
        ..SisParams::default()
    };
    let together = collect(&model, &source, &[0, 1, 2, 3], &params)?;
    let again = collect(&model, &source, &[0, 1, 2, 3], &params)?;
    assert_eq!(together, again);
    let alone = collect(&model, &source, &[2], &params)?;
    assert_eq!(alone[0].removal_step, together[2].removal_step);
    let other_seed = collect(
        &model,
        &source,
        &[0, 1, 2, 3],
        &SisParams { seed: 6, ..params },
    )?;
    assert_eq!(other_seed.len(), 4);
    Ok(())
}

#[test]
fn tie_noise_matches_host_hash_and_is_standard_normal() -> Result<(), SisError> {
    let p = 4096;
    let noise = TieNoise::new(p, Device::Cpu)?;
    let keys = [12345i64, 0xdead_beef];
    let sample = Vec::<f32>::try_from(noise.sample(&keys)?.view([-1]))?;
    // Host reference: same hash on u32, Box–Muller in f64.
    for (row, &key) in keys.iter().enumerate() {
        for q in [0usize, 1, 17, 4095] {
            let input = |salt: u64| ((key as u64 + 2 * q as u64 + salt) & 0xffff_ffff) as u32;
            let u1 = (f64::from(lowbias32(input(0)) >> 8) + 0.5) / f64::from(1u32 << 24);
            let u2 = f64::from(lowbias32(input(1)) >> 8) / f64::from(1u32 << 24);
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let got = f64::from(sample[row * p as usize + q]);
            assert!((got - z).abs() < 1e-4, "key {key} pixel {q}: {got} vs {z}");
        }
    }
    let n = sample.len() as f64;
    let mean = sample.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = sample
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.08,
        "mean {mean} var {var}"
    );
    assert_ne!(sample[..p as usize], sample[p as usize..]);
    // lowbias32 values from an independent Python run:
    //   M=0xffffffff; x^=x>>16; x=(x*0x7feb352d)&M; x^=x>>15; x=(x*0x846ca68b)&M; x^=x>>16
    for (v, h) in [
        (1u32, 0x6889_90c0u32),
        (2, 0xd113_2181),
        (12345, 0x912e_fcf7),
        (0xdead_beef, 0xe628_c683),
    ] {
        assert_eq!(lowbias32(v), h);
    }
    Ok(())
}

#[test]
fn wrong_output_shape_is_a_clear_error() {
    let model = Faulty {
        inner: GroupModel {
            groups: vec![vec![5]],
            scale: 10.0,
            hw: 4,
        },
        fault: Fault::Rows,
    };
    let source = MemSource::ones(1, [1, 4, 4]);
    let err = collect(&model, &source, &[0], &SisParams::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SisError::OutputShape {
                batch: 1,
                classes: 2,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("faulty group model") && msg.contains("[2, 2]"),
        "{msg}"
    );
}

#[test]
fn nan_logits_are_a_clear_error_in_both_methods() {
    // NaN only once pixel 3 is masked: the first forward is fine, BackSelect is not.
    let source = MemSource::ones(1, [1, 4, 4]);
    for method in [Method::Exact, Method::Gradient { k: 2 }] {
        let model = Faulty {
            inner: GroupModel {
                groups: vec![vec![5, 6, 9]],
                scale: 10.0,
                hw: 4,
            },
            fault: Fault::NanWhenMasked(3),
        };
        let params = SisParams {
            method,
            thresholds: vec![0.9],
            ..SisParams::default()
        };
        let err = collect(&model, &source, &[0], &params).unwrap_err();
        assert!(
            matches!(err, SisError::NonFinite { .. }),
            "{method:?}: {err}"
        );
        assert!(err.to_string().contains("NaN or infinite"), "{err}");
    }
}

#[test]
fn mismatched_input_shape_and_bad_params_are_rejected() {
    let model = GroupModel {
        groups: vec![vec![5]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(1, [1, 5, 5]);
    let err = collect(&model, &source, &[0], &SisParams::default()).unwrap_err();
    assert!(matches!(err, SisError::InputShape { .. }), "{err}");
    let source = MemSource::ones(1, [1, 4, 4]);
    for bad in [
        SisParams {
            thresholds: vec![],
            ..SisParams::default()
        },
        SisParams {
            thresholds: vec![0.0],
            ..SisParams::default()
        },
        SisParams {
            thresholds: vec![f32::NAN],
            ..SisParams::default()
        },
        SisParams {
            method: Method::Gradient { k: 0 },
            ..SisParams::default()
        },
        SisParams {
            batch_size: 0,
            ..SisParams::default()
        },
    ] {
        assert!(
            matches!(
                collect(&model, &source, &[0], &bad),
                Err(SisError::Params(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        collect(&model, &source, &[3], &SisParams::default()),
        Err(SisError::Data(_))
    ));
}

#[test]
fn stop_flag_ends_between_mini_batches_and_emit_errors_propagate() -> Result<(), SisError> {
    let model = GroupModel {
        groups: vec![vec![5, 6, 9]],
        scale: 10.0,
        hw: 4,
    };
    let source = MemSource::ones(5, [1, 4, 4]);
    let params = SisParams {
        method: Method::Gradient { k: 4 },
        batch_size: 2,
        ..SisParams::default()
    };
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let summary = run_sis(
        &model,
        &source,
        &[0, 1, 2, 3, 4],
        &params,
        |r| {
            seen.push(r.index);
            stop.store(true, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        },
        &stop,
    )?;
    assert_eq!(
        summary,
        SisRunSummary {
            emitted: 2,
            stopped: true
        }
    );
    assert_eq!(seen, vec![0, 1]);
    let err = run_sis(
        &model,
        &source,
        &[4, 3],
        &params,
        |_| Err(std::io::Error::other("disk full")),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(err, SisError::Emit { index: 4, .. }), "{err}");
    Ok(())
}

#[test]
fn params_round_trip_through_json() {
    let params = SisParams {
        method: Method::Gradient { k: 100 },
        thresholds: vec![0.9, 0.99],
        ..SisParams::default()
    };
    let json = serde_json::to_string(&params).unwrap();
    assert!(
        json.contains(r#""method":{"kind":"gradient","k":100}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<SisParams>(&json).unwrap(), params);
    // Missing fields take the defaults.
    let partial: SisParams = serde_json::from_str(r#"{"method":{"kind":"exact"}}"#).unwrap();
    assert_eq!(partial, SisParams::default());
}

#[test]
fn gradient_backselect_runs_the_same_inside_no_grad() -> Result<(), SisError> {
    // A caller (a worker, a bench) may hold a no-grad guard; the mask gradient
    // must still be recorded.
    let model = ConvNet::new(3, 3, 5);
    let source = random_source(3, 2, [3, 5, 5]);
    let eval = Evaluator::new(&model);
    let (x, _) = crate::data::batch(&source, &[0, 1], Device::Cpu)?;
    let (predicted, _) = eval.predict(&x, &[0, 1])?;
    let present = vec![vec![true; 25]; 2];
    let input = BackSelectInput {
        xs: &x,
        present: &present,
        targets: &predicted,
        noise_keys: &[1, 2],
        images: &[0, 1],
    };
    let plain = gradient_backselect(&eval, &input, Objective::LogOdds, 2, None)?;
    let guarded = tch::no_grad(|| gradient_backselect(&eval, &input, Objective::LogOdds, 2, None))?;
    assert_eq!(plain, guarded);
    Ok(())
}

/// `L` of removing each of `picks` from `x` `[1, C, H, W]` where `present`: the
/// log-odds against class `c` (`logsumexp` of the other logits minus `c`'s), by hand.
fn removal_l(
    model: &dyn Classifier,
    x: &Tensor,
    present: &[bool],
    picks: &[u32],
    c: i64,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let [_, h, w] = model.input_shape();
    let _guard = tch::no_grad_guard();
    let mut out = Vec::new();
    for &q in picks {
        let mut keep: Vec<f32> = present.iter().map(|&on| f32::from(u8::from(on))).collect();
        keep[q as usize] = 0.0;
        let logits = model
            .forward(&(x * Tensor::from_slice(&keep).view([1, 1, h, w])), false)?
            .to_kind(Kind::Double)
            .get(0);
        let own = logits.double_value(&[c]);
        let others = logits.index_fill(0, &Tensor::from_slice(&[c]), f64::NEG_INFINITY);
        out.push(others.logsumexp([0], false).double_value(&[]) - own);
    }
    Ok(out)
}

/// Batch norm folded (a frozen native model) leaves exact BackSelect's removal orders
/// as the same model evaluated as trained gives them, up to a near-tie: where two
/// orders first differ, the two picks' `L` at their common state are within 1e-5.
#[test]
fn folded_batch_norm_leaves_exact_orders_equal_up_to_a_near_tie(
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::models::tests::{deterministic_weights, uniform};
    use crate::models::{Arch, ModelConfig, NativeModel, FOLDS};
    use crate::util::SplitMix64;

    let shape = [1, 10, 10];
    let p = 10 * 10;
    let build = || -> Result<NativeModel, SisError> {
        let config = ModelConfig::new(Arch::SmallCnn, 10, shape);
        let model =
            NativeModel::new(config, Device::Cpu).map_err(|e| SisError::Params(e.to_string()))?;
        deterministic_weights(model.var_store().expect("native"), &mut SplitMix64::new(7));
        Ok(model)
    };
    // Parameters tracking gradients are never folded; frozen ones are.
    let as_trained = build()?;
    let mut folded = build()?;
    folded.freeze();
    let x = uniform(&[2, 1, 10, 10], &mut SplitMix64::new(8)) * 2.0;
    let images = [0u64, 1];
    let run = |model: &dyn Classifier| -> Result<(Vec<i64>, Vec<BackSelectTrace>), SisError> {
        let eval = Evaluator::new(model);
        let (predicted, _) = eval.predict(&x, &images)?;
        let present = vec![vec![true; p]; 2];
        let input = BackSelectInput {
            xs: &x,
            present: &present,
            targets: &predicted,
            noise_keys: &images,
            images: &images,
        };
        let traces = exact_backselect(&eval, &input, Objective::LogOdds, 64, None)?;
        Ok((predicted, traces))
    };
    let (classes, trained) = run(&as_trained)?;
    let before = FOLDS.with(|n| n.get());
    let (folded_classes, folded_traces) = run(&folded)?;
    assert_eq!(
        FOLDS.with(|n| n.get()) - before,
        2,
        "both conv → BN units folded"
    );
    assert_eq!(classes, folded_classes);
    for (i, (a, b)) in trained.iter().zip(&folded_traces).enumerate() {
        let d = (0..p).find(|&t| a.order[t] != b.order[t]).unwrap_or(p);
        // Up to there the states are the same, and so are the confidences.
        for t in 0..d {
            let (fa, fb) = (a.history[t], b.history[t]);
            assert!(
                (fa - fb).abs() < 1e-5,
                "image {i} step {t}: f {fa} as trained, {fb} folded"
            );
        }
        if d == p {
            continue;
        }
        let mut present = vec![true; p];
        for &q in &a.order[..d] {
            present[q as usize] = false;
        }
        let x_i = x.narrow(0, i as i64, 1);
        let l = removal_l(
            &as_trained,
            &x_i,
            &present,
            &[a.order[d], b.order[d]],
            classes[i],
        )?;
        eprintln!(
            "image {i}: orders first differ at step {d} of {p}, L {:?}",
            l
        );
        assert!(
            (l[0] - l[1]).abs() < 1e-5,
            "image {i} step {d}: not a near-tie, L {l:?}"
        );
    }
    Ok(())
}
