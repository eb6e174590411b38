//! `meta.json`: what a store was made from. Written once, at creation, and compared
//! on every open so that results of two different runs never mix in one directory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::sis::{Method, Objective};

/// Version of the on-disk layout (`meta.json`, `manifest.jsonl`, segment tensors)
/// that this build writes. Bumped on any change a reader of the previous version
/// would misread. Format 2: `removal_step` as U16 when the steps fit, a
/// `rank_in_block` tensor, and the objective, precision and provenance in the meta.
pub const FORMAT_VERSION: u32 = 2;

/// Every format this build reads: 1 (int32 `removal_step`, no in-block rank, made
/// with the `confidence` objective) and 2.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

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
    /// What BackSelect compared candidates by. Absent in format 1, whose stores were
    /// all made with [`Objective::Confidence`].
    #[serde(default = "Objective::legacy")]
    pub objective: Objective,
    /// Arithmetic of the steps that may run in reduced precision: `fp32`, `bf16` or
    /// `fp16` ([`crate::sis::precision`]). Stores written before `--precision`
    /// kept `extra.autocast` (libtorch's CUDA autocast); reading moves it here
    /// (`autocast` when it was on), so such a store still resumes at fp32.
    #[serde(default = "fp32")]
    pub precision: String,
    /// Which build, on which CPU, created the store. A record of provenance only:
    /// not compared when a store is resumed (workers of one job differ in CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Provenance>,
    /// Any other parameter that changes results (`collection`, and `rerank` in
    /// reduced precision); compared like the named fields. Keys are sorted, so the
    /// JSON is canonical.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// The build and machine that made something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `overinterp` version (Cargo package version).
    pub overinterp: String,
    /// libtorch version the build links.
    pub libtorch: String,
    /// The CPU model, from `/proc/cpuinfo` (empty where that is unreadable).
    pub cpu: String,
    /// The CPU's vector and matrix features that change arithmetic speed or
    /// precision paths (AVX2, FMA, AVX-512 and its BF16/FP16 extensions, AMX, NEON,
    /// SVE), as `/proc/cpuinfo` lists them.
    pub cpu_features: Vec<String>,
}

/// CPU flags worth recording (x86 `flags`, Arm `Features`).
const NOTABLE_CPU_FLAGS: &[&str] = &[
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "bf16",
    "sve",
    "sve2",
];

impl Provenance {
    /// This build on this machine.
    pub fn current() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::from_cpuinfo(&info)
    }

    /// Parses the text of `/proc/cpuinfo` (first CPU's model and flags).
    pub fn from_cpuinfo(info: &str) -> Self {
        let field = |names: &[&str]| {
            info.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    names.contains(&k.trim()).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let flags = field(&["flags", "Features"]);
        let present: std::collections::BTreeSet<&str> = flags.split_whitespace().collect();
        Self {
            overinterp: env!("CARGO_PKG_VERSION").into(),
            libtorch: "2.11.0".into(),
            cpu: field(&["model name", "CPU part"]),
            cpu_features: NOTABLE_CPU_FLAGS
                .iter()
                .filter(|f| present.contains(*f))
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

fn fp32() -> String {
    "fp32".into()
}

impl StoreMeta {
    /// Pixels per image, `p = H·W`.
    pub fn pixels(&self) -> usize {
        self.height as usize * self.width as usize
    }

    /// Pixels removed per BackSelect step: `k` for gradient, 1 otherwise.
    pub fn k(&self) -> u32 {
        self.method.pixels_per_step()
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
        check(self.objective == other.objective, "objective");
        check(self.precision == other.precision, "precision");
        check(self.extra == other.extra, "extra");
        out
    }

    /// One line naming what the store was made from, for error messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "model `{}` (sha256 {}) on dataset `{}` (sha256 {}) split `{}`, method {}, \
             objective {}, precision {}, thresholds {:?}, {} images of {}x{}, seed {}",
            self.model,
            short(&self.model_sha256),
            self.dataset,
            short(&self.dataset_sha256),
            self.split,
            method_name(self.method),
            self.objective,
            self.precision,
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
            if !READABLE_VERSIONS.iter().any(|&v| u64::from(v) == found) {
                return Err(StoreError::FormatVersion {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        let mut meta: StoreMeta =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMeta {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        // Before `--precision`, `extra.autocast` said whether CUDA autocast was on.
        if let Some(autocast) = meta.extra.remove("autocast") {
            if autocast == "true" {
                meta.precision = "autocast".into();
            }
        }
        Ok(meta)
    }
}

/// `exact`, `gradient k=K` or `screened M=M`, as a user would read it.
pub(crate) fn method_name(method: Method) -> String {
    method.describe()
}

/// The first 12 hex digits of a hash: enough to tell two apart in a message.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
