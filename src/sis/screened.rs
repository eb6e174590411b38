//! Screened exact BackSelect: exact BackSelect's choice, made among the `M` pixels a
//! gradient pass ranks best.
//!
//! Exact BackSelect evaluates every remaining pixel at every step: `p(p+1)/2` forwards
//! per image. Here each step first runs one forward+backward of the current masked
//! images (the whole mini-batch together) to the mask, ranks the remaining pixels by
//! the same score as Batched Gradient BackSelect (`−∇_M L` by default, see
//! [`Objective`]), and evaluates only the best `M` exactly; the step removes the one
//! with the smallest `L` (ties: lowest pixel index), as exact does. About `p·M`
//! forwards plus `p` gradient passes instead of `p²/2` forwards. Where the best
//! candidate of exact BackSelect is among the screened `M` the step's choice is
//! exact's; with `M ≥ p` it is always, and the run is exact BackSelect bit for bit
//! (the candidates then are every remaining pixel, in exact's order and batches).
//!
//! [`agreement`] measures how far a screened run strays from exact: steps with the
//! same choice, identical SISes, Jaccard of the backselect subsets.

use tch::{Kind, Tensor};

use super::engine::{BackSelectInput, Evaluator, Health};
use super::exact::{screened_exact, Screen};
use super::{BackSelectTrace, ImageSis, Objective, SisError};

/// Runs screened exact BackSelect for every job of `input`, evaluating the `screen`
/// best-ranked remaining pixels of each job exactly at each step. `ranker` computes
/// the mask gradient (`eval` itself, or its reduced-precision copy); `eval` the
/// candidates. Other arguments as for [`super::exact::exact_backselect`].
pub fn screened_backselect(
    eval: &Evaluator,
    ranker: &Evaluator,
    input: &BackSelectInput,
    objective: Objective,
    screen: u32,
    candidate_batch: usize,
    max_steps: Option<usize>,
) -> Result<Vec<BackSelectTrace>, SisError> {
    let (_, h, w, device) = input.geometry()?;
    let mut ranker = GradientScreen {
        eval: ranker,
        input,
        targets: Tensor::from_slice(input.targets).f_to_device(device)?,
        objective,
        screen: screen.max(1) as usize,
        hw: (h, w),
    };
    screened_exact(
        eval,
        input,
        objective,
        candidate_batch,
        max_steps,
        Some(&mut ranker),
    )
}

/// Ranks remaining pixels by one mask gradient per step.
struct GradientScreen<'a> {
    eval: &'a Evaluator<'a>,
    input: &'a BackSelectInput<'a>,
    /// `[J]` target classes on the device.
    targets: Tensor,
    objective: Objective,
    /// Candidates per job and step (`M`).
    screen: usize,
    hw: (i64, i64),
}

impl Screen for GradientScreen<'_> {
    fn candidates(
        &mut self,
        present: &Tensor,
        remaining: &[Vec<u32>],
    ) -> Result<Vec<Vec<u32>>, SisError> {
        let jobs = remaining.len() as i64;
        let (h, w) = self.hw;
        let take = remaining
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .min(self.screen);
        if take == 0 {
            return Ok(vec![Vec::new(); remaining.len()]);
        }
        let m_var = present
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_detach()?
            .set_requires_grad(true);
        let mut health = Health::new(self.input.images);
        let l_kind = (self.objective == Objective::LogOdds).then_some(Kind::Float);
        // The caller runs under no_grad; the mask is the only leaf needing a gradient.
        let total = tch::with_grad(|| -> Result<Tensor, SisError> {
            let keep = m_var.f_neg()?.f_add_scalar(1.0)?;
            let xm = self.input.xs.f_mul(&keep.f_view([jobs, 1, h, w])?)?;
            let (f, l, finite) = self.eval.confidence_and_log_odds_deferred(
                &xm,
                &self.targets,
                self.input.images,
                l_kind,
            )?;
            health.note(finite)?;
            Ok(match l {
                Some(l) => l.f_sum(Kind::Float)?,
                None => f.f_sum(Kind::Float)?,
            })
        })?;
        let grad = Tensor::f_run_backward(&[total], &[&m_var], false, false)?
            .into_iter()
            .next()
            .ok_or_else(|| SisError::Params("libtorch returned no gradient for the mask".into()))?;
        health.note(grad.f_isfinite()?.f_all()?)?;
        health.check(self.eval, "logits or mask gradients")?;
        // Larger score = masking the pixel raises f more: −∇L, or ∇f.
        let score = match self.objective {
            Objective::LogOdds => grad.f_neg()?,
            Objective::Confidence => grad,
        }
        .f_masked_fill(&present.f_lt(0.5)?, f64::NEG_INFINITY)?;
        let (_, idx) = score.f_topk(take as i64, 1, true, false)?;
        let idx = Vec::<i64>::try_from(idx.f_to_device(tch::Device::Cpu)?.f_view([-1])?)?;
        // A job with fewer than `take` pixels left gets masked pixels (score −∞)
        // among its top entries: only remaining pixels are candidates.
        Ok(remaining
            .iter()
            .enumerate()
            .map(|(j, rem)| {
                let mut picked: Vec<u32> = idx[j * take..(j + 1) * take]
                    .iter()
                    .map(|&q| q as u32)
                    .filter(|q| rem.binary_search(q).is_ok())
                    .collect();
                picked.sort_unstable();
                picked
            })
            .collect())
    }
}

/// How closely one image's screened BackSelect follows exact BackSelect.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Image index.
    pub index: u64,
    /// Steps of the first BackSelect that removed the same pixel in both.
    pub steps_same_choice: usize,
    /// Steps before the first step whose choices differ (the runs' states are
    /// identical up to there).
    pub steps_before_divergence: usize,
    /// Steps in total (`p`).
    pub steps: usize,
    /// Thresholds whose whole SIS collection is identical in both.
    pub identical_collections: usize,
    /// Thresholds compared.
    pub thresholds: usize,
    /// Jaccard `|A ∩ B| / |A ∪ B|` of the two backselect subsets of 5 % of the pixels.
    pub jaccard_5pct: f64,
}

/// Compares a screened (or any other) record with the exact record of the same image.
/// The records must be of one image and carry the same thresholds.
pub fn agreement(exact: &ImageSis, other: &ImageSis) -> Result<Agreement, SisError> {
    if exact.index != other.index || exact.removal_step.len() != other.removal_step.len() {
        return Err(SisError::Params(format!(
            "agreement needs records of one image: got images {} ({} pixels) and {} ({} pixels)",
            exact.index,
            exact.removal_step.len(),
            other.index,
            other.removal_step.len()
        )));
    }
    let a = exact.removal_order();
    let b = other.removal_order();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let identical = exact
        .collections
        .iter()
        .zip(&other.collections)
        .filter(|(x, y)| x.threshold == y.threshold && x.sis == y.sis)
        .count();
    let jaccard =
        crate::subsets::stability::jaccard(&exact.top_fraction(0.05), &other.top_fraction(0.05));
    Ok(Agreement {
        index: exact.index,
        steps_same_choice: same,
        steps_before_divergence: prefix,
        steps: exact.confidence_history.len(),
        identical_collections: identical,
        thresholds: exact.collections.len(),
        jaccard_5pct: jaccard,
    })
}
