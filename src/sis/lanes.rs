//! CPU lanes: one BackSelect's jobs split into a fixed number of contiguous parts,
//! each run on its own OS thread with one libtorch intra-op thread and its own copy
//! of the model.
//!
//! Why: on CPU, libtorch parallelizes each operator over its intra-op threads and
//! joins them again before the next; ResNet20 on a mini-batch of 32 CIFAR-sized
//! images is made of many small operators, so the cores spend much of a step waiting
//! on each other. Independent parts need no joins. `scripts/bench-vs-reference`
//! measures both ways in one run (`lanes` against `levers off`).
//!
//! Results are fixed by the job, not by the machine. A part's bits can differ from
//! the whole batch's in the last place (a batch's make-up picks libtorch's kernel
//! blocking), so the number of lanes is a job parameter like the precision: resolved
//! once where the job is decided (`auto` = the libtorch thread count there on CPU,
//! 1 on a GPU), recorded in the store, and used by every worker and every resume.
//! The parts depend only on the number of jobs and of lanes, and each part runs on
//! one thread whatever the machine's cores; a machine with fewer cores than lanes
//! runs the same parts, its threads taking turns.

use std::ops::Range;
use std::sync::Mutex;

use tch::Tensor;

use super::engine::{BackSelectInput, Evaluator};
use super::{BackSelectTrace, SisError};
use crate::models::Classifier;

/// The models one extra lane computes with: copies of the job's model, and of its
/// reduced-precision copy where the job has one.
pub struct Lane {
    pub model: Box<dyn Classifier>,
    pub reduced: Option<Box<dyn Classifier>>,
}

/// The extra lanes of a job (lane 0 is the calling thread with the job's own model).
/// Locked for the length of one BackSelect.
#[derive(Default)]
pub struct Lanes(Mutex<Vec<Lane>>);

impl Lanes {
    /// `extra` lanes besides the calling thread.
    pub fn new(extra: Vec<Lane>) -> Self {
        Self(Mutex::new(extra))
    }

    /// How many lanes a BackSelect is split into (1 = not split).
    pub fn count(&self) -> usize {
        self.0.lock().map_or(1, |l| l.len() + 1)
    }

    /// Whether every extra lane has a reduced-precision copy exactly when `reduced`.
    pub fn reduced_copies_match(&self, reduced: bool) -> bool {
        self.0
            .lock()
            .is_ok_and(|l| l.iter().all(|lane| lane.reduced.is_some() == reduced))
    }
}

/// `jobs` split into at most `lanes` contiguous, non-empty parts whose sizes differ by
/// at most one (the later parts take the extra jobs).
pub fn parts(jobs: usize, lanes: usize) -> Vec<Range<usize>> {
    let n = lanes.clamp(1, jobs.max(1));
    (0..n).map(|i| i * jobs / n..(i + 1) * jobs / n).collect()
}

/// Runs `run` (one BackSelect method) on `input` split into the evaluator's lanes,
/// the parts concurrently, and returns the traces in job order. Without extra lanes
/// it is `run(eval, input)`.
///
/// With lanes, every part, the calling thread's included and even when there are
/// fewer jobs than lanes, runs under `no_grad` (the methods enable gradients where
/// they need them) and with one intra-op thread; the calling thread's thread count is
/// restored afterwards, on errors and panics too.
pub fn in_lanes<F>(
    eval: &Evaluator,
    input: &BackSelectInput,
    run: F,
) -> Result<Vec<BackSelectTrace>, SisError>
where
    F: Fn(&Evaluator, &BackSelectInput) -> Result<Vec<BackSelectTrace>, SisError> + Sync,
{
    let Some(lanes) = eval.lanes() else {
        return run(eval, input);
    };
    let mut extra = lanes.0.lock().map_err(|_| {
        SisError::Params("CPU lanes unusable: a BackSelect panicked while holding them".into())
    })?;
    let jobs = input.targets.len();
    if extra.is_empty() || jobs == 0 {
        return run(eval, input);
    }
    let ranges = parts(jobs, extra.len() + 1);
    let mut xs = ranges
        .iter()
        .map(|r| input.xs.f_narrow(0, r.start as i64, r.len() as i64))
        .collect::<Result<Vec<Tensor>, _>>()?;
    let kind = eval.reduced_kind();
    let lists = Lists {
        present: input.present,
        targets: input.targets,
        noise_keys: input.noise_keys,
        images: input.images,
    };
    let run = &run;
    let _restore = OneThread::enter();
    let first_xs = xs.remove(0);
    let outcome =
        std::thread::scope(|s| {
            let handles: Vec<_> = extra
                .iter_mut()
                .zip(ranges.iter().skip(1).cloned())
                .zip(xs)
                .map(|((lane, r), part_xs)| {
                    s.spawn(move || {
                        // The first query initializes this new thread's count from
                        // libtorch's process-wide one; only then is setting it final.
                        let _ = tch::get_num_threads();
                        tch::set_num_threads(1);
                        let _guard = tch::no_grad_guard();
                        let mut ev = Evaluator::new(lane.model.as_ref());
                        if let (Some(low), Some(kind)) = (&lane.reduced, kind) {
                            ev = ev.with_reduced(low.as_ref(), kind);
                        }
                        run(&ev, &lists.part(&part_xs, r))
                    })
                })
                .collect();
            let first = tch::no_grad(|| run(eval, &lists.part(&first_xs, ranges[0].clone())));
            let mut traces = vec![first];
            for h in handles {
                traces.push(h.join().unwrap_or_else(|_| {
                    Err(SisError::Params("a CPU lane's thread panicked".into()))
                }));
            }
            traces
        });
    let mut all = Vec::with_capacity(jobs);
    for part in outcome {
        all.extend(part?);
    }
    Ok(all)
}

/// A [`BackSelectInput`]'s per-job lists without its images tensor, which a thread
/// cannot borrow (`Tensor` is not `Sync`): each lane gets its own narrowed tensor.
#[derive(Clone, Copy)]
struct Lists<'a> {
    present: &'a [Vec<bool>],
    targets: &'a [i64],
    noise_keys: &'a [u64],
    images: &'a [u64],
}

impl<'a> Lists<'a> {
    /// The input of jobs `r`, whose images are `xs`.
    fn part(self, xs: &'a Tensor, r: Range<usize>) -> BackSelectInput<'a> {
        BackSelectInput {
            xs,
            present: &self.present[r.clone()],
            targets: &self.targets[r.clone()],
            noise_keys: &self.noise_keys[r],
            images: self.images,
        }
    }
}

/// One intra-op thread on the calling thread until dropped, then its previous count.
struct OneThread {
    previous: i32,
}

impl OneThread {
    fn enter() -> Self {
        let previous = tch::get_num_threads();
        tch::set_num_threads(1);
        Self { previous }
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.previous);
    }
}
