//! The SIS gallery (the paper's Figure 1): for each predicted class, the first test
//! image (in store order) with a SIS at τ, drawn as original | SIS location | SIS image.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::analyses::Gallery;
use crate::data::ImageSource;
use crate::sis::ImageSis;

/// The picked image of each predicted class: (index, label, SIS pixels).
#[derive(Debug)]
pub struct GalleryPicks {
    tau: f32,
    rows: BTreeMap<i64, (usize, i64, Vec<u32>)>,
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
        if let Some(sis) = rec.find_sis(self.tau) {
            self.rows
                .insert(rec.predicted, (rec.index as usize, rec.label, sis));
        }
    }

    /// Writes `gallery-<model>.png` into `dir` (if any class has a SIS) reading only
    /// the picked images of `test`.
    pub fn write(self, model: &str, test: &dyn ImageSource, dir: &Path) -> anyhow::Result<Gallery> {
        let indices: Vec<usize> = self.rows.values().map(|r| r.0).collect();
        let kept_by_index: BTreeMap<usize, Vec<u32>> =
            self.rows.values().map(|r| (r.0, r.2.clone())).collect();
        let file = format!(
            "gallery-{}.png",
            model.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let kept = |i: usize| Ok(kept_by_index.get(&i).cloned().unwrap_or_default());
        if !indices.is_empty() {
            crate::subsets::export::export_png_gallery(test, &kept, &indices, 4, &dir.join(&file))?;
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
        })
    }
}
