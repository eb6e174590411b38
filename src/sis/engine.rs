//! The SIS engine: image indices of a dataset in, one [`ImageSis`] per image out,
//! streamed as each mini-batch finishes so a cluster worker can forward results
//! while it computes the next batch.
//!
//! Per mini-batch: predict (target = predicted class, `f` = its softmax
//! probability), run BackSelect once over all pixels (shared by every threshold),
//! read each threshold's first SIS off the history, then, for collections, repeat
//! BackSelect on the pixels left once earlier SISes are masked until `f < τ`.
//! Every SIS is re-evaluated once (batched) before it is returned; should the
//! model's value on `x_S` fall below τ where the history said otherwise (batch-size
//! dependent rounding, stochastic models) the next removed block is restored too,
//! so every returned SIS satisfies `f(x_S) ≥ τ` as the model computes it alone.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Tensor};

use super::exact::exact_backselect;
use super::gradient::gradient_backselect;
use super::lanes::{in_lanes, Lanes};
use super::precision::reduced_exact_backselect;
use super::screened::screened_backselect;
use super::{BackSelectTrace, ImageSis, Method, Objective, SisCollection, SisError, SisParams};
use crate::data::{self, ImageSource};
use crate::models::Classifier;

/// A model wrapped for SIS: runs forwards in eval mode and validates every output,
/// so a misbehaving model is reported by name instead of corrupting an ordering.
/// Optionally carries a copy of the model in reduced precision, which ranks
/// candidates where `--precision` asks for it (see [`super::precision`]).
pub struct Evaluator<'a> {
    model: &'a dyn Classifier,
    /// Classes the model claims; every output must have exactly this many columns.
    classes: i64,
    /// The parameters' float kind: inputs are cast to it, logits back to fp32.
    kind: Kind,
    /// The same model with parameters in reduced precision, and that kind.
    reduced: Option<(&'a dyn Classifier, Kind)>,
    /// Copies of the model that BackSelects are split across (see [`super::lanes`]).
    lanes: Option<&'a Lanes>,
}

impl<'a> Evaluator<'a> {
    /// An fp32 evaluator of `model`.
    pub fn new(model: &'a dyn Classifier) -> Self {
        Self {
            model,
            classes: model.num_classes(),
            kind: Kind::Float,
            reduced: None,
            lanes: None,
        }
    }

    /// Adds `reduced`, the same model with its parameters in `kind` (BFloat16 or
    /// Half; see [`Classifier::set_kind`]), for the steps that may run in it.
    pub fn with_reduced(mut self, reduced: &'a dyn Classifier, kind: Kind) -> Self {
        self.reduced = Some((reduced, kind));
        self
    }

    /// Adds the extra CPU lanes that [`super::lanes::in_lanes`] splits BackSelects
    /// across; their models must be copies of this evaluator's.
    pub fn with_lanes(mut self, lanes: &'a Lanes) -> Self {
        self.lanes = Some(lanes);
        self
    }

    /// The extra lanes, if any were added.
    pub fn lanes(&self) -> Option<&'a Lanes> {
        self.lanes
    }

    /// The reduced-precision evaluator, if one was added (without lanes).
    pub fn reduced(&self) -> Option<Evaluator<'a>> {
        self.reduced.map(|(model, kind)| Evaluator {
            model,
            classes: self.classes,
            kind,
            reduced: None,
            lanes: None,
        })
    }

    /// The kind of the reduced-precision copy, if one was added.
    pub fn reduced_kind(&self) -> Option<Kind> {
        self.reduced.map(|(_, kind)| kind)
    }

    pub fn model_name(&self) -> String {
        self.model.describe()
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Float logits `[N, classes]` of normalized images `xs` `[N, C, H, W]`, shape
    /// checked; finiteness is not checked here (see [`Self::confidence_deferred`]).
    /// `images` are the dataset indices involved, for error messages.
    pub fn logits(&self, xs: &Tensor, images: &[u64]) -> Result<Tensor, SisError> {
        let batch = xs.size().first().copied().unwrap_or(0);
        let cast;
        let xs = if self.kind == Kind::Float {
            xs
        } else {
            cast = xs.f_to_kind(self.kind)?;
            &cast
        };
        let out = self
            .model
            .forward(xs, false)
            .map_err(|source| SisError::Model {
                model: self.model_name(),
                source,
            })?;
        let got = out.size();
        if got.len() != 2 || got[0] != batch || got[1] != self.classes {
            return Err(SisError::OutputShape {
                model: self.model_name(),
                got,
                batch,
                classes: self.classes,
                images: images.to_vec(),
            });
        }
        Ok(out.f_to_kind(Kind::Float)?)
    }

    /// `f` = softmax probability of `targets[i]` for each image, plus a 0-dim bool
    /// tensor saying whether all logits were finite. The flag stays on the device
    /// so hot loops check it once per step instead of syncing per forward.
    pub fn confidence_deferred(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        images: &[u64],
    ) -> Result<(Tensor, Tensor), SisError> {
        let logits = self.logits(xs, images)?;
        let finite = logits.f_isfinite()?.f_all()?;
        let f = logits
            .f_softmax(-1, Kind::Float)?
            .f_gather(1, &targets.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        Ok((f, finite))
    }

    /// `f` as [`Self::confidence_deferred`] gives it and, when `log_odds` names a
    /// float kind, `L = logsumexp_{j≠c}(z_j − z_c)` computed in that kind from the
    /// same logits (see [`super::objective`]); plus the deferred finiteness flag.
    pub fn confidence_and_log_odds_deferred(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        images: &[u64],
        log_odds: Option<Kind>,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), SisError> {
        let logits = self.logits(xs, images)?;
        let finite = logits.f_isfinite()?.f_all()?;
        let f = logits
            .f_softmax(-1, Kind::Float)?
            .f_gather(1, &targets.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        let l = match log_odds {
            Some(kind) => Some(super::objective::log_odds(&logits, targets, kind)?),
            None => None,
        };
        Ok((f, l, finite))
    }

    /// Like [`Self::confidence_deferred`] but checks finiteness at once.
    pub fn confidence(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        images: &[u64],
    ) -> Result<Tensor, SisError> {
        let (f, finite) = self.confidence_deferred(xs, targets, images)?;
        let mut health = Health::new(images);
        health.note(finite)?;
        health.check(self, "logits")?;
        Ok(f)
    }

    /// Predicted class and its softmax probability for each image (no gradient).
    pub fn predict(&self, xs: &Tensor, images: &[u64]) -> Result<(Vec<i64>, Vec<f32>), SisError> {
        let _guard = tch::no_grad_guard();
        let logits = self.logits(xs, images)?;
        let mut health = Health::new(images);
        health.note(logits.f_isfinite()?.f_all()?)?;
        health.check(self, "logits")?;
        let (conf, pred) = logits.f_softmax(-1, Kind::Float)?.f_max_dim(1, false)?;
        Ok((
            Vec::<i64>::try_from(pred.f_to_device(Device::Cpu)?)?,
            Vec::<f32>::try_from(conf.f_to_device(Device::Cpu)?)?,
        ))
    }

    /// `f(x_j ⊙ mask_j)` for many (image, pixel set) pairs, in forwards of at most
    /// `chunk` images. `xs` `[N, C, H, W]`, `sets[i] = (row of xs, pixels present)`.
    fn confidence_of_subsets(
        &self,
        xs: &Tensor,
        targets: &[i64],
        sets: &[(usize, Vec<u32>)],
        chunk: usize,
        images: &[u64],
    ) -> Result<Vec<f32>, SisError> {
        let _guard = tch::no_grad_guard();
        let size = xs.size();
        let (h, w) = (size[2], size[3]);
        let p = (h * w) as usize;
        let device = xs.device();
        let mut out = Vec::with_capacity(sets.len());
        for part in sets.chunks(chunk.max(1)) {
            let mut mask = vec![0f32; part.len() * p];
            for (i, (_, pixels)) in part.iter().enumerate() {
                for &q in pixels {
                    mask[i * p + q as usize] = 1.0;
                }
            }
            let rows: Vec<i64> = part.iter().map(|(r, _)| *r as i64).collect();
            let tg: Vec<i64> = part.iter().map(|(r, _)| targets[*r]).collect();
            let rows = Tensor::from_slice(&rows).f_to_device(device)?;
            let mask = Tensor::from_slice(&mask).f_to_device(device)?.f_view([
                part.len() as i64,
                1,
                h,
                w,
            ])?;
            let batch = xs.f_index_select(0, &rows)?.f_mul(&mask)?;
            let tg = Tensor::from_slice(&tg).f_to_device(device)?;
            let f = self.confidence(&batch, &tg, images)?;
            out.extend(Vec::<f32>::try_from(f.f_to_device(Device::Cpu)?)?);
        }
        Ok(out)
    }
}

/// Accumulates "all finite" flags on the device; [`Health::check`] reads them once.
pub(crate) struct Health<'a> {
    flag: Option<Tensor>,
    images: &'a [u64],
}

impl<'a> Health<'a> {
    pub(crate) fn new(images: &'a [u64]) -> Self {
        Self { flag: None, images }
    }

    pub(crate) fn note(&mut self, finite: Tensor) -> Result<(), SisError> {
        self.flag = Some(match self.flag.take() {
            None => finite,
            Some(flag) => flag.f_logical_and(&finite)?,
        });
        Ok(())
    }

    pub(crate) fn check(&self, eval: &Evaluator, what: &'static str) -> Result<(), SisError> {
        if let Some(flag) = &self.flag {
            if !bool::try_from(flag.f_to_device(Device::Cpu)?)? {
                return Err(SisError::NonFinite {
                    model: eval.model_name(),
                    what,
                    images: self.images.to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// What a BackSelect runs on: `J` jobs, each an image with some pixels present.
pub struct BackSelectInput<'a> {
    /// Normalized full images `[J, C, H, W]` (absent pixels are masked inside).
    pub xs: &'a Tensor,
    /// Per job, `H·W` flags: which pixels are present at the start.
    pub present: &'a [Vec<bool>],
    /// Per job, the target class whose probability is `f`.
    pub targets: &'a [i64],
    /// Per job, the key of its tie-break noise (gradient method only).
    pub noise_keys: &'a [u64],
    /// Dataset indices involved, for error messages.
    pub images: &'a [u64],
}

impl BackSelectInput<'_> {
    /// `(p, h, w, device)`, after checking that every per-job list has `J` entries.
    pub(crate) fn geometry(&self) -> Result<(i64, i64, i64, Device), SisError> {
        let size = self.xs.size();
        if size.len() != 4 {
            return Err(SisError::Params(format!(
                "BackSelect needs images [J, C, H, W], got {size:?}"
            )));
        }
        let (jobs, h, w) = (size[0] as usize, size[2], size[3]);
        let p = h * w;
        if self.present.len() != jobs
            || self.targets.len() != jobs
            || self.noise_keys.len() != jobs
            || self.present.iter().any(|pr| pr.len() != p as usize)
        {
            return Err(SisError::Params(format!(
                "BackSelect input lists disagree: {jobs} images, {} masks, {} targets, {} noise keys \
                 (each mask needs {p} entries)",
                self.present.len(),
                self.targets.len(),
                self.noise_keys.len()
            )));
        }
        Ok((p, h, w, self.xs.device()))
    }

    /// Present flags as a flat `[J·p]` float vector (1 = present).
    pub(crate) fn present_f32(&self) -> Vec<f32> {
        self.present
            .iter()
            .flat_map(|pr| pr.iter().map(|&on| if on { 1.0 } else { 0.0 }))
            .collect()
    }
}

/// What [`run_sis`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SisRunSummary {
    /// Images whose results were handed to the consumer.
    pub emitted: usize,
    /// Whether the stop flag ended the run before all indices were processed.
    pub stopped: bool,
}

/// Computes SIS results for `indices` of `source` with `model`, `params.batch_size`
/// images at a time, handing each image's [`ImageSis`] to `emit` as soon as its
/// mini-batch is done (in index order within the batch). `stop` is checked between
/// mini-batches: once set, the run returns with `stopped = true` and everything
/// emitted so far complete. A consumer error ends the run.
pub fn run_sis<E>(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    indices: &[u64],
    params: &SisParams,
    emit: impl FnMut(ImageSis) -> Result<(), E>,
    stop: &AtomicBool,
) -> Result<SisRunSummary, SisError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let lanes = Lanes::default();
    run_sis_with(model, None, &lanes, source, indices, params, emit, stop)
}

/// [`run_sis`] with `reduced`, a copy of `model` whose parameters are in the
/// precision `params.precision` names (bf16 or fp16): required exactly when that
/// precision is reduced; and `lanes`, `params.lanes − 1` further copies of both
/// that BackSelects are split across (see [`super::lanes`]).
#[allow(clippy::too_many_arguments)]
pub fn run_sis_with<E>(
    model: &dyn Classifier,
    reduced: Option<&dyn Classifier>,
    lanes: &Lanes,
    source: &dyn ImageSource,
    indices: &[u64],
    params: &SisParams,
    mut emit: impl FnMut(ImageSis) -> Result<(), E>,
    stop: &AtomicBool,
) -> Result<SisRunSummary, SisError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    params.validate()?;
    check_input_shape(model, source)?;
    let eval = match (params.precision.reduced_kind(), reduced) {
        (None, _) => Evaluator::new(model),
        (Some(kind), Some(low)) => Evaluator::new(model).with_reduced(low, kind),
        (Some(_), None) => {
            return Err(SisError::Params(format!(
                "precision {} needs a copy of the model in that precision (SisJob::open loads one)",
                params.precision
            )))
        }
    };
    let wanted = params.lanes.max(1) as usize;
    if lanes.count() != wanted {
        return Err(SisError::Params(format!(
            "the job runs in {wanted} CPU lane(s) but models for {} lane(s) were given \
             (SisJob::open loads one copy per lane)",
            lanes.count()
        )));
    }
    if !lanes.reduced_copies_match(params.precision.reduced_kind().is_some()) {
        return Err(SisError::Params(format!(
            "precision {}: every CPU lane needs a copy of the model in it exactly when the \
             precision is reduced",
            params.precision
        )));
    }
    let eval = eval.with_lanes(lanes);
    let mut emitted = 0;
    for chunk in indices.chunks(params.batch_size) {
        if stop.load(Ordering::SeqCst) {
            return Ok(SisRunSummary {
                emitted,
                stopped: true,
            });
        }
        let started = std::time::Instant::now();
        let results = sis_batch(&eval, source, chunk, params)?;
        tracing::debug!(
            first = chunk[0],
            images = chunk.len(),
            seconds = started.elapsed().as_secs_f64(),
            "sis mini-batch done"
        );
        for result in results {
            let index = result.index;
            emit(result).map_err(|e| SisError::Emit {
                index,
                source: e.into(),
            })?;
            emitted += 1;
        }
    }
    Ok(SisRunSummary {
        emitted,
        stopped: false,
    })
}

fn check_input_shape(model: &dyn Classifier, source: &dyn ImageSource) -> Result<(), SisError> {
    let [c, h, w] = source.shape();
    let got = [c as i64, h as i64, w as i64];
    let expected = model.input_shape();
    if got != expected {
        return Err(SisError::InputShape {
            dataset: source.name(),
            model: model.describe(),
            got,
            expected,
        });
    }
    Ok(())
}

/// One mini-batch: BackSelect, FindSIS and (optionally) collections for every
/// image of `indices`, all threshold at once. The building block of [`run_sis`].
pub fn sis_batch(
    eval: &Evaluator,
    source: &dyn ImageSource,
    indices: &[u64],
    params: &SisParams,
) -> Result<Vec<ImageSis>, SisError> {
    params.validate()?;
    let positions = indices
        .iter()
        .map(|&i| {
            usize::try_from(i).map_err(|_| {
                SisError::Params(format!("image index {i} does not fit this platform"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (xs, labels) = data::batch(source, &positions, eval.device())?;
    let labels = Vec::<i64>::try_from(labels.f_to_device(Device::Cpu)?)?;
    let size = xs.size();
    let (h, w) = (size[2], size[3]);
    let p = (h * w) as usize;
    let n = indices.len();
    let (predicted, confidence) = eval.predict(&xs, indices)?;

    // Round 0: one BackSelect over all pixels, shared by every threshold.
    let all_present = vec![vec![true; p]; n];
    let keys: Vec<u64> = indices
        .iter()
        .map(|&i| noise_key(params.seed, i, 0, 0))
        .collect();
    let first = backselect(
        eval,
        params,
        &BackSelectInput {
            xs: &xs,
            present: &all_present,
            targets: &predicted,
            noise_keys: &keys,
            images: indices,
        },
    )?;

    // One job per (image, threshold) with f(x) ≥ τ.
    let mut jobs: Vec<Job> = Vec::new();
    for (img, &conf) in confidence.iter().enumerate() {
        for (slot, &tau) in params.thresholds.iter().enumerate() {
            if conf >= tau {
                jobs.push(Job {
                    image: img,
                    slot,
                    tau,
                    present: vec![true; p],
                    sis: Vec::new(),
                    done: false,
                });
            }
        }
    }
    let found: Vec<(usize, &BackSelectTrace)> = (0..jobs.len())
        .map(|j| (j, &first[jobs[j].image]))
        .collect();
    let sis = verified_sis(
        eval,
        &xs,
        &predicted,
        &jobs,
        &found,
        params.candidate_batch,
        indices,
    )?;
    for (j, s) in sis {
        jobs[j].accept(s);
    }

    if !params.collection {
        for job in &mut jobs {
            job.done = true;
        }
    }
    let mut round = 1u32;
    loop {
        // Jobs that may hold another SIS: f on the pixels left must still reach τ.
        let open: Vec<usize> = (0..jobs.len()).filter(|&j| !jobs[j].done).collect();
        if open.is_empty() {
            break;
        }
        let sets: Vec<(usize, Vec<u32>)> = open
            .iter()
            .map(|&j| (jobs[j].image, jobs[j].present_pixels()))
            .collect();
        let f_left =
            eval.confidence_of_subsets(&xs, &predicted, &sets, params.candidate_batch, indices)?;
        let mut active = Vec::new();
        for (&j, f) in open.iter().zip(f_left) {
            if f < jobs[j].tau {
                jobs[j].done = true;
            } else {
                active.push(j);
            }
        }
        for part in active.chunks(params.batch_size) {
            let rows = Tensor::from_slice(
                &part
                    .iter()
                    .map(|&j| jobs[j].image as i64)
                    .collect::<Vec<_>>(),
            )
            .f_to_device(xs.device())?;
            let part_xs = xs.f_index_select(0, &rows)?;
            let present: Vec<Vec<bool>> = part.iter().map(|&j| jobs[j].present.clone()).collect();
            let targets: Vec<i64> = part.iter().map(|&j| predicted[jobs[j].image]).collect();
            let keys: Vec<u64> = part
                .iter()
                .map(|&j| {
                    noise_key(
                        params.seed,
                        indices[jobs[j].image],
                        jobs[j].slot as u32 + 1,
                        round,
                    )
                })
                .collect();
            let traces = backselect(
                eval,
                params,
                &BackSelectInput {
                    xs: &part_xs,
                    present: &present,
                    targets: &targets,
                    noise_keys: &keys,
                    images: indices,
                },
            )?;
            let found: Vec<(usize, &BackSelectTrace)> =
                part.iter().copied().zip(traces.iter()).collect();
            let sis = verified_sis(
                eval,
                &xs,
                &predicted,
                &jobs,
                &found,
                params.candidate_batch,
                indices,
            )?;
            for (j, s) in sis {
                jobs[j].accept(s);
            }
        }
        round += 1;
    }
    let mut results = Vec::with_capacity(n);
    for img in 0..n {
        let collections = params
            .thresholds
            .iter()
            .enumerate()
            .map(|(slot, &threshold)| SisCollection {
                threshold,
                sis: jobs
                    .iter()
                    .find(|j| j.image == img && j.slot == slot)
                    .map(|j| j.sis.clone())
                    .unwrap_or_default(),
            })
            .collect();
        results.push(ImageSis {
            index: indices[img],
            label: labels[img],
            predicted: predicted[img],
            confidence: confidence[img],
            height: h as u32,
            width: w as u32,
            removal_step: first[img].removal_step(p),
            rank_in_block: first[img].rank_in_block(p),
            confidence_history: first[img].history.clone(),
            collections,
        });
    }
    Ok(results)
}

/// One (image, threshold) SIS collection in progress.
struct Job {
    /// Row of the mini-batch.
    image: usize,
    /// Position of the threshold in `SisParams::thresholds`.
    slot: usize,
    tau: f32,
    /// Pixels not yet in an SIS of this collection.
    present: Vec<bool>,
    sis: Vec<Vec<u32>>,
    done: bool,
}

impl Job {
    fn present_pixels(&self) -> Vec<u32> {
        self.present
            .iter()
            .enumerate()
            .filter(|(_, &on)| on)
            .map(|(q, _)| q as u32)
            .collect()
    }

    /// Records a found SIS and masks it for the next round. An empty SIS (the
    /// fully masked input already reaches τ) ends the collection: every later
    /// round would find the same empty set.
    fn accept(&mut self, sis: Vec<u32>) {
        for &q in &sis {
            self.present[q as usize] = false;
        }
        if sis.is_empty() || !self.present.iter().any(|&on| on) {
            self.done = true;
        }
        self.sis.push(sis);
    }
}

/// FindSIS from each trace's history, then one batched re-evaluation of every
/// SIS; an SIS the model scores below τ on its own gets the next block restored
/// until it passes or holds every pixel the BackSelect started from (whose `f`
/// was checked before BackSelect ran).
fn verified_sis(
    eval: &Evaluator,
    xs: &Tensor,
    predicted: &[i64],
    jobs: &[Job],
    found: &[(usize, &BackSelectTrace)],
    chunk: usize,
    images: &[u64],
) -> Result<Vec<(usize, Vec<u32>)>, SisError> {
    let mut restored: Vec<usize> = found
        .iter()
        .map(|(j, t)| t.restored_blocks(jobs[*j].tau))
        .collect();
    let mut result: Vec<Option<Vec<u32>>> = vec![None; found.len()];
    let mut pending: Vec<usize> = (0..found.len()).collect();
    while !pending.is_empty() {
        let sets: Vec<(usize, Vec<u32>)> = pending
            .iter()
            .map(|&i| (jobs[found[i].0].image, found[i].1.last_blocks(restored[i])))
            .collect();
        let f = eval.confidence_of_subsets(xs, predicted, &sets, chunk, images)?;
        let mut next = Vec::new();
        for ((&i, (_, sis)), f) in pending.iter().zip(sets).zip(f) {
            let (job, trace) = found[i];
            if f >= jobs[job].tau || restored[i] >= trace.steps() {
                result[i] = Some(sis);
            } else {
                tracing::debug!(
                    image = images[jobs[job].image],
                    threshold = jobs[job].tau,
                    f,
                    "SIS from history fell below the threshold on re-evaluation; restoring one more block"
                );
                restored[i] += 1;
                next.push(i);
            }
        }
        pending = next;
    }
    Ok(found
        .iter()
        .zip(result)
        .map(|((j, _), s)| (*j, s.unwrap_or_default()))
        .collect())
}

/// The method `params` names on `input`, split across the evaluator's lanes.
fn backselect(
    eval: &Evaluator,
    params: &SisParams,
    input: &BackSelectInput,
) -> Result<Vec<BackSelectTrace>, SisError> {
    in_lanes(eval, input, |eval, input| method(eval, params, input))
}

fn method(
    eval: &Evaluator,
    params: &SisParams,
    input: &BackSelectInput,
) -> Result<Vec<BackSelectTrace>, SisError> {
    let objective: Objective = params.objective;
    let low = eval.reduced();
    match (params.method, &low) {
        (Method::Exact, None) => {
            exact_backselect(eval, input, objective, params.candidate_batch, None)
        }
        (Method::Exact, Some(low)) => reduced_exact_backselect(
            eval,
            low,
            input,
            objective,
            params.rerank,
            params.candidate_batch,
            None,
        ),
        (Method::Gradient { k }, _) => {
            gradient_backselect(low.as_ref().unwrap_or(eval), input, objective, k, None)
        }
        (Method::Screened { screen }, _) => screened_backselect(
            eval,
            low.as_ref().unwrap_or(eval),
            input,
            objective,
            screen,
            params.candidate_batch,
            None,
        ),
    }
}

/// Noise key of one BackSelect: depends only on the seed, the image's dataset
/// index, the threshold slot (0 = the shared first BackSelect) and the round.
fn noise_key(seed: u64, image: u64, slot: u32, round: u32) -> u64 {
    let mut z = seed ^ splitmix64(image ^ splitmix64((u64::from(slot) << 32) | u64::from(round)));
    z = splitmix64(z);
    z
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
