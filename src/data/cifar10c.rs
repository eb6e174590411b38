//! CIFAR-10-C (Hendrycks & Dietterich, 2019): the CIFAR-10 test set under 19
//! corruptions at 5 severities. The folder holds `<corruption>.npy`, a `uint8` array
//! of shape `(50000, 32, 32, 3)` (HWC) — severity 1's 10 000 images, then severity
//! 2's, … — and `labels.npy`, the 50 000 labels in the same order.
//!
//! [`Cifar10c`] chooses corruptions and severities and, like the paper (which ran
//! SIS on 2000 CIFAR-10-C images), optionally a seeded uniform sample of N images
//! across all chosen (corruption, severity, image) triples. Pixels are read on
//! demand with positioned reads (each file is 150 MB) and converted to CHW. Every
//! image keeps its corruption and severity ([`Cifar10c::tag`]) so evaluation can
//! report per corruption and severity.

use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::cifar10::{CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};
use super::npy::{IntDtype, NpyFile};
use super::{check_read, DataError, ImageSource, Normalization, Split};

/// The 19 corruptions of the CIFAR-10-C release: the 15 benchmark corruptions,
/// then the 4 extra ones (speckle noise, Gaussian blur, spatter, saturate).
pub const CORRUPTIONS: [&str; 19] = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
];
/// Severities run from 1 to this.
pub const NUM_SEVERITIES: u8 = 5;
/// The label file beside the corruption arrays.
pub const LABELS_FILE: &str = "labels.npy";

/// Which part of CIFAR-10-C to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cifar10cOptions {
    /// Corruption names (file stems). Empty: every one of [`CORRUPTIONS`] whose file
    /// is in the folder. A named corruption whose file is missing is an error.
    pub corruptions: Vec<String>,
    /// Severities in `1..=5`. Empty: all five.
    pub severities: Vec<u8>,
    /// Draw this many distinct images uniformly from all chosen (corruption,
    /// severity, image) triples (the paper used 2000). `None`: every triple.
    pub sample: Option<usize>,
    /// Seed of that draw; the same seed gives the same images on any machine.
    pub seed: u64,
}

/// One image of the selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    /// Index into `Cifar10c::corruptions`.
    corruption: u16,
    /// 1..=5.
    severity: u8,
    /// Index of the CIFAR-10 test image, `0..per_severity`.
    image: u32,
}

/// A selection of CIFAR-10-C images with their labels, corruptions and severities.
#[derive(Debug)]
pub struct Cifar10c {
    /// Names of the chosen corruptions.
    corruptions: Vec<String>,
    /// One open array per chosen corruption, same order.
    files: Vec<NpyFile>,
    /// Images per severity in every file (10 000 in the release).
    per_severity: usize,
    /// All rows of `labels.npy`.
    labels: Vec<i64>,
    /// The selected images, sorted by (corruption, severity, image).
    items: Vec<Item>,
    /// Names the selection in logs and store keys.
    name: String,
    /// Computed at open: file names and sizes, and the selection.
    hash: String,
}

impl Cifar10c {
    /// Opens the CIFAR-10-C folder `dir` and selects images as `options` says.
    /// CIFAR-10-C is a test set only: `Split::Train` is an error.
    pub fn open(
        dir: impl AsRef<Path>,
        split: Split,
        options: &Cifar10cOptions,
    ) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if split != Split::Test {
            return Err(DataError::Invalid(
                "CIFAR-10-C has only test images: use --split test".into(),
            ));
        }
        let corruptions: Vec<String> = if options.corruptions.is_empty() {
            let found: Vec<String> = CORRUPTIONS
                .iter()
                .filter(|c| dir.join(format!("{c}.npy")).is_file())
                .map(|c| c.to_string())
                .collect();
            if found.is_empty() {
                return Err(DataError::Missing {
                    path: dir.join(format!("{}.npy", CORRUPTIONS[0])),
                    what: "no CIFAR-10-C corruption file (<corruption>.npy) in the folder".into(),
                });
            }
            found
        } else {
            let mut seen = Vec::new();
            for c in &options.corruptions {
                if c.is_empty() || c.contains(['/', '\\']) || seen.contains(c) {
                    return Err(DataError::Invalid(format!(
                        "corruption {c:?} is empty, a path, or named twice"
                    )));
                }
                seen.push(c.clone());
            }
            seen
        };
        let mut severities = if options.severities.is_empty() {
            (1..=NUM_SEVERITIES).collect()
        } else {
            options.severities.clone()
        };
        severities.sort_unstable();
        severities.dedup();
        if let Some(s) = severities.iter().find(|&&s| s == 0 || s > NUM_SEVERITIES) {
            return Err(DataError::Invalid(format!(
                "CIFAR-10-C severity {s} does not exist: severities are 1 to {NUM_SEVERITIES}"
            )));
        }

        let labels_path = dir.join(LABELS_FILE);
        let labels_file = NpyFile::open(&labels_path)?;
        if labels_file.header().shape.len() != 1 {
            return Err(DataError::Format {
                path: labels_path,
                problem: format!(
                    "labels must be a 1-D array, found shape {:?}",
                    labels_file.header().shape
                ),
            });
        }
        let labels = labels_file.read_all_i64()?;
        if let Some((record, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| !(0..10).contains(&l))
        {
            return Err(DataError::Record {
                path: labels_path,
                record,
                problem: format!("label {l} is not a CIFAR-10 class (0..=9)"),
            });
        }
        let rows = labels.len();
        if rows == 0 || rows % NUM_SEVERITIES as usize != 0 {
            return Err(DataError::Format {
                path: labels_path,
                problem: format!(
                    "{rows} labels do not split into {NUM_SEVERITIES} equal severities"
                ),
            });
        }
        let per_severity = rows / NUM_SEVERITIES as usize;

        let mut files = Vec::with_capacity(corruptions.len());
        for c in &corruptions {
            let path = dir.join(format!("{c}.npy"));
            let file = NpyFile::open(&path)?;
            let h = file.header();
            if h.dtype != IntDtype::U8 || h.shape != [rows, HEIGHT, WIDTH, CHANNELS] {
                return Err(DataError::Format {
                    path,
                    problem: format!(
                        "expected uint8 images of shape ({rows}, {HEIGHT}, {WIDTH}, {CHANNELS}) \
                         to match {LABELS_FILE}, found {:?} of shape {:?}",
                        h.dtype, h.shape
                    ),
                });
            }
            files.push(file);
        }
        // Content hashes of the files read (cached by path, size, mtime and inode), once
        // each file has been opened and checked, so a missing or malformed one is
        // reported as such first.
        let mut rels = vec![LABELS_FILE.to_string()];
        rels.extend(corruptions.iter().map(|c| format!("{c}.npy")));
        let file_hashes = super::content_hash::hash_files(dir, &rels)?;
        let mut hasher = Sha256::new();
        for (rel, sha) in rels.iter().zip(&file_hashes) {
            hasher.update(format!("{rel} {sha}\n"));
        }

        let per_pair = per_severity;
        let total = corruptions.len() * severities.len() * per_pair;
        let chosen: Vec<usize> = match options.sample {
            None => (0..total).collect(),
            Some(n) if n > total => {
                return Err(DataError::Invalid(format!(
                    "cannot sample {n} CIFAR-10-C images: the chosen corruptions and severities \
                     hold {total}"
                )))
            }
            Some(n) => sample_distinct(total, n, options.seed),
        };
        let items: Vec<Item> = chosen
            .into_iter()
            .map(|t| {
                let image = t % per_pair;
                let pair = t / per_pair;
                Item {
                    corruption: (pair / severities.len()) as u16,
                    severity: severities[pair % severities.len()],
                    image: image as u32,
                }
            })
            .collect();
        for it in &items {
            hasher.update(it.corruption.to_le_bytes());
            hasher.update([it.severity]);
            hasher.update(it.image.to_le_bytes());
        }
        hasher.update(corruptions.join(",").as_bytes());
        let hash = hex::encode(hasher.finalize());

        let all = options.corruptions.is_empty() && corruptions.len() == CORRUPTIONS.len();
        let name = format!(
            "cifar10c/{}/s{}/{}",
            if all {
                "all".to_string()
            } else {
                corruptions.join("+")
            },
            severities.iter().map(|s| s.to_string()).collect::<String>(),
            match options.sample {
                Some(n) => format!("n{n}-seed{}", options.seed),
                None => "every".to_string(),
            }
        );
        Ok(Self {
            corruptions,
            files,
            per_severity,
            labels,
            items,
            name,
            hash,
        })
    }

    /// The corruption (file stem) and severity (1–5) of image `index`.
    pub fn tag(&self, index: usize) -> Result<(&str, u8), DataError> {
        let it = self.item(index)?;
        Ok((&self.corruptions[it.corruption as usize], it.severity))
    }

    /// The index of image `index` within the CIFAR-10 test set (`0..10000`).
    pub fn test_image(&self, index: usize) -> Result<usize, DataError> {
        Ok(self.item(index)?.image as usize)
    }

    /// The chosen corruptions, in the order files were opened.
    pub fn corruptions(&self) -> &[String] {
        &self.corruptions
    }

    fn item(&self, index: usize) -> Result<Item, DataError> {
        self.items.get(index).copied().ok_or(DataError::OutOfRange {
            index,
            len: self.items.len(),
        })
    }

    /// Row of `it` in its corruption array and in `labels.npy`.
    fn row(&self, it: Item) -> usize {
        (it.severity as usize - 1) * self.per_severity + it.image as usize
    }
}

/// `n` distinct integers drawn uniformly from `0..total`, sorted, by Floyd's
/// algorithm driven by SplitMix64 — both tiny and fixed here, so the sample for a
/// seed never changes with a dependency's version.
pub fn sample_distinct(total: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut chosen = std::collections::HashSet::with_capacity(n);
    for j in total - n..total {
        // Uniform in 0..=j by a 128-bit multiply (bias below 2^-40 for any j here).
        let t = ((u128::from(next()) * (j as u128 + 1)) >> 64) as usize;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut out: Vec<usize> = chosen.into_iter().collect();
    out.sort_unstable();
    out
}

impl ImageSource for Cifar10c {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.items.len()
    }
    fn shape(&self) -> [usize; 3] {
        [CHANNELS, HEIGHT, WIDTH]
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn normalization(&self) -> Normalization {
        Normalization::cifar10()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        Ok(self.labels[self.row(self.item(index)?)])
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        check_read(self.len(), IMAGE_BYTES, indices, out)?;
        indices
            .par_iter()
            .zip(out.par_chunks_mut(IMAGE_BYTES))
            .try_for_each(|(&i, dst)| {
                let it = self.items[i];
                let mut hwc = [0u8; IMAGE_BYTES];
                self.files[it.corruption as usize]
                    .read_raw(self.row(it) * IMAGE_BYTES, &mut hwc)?;
                hwc_to_chw(&hwc, dst, HEIGHT * WIDTH, CHANNELS);
                Ok(())
            })
    }
    fn content_hash(&self) -> String {
        self.hash.clone()
    }
    fn group(&self, index: usize) -> Option<String> {
        self.tag(index).ok().map(|(c, s)| format!("{c}/{s}"))
    }
}

/// Interleaved `[H, W, C]` bytes → planar `[C, H, W]`.
pub(crate) fn hwc_to_chw(hwc: &[u8], chw: &mut [u8], pixels: usize, channels: usize) {
    for (p, px) in hwc.chunks_exact(channels).take(pixels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * pixels + p] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_distinct_sorted_in_range_and_seeded() {
        let a = sample_distinct(950_000, 2000, 7);
        assert_eq!(a.len(), 2000);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(*a.last().unwrap() < 950_000);
        assert_eq!(a, sample_distinct(950_000, 2000, 7));
        assert_ne!(a, sample_distinct(950_000, 2000, 8));
        assert_eq!(sample_distinct(5, 5, 3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn sample_is_uniform() {
        // Each of 10 values should be drawn in 3 of 10 positions: 30% of 20 000
        // draws of 3 = 6000 each; a binomial std of ~65, so ±400 never fails by chance.
        let mut counts = [0usize; 10];
        for seed in 0..20_000 {
            for v in sample_distinct(10, 3, seed) {
                counts[v] += 1;
            }
        }
        for c in counts {
            assert!((5600..6400).contains(&c), "{counts:?}");
        }
    }
}
