//! FindSIS: which pixels to restore, read from a recorded BackSelect.
//!
//! S5's FindSIS starts from the fully masked input and restores the blocks removed
//! last, one block at a time, until `f ≥ τ`. The state after restoring the last
//! `j` blocks is exactly the BackSelect state before they were removed, whose `f`
//! BackSelect already recorded. So the answer is read off the history, scanning from
//! the fully masked end for the first state with `f ≥ τ`, with no model call. The
//! explicit loop, [`find_sis_by_reevaluation`], is kept as the reference it is
//! tested against.

use tch::{Device, Kind, Tensor};

use super::{Evaluator, SisError};

/// One BackSelect run over a set of present pixels: which pixels went, in which
/// blocks, and the confidence after each block.
#[derive(Clone, Debug, PartialEq)]
pub struct BackSelectTrace {
    /// Pixels in removal order; within a block of the gradient method, in
    /// descending score (the order `k = 1` steps would remove them in).
    pub order: Vec<u32>,
    /// `block_ends[s]`: end of block `s` in `order` (block `s` is
    /// `order[block_ends[s-1]..block_ends[s]]`). Exact BackSelect has blocks of 1.
    pub block_ends: Vec<u32>,
    /// `history[s]`: `f` once blocks `0..=s` are masked.
    pub history: Vec<f32>,
}

impl BackSelectTrace {
    /// Number of BackSelect steps (blocks).
    pub fn steps(&self) -> usize {
        self.block_ends.len()
    }

    /// Start of block `s` in `order`.
    fn block_start(&self, s: usize) -> usize {
        if s == 0 {
            0
        } else {
            self.block_ends[s - 1] as usize
        }
    }

    /// How many trailing blocks FindSIS restores for `threshold`, assuming the
    /// starting state (all of `order` present) has `f ≥ threshold`: the smallest
    /// `j` with `f ≥ τ` after restoring the last `j` blocks, or all blocks when
    /// no recorded state reaches τ. 0 means the fully masked input already has
    /// `f ≥ τ` (the empty set is sufficient).
    pub fn restored_blocks(&self, threshold: f32) -> usize {
        let steps = self.steps();
        // history[s] is the state with the last steps-1-s blocks restored.
        (0..steps)
            .rev()
            .find(|&s| self.history[s] >= threshold)
            .map_or(steps, |s| steps - 1 - s)
    }

    /// The pixels of the last `j` blocks, sorted ascending.
    pub fn last_blocks(&self, j: usize) -> Vec<u32> {
        let steps = self.steps();
        let j = j.min(steps);
        let mut sis = self.order[self.block_start(steps - j)..].to_vec();
        sis.sort_unstable();
        sis
    }

    /// The SIS for `threshold` read from the history (see [`Self::restored_blocks`]).
    pub fn find_sis(&self, threshold: f32) -> Vec<u32> {
        self.last_blocks(self.restored_blocks(threshold))
    }

    /// Per-pixel rank inside its block (position in `order` minus the block's
    /// start) over an image of `pixels` pixels; empty when every block has one
    /// pixel, as [`super::ImageSis::rank_in_block`] stores it. Pixels this
    /// BackSelect never saw get 0.
    pub fn rank_in_block(&self, pixels: usize) -> Vec<u32> {
        let mut start = 0usize;
        let mut rank = Vec::new();
        for &end in &self.block_ends {
            let block = &self.order[start..end as usize];
            if block.len() > 1 {
                if rank.is_empty() {
                    rank = vec![0u32; pixels];
                }
                for (r, &q) in block.iter().enumerate() {
                    rank[q as usize] = r as u32;
                }
            }
            start = end as usize;
        }
        rank
    }

    /// Per-pixel removal step over an image of `pixels` pixels; pixels this
    /// BackSelect never saw get `u32::MAX`.
    pub fn removal_step(&self, pixels: usize) -> Vec<u32> {
        let mut step = vec![u32::MAX; pixels];
        let mut start = 0usize;
        for (s, &end) in self.block_ends.iter().enumerate() {
            for &q in &self.order[start..end as usize] {
                step[q as usize] = s as u32;
            }
            start = end as usize;
        }
        step
    }
}

/// FindSIS on a stored record: the first SIS for `threshold` from an image's
/// per-pixel `removal_step` and `confidence_history` (as in [`super::ImageSis`]),
/// with no model. `None` when `confidence < threshold` (no SIS by definition).
///
/// The SIS is the set of pixels removed after the last recorded state with
/// `f ≥ τ`; an empty SIS means the fully masked input already reaches τ.
pub fn find_sis(
    removal_step: &[u32],
    confidence_history: &[f32],
    confidence: f32,
    threshold: f32,
) -> Option<Vec<u32>> {
    if confidence < threshold {
        return None;
    }
    // Pixels removed at steps > last_ok form the SIS; with no recorded state
    // ≥ τ, every pixel BackSelect removed is in it.
    let first_needed = match confidence_history.iter().rposition(|&f| f >= threshold) {
        Some(s) => s as u64 + 1,
        None => 0,
    };
    Some(
        removal_step
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s != u32::MAX && u64::from(s) >= first_needed)
            .map(|(q, _)| q as u32)
            .collect(),
    )
}

/// S5's Batched Gradient FindSIS as written: start fully masked (only pixels of
/// restored blocks present), pop blocks off the BackSelect stack, re-evaluating the
/// model after each, until `f ≥ τ`. `x` is one normalized image `[C, H, W]`.
/// Returns the sorted SIS, or `None` when even all blocks restored stay below τ.
/// One forward per block tried: the reference the history-based FindSIS must equal.
pub fn find_sis_by_reevaluation(
    eval: &Evaluator,
    x: &Tensor,
    trace: &BackSelectTrace,
    target: i64,
    threshold: f32,
    image: u64,
) -> Result<Option<Vec<u32>>, SisError> {
    let _guard = tch::no_grad_guard();
    let size = x.size();
    let (h, w) = (size[1], size[2]);
    let steps = trace.steps();
    let device = x.device();
    let targets = Tensor::from_slice(&[target]).to_device(device);
    for j in 0..=steps {
        let sis = trace.last_blocks(j);
        let mut mask = vec![0f32; (h * w) as usize];
        for &q in &sis {
            mask[q as usize] = 1.0;
        }
        let mask = Tensor::from_slice(&mask)
            .f_view([1, 1, h, w])?
            .f_to_device(device)?;
        let xs = x.f_unsqueeze(0)?.f_mul(&mask)?;
        let f = eval.confidence(&xs, &targets, &[image])?;
        let f = f
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_double_value(&[0])?;
        if f >= f64::from(threshold) {
            return Ok(Some(sis));
        }
    }
    Ok(None)
}
