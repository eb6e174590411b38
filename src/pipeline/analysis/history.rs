//! The confidence history along BackSelect (the paper's Figure S10): `f` in the
//! predicted class as pixels are removed, for a few sampled images and the mean over
//! all of them. Streaming: the state is one line per sampled image and one sum per
//! BackSelect step, whatever the number of images.

use super::super::analyses::ConfidenceHistory;
use crate::sis::ImageSis;

/// Images drawn as single lines (the first ones in store order).
pub const SAMPLE: usize = 12;

/// Accumulates the mean history (by step) and the sampled lines.
#[derive(Debug, Default)]
pub struct HistoryAcc {
    /// Per step: Σ fraction of pixels removed, Σ f, images with that step.
    sum_removed: Vec<f64>,
    sum_f: Vec<f64>,
    count: Vec<usize>,
    sample: Vec<(usize, Vec<(f64, f64)>)>,
    images: usize,
}

impl HistoryAcc {
    /// Adds one record: its history as (fraction removed, f) points, starting from the
    /// full image (0 removed, `f(x)`).
    pub fn add(&mut self, rec: &ImageSis) {
        let p = rec.removal_step.len().max(1);
        let steps = rec.confidence_history.len();
        // Pixels removed at each step, then cumulated.
        let mut removed = vec![0usize; steps];
        for &s in &rec.removal_step {
            if let Some(r) = removed.get_mut(s as usize) {
                *r += 1;
            }
        }
        let mut points = Vec::with_capacity(steps + 1);
        points.push((0.0, rec.confidence as f64));
        let mut done = 0;
        for (s, (&f, r)) in rec.confidence_history.iter().zip(&removed).enumerate() {
            done += r;
            let x = done as f64 / p as f64;
            points.push((x, f as f64));
            if self.count.len() <= s {
                self.sum_removed.resize(s + 1, 0.0);
                self.sum_f.resize(s + 1, 0.0);
                self.count.resize(s + 1, 0);
            }
            self.sum_removed[s] += x;
            self.sum_f[s] += f as f64;
            self.count[s] += 1;
        }
        if self.sample.len() < SAMPLE {
            self.sample.push((rec.index as usize, points));
        }
        self.images += 1;
    }

    pub fn finish(self, model: &str, full_confidence_mean: f64) -> ConfidenceHistory {
        let mut mean = vec![(0.0, full_confidence_mean)];
        mean.extend(
            self.sum_removed
                .iter()
                .zip(&self.sum_f)
                .zip(&self.count)
                .filter(|(_, &n)| n > 0)
                .map(|((x, f), &n)| (x / n as f64, f / n as f64)),
        );
        ConfidenceHistory {
            model: model.to_string(),
            mean,
            sample: self.sample,
            images: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64, steps: Vec<u32>, history: Vec<f32>, f: f32) -> ImageSis {
        ImageSis {
            index,
            label: 0,
            predicted: 0,
            confidence: f,
            height: 1,
            width: steps.len() as u32,
            removal_step: steps,
            rank_in_block: Vec::new(),
            confidence_history: history,
            collections: Vec::new(),
        }
    }

    #[test]
    fn mean_history_by_step_by_hand() {
        let mut acc = HistoryAcc::default();
        // 4 pixels, 2 per step: after step 0 half removed, after step 1 all.
        acc.add(&rec(0, vec![0, 1, 0, 1], vec![0.8, 0.2], 1.0));
        acc.add(&rec(1, vec![1, 0, 1, 0], vec![0.6, 0.0], 0.9));
        let h = acc.finish("m", 0.95);
        assert_eq!(h.images, 2);
        // (0, 0.95), (0.5, (0.8+0.6)/2), (1, (0.2+0)/2).
        let want = [(0.0, 0.95), (0.5, 0.7), (1.0, 0.1)];
        for (got, want) in h.mean.iter().zip(want) {
            assert!((got.0 - want.0).abs() < 1e-6 && (got.1 - want.1).abs() < 1e-6);
        }
        assert_eq!(h.sample[1].1[0], (0.0, 0.8999999761581421));
    }
}
