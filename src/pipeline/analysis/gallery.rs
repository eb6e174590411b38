//! The SIS gallery (the paper's Figure 1): for each predicted class, the first test
//! image (in store order) with a SIS at τ, drawn as original | SIS location | SIS image
//! | removal order (the paper's Figure S9: each pixel coloured by when BackSelect
//! removed it, earliest dark, latest — the kept pixels — bright, on the viridis scale).

use std::collections::BTreeMap;
use std::path::Path;

use super::super::analyses::Gallery;
use crate::data::ImageSource;
use crate::sis::ImageSis;

/// The picked image of each predicted class: (index, label, SIS pixels, pixels in
/// removal order).
#[derive(Debug)]
pub struct GalleryPicks {
    tau: f32,
    rows: BTreeMap<i64, (usize, i64, Vec<u32>, Vec<u32>)>,
}

impl GalleryPicks {
    pub fn new(tau: f32) -> Self {
        Self {
            tau,
            rows: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, rec: &ImageSis) {
        if self.rows.contains_key(&rec.predicted) {
            return;
        }
        // The stored collection's first SIS at τ (verified by the engine when it was
        // computed) where the store has τ; otherwise FindSIS on the history, which
        // `verify` then checks.
        let stored = rec
            .collections
            .iter()
            .find(|c| c.threshold == self.tau)
            .and_then(|c| c.sis.first().cloned());
        if let Some(sis) = stored.or_else(|| rec.find_sis(self.tau)) {
            self.rows.insert(
                rec.predicted,
                (rec.index as usize, rec.label, sis, rec.removal_order()),
            );
        }
    }

    /// Re-evaluates each picked SIS with `model` (all other pixels masked) and drops
    /// those whose confidence in the predicted class is below τ; returns
    /// (checked, verified). The gallery then promises only what was checked.
    pub fn verify(
        &mut self,
        model: &dyn crate::models::Classifier,
        test: &dyn ImageSource,
    ) -> anyhow::Result<(usize, usize)> {
        let [_, h, w] = test.shape();
        let picks: Vec<(i64, usize, Vec<u32>)> = self
            .rows
            .iter()
            .map(|(&pred, r)| (pred, r.0, r.2.clone()))
            .collect();
        if picks.is_empty() {
            return Ok((0, 0));
        }
        let indices: Vec<usize> = picks.iter().map(|p| p.1).collect();
        let mut mask = vec![0f32; picks.len() * h * w];
        for (i, (_, _, sis)) in picks.iter().enumerate() {
            for &p in sis {
                mask[i * h * w + p as usize] = 1.0;
            }
        }
        let device = model.device();
        let (xs, _) = crate::data::batch(test, &indices, device)?;
        let mask = tch::Tensor::from_slice(&mask)
            .view([picks.len() as i64, 1, h as i64, w as i64])
            .to_device(device);
        let probs = tch::no_grad(|| model.forward(&(xs * mask), false))?
            .softmax(-1, tch::Kind::Float)
            .to_device(tch::Device::Cpu);
        let targets = tch::Tensor::from_slice(&picks.iter().map(|p| p.0).collect::<Vec<_>>());
        let f = Vec::<f32>::try_from(probs.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1))?;
        for ((pred, index, _), f) in picks.iter().zip(&f) {
            if *f < self.tau {
                tracing::warn!(
                    index,
                    class = pred,
                    f,
                    tau = self.tau,
                    "SIS below τ when re-evaluated; not shown"
                );
                self.rows.remove(pred);
            }
        }
        Ok((picks.len(), self.rows.len()))
    }

    /// Writes `gallery-<model>.png` into `dir` (if any class has a SIS) reading only
    /// the picked images of `test`.
    pub fn write(
        self,
        model: &str,
        test: &dyn ImageSource,
        dir: &Path,
        (checked, verified): (usize, usize),
    ) -> anyhow::Result<Gallery> {
        let indices: Vec<usize> = self.rows.values().map(|r| r.0).collect();
        let kept_by_index: BTreeMap<usize, Vec<u32>> =
            self.rows.values().map(|r| (r.0, r.2.clone())).collect();
        let file = format!(
            "gallery-{}.png",
            model.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let kept = |i: usize| Ok(kept_by_index.get(&i).cloned().unwrap_or_default());
        let order_by_index: BTreeMap<usize, &Vec<u32>> =
            self.rows.values().map(|r| (r.0, &r.3)).collect();
        let order = |i: usize| Ok(removal_order_colours(order_by_index[&i]));
        if !indices.is_empty() {
            crate::subsets::export::export_png_gallery(
                test,
                &kept,
                Some(&order),
                &indices,
                4,
                &dir.join(&file),
            )?;
        }
        Ok(Gallery {
            model: model.to_string(),
            threshold: self.tau,
            png: file,
            rows: self
                .rows
                .iter()
                .map(|(pred, r)| (r.0, r.1, *pred))
                .collect(),
            checked,
            verified,
        })
    }
}

/// Each pixel's colour by its position in `order` (pixels, first removed first):
/// viridis from dark (removed first) to bright (removed last).
fn removal_order_colours(order: &[u32]) -> Vec<[u8; 3]> {
    let mut colours = vec![[0u8; 3]; order.len()];
    let last = order.len().saturating_sub(1).max(1) as f64;
    for (rank, &q) in order.iter().enumerate() {
        let c = super::super::figures::viridis(rank as f64 / last);
        colours[q as usize] = [c.0, c.1, c.2];
    }
    colours
}
