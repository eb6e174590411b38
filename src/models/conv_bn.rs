//! A convolution directly followed by batch norm, the unit the native architectures
//! are built from (in the pre-activation ResNet, each block's first convolution and
//! second norm), with the norm folded into the convolution when the model is
//! evaluated frozen.
//!
//! In evaluation a batch norm is a fixed per-channel affine map, so
//! `bn(conv(x; w, b)) = conv(x; w·s, β + (b − μ)·s)` with `s = γ / √(σ² + ε)`.
//! Evaluating the right-hand side skips the norm's pass over every activation, forward
//! and backward to the input: the work SIS repeats millions of times. Only the
//! rounding of the folded weights differs.
//!
//! Folding is automatic and safe to forget about: it applies only in evaluation mode
//! when no parameter of the unit tracks gradients (a frozen model, see
//! [`super::Classifier::freeze`]), and the folded weights are cached under a key of
//! each source tensor's storage, dtype and version counter. Loading weights, an
//! optimizer step (both in-place writes) or a cast ([`super::Classifier::set_kind`],
//! new storage) changes the key, and the next evaluation folds again; the cache holds
//! the sources it was computed from, so a freed storage's address cannot come back
//! with other values under the same key. A training-mode forward updates the running
//! statistics without bumping their version counters (libtorch's batch-norm kernels do
//! not declare those writes), so it drops the cache. Training, and evaluation of a
//! model that is still training, run the unit as written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use super::layers::batch_norm;

/// Process-wide switch, on by default; see [`set_batch_norm_folding`].
static FOLDING: AtomicBool = AtomicBool::new(true);

/// Turns folding of native models' batch norms on or off for the whole process. Off,
/// frozen models evaluate as trained: what benchmarks compare against. Results differ
/// only in rounding, so nothing else needs it.
pub fn set_batch_norm_folding(on: bool) {
    FOLDING.store(on, Ordering::Relaxed);
}

/// Storage, dtype and version of one source tensor: equal keys mean equal values.
type Key = Vec<(usize, Kind, i64)>;

/// Folded weights and the key of the tensors they were computed from.
#[derive(Debug)]
struct Folded {
    key: Key,
    /// Detached handles on the sources (same storage and version counter): their
    /// storages stay allocated while the key names their addresses.
    _sources: Vec<Tensor>,
    ws: Tensor,
    bs: Tensor,
}

/// Conv → batch norm (no activation: residual blocks add before theirs).
#[derive(Debug)]
pub(crate) struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: [i64; 2],
    padding: [i64; 2],
    eps: f64,
    /// Behind a mutex because forward takes `&self`; each model has its own, so it is
    /// never contended (lanes and ranks load their own models).
    folded: Mutex<Option<Folded>>,
}

/// Shape of a convolution: kernel, stride, padding (height, width).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
}

impl ConvShape {
    /// A square kernel.
    pub fn square(kernel: i64, stride: i64, padding: i64) -> Self {
        Self {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }
}

impl ConvBn {
    /// A convolution at `conv` (with a bias when `bias`) and its batch norm at `bn`,
    /// under the checkpoint keys those paths give.
    pub fn new(
        conv: nn::Path,
        bn: nn::Path,
        (c_in, c_out): (i64, i64),
        shape: ConvShape,
        bias: bool,
        eps: f64,
    ) -> Self {
        let config = nn::ConvConfigND::<[i64; 2]> {
            stride: shape.stride,
            padding: shape.padding,
            bias,
            ..Default::default()
        };
        Self {
            conv: nn::conv(conv, c_in, c_out, shape.kernel, config),
            bn: batch_norm(bn, c_out, eps),
            stride: shape.stride,
            padding: shape.padding,
            eps,
            folded: Mutex::new(None),
        }
    }

    /// [`Self::new`] for a convolution without bias and a batch norm with eps 1e-5,
    /// as in the ResNets and the small CNN.
    pub fn no_bias(conv: nn::Path, bn: nn::Path, channels: (i64, i64), shape: ConvShape) -> Self {
        Self::new(conv, bn, channels, shape, false, 1e-5)
    }

    /// The tensors the folded weights are computed from.
    fn sources(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.conv.ws, &self.bn.running_mean, &self.bn.running_var];
        out.extend(self.conv.bs.iter());
        out.extend(self.bn.ws.iter());
        out.extend(self.bn.bs.iter());
        out
    }

    /// The folded weights, computed again when a source changed; `None` where folding
    /// does not apply (switched off, or a source tracks gradients).
    fn folded(&self) -> Option<(Tensor, Tensor)> {
        let sources = self.sources();
        if !FOLDING.load(Ordering::Relaxed) || sources.iter().any(|t| t.requires_grad()) {
            return None;
        }
        let key: Key = sources
            .iter()
            .map(|t| (t.data_ptr() as usize, t.kind(), t.internal_version()))
            .collect();
        let mut cache = self.folded.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().map(|f| &f.key) != Some(&key) {
            #[cfg(test)]
            FOLDS.with(|n| n.set(n.get() + 1));
            let (ws, bs) = tch::no_grad(|| self.fold());
            let _sources = sources.iter().map(|t| t.detach()).collect();
            *cache = Some(Folded {
                key,
                _sources,
                ws,
                bs,
            });
        }
        cache
            .as_ref()
            .map(|f| (f.ws.shallow_clone(), f.bs.shallow_clone()))
    }

    /// `(w·s, β + (b − μ)·s)`, computed in double precision and stored in the
    /// convolution's dtype, so the fold adds one rounding, not several.
    fn fold(&self) -> (Tensor, Tensor) {
        let kind = self.conv.ws.kind();
        let f64 = |t: &Tensor| t.to_kind(Kind::Double);
        let var = f64(&self.bn.running_var);
        let gamma = self.bn.ws.as_ref().map_or_else(|| var.ones_like(), f64);
        let beta = self.bn.bs.as_ref().map_or_else(|| var.zeros_like(), f64);
        let bias = self.conv.bs.as_ref().map_or_else(|| var.zeros_like(), f64);
        let scale = gamma / (var + self.eps).sqrt();
        let ws = f64(&self.conv.ws) * scale.view([-1, 1, 1, 1]);
        let bs = beta + (bias - f64(&self.bn.running_mean)) * scale;
        (ws.to_kind(kind).contiguous(), bs.to_kind(kind).contiguous())
    }

    /// Whether folded weights are cached (for tests).
    #[cfg(test)]
    pub fn is_folded(&self) -> bool {
        self.folded.lock().map(|f| f.is_some()).unwrap_or(false)
    }
}

#[cfg(test)]
thread_local! {
    /// Folds computed on this thread, so a test sees its own model fold.
    pub(crate) static FOLDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            // The running statistics change below without a version bump.
            *self.folded.lock().unwrap_or_else(|e| e.into_inner()) = None;
        } else if let Some((ws, bs)) = self.folded() {
            return xs.conv2d(&ws, Some(&bs), self.stride, self.padding, [1, 1], 1);
        }
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    fn randn(n: i64) -> Tensor {
        Tensor::randn([n], (Kind::Float, Device::Cpu))
    }

    /// Overwrites `t` in place, as loading a checkpoint does.
    fn fill(t: &Tensor, value: &Tensor) {
        tch::no_grad(|| t.shallow_clone().copy_(value));
    }

    /// A 3 → 5 channel unit with non-trivial statistics and affine parameters.
    fn unit(vs: &nn::VarStore, bias: bool) -> ConvBn {
        let unit = ConvBn::new(
            vs.root() / "conv",
            vs.root() / "bn",
            (3, 5),
            ConvShape::square(3, 2, 1),
            bias,
            1e-3,
        );
        fill(&unit.bn.running_mean, &randn(5));
        fill(&unit.bn.running_var, &(randn(5).abs() + 0.1));
        for t in unit.bn.ws.iter().chain(unit.bn.bs.iter()) {
            fill(t, &randn(5));
        }
        unit
    }

    /// Batch norm in evaluation mode written out by hand: the independent result.
    fn by_hand(unit: &ConvBn, xs: &Tensor) -> Tensor {
        let y = xs.apply(&unit.conv);
        let c = |t: &Tensor| t.view([1, -1, 1, 1]);
        let gamma = unit.bn.ws.as_ref().unwrap();
        let beta = unit.bn.bs.as_ref().unwrap();
        (y - c(&unit.bn.running_mean)) / c(&(&unit.bn.running_var + unit.eps)).sqrt() * c(gamma)
            + c(beta)
    }

    #[test]
    fn frozen_units_fold_and_match_batch_norm_by_hand() {
        tch::manual_seed(3);
        for bias in [false, true] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let unit = unit(&vs, bias);
            let xs = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
            let expected = tch::no_grad(|| by_hand(&unit, &xs));

            let trained = unit.forward_t(&xs, false);
            assert!(!unit.is_folded(), "parameters track gradients: no fold");
            vs.freeze();
            let folded = unit.forward_t(&xs, false);
            assert!(unit.is_folded(), "frozen: folded");
            assert!(max_abs_diff(&trained, &expected) < 1e-5);
            assert!(
                max_abs_diff(&folded, &expected) < 1e-5,
                "bias {bias}: {}",
                max_abs_diff(&folded, &expected)
            );
        }
    }

    #[test]
    fn new_weights_are_folded_again() {
        tch::manual_seed(4);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let unit = unit(&vs, false);
        vs.freeze();
        let xs = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let before = unit.forward_t(&xs, false);
        fill(
            &unit.bn.running_mean,
            &Tensor::full([5], 7.0, (Kind::Float, Device::Cpu)),
        );
        let after = unit.forward_t(&xs, false);
        let expected = tch::no_grad(|| by_hand(&unit, &xs));
        assert!(max_abs_diff(&before, &after) > 1e-2, "the change shows");
        assert!(max_abs_diff(&after, &expected) < 1e-5);
        // A training-mode forward moves the running statistics (without a version
        // bump); the next evaluation folds the new ones.
        let _ = unit.forward_t(
            &(Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu)) * 3.0 + 1.0),
            true,
        );
        let trained = unit.forward_t(&xs, false);
        let expected = tch::no_grad(|| by_hand(&unit, &xs));
        assert!(
            max_abs_diff(&trained, &after) > 1e-2,
            "the statistics moved"
        );
        assert!(max_abs_diff(&trained, &expected) < 1e-5);
        // A cast and its reverse leave bf16-rounded weights: folded again, not the
        // fold of the weights before the round trip.
        vs.set_kind(Kind::BFloat16);
        vs.set_kind(Kind::Float);
        let round_trip = unit.forward_t(&xs, false);
        let expected = tch::no_grad(|| by_hand(&unit, &xs));
        assert!(max_abs_diff(&round_trip, &expected) < 1e-5);
        // And a cast: the fold follows the new dtype.
        vs.set_kind(Kind::BFloat16);
        let low = unit.forward_t(&xs.to_kind(Kind::BFloat16), false);
        assert_eq!(low.kind(), Kind::BFloat16);
        let diff = max_abs_diff(&low.to_kind(Kind::Float), &expected);
        assert!(
            diff < 0.05 * expected.abs().max().double_value(&[]),
            "{diff}"
        );
    }
}
