//! Input dropout as Carter et al. use it against overinterpretation (Section 4.5):
//! each **pixel** (all channels together) is kept with probability `p` (0.8 in the
//! paper) and dropped pixels are set to 0 — the dataset mean after normalization —
//! at train *and* test time, with no `1/p` rescaling of the kept pixels.

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::{Classifier, ModelError};
use crate::util::SplitMix64;

/// Rejects keep probabilities outside `(0, 1]`.
pub(crate) fn check_keep_prob(keep_prob: f64) -> Result<(), ModelError> {
    if keep_prob > 0.0 && keep_prob <= 1.0 {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "input dropout keeps each pixel with probability p, which must be in (0, 1]; got {keep_prob} \
             (the paper uses 0.8)"
        )))
    }
}

/// Wraps any [`Classifier`] with input dropout.
///
/// Masks have shape `[N, 1, H, W]` and broadcast over channels, so a dropped pixel is
/// dropped in every channel; kept pixels pass through unchanged.
///
/// - **Training** (`train = true`) draws a fresh mask per image and call from tch's
///   global RNG (so `tch::manual_seed` makes training reproducible), as dropout does.
/// - **Evaluation** (`train = false`) multiplies every image by **one fixed keep-mask**
///   `[1, 1, H, W]`, drawn once from `seed` when the wrapper is built ([`SplitMix64`],
///   independent of tch's RNG). This makes the model a deterministic function of its
///   input, which SIS requires (`f` is evaluated many times on nested subsets and must
///   not change between calls), and the same checkpoint evaluates identically on
///   every machine. The paper samples at test time too; a fixed mask is that sampling
///   done once. Pixels under the mask's zeros are invisible to the model, so SIS never
///   needs them; the same seed gives the same mask for every image.
pub struct InputDropout {
    /// The wrapped model; receives the masked images.
    inner: Box<dyn Classifier>,
    /// Probability of keeping a pixel.
    keep_prob: f64,
    /// Where the evaluation mask came from, for `describe` and the model config.
    seed: u64,
    /// The evaluation keep-mask, `[1, 1, H, W]` of 0/1 in float, on the model's device.
    eval_mask: Tensor,
}

impl std::fmt::Debug for InputDropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The evaluation keep-mask for an `h × w` image: pixel `i` (row-major) is kept when
/// the `i`-th uniform draw (the top 53 bits of [`SplitMix64`]) from `seed` is below
/// `keep_prob`.
pub fn eval_keep_mask(h: i64, w: i64, keep_prob: f64, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..h * w)
        .map(|_| if rng.unit() < keep_prob { 1.0 } else { 0.0 })
        .collect()
}

impl InputDropout {
    /// Wraps `inner`, keeping each pixel with probability `keep_prob`; the evaluation
    /// mask is drawn from `seed`.
    pub fn new(inner: Box<dyn Classifier>, keep_prob: f64, seed: u64) -> Result<Self, ModelError> {
        check_keep_prob(keep_prob)?;
        let [_, h, w] = inner.input_shape();
        let mask = eval_keep_mask(h, w, keep_prob, seed);
        let eval_mask = Tensor::f_from_slice(&mask)?
            .f_reshape([1, 1, h, w])?
            .f_to_device(inner.device())?;
        Ok(Self {
            inner,
            keep_prob,
            seed,
            eval_mask,
        })
    }

    /// The fixed evaluation keep-mask, `[1, 1, H, W]`, 1 = kept.
    pub fn eval_mask(&self) -> &Tensor {
        &self.eval_mask
    }

    /// Probability of keeping a pixel.
    pub fn keep_prob(&self) -> f64 {
        self.keep_prob
    }

    /// The wrapped model.
    pub fn inner(&self) -> &dyn Classifier {
        self.inner.as_ref()
    }
}

impl Classifier for InputDropout {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        super::native::check_input(xs, self.inner.input_shape())?;
        let mask = if train {
            let size = xs.size();
            let shape = [size[0], 1, size[2], size[3]];
            Tensor::f_rand(shape, (Kind::Float, xs.device()))?
                .f_lt(self.keep_prob)?
                .f_to_kind(xs.kind())?
        } else {
            self.eval_mask.f_to_kind(xs.kind())?
        };
        self.inner.forward(&xs.f_mul(&mask)?, train)
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

    /// The inner model's parameters: training the wrapper trains the model inside.
    fn var_store(&self) -> Option<&nn::VarStore> {
        self.inner.var_store()
    }

    fn set_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
        self.inner.set_kind(kind)
    }

    fn var_store_mut(&mut self) -> Option<&mut nn::VarStore> {
        self.inner.var_store_mut()
    }

    fn freeze(&mut self) {
        self.inner.freeze()
    }

    /// The inner configuration with this wrapper's input dropout recorded, so a
    /// checkpoint rebuilds the same wrapper with the same evaluation mask.
    fn model_config(&self) -> Option<ModelConfig> {
        self.inner
            .model_config()
            .map(|c| c.with_input_dropout(self.keep_prob, self.seed))
    }

    fn describe(&self) -> String {
        format!(
            "{} with input dropout (keep p = {}, eval mask seed {})",
            self.inner.describe(),
            self.keep_prob,
            self.seed
        )
    }
}
