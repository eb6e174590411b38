//! Pixel subsets derived from a SIS result store (the backselect top-q subset — the
//! last `⌈q·p⌉` pixels BackSelect removed — or the SIS for a threshold τ) without the
//! model, or read from a subset dataset written by `overinterp subsets`.
//!
//! Nothing is held per image beyond an index: a batch's masks are derived (from the
//! store's rows) or read (from the subset file) when the batch asks for them, so
//! ImageNet's 1.28 M training subsets cost as little memory as CIFAR's.
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

use std::path::Path;

use tch::Tensor;

use super::kept_file::{KeptFile, KeptWriter, KEPT_FILE};
use super::{MaskSource, SubsetError};
use crate::store::StoreReader;

/// What to keep of each image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The last `⌈q·p⌉` pixels removed by BackSelect (the paper's "BS" subsets).
    BackselectTop(f64),
    /// The first SIS for threshold τ; images without one (f(x) < τ) keep nothing.
    /// τ must be one of the store's thresholds: those SIS were re-evaluated with the
    /// model when they were computed (`f(x_S) ≥ τ` checked), while a SIS derived
    /// from the history for another τ was never checked, so it is not offered.
    Sis(f32),
}

/// Where the kept pixels come from.
enum Kept {
    /// Derived per image from a SIS store's row.
    Store {
        /// Boxed: a reader is much larger than a kept file.
        reader: Box<StoreReader>,
        selection: Selection,
    },
    /// Read per image from `kept.safetensors`.
    File(KeptFile),
}

/// Kept pixels of the images of a dataset split (see the module doc).
pub struct StoredSubsets {
    kept: Kept,
    height: usize,
    width: usize,
    describe: String,
}

impl std::fmt::Debug for StoredSubsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSubsets")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// Counts of a written subset dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SavedCounts {
    pub images: usize,
    pub pixels_kept: u64,
    pub images_with_none: usize,
}

impl StoredSubsets {
    /// The subsets of every image in `store`, derived when asked for.
    pub fn from_store(store: &StoreReader, selection: Selection) -> Result<Self, SubsetError> {
        let meta = store.meta();
        match selection {
            Selection::BackselectTop(q) => super::check_fraction(q)?,
            Selection::Sis(tau) if !meta.thresholds.contains(&tau) => {
                return Err(SubsetError::Invalid(format!(
                    "store {}: no verified SIS at threshold {tau}; it holds SIS checked with the model (f(x_S) ≥ τ) at {:?} only. Use one of those, or compute SIS at {tau} with `overinterp sis --threshold {tau}`",
                    store.dir().display(),
                    meta.thresholds
                )))
            }
            Selection::Sis(_) => {}
        }
        let what = match selection {
            Selection::BackselectTop(q) => format!("backselect top {q}"),
            Selection::Sis(tau) => format!("SIS at threshold {tau}"),
        };
        let reader = StoreReader::open_with(store.dir(), store.verify_mode())
            .map_err(|e| SubsetError::Invalid(format!("store {}: {e}", store.dir().display())))?;
        Ok(Self {
            kept: Kept::Store {
                reader: Box::new(reader),
                selection,
            },
            height: meta.height as usize,
            width: meta.width as usize,
            describe: format!("{what} of {} ({})", store.dir().display(), meta.describe()),
        })
    }

    /// Kept pixels (row-major indices) of image `index`.
    pub fn pixels(&self, index: usize) -> Result<Vec<u32>, SubsetError> {
        let found = match &self.kept {
            Kept::Store { reader, selection } => {
                let store_err =
                    |e| SubsetError::Invalid(format!("store {}: {e}", reader.dir().display()));
                reader
                    .get(index as u64)
                    .map_err(store_err)?
                    .map(|rec| match *selection {
                        Selection::BackselectTop(q) => rec.top_fraction(q),
                        // The stored, verified collection's first SIS.
                        Selection::Sis(tau) => rec
                            .collections
                            .iter()
                            .find(|c| c.threshold == tau)
                            .and_then(|c| c.sis.first().cloned())
                            .unwrap_or_default(),
                    })
            }
            Kept::File(file) => file.pixels(index)?,
        };
        found.ok_or_else(|| {
            SubsetError::Invalid(format!(
                "{}: no SIS result for image {index}; run `overinterp sis` over the whole split first",
                self.describe
            ))
        })
    }

    /// The image indices held, ascending.
    pub fn indices(&self) -> Vec<usize> {
        match &self.kept {
            Kept::Store { reader, .. } => {
                reader.indices().into_iter().map(|i| i as usize).collect()
            }
            Kept::File(file) => file.indices(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.kept {
            Kept::Store { reader, .. } => reader.len(),
            Kept::File(file) => file.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Writes the subset dataset to `dir` (see the module doc for the format), one
    /// image at a time, in index order.
    pub fn save(&self, dir: &Path) -> Result<SavedCounts, SubsetError> {
        let io = |e: std::io::Error| SubsetError::Invalid(format!("{}: {e}", dir.display()));
        let mut writer = KeptWriter::create(dir)?;
        let mut images_with_none = 0;
        let indices = self.indices();
        let mut progress = crate::util::Progress::new("subsets", indices.len() as u64);
        for index in indices {
            let pixels = self.pixels(index)?;
            images_with_none += pixels.is_empty() as usize;
            writer.push(index, &pixels)?;
            progress.inc(1);
        }
        progress.finish();
        let (images, pixels_kept) = writer.counts();
        writer.finish()?;
        let info = SubsetInfo {
            describe: self.describe.clone(),
            height: self.height,
            width: self.width,
            images,
        };
        let json = serde_json::to_vec_pretty(&info).expect("subset info serializes");
        std::fs::write(dir.join(INFO_FILE), json).map_err(io)?;
        Ok(SavedCounts {
            images,
            pixels_kept,
            images_with_none,
        })
    }

    /// Opens a subset dataset written by [`StoredSubsets::save`].
    pub fn load(dir: &Path) -> Result<Self, SubsetError> {
        let bad = |problem: String| SubsetError::Invalid(format!("{}: {problem}", dir.display()));
        let info_path = dir.join(INFO_FILE);
        let info: SubsetInfo = serde_json::from_slice(&std::fs::read(&info_path).map_err(|e| {
            bad(format!(
                "{INFO_FILE}: {e} (not a subset dataset written by `overinterp subsets`?)"
            ))
        })?)
        .map_err(|e| bad(format!("{INFO_FILE}: {e}")))?;
        let file = KeptFile::open(&dir.join(KEPT_FILE), info.height * info.width)?;
        Ok(Self {
            kept: Kept::File(file),
            height: info.height,
            width: info.width,
            describe: info.describe,
        })
    }
}

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
            for pixel in self.pixels(index)? {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sis::{ImageSis, Method};
    use crate::store::{StoreMeta, StoreWriter, FORMAT_VERSION};

    const H: u32 = 4;
    const W: u32 = 5;

    /// An exact-BackSelect store (one pixel per step) of `n` 4×5 images whose
    /// removal order is a rotation of the pixel numbers by the image index.
    fn store(dir: &Path, n: u64) -> StoreReader {
        store_with(dir, n, |_| Vec::new())
    }

    /// [`store`] with SIS collections (threshold 0.5) by image index.
    fn store_with(
        dir: &Path,
        n: u64,
        collections: impl Fn(u64) -> Vec<crate::sis::SisCollection>,
    ) -> StoreReader {
        let meta = StoreMeta {
            format_version: FORMAT_VERSION,
            model: "m".into(),
            model_sha256: "aa".repeat(32),
            dataset: "d".into(),
            dataset_sha256: "bb".repeat(32),
            split: "test".into(),
            method: Method::Exact,
            thresholds: vec![0.5],
            height: H,
            width: W,
            num_images: n,
            seed: 0,
            objective: crate::sis::Objective::LogOdds,
            precision: "fp32".into(),
            created_by: None,
            extra: BTreeMap::new(),
        };
        let mut writer = StoreWriter::open(dir, meta).unwrap();
        let p = (H * W) as u64;
        for index in 0..n {
            let _ = writer
                .append(ImageSis {
                    index,
                    label: 0,
                    predicted: 0,
                    confidence: 0.9,
                    height: H,
                    width: W,
                    // Pixel q is removed at step (q + index) mod p.
                    removal_step: (0..p).map(|q| ((q + index) % p) as u32).collect(),
                    rank_in_block: Vec::new(),
                    confidence_history: vec![0.9; p as usize],
                    collections: collections(index),
                })
                .unwrap();
            writer.flush().unwrap();
        }
        StoreReader::open(dir).unwrap()
    }

    /// The last `m` pixels removed from image `index`, by hand: steps p−m..p−1,
    /// i.e. pixels q with (q + index) mod 20 ≥ 20 − m.
    fn expected(index: u64, m: u64) -> Vec<u32> {
        (0..20u64)
            .filter(|q| (q + index) % 20 >= 20 - m)
            .map(|q| q as u32)
            .collect()
    }

    #[test]
    fn sis_selection_uses_the_verified_collection_and_refuses_other_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        // Image i's stored (verified) SIS at 0.5 is {i, 19}; FindSIS on the flat
        // history would give another set, so equality shows which one was used.
        let reader = store_with(&dir.path().join("store"), 3, |i| {
            vec![crate::sis::SisCollection {
                threshold: 0.5,
                sis: vec![vec![i as u32, 19], vec![7]],
            }]
        });
        assert_ne!(
            reader.get(1).unwrap().unwrap().find_sis(0.5),
            Some(vec![1, 19])
        );
        let subsets = StoredSubsets::from_store(&reader, Selection::Sis(0.5)).unwrap();
        for i in 0..3u32 {
            assert_eq!(subsets.pixels(i as usize).unwrap(), vec![i, 19]);
        }
        let err = StoredSubsets::from_store(&reader, Selection::Sis(0.7))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no verified SIS at threshold 0.7") && err.contains("[0.5]"),
            "{err}"
        );
    }

    #[test]
    fn subsets_are_derived_per_batch_saved_and_read_back_in_a_standard_format() {
        let dir = tempfile::tempdir().unwrap();
        let reader = store(&dir.path().join("store"), 6);
        // q = 0.25 of 20 pixels: the last 5 removed.
        let subsets = StoredSubsets::from_store(&reader, Selection::BackselectTop(0.25)).unwrap();
        for i in 0..6 {
            assert_eq!(
                subsets.pixels(i as usize).unwrap(),
                expected(i, 5),
                "image {i}"
            );
        }
        let masks = subsets.masks(&[3, 1]).unwrap();
        assert_eq!(masks.size(), vec![2, 1, 4, 5]);
        let flat = Vec::<f32>::try_from(masks.flatten(0, -1)).unwrap();
        for (row, index) in [3u64, 1].into_iter().enumerate() {
            for q in 0..20 {
                let kept = expected(index, 5).contains(&(q as u32));
                assert_eq!(flat[row * 20 + q], kept as u8 as f32);
            }
        }
        let missing = subsets.pixels(9).unwrap_err().to_string();
        assert!(missing.contains("no SIS result for image 9"), "{missing}");

        // Saved by the streaming writer, read by libtorch's safetensors reader.
        let out = dir.path().join("bs25");
        let counts = subsets.save(&out).unwrap();
        assert_eq!(
            (counts.images, counts.pixels_kept, counts.images_with_none),
            (6, 30, 0)
        );
        let tensors = Tensor::read_safetensors(out.join(KEPT_FILE)).unwrap();
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .shallow_clone()
        };
        assert_eq!(
            Vec::<i64>::try_from(get("indices")).unwrap(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(
            Vec::<i64>::try_from(get("offsets")).unwrap(),
            vec![0, 5, 10, 15, 20, 25, 30]
        );
        let pixels = Vec::<i32>::try_from(get("pixels")).unwrap();
        assert_eq!(
            pixels[10..15].iter().map(|&q| q as u32).collect::<Vec<_>>(),
            expected(2, 5)
        );

        // Loaded back, and a file written by libtorch's writer (unsorted rows) reads too.
        let loaded = StoredSubsets::load(&out).unwrap();
        assert_eq!((loaded.len(), loaded.image_size()), (6, (4, 5)));
        for i in 0..6 {
            assert_eq!(loaded.pixels(i as usize).unwrap(), expected(i, 5));
        }
        let theirs = dir.path().join("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::copy(out.join(INFO_FILE), theirs.join(INFO_FILE)).unwrap();
        let px: Vec<i32> = [7, 8, 1, 2, 3].into_iter().collect();
        Tensor::write_safetensors(
            &[
                ("indices", Tensor::from_slice(&[4i64, 0])),
                ("offsets", Tensor::from_slice(&[0i64, 2, 5])),
                ("pixels", Tensor::from_slice(&px)),
            ],
            theirs.join(KEPT_FILE),
        )
        .unwrap();
        let theirs = StoredSubsets::load(&theirs).unwrap();
        assert_eq!(theirs.indices(), vec![0, 4]);
        assert_eq!(theirs.pixels(0).unwrap(), vec![1, 2, 3]);
        assert_eq!(theirs.pixels(4).unwrap(), vec![7, 8]);
    }

    #[test]
    fn a_pixel_outside_the_image_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let info = SubsetInfo {
            describe: "x".into(),
            height: 2,
            width: 2,
            images: 1,
        };
        std::fs::write(
            dir.path().join(INFO_FILE),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        Tensor::write_safetensors(
            &[
                ("indices", Tensor::from_slice(&[0i64])),
                ("offsets", Tensor::from_slice(&[0i64, 1])),
                ("pixels", Tensor::from_slice(&[4i32])),
            ],
            dir.path().join(KEPT_FILE),
        )
        .unwrap();
        let s = StoredSubsets::load(dir.path()).unwrap();
        let err = s.pixels(0).unwrap_err().to_string();
        assert!(
            err.contains(KEPT_FILE) && err.contains("pixel 4 is outside the 4-pixel image"),
            "{err}"
        );
    }
}
