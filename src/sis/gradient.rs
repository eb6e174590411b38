//! Batched Gradient BackSelect (paper S5).
//!
//! The mask `M` (1 = masked) starts at the pixels already absent. Each step runs one
//! forward of `x ⊙ (1−M)` for the whole mini-batch and one backward to `M` only
//! (`run_backward` with `M` as the sole input: no parameter gradient is computed or
//! accumulated), adds seeded Gaussian noise of std 1e-6 to break ties, and masks the
//! `k` unmasked pixels with the largest score: by first order, the pixels whose
//! masking raises `f` most (lowers it least).
//!
//! The score is `−∇_M Σ L` by default ([`Objective::LogOdds`]): per image it orders
//! pixels exactly as the paper's `∇_M f` does (`∇f = −f(1−f)·∇L`) but keeps its
//! magnitude where an fp32 `f` saturates at 1 and `∇f` vanishes. The noise is added
//! to `−∇L`, so relative to the gradient it is the paper's noise scaled by
//! `1/(f(1−f))`: it decides near-ties, not the order. Inside a block, pixels count
//! as removed in descending score (the rank recorded per pixel), as `k = 1` steps
//! would remove them.
//!
//! Everything stays on the device until the run ends; the host reads the removal
//! steps, ranks and the confidence history once.

use tch::{Device, Kind, Tensor};

use super::engine::{BackSelectInput, Evaluator, Health};
use super::{BackSelectTrace, Objective, SisError};

/// Standard deviation of the tie-break noise added to the mask gradient (S5).
pub const TIE_NOISE_STD: f64 = 1e-6;

/// Runs Batched Gradient BackSelect with `k` pixels per step for every job of
/// `input` together. All jobs lose `k` pixels per step; a job with fewer present
/// pixels than the others finishes earlier and then sits fully masked. Pixels are
/// scored by `objective` (see the module doc). `max_steps` cuts the run short
/// (benchmarks; traces are then partial).
pub fn gradient_backselect(
    eval: &Evaluator,
    input: &BackSelectInput,
    objective: Objective,
    k: u32,
    max_steps: Option<usize>,
) -> Result<Vec<BackSelectTrace>, SisError> {
    let jobs = input.targets.len();
    let (p, h, w, device) = input.geometry()?;
    let k = i64::from(k.max(1));
    let counts: Vec<i64> = input
        .present
        .iter()
        .map(|pr| pr.iter().filter(|&&on| on).count() as i64)
        .collect();
    let max_count = counts.iter().copied().max().unwrap_or(0);
    let mut steps = ((max_count + k - 1) / k) as usize;
    if let Some(m) = max_steps {
        steps = steps.min(m);
    }
    let mut health = Health::new(input.images);
    let targets = Tensor::from_slice(input.targets).f_to_device(device)?;
    let present = Tensor::from_slice(&input.present_f32())
        .f_to_device(device)?
        .f_view([jobs as i64, p])?;
    // M: 1 where masked. Absent pixels start masked.
    let mut mask = present.f_neg()?.f_add_scalar(1.0)?;
    // Step at which each pixel was removed; -1 = not removed by this run.
    let mut step_of = Tensor::f_full([jobs as i64, p], -1i64, (Kind::Int64, device))?;
    // Rank inside the step's block: 0 = highest score = counted as removed first.
    let mut rank_of = Tensor::f_zeros([jobs as i64, p], (Kind::Int64, device))?;
    let l_kind = (objective == Objective::LogOdds).then_some(Kind::Float);
    let noise = TieNoise::new(p, device)?;
    let mut history: Vec<Tensor> = Vec::with_capacity(steps + 1);

    for t in 0..steps {
        let m_var = mask.f_detach()?.set_requires_grad(true);
        // Recorded even when the caller runs under no_grad: the mask is the
        // only leaf that requires a gradient.
        let (f, total) = tch::with_grad(|| -> Result<(Tensor, Tensor), SisError> {
            let keep = m_var.f_neg()?.f_add_scalar(1.0)?;
            let xm = input.xs.f_mul(&keep.f_view([jobs as i64, 1, h, w])?)?;
            let (f, l, finite) =
                eval.confidence_and_log_odds_deferred(&xm, &targets, input.images, l_kind)?;
            health.note(finite)?;
            let total = match l {
                Some(l) => l.f_sum(Kind::Float)?,
                None => f.f_sum(Kind::Float)?,
            };
            Ok((f, total))
        })?;
        if t > 0 {
            history.push(f.f_detach()?);
        }
        let grads = Tensor::f_run_backward(&[total], &[&m_var], false, false)?;
        let grad = grads
            .into_iter()
            .next()
            .ok_or_else(|| SisError::Params("libtorch returned no gradient for the mask".into()))?;
        health.note(grad.f_isfinite()?.f_all()?)?;
        let keys: Vec<i64> = input
            .noise_keys
            .iter()
            .map(|&key| step_key(key, t as u64))
            .collect();
        // Larger score = masking the pixel raises f more: −∇L, or ∇f.
        let grad = match objective {
            Objective::LogOdds => grad.f_neg()?,
            Objective::Confidence => grad,
        };
        let score = grad
            .f_add(&noise.sample(&keys)?.f_mul_scalar(TIE_NOISE_STD)?)?
            .f_masked_fill(&mask.f_gt(0.5)?, f64::NEG_INFINITY)?;
        // Most pixels any job still has: no job takes more than that.
        let left = max_count - t as i64 * k;
        let take = k.min(left);
        let (values, idx) = score.f_topk(take, 1, true, true)?;
        // A job with fewer than `take` pixels left gets -inf entries: already-masked
        // pixels, for which setting M = 1 again is a no-op; their step stays.
        let valid = values.f_isfinite()?;
        mask = mask.f_scatter_value(1, &idx, 1.0)?;
        let old = step_of.f_gather(1, &idx, false)?;
        let new = old.f_where_self(
            &valid.f_logical_not()?,
            &Tensor::f_scalar_tensor(t as i64, (Kind::Int64, device))?,
        )?;
        step_of = step_of.f_scatter(1, &idx, &new)?;
        // topk sorted its columns by descending score: column j is rank j.
        let cols = Tensor::f_arange(take, (Kind::Int64, device))?
            .f_unsqueeze(0)?
            .f_expand([jobs as i64, take], false)?;
        let old_rank = rank_of.f_gather(1, &idx, false)?;
        let new_rank = old_rank.f_where_self(&valid.f_logical_not()?, &cols)?;
        rank_of = rank_of.f_scatter(1, &idx, &new_rank)?;
    }
    // f once the last block is masked: one more forward, no gradient.
    if steps > 0 {
        let _guard = tch::no_grad_guard();
        let xm =
            input.xs.f_mul(
                &mask
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_view([jobs as i64, 1, h, w])?,
            )?;
        let (f, finite) = eval.confidence_deferred(&xm, &targets, input.images)?;
        health.note(finite)?;
        history.push(f);
    }
    health.check(eval, "logits or mask gradients")?;

    // One transfer each for the steps and the history.
    let step_host: Vec<i64> =
        Vec::<i64>::try_from(step_of.f_to_device(Device::Cpu)?.f_view([-1])?)?;
    let rank_host: Vec<i64> =
        Vec::<i64>::try_from(rank_of.f_to_device(Device::Cpu)?.f_view([-1])?)?;
    let hist_host: Vec<f32> = if history.is_empty() {
        Vec::new()
    } else {
        // [steps, J] → row-major
        Vec::<f32>::try_from(
            Tensor::f_stack(&history, 0)?
                .f_to_device(Device::Cpu)?
                .f_view([-1])?,
        )?
    };
    let mut traces = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let job_steps = (((counts[j] + k - 1) / k) as usize).min(steps);
        let row = j * p as usize..(j + 1) * p as usize;
        let mut removed: Vec<(i64, i64, u32)> = step_host[row.clone()]
            .iter()
            .zip(&rank_host[row])
            .enumerate()
            .filter(|(_, (&s, _))| s >= 0)
            .map(|(q, (&s, &r))| (s, r, q as u32))
            .collect();
        removed.sort_unstable();
        let order: Vec<u32> = removed.iter().map(|&(_, _, q)| q).collect();
        let mut block_ends = Vec::with_capacity(job_steps);
        for (i, &(s, _, _)) in removed.iter().enumerate() {
            if removed.get(i + 1).is_none_or(|&(next, _, _)| next != s) {
                block_ends.push(i as u32 + 1);
            }
        }
        let history = (0..job_steps).map(|s| hist_host[s * jobs + j]).collect();
        traces.push(BackSelectTrace {
            order,
            block_ends,
            history,
        });
    }
    Ok(traces)
}

/// Mixes a job's noise key with the step number (host side, one value per job).
fn step_key(key: u64, step: u64) -> i64 {
    i64::from(lowbias32(
        lowbias32((key ^ (key >> 32)) as u32) ^ lowbias32(step as u32 ^ 0x9e37_79b9),
    ))
}

/// Chris Wellons' `lowbias32` integer hash: a bijection on u32 with low bias.
pub(crate) fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Seeded N(0, 1) noise computed on the device from (key, pixel) by an integer
/// hash and Box–Muller, so it costs a few elementwise ops per step instead of a
/// host-to-device copy, and depends on nothing but the key and the pixel.
pub(crate) struct TieNoise {
    /// `[1, p]` pixel indices (int64).
    pixels: Tensor,
    device: Device,
}

const MASK32: i64 = 0xffff_ffff;

impl TieNoise {
    pub(crate) fn new(p: i64, device: Device) -> Result<Self, SisError> {
        Ok(Self {
            pixels: Tensor::f_arange(p, (Kind::Int64, device))?.f_unsqueeze(0)?,
            device,
        })
    }

    /// `[keys.len(), p]` standard normal samples; row `j` depends only on `keys[j]`.
    pub(crate) fn sample(&self, keys: &[i64]) -> Result<Tensor, SisError> {
        let base = Tensor::from_slice(keys)
            .f_to_device(self.device)?
            .f_unsqueeze(1)?;
        let stream = |salt: i64| -> Result<Tensor, SisError> {
            // Distinct u32 input per (key, pixel, salt), then the hash.
            let x = base
                .f_add(&self.pixels.f_mul_scalar(2)?.f_add_scalar(salt)?)?
                .f_bitwise_and(MASK32)?;
            lowbias32_tensor(&x)
        };
        let scale = 1.0 / f64::from(1u32 << 24);
        // 24 high bits → uniform in (0, 1) (u1 never 0, so the log is finite).
        let u1 = stream(0)?
            .f_bitwise_right_shift_tensor_scalar(8)?
            .f_to_kind(Kind::Float)?
            .f_add_scalar(0.5)?
            .f_mul_scalar(scale)?;
        let u2 = stream(1)?
            .f_bitwise_right_shift_tensor_scalar(8)?
            .f_to_kind(Kind::Float)?
            .f_mul_scalar(scale)?;
        let radius = u1.f_log()?.f_mul_scalar(-2.0)?.f_sqrt()?;
        let angle = u2.f_mul_scalar(2.0 * std::f64::consts::PI)?.f_cos()?;
        Ok(radius.f_mul(&angle)?)
    }
}

/// [`lowbias32`] on an int64 tensor holding u32 values; every product is kept
/// below 2^63 by splitting the multiplicand into 16-bit halves.
fn lowbias32_tensor(x: &Tensor) -> Result<Tensor, SisError> {
    let xorshift = |x: &Tensor, s: i64| -> Result<Tensor, SisError> {
        Ok(x.f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(s)?)?)
    };
    let mulmod = |x: &Tensor, c: i64| -> Result<Tensor, SisError> {
        let hi = x
            .f_bitwise_right_shift_tensor_scalar(16)?
            .f_mul_scalar(c)?
            .f_bitwise_and(0xffff)?;
        let lo = x.f_bitwise_and(0xffff)?.f_mul_scalar(c)?;
        Ok(hi
            .f_mul_scalar(1i64 << 16)?
            .f_add(&lo)?
            .f_bitwise_and(MASK32)?)
    };
    let x = xorshift(x, 16)?;
    let x = mulmod(&x, 0x7feb_352d)?;
    let x = xorshift(&x, 15)?;
    let x = mulmod(&x, 0x846c_a68b)?;
    xorshift(&x, 16)
}
