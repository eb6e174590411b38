//! The small CNN trained on real Fashion-MNIST (14×14, p = 196,
//! `scripts/make-reference-fixture`) and its real test images, run through the engine
//! and, independently of it, through the TorchScript module called directly.

use std::sync::atomic::AtomicBool;

use overinterp::data::{self, ImageSource, Split};
use overinterp::models;
use overinterp::sis::{run_sis_with, ImageSis, Lanes, SisParams};
use tch::{CModule, Device, Kind, Tensor};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const MODEL: &str = "tests/fixtures/models/fmnist14_cnn.pt";
pub const DATA: &str = "tests/fixtures/fmnist14";

pub fn model_path() -> String {
    format!("{ROOT}/{MODEL}")
}

pub fn source() -> Box<dyn ImageSource> {
    let spec: data::DatasetSpec = format!("fashion-mnist:{ROOT}/{DATA}").parse().unwrap();
    data::open_dataset(&spec, Split::Test).unwrap()
}

/// The engine's records for `indices`; with a reduced `params.precision`, a second
/// copy of the model in that kind is loaded as a job would.
pub fn run(params: &SisParams, indices: &[u64]) -> Vec<ImageSis> {
    let source = source();
    let [c, h, w] = source.shape();
    let shape = [c as i64, h as i64, w as i64];
    let model = models::load_model(&model_path(), Device::Cpu, shape).unwrap();
    let reduced = params.precision.reduced_kind().map(|kind| {
        let mut low = models::load_model(&model_path(), Device::Cpu, shape).unwrap();
        low.set_kind(kind).unwrap();
        low
    });
    let mut out = Vec::new();
    run_sis_with(
        model.as_ref(),
        reduced.as_deref(),
        &Lanes::default(),
        source.as_ref(),
        indices,
        params,
        |r| {
            out.push(r);
            Ok::<_, std::io::Error>(())
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    out
}

/// Normalized images `[N, 1, 14, 14]` of `indices`.
pub fn images(indices: &[u64]) -> Tensor {
    let positions: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
    data::batch(source().as_ref(), &positions, Device::Cpu)
        .unwrap()
        .0
}

/// The TorchScript module itself, in eval mode, with parameters in `kind`.
pub fn module(kind: Kind) -> CModule {
    let mut m = CModule::load(model_path()).unwrap();
    m.set_eval();
    m.to(Device::Cpu, kind, false);
    m
}

/// fp32 logits of `xs` through `m`, whatever the module's kind.
pub fn logits(m: &CModule, xs: &Tensor, kind: Kind) -> Tensor {
    let _guard = tch::no_grad_guard();
    m.forward_ts(&[xs.to_kind(kind)])
        .unwrap()
        .to_kind(Kind::Float)
}

/// `L = logsumexp_{j≠c}(z_j − z_c)` per row, in f64 on the host from the logits.
pub fn log_odds_host(logits: &Tensor, c: i64) -> Vec<f64> {
    let z = Vec::<f64>::try_from(logits.to_kind(Kind::Double).view([-1])).unwrap();
    let k = logits.size()[1] as usize;
    z.chunks(k)
        .map(|row| {
            let zc = row[c as usize];
            let others = || {
                row.iter()
                    .enumerate()
                    .filter(move |&(j, _)| j as i64 != c)
                    .map(move |(_, &v)| v - zc)
            };
            let m = others().fold(f64::NEG_INFINITY, f64::max);
            m + others().map(|d| (d - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// Softmax probability of class `c` (fp32) of image `x` `[1, C, H, W]` with only
/// `pixels` present.
pub fn confidence_of(m: &CModule, x: &Tensor, pixels: &[u32], c: i64) -> f32 {
    let size = x.size();
    let mut keep = vec![0f32; (size[2] * size[3]) as usize];
    for &q in pixels {
        keep[q as usize] = 1.0;
    }
    let keep = Tensor::from_slice(&keep).view([1, 1, size[2], size[3]]);
    let z = logits(m, &(x * keep), Kind::Float);
    z.softmax(-1, Kind::Float).double_value(&[0, c]) as f32
}

/// L of every one-pixel removal from the state `present` of image `x`, for the
/// remaining pixels in ascending order, computed with `m` in `kind`.
pub fn removal_log_odds(m: &CModule, x: &Tensor, present: &[bool], c: i64, kind: Kind) -> Vec<f64> {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let keep: Vec<f32> = present.iter().map(|&on| f32::from(u8::from(on))).collect();
    let cand: Vec<Tensor> = (0..present.len())
        .filter(|&q| present[q])
        .map(|q| {
            let mut k = keep.clone();
            k[q] = 0.0;
            Tensor::from_slice(&k).view([1, 1, h, w])
        })
        .collect();
    let batch = x * Tensor::cat(&cand, 0);
    log_odds_host(&logits(m, &batch, kind), c)
}
