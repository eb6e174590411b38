//! Pixel subsets held as kept-pixel lists: derived from a SIS result store (the
//! backselect top-q subset — the last `⌈q·p⌉` pixels BackSelect removed — or the SIS
//! for a threshold τ) without the model, or loaded from a subset dataset written by
//! `overinterp subsets`. Derived once, so training reads them at memory speed.
//!
//! A subset dataset on disk is a directory with `subset.json` (what it is) and
//! `kept.safetensors`: `indices` int64 `[N]`, `offsets` int64 `[N+1]` and `pixels`
//! int32 `[M]`; image `indices[i]` keeps `pixels[offsets[i]:offsets[i+1]]` (row-major
//! pixel numbers). In Python:
//!
//! ```python
//! from safetensors.numpy import load_file
//! t = load_file("subsets/bs5/kept.safetensors")
//! i = list(t["indices"]).index(42); kept = t["pixels"][t["offsets"][i]:t["offsets"][i+1]]
//! ```

use std::collections::HashMap;
use std::path::Path;

use tch::Tensor;

use super::{MaskSource, SubsetError};
use crate::store::StoreReader;

/// What to keep of each image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The last `⌈q·p⌉` pixels removed by BackSelect (the paper's "BS" subsets).
    BackselectTop(f64),
    /// The first SIS for threshold τ; images without one (f(x) < τ) keep nothing.
    Sis(f32),
}

/// Kept pixels of every image of a dataset split.
#[derive(Debug)]
pub struct StoredSubsets {
    kept: HashMap<usize, Vec<u32>>,
    height: usize,
    width: usize,
    describe: String,
}

impl StoredSubsets {
    /// Derives the subsets of every image in `store`.
    pub fn from_store(store: &StoreReader, selection: Selection) -> Result<Self, SubsetError> {
        if let Selection::BackselectTop(q) = selection {
            super::check_fraction(q)?;
        }
        let meta = store.meta();
        let mut kept = HashMap::with_capacity(store.len());
        for index in store.indices() {
            let pixels = match selection {
                Selection::BackselectTop(q) => store.top_fraction_pixels(index, q),
                Selection::Sis(tau) => store
                    .sis_for_threshold(index, tau)
                    .map(Option::unwrap_or_default),
            }
            .map_err(|e| SubsetError::Invalid(format!("store {}: {e}", store.dir().display())))?;
            kept.insert(index as usize, pixels);
        }
        let what = match selection {
            Selection::BackselectTop(q) => format!("backselect top {q}"),
            Selection::Sis(tau) => format!("SIS at threshold {tau}"),
        };
        Ok(Self {
            kept,
            height: meta.height as usize,
            width: meta.width as usize,
            describe: format!("{what} of {} ({})", store.dir().display(), meta.describe()),
        })
    }

    /// Kept pixels (row-major indices) of image `index`.
    pub fn pixels(&self, index: usize) -> Result<&[u32], SubsetError> {
        self.kept.get(&index).map(Vec::as_slice).ok_or_else(|| {
            SubsetError::Invalid(format!(
                "{}: no SIS result for image {index}; run `overinterp sis` over the whole split first",
                self.describe
            ))
        })
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Writes the subset dataset to `dir` (see the module doc for the format).
    pub fn save(&self, dir: &Path) -> Result<(), SubsetError> {
        let io = |e: std::io::Error| SubsetError::Invalid(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut indices: Vec<usize> = self.kept.keys().copied().collect();
        indices.sort_unstable();
        let mut offsets = vec![0i64];
        let mut pixels = Vec::new();
        for i in &indices {
            pixels.extend(self.kept[i].iter().map(|&p| p as i32));
            offsets.push(pixels.len() as i64);
        }
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let tensors = [
            ("indices", Tensor::from_slice(&idx)),
            ("offsets", Tensor::from_slice(&offsets)),
            ("pixels", Tensor::from_slice(&pixels)),
        ];
        let tmp = dir.join("tmp.kept.safetensors");
        Tensor::write_safetensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join(KEPT_FILE)).map_err(io)?;
        let info = SubsetInfo {
            describe: self.describe.clone(),
            height: self.height,
            width: self.width,
            images: indices.len(),
        };
        let json = serde_json::to_vec_pretty(&info).expect("subset info serializes");
        std::fs::write(dir.join(INFO_FILE), json).map_err(io)
    }

    /// Loads a subset dataset written by [`StoredSubsets::save`].
    pub fn load(dir: &Path) -> Result<Self, SubsetError> {
        let bad = |problem: String| SubsetError::Invalid(format!("{}: {problem}", dir.display()));
        let info_path = dir.join(INFO_FILE);
        let info: SubsetInfo = serde_json::from_slice(&std::fs::read(&info_path).map_err(|e| {
            bad(format!(
                "{INFO_FILE}: {e} (not a subset dataset written by `overinterp subsets`?)"
            ))
        })?)
        .map_err(|e| bad(format!("{INFO_FILE}: {e}")))?;
        let tensors = Tensor::read_safetensors(dir.join(KEPT_FILE))
            .map_err(|e| bad(format!("{KEPT_FILE}: {e}")))?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| bad(format!("{KEPT_FILE} has no tensor {name:?}")))
        };
        let indices = Vec::<i64>::try_from(get("indices")?)?;
        let offsets = Vec::<i64>::try_from(get("offsets")?)?;
        let pixels = Vec::<i32>::try_from(get("pixels")?)?;
        let p = (info.height * info.width) as i32;
        if offsets.len() != indices.len() + 1
            || offsets.windows(2).any(|w| w[0] > w[1])
            || offsets.last().copied() != Some(pixels.len() as i64)
            || pixels.iter().any(|&q| q < 0 || q >= p)
        {
            return Err(bad(format!(
                "{KEPT_FILE} is inconsistent (offsets or pixel numbers out of range)"
            )));
        }
        let kept = indices
            .iter()
            .enumerate()
            .map(|(i, &index)| {
                let run = &pixels[offsets[i] as usize..offsets[i + 1] as usize];
                (index as usize, run.iter().map(|&q| q as u32).collect())
            })
            .collect();
        Ok(Self {
            kept,
            height: info.height,
            width: info.width,
            describe: info.describe,
        })
    }
}

const KEPT_FILE: &str = "kept.safetensors";
const INFO_FILE: &str = "subset.json";

/// `subset.json` of a subset dataset.
#[derive(serde::Serialize, serde::Deserialize)]
struct SubsetInfo {
    describe: String,
    height: usize,
    width: usize,
    images: usize,
}

impl MaskSource for StoredSubsets {
    fn masks(&self, indices: &[usize]) -> Result<Tensor, SubsetError> {
        let p = self.height * self.width;
        let mut keep = vec![0f32; indices.len() * p];
        for (row, &index) in indices.iter().enumerate() {
            for &pixel in self.pixels(index)? {
                keep[row * p + pixel as usize] = 1.0;
            }
        }
        Ok(Tensor::from_slice(&keep).view([
            indices.len() as i64,
            1,
            self.height as i64,
            self.width as i64,
        ]))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
