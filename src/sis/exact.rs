//! Exact BackSelect (Carter et al. 2019): at every step, try removing each
//! remaining pixel and keep the removal that leaves the highest `f` — by default
//! compared as the smallest `L = logsumexp_{j≠c}(z_j − z_c)` in float64 from the fp32
//! logits, which still orders candidates where an fp32 `f` rounds to 1.0 for all of
//! them ([`Objective`]).
//!
//! Candidates of all images of a call are pooled into one list and evaluated in
//! forwards of `candidate_batch` masked images under `no_grad`. A batch is built
//! with two tensor ops (gather the current images — one copy — then zero each
//! candidate's pixel in every channel in place with a scatter); the only per-step host work is
//! the arg-best over the returned scores and the bookkeeping of which pixels
//! remain.

use tch::{Device, Kind, Tensor};

use super::engine::{BackSelectInput, Evaluator, Health};
use super::{BackSelectTrace, Objective, SisError};

/// Runs exact BackSelect for every job of `input` (job `j`: image `xs[j]`, pixels
/// `present[j]` present, target class `targets[j]`), one pixel per step until
/// none remain, or for at most `max_steps` steps (for benchmarks; the traces are
/// then partial). Candidates are compared by `objective`; exact ties go to the
/// lowest pixel index. The history records `f` (fp32 softmax) of each chosen state.
pub fn exact_backselect(
    eval: &Evaluator,
    input: &BackSelectInput,
    objective: Objective,
    candidate_batch: usize,
    max_steps: Option<usize>,
) -> Result<Vec<BackSelectTrace>, SisError> {
    screened_exact(eval, input, objective, candidate_batch, max_steps, None)
}

/// Chooses, before each step, which remaining pixels are evaluated exactly; the
/// step then removes the best of them. Exact BackSelect evaluates all of them.
pub(crate) trait Screen {
    /// `present` `[J, p]` (1 = present, on the device) and each job's remaining
    /// pixels, ascending. Returns per job an ascending subset of its remaining
    /// pixels, non-empty where the job has any left.
    fn candidates(
        &mut self,
        present: &Tensor,
        remaining: &[Vec<u32>],
    ) -> Result<Vec<Vec<u32>>, SisError>;
}

/// Exact BackSelect over the candidates `screen` picks per step (all remaining
/// pixels without one). With every remaining pixel picked, the batches, scores
/// and choices are those of [`exact_backselect`] bit for bit.
pub(crate) fn screened_exact(
    eval: &Evaluator,
    input: &BackSelectInput,
    objective: Objective,
    candidate_batch: usize,
    max_steps: Option<usize>,
    mut screen: Option<&mut dyn Screen>,
) -> Result<Vec<BackSelectTrace>, SisError> {
    let _guard = tch::no_grad_guard();
    let jobs = input.targets.len();
    let (p, h, w, device) = input.geometry()?;

    // Host bookkeeping: remaining pixels per job, ascending (so the first maximum
    // in a job's segment is the lowest pixel index).
    let mut remaining: Vec<Vec<u32>> = input
        .present
        .iter()
        .map(|pr| {
            pr.iter()
                .enumerate()
                .filter(|(_, &on)| on)
                .map(|(q, _)| q as u32)
                .collect()
        })
        .collect();
    let mut traces: Vec<BackSelectTrace> = (0..jobs)
        .map(|j| BackSelectTrace {
            order: Vec::with_capacity(remaining[j].len()),
            block_ends: Vec::with_capacity(remaining[j].len()),
            history: Vec::with_capacity(remaining[j].len()),
        })
        .collect();

    // Device state: present mask [J, p] (flat view for index_fill_) and the masked
    // images it yields.
    let mut present_flat = Tensor::from_slice(&input.present_f32()).f_to_device(device)?;
    let targets = Tensor::from_slice(input.targets).f_to_device(device)?;
    let mut x_cur = input
        .xs
        .f_mul(&present_flat.f_view([jobs as i64, 1, h, w])?)?;

    let mut step = 0usize;
    loop {
        if max_steps.is_some_and(|m| step >= m) {
            break;
        }
        if remaining.iter().all(Vec::is_empty) {
            break;
        }
        let screened = match screen.as_deref_mut() {
            Some(s) => Some(s.candidates(&present_flat.f_view([jobs as i64, p])?, &remaining)?),
            None => None,
        };
        let cands: &[Vec<u32>] = screened.as_deref().unwrap_or(&remaining);
        let (f_all, l_all) = score_candidates(
            eval,
            &x_cur,
            &targets,
            cands,
            objective,
            candidate_batch,
            input.images,
        )?;

        // Best per job (the first best = lowest pixel index), then remove it.
        let mut chosen = Vec::with_capacity(jobs);
        let mut offset = 0usize;
        for (j, cand) in cands.iter().enumerate() {
            let n = cand.len();
            if n == 0 {
                // A screen must offer a candidate wherever pixels remain, or the
                // loop would never end.
                if !remaining[j].is_empty() {
                    return Err(SisError::Params(format!(
                        "image {}: the screen offered no candidate among {} remaining pixels",
                        input.images.get(j).copied().unwrap_or_default(),
                        remaining[j].len()
                    )));
                }
                continue;
            }
            let seg = &f_all[offset..offset + n];
            let best = match objective {
                Objective::LogOdds => first_min(&l_all[offset..offset + n]),
                Objective::Confidence => first_max(seg),
            };
            offset += n;
            chosen.push((j, cand[best], seg[best]));
        }
        let mut removed_flat = Vec::with_capacity(jobs);
        for (j, q, f) in chosen {
            let rem = &mut remaining[j];
            let at = rem.binary_search(&q).map_err(|_| {
                SisError::Params(format!("screened candidate {q} is not a remaining pixel"))
            })?;
            rem.remove(at);
            let trace = &mut traces[j];
            trace.order.push(q);
            trace.block_ends.push(trace.order.len() as u32);
            trace.history.push(f);
            removed_flat.push(j as i64 * p + i64::from(q));
        }
        let removed = Tensor::from_slice(&removed_flat).f_to_device(device)?;
        present_flat = present_flat.f_view([-1])?.f_index_fill(0, &removed, 0.0)?;
        x_cur = input
            .xs
            .f_mul(&present_flat.f_view([jobs as i64, 1, h, w])?)?;
        step += 1;
    }
    Ok(traces)
}

/// `f` (fp32 softmax) and, for [`Objective::LogOdds`], `L` (float64) of every
/// candidate of `cands` (per job, pixels to knock out of its row of `x_cur`
/// `[J, C, H, W]`), flattened job by job, evaluated in no-grad forwards of
/// `candidate_batch` masked images. A batch is two tensor ops: gather the
/// current images (one copy), then zero each candidate's pixel in every channel in
/// place with a scatter.
pub(crate) fn score_candidates(
    eval: &Evaluator,
    x_cur: &Tensor,
    targets: &Tensor,
    cands: &[Vec<u32>],
    objective: Objective,
    candidate_batch: usize,
    images: &[u64],
) -> Result<(Vec<f32>, Vec<f64>), SisError> {
    let _guard = tch::no_grad_guard();
    let size = x_cur.size();
    let (h, w, device) = (size[2], size[3], x_cur.device());
    let p = h * w;
    let candidate_batch = candidate_batch.max(1) as i64;
    let mut health = Health::new(images);
    let c = size[1];
    // Flattened candidate list: (job, pixel) for every candidate.
    let total: usize = cands.iter().map(Vec::len).sum();
    let mut job_idx = Vec::with_capacity(total);
    let mut pix_idx = Vec::with_capacity(total);
    for (j, rem) in cands.iter().enumerate() {
        for &q in rem {
            job_idx.push(j as i64);
            pix_idx.push(i64::from(q));
        }
    }
    let job_t = Tensor::from_slice(&job_idx).f_to_device(device)?;
    let pix_t = Tensor::from_slice(&pix_idx).f_to_device(device)?;
    let mut confidences = Vec::with_capacity(total.div_ceil(candidate_batch as usize));
    let mut log_odds = Vec::with_capacity(confidences.capacity());
    let l_kind = (objective == Objective::LogOdds).then_some(Kind::Double);
    let mut start = 0i64;
    while start < total as i64 {
        let len = candidate_batch.min(total as i64 - start);
        let jb = job_t.f_narrow(0, start, len)?;
        let pb = pix_t.f_narrow(0, start, len)?;
        // The current images of the batch's jobs (one copy), then each candidate's
        // pixel zeroed in place in every channel.
        let cand = x_cur.f_index_select(0, &jb)?;
        let _ = cand.f_view([len, c, p])?.f_scatter_value_(
            2,
            &pb.f_view([len, 1, 1])?.f_expand([len, c, 1], false)?,
            0.0,
        )?;
        let tb = targets.f_index_select(0, &jb)?;
        let (f, l, finite) = eval.confidence_and_log_odds_deferred(&cand, &tb, images, l_kind)?;
        health.note(finite)?;
        confidences.push(f);
        log_odds.extend(l);
        start += len;
    }
    if confidences.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let f_all: Vec<f32> =
        Vec::<f32>::try_from(Tensor::f_cat(&confidences, 0)?.f_to_device(Device::Cpu)?)?;
    let l_all: Vec<f64> = if log_odds.is_empty() {
        Vec::new()
    } else {
        Vec::<f64>::try_from(Tensor::f_cat(&log_odds, 0)?.f_to_device(Device::Cpu)?)?
    };
    health.check(eval, "logits")?;
    Ok((f_all, l_all))
}

/// Position of the first smallest value (so ties go to the lowest pixel index).
fn first_min(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v < values[best] {
            best = i;
        }
    }
    best
}

/// Position of the first largest value.
fn first_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}
