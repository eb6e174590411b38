//! `meta.json`: what a store was made from. Written once, at creation, and compared
//! on every open so that results of two different runs never mix in one directory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::sis::Method;

/// Version of the on-disk layout (`meta.json`, `manifest.jsonl`, segment tensors).
/// Bumped on any change a reader of the previous version would misread.
pub const FORMAT_VERSION: u32 = 1;

/// Identity of a store: one directory per (model, dataset split, method, parameters).
///
/// Two runs whose metas differ in any field would produce different records, so
/// [`StoreWriter::open`](super::StoreWriter::open) refuses to mix them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreMeta {
    /// [`FORMAT_VERSION`] of the build that created the store.
    pub format_version: u32,
    /// Human-readable model description (architecture, checkpoint path, ensemble, ...).
    pub model: String,
    /// Content hash of the model (e.g. sha256 of the checkpoint): the description
    /// alone cannot tell two checkpoints at the same path apart.
    pub model_sha256: String,
    /// Dataset name (e.g. `cifar10`).
    pub dataset: String,
    /// Content hash of the dataset files, so indices refer to the same images.
    pub dataset_sha256: String,
    /// Split name (`train`, `test`, a CIFAR-10-C corruption and severity, ...).
    pub split: String,
    /// BackSelect variant, with its `k` (pixels per step) for Batched Gradient.
    pub method: Method,
    /// The thresholds τ whose SIS collections every record carries, in this order.
    pub thresholds: Vec<f32>,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
    /// Number of images in the split; every record's index is below it.
    pub num_images: u64,
    /// Seed of everything random in the run (gradient tie-break noise, input dropout).
    pub seed: u64,
    /// Any other parameter that changes results (e.g. `precision = bf16`); compared
    /// like the named fields. Keys are sorted, so the JSON is canonical.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl StoreMeta {
    /// Pixels per image, `p = H·W`.
    pub fn pixels(&self) -> usize {
        self.height as usize * self.width as usize
    }

    /// Pixels removed per BackSelect step: 1 for exact, `k` for gradient.
    pub fn k(&self) -> u32 {
        match self.method {
            Method::Exact => 1,
            Method::Gradient { k } => k,
        }
    }

    /// BackSelect steps per image, `S = ⌈p / k⌉`: the length of every record's
    /// `confidence_history` and one more than its largest `removal_step`.
    pub fn steps(&self) -> usize {
        self.pixels().div_ceil(self.k().max(1) as usize)
    }

    /// Checks the meta is self-consistent before anything is written with it.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |reason: String| Err(StoreError::InvalidMeta { reason });
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version is {}, this build writes {FORMAT_VERSION}",
                self.format_version
            ));
        }
        if self.height == 0 || self.width == 0 {
            return bad(format!(
                "image shape {}x{} is empty",
                self.height, self.width
            ));
        }
        // Pixel indices are stored as i32 (friendlier than u32 in torch).
        if self.pixels() > i32::MAX as usize {
            return bad(format!(
                "image shape {}x{} has more than 2^31 pixels",
                self.height, self.width
            ));
        }
        if self.k() == 0 {
            return bad("gradient BackSelect needs k ≥ 1 pixels per step".into());
        }
        if self.num_images > i64::MAX as u64 {
            return bad(format!(
                "num_images {} does not fit in i64",
                self.num_images
            ));
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            if !t.is_finite() {
                return bad(format!("threshold {t} is not a finite number"));
            }
            if self.thresholds[..i]
                .iter()
                .any(|u| u.to_bits() == t.to_bits())
            {
                return bad(format!("threshold {t} is listed twice"));
            }
        }
        Ok(())
    }

    /// Names of the fields in which `self` and `other` differ (thresholds compared
    /// bit for bit, in order).
    pub fn differing_fields(&self, other: &StoreMeta) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |same: bool, name| {
            if !same {
                out.push(name)
            }
        };
        check(
            self.format_version == other.format_version,
            "format_version",
        );
        check(self.model == other.model, "model");
        check(self.model_sha256 == other.model_sha256, "model_sha256");
        check(self.dataset == other.dataset, "dataset");
        check(
            self.dataset_sha256 == other.dataset_sha256,
            "dataset_sha256",
        );
        check(self.split == other.split, "split");
        check(self.method == other.method, "method");
        check(
            self.thresholds.len() == other.thresholds.len()
                && self
                    .thresholds
                    .iter()
                    .zip(&other.thresholds)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
            "thresholds",
        );
        check(
            self.height == other.height && self.width == other.width,
            "image shape",
        );
        check(self.num_images == other.num_images, "num_images");
        check(self.seed == other.seed, "seed");
        check(self.extra == other.extra, "extra");
        out
    }

    /// One line naming what the store was made from, for error messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "model `{}` (sha256 {}) on dataset `{}` (sha256 {}) split `{}`, method {}, \
             thresholds {:?}, {} images of {}x{}, seed {}",
            self.model,
            short(&self.model_sha256),
            self.dataset,
            short(&self.dataset_sha256),
            self.split,
            method_name(self.method),
            self.thresholds,
            self.num_images,
            self.height,
            self.width,
            self.seed,
        );
        if !self.extra.is_empty() {
            s.push_str(&format!(", extra {:?}", self.extra));
        }
        if self.format_version != FORMAT_VERSION {
            s.push_str(&format!(", format version {}", self.format_version));
        }
        s
    }

    /// Reads and parses `meta.json`.
    pub(crate) fn read(path: &Path) -> Result<StoreMeta, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, e))?;
        // Check the version before the full parse, so a newer layout gets a
        // version error rather than a confusing field error.
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("format_version").and_then(|v| v.as_u64()));
        if let Some(found) = version {
            if found != FORMAT_VERSION as u64 {
                return Err(StoreError::FormatVersion {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMeta {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// `exact` or `gradient k=K`, as a user would type it.
pub(crate) fn method_name(method: Method) -> String {
    match method {
        Method::Exact => "exact".into(),
        Method::Gradient { k } => format!("gradient k={k}"),
    }
}

/// The first 12 hex digits of a hash: enough to tell two apart in a message.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
