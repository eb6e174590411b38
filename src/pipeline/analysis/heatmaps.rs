//! How often each pixel is in the backselect top-q subset (the paper's Figure 2),
//! over all test images and per predicted class: counts of `H·W` per class, so the
//! memory is `(classes + 1)·H·W` floats whatever the number of images.

use std::collections::BTreeMap;

use super::super::analyses::Heatmap;
use crate::sis::ImageSis;

/// Per-class pixel counts (`None`: all images).
#[derive(Debug)]
pub struct HeatmapAcc {
    q: f64,
    size: Option<(usize, usize)>,
    by_class: BTreeMap<Option<i64>, (Vec<f32>, usize)>,
}

impl HeatmapAcc {
    pub fn new(q: f64) -> Self {
        Self {
            q,
            size: None,
            by_class: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, rec: &ImageSis) {
        let (h, w) = *self
            .size
            .get_or_insert((rec.height as usize, rec.width as usize));
        let kept = rec.top_fraction(self.q);
        for class in [None, Some(rec.predicted)] {
            let entry = self
                .by_class
                .entry(class)
                .or_insert_with(|| (vec![0.0; h * w], 0));
            for &p in &kept {
                entry.0[p as usize] += 1.0;
            }
            entry.1 += 1;
        }
    }

    /// Frequencies in `[0, 1]`; empty without images.
    pub fn finish(self, model: &str) -> Vec<Heatmap> {
        let Some((h, w)) = self.size else {
            return Vec::new();
        };
        self.by_class
            .into_iter()
            .map(|(class, (counts, n))| Heatmap {
                model: model.to_string(),
                class,
                height: h,
                width: w,
                values: counts.iter().map(|c| c / n as f32).collect(),
                images: n,
            })
            .collect()
    }
}
