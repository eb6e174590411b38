//! `study.json`: every choice a study build made — which stores (and their hashes),
//! which images, their labels, which model chose each subset, the PNG each trial
//! shows, and what every evaluated model predicts on it. The server reads it; it is
//! never sent to a browser (labels and predictions stay on the server).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::HumanError;

/// File name of the manifest inside a study directory.
pub const MANIFEST_FILE: &str = "study.json";
/// File name of the editable consent line.
pub const CONSENT_FILE: &str = "consent.txt";
/// Folder of the trial PNGs.
pub const IMAGES_DIR: &str = "images";
/// `format` of a study manifest.
pub const FORMAT: &str = "overinterp-human-study";
/// Bumped on any change an older reader would misread.
pub const VERSION: u32 = 1;

/// The study manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyManifest {
    /// Always [`FORMAT`]: tells a study from any other JSON.
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The dataset split the stores were computed on (the store's dataset name).
    pub dataset: String,
    /// Its content hash (equal in every store).
    pub dataset_sha256: String,
    /// The `--data` spec the pixels were read from.
    pub data: String,
    /// Names of every class of the dataset, by label.
    pub class_names: Vec<String>,
    /// The classes offered as answers (and the only ones whose images are shown),
    /// ascending.
    pub classes: Vec<i64>,
    /// Kept fractions, ascending: batch `b` shows every image at `fractions[b]`.
    pub fractions: Vec<f64>,
    /// Images per class.
    pub per_class: usize,
    /// An image qualifies when its store's model predicts its label with at least
    /// this confidence on the full image.
    pub min_confidence: f32,
    /// Seed of the selection and of every participant's shuffle.
    pub seed: u64,
    /// Image height and width in pixels.
    pub height: u32,
    pub width: u32,
    /// Nearest-neighbour upscale factor of the PNGs.
    pub scale: u32,
    /// The stores the subsets come from.
    pub stores: Vec<StudyStore>,
    /// Models evaluated on every trial image (`--models`); may be empty.
    pub models: Vec<StudyModel>,
    /// The images, in selection order (class by class).
    pub images: Vec<StudyImage>,
}

/// A store a study draws subsets from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyStore {
    /// The store directory as given.
    pub path: PathBuf,
    /// Its model's description (from `meta.json`).
    pub model: String,
    /// Its model's content hash (from `meta.json`).
    pub model_sha256: String,
    /// sha256 of its `meta.json` and of its `manifest.jsonl` at build time.
    pub meta_sha256: String,
    pub manifest_sha256: String,
    /// Records in the store.
    pub records: usize,
    /// Qualifying images (correct, confident) per class label, for the report.
    pub qualifying: Vec<usize>,
}

/// A model whose predictions on the trial images the report shows beside the humans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyModel {
    /// The `--models` entry (checkpoint dir, TorchScript file, `ensemble:`).
    pub spec: String,
    /// Its description.
    pub describe: String,
    /// Its content hash ([`crate::job::model_fingerprint`]).
    pub model_sha256: String,
    /// The store whose subsets this model chose, if any.
    pub store: Option<usize>,
}

/// One image of the study and its subsets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyImage {
    /// Index in the dataset split.
    pub index: u64,
    /// True label (= the choosing model's prediction: only correct images qualify).
    pub label: i64,
    /// The store (model) that chose this image's subsets.
    pub store: usize,
    /// The choosing model's confidence on the full image.
    pub confidence: f32,
    /// One trial per study fraction, in [`StudyManifest::fractions`] order.
    pub trials: Vec<Trial>,
}

/// One (image, fraction): what a participant is shown once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// Opaque id, the PNG's name and what the browser posts back; random, so it
    /// says nothing about the label.
    pub id: String,
    /// Pixels kept, `⌈q·p⌉`.
    pub kept_pixels: usize,
    /// What each of [`StudyManifest::models`] predicts on this subset, in that order.
    pub predictions: Vec<i64>,
}

/// Where a trial sits in the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrialRef {
    /// Position in [`StudyManifest::images`].
    pub image: usize,
    /// Position in [`StudyManifest::fractions`].
    pub fraction: usize,
}

impl StudyManifest {
    /// Reads and checks `STUDY/study.json`.
    pub fn load(study: &Path) -> Result<Self, HumanError> {
        let path = study.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HumanError::BadFile {
                    path: path.clone(),
                    reason: "no study here; make one with `overinterp human build`".into(),
                }
            } else {
                HumanError::io(&path, e)
            }
        })?;
        let m: StudyManifest = serde_json::from_str(&text).map_err(|e| HumanError::BadFile {
            path: path.clone(),
            reason: format!("not a study manifest: {e}"),
        })?;
        m.validate()
            .map_err(|reason| HumanError::BadFile { path, reason })?;
        Ok(m)
    }

    /// Writes `STUDY/study.json` (pretty JSON, fsynced).
    pub fn save(&self, study: &Path) -> Result<(), HumanError> {
        let path = study.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("a manifest serializes");
        write_synced(&path, text.as_bytes())
    }

    /// Internal consistency: a manifest edited by hand into nonsense is refused.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT || self.version != VERSION {
            return Err(format!(
                "format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
                self.format, self.version
            ));
        }
        let n_classes = self.class_names.len() as i64;
        if let Some(c) = self.classes.iter().find(|&&c| c < 0 || c >= n_classes) {
            return Err(format!(
                "class {c} has no name (class_names has {n_classes})"
            ));
        }
        if self.fractions.windows(2).any(|w| w[0] >= w[1]) || self.fractions.is_empty() {
            return Err(format!("fractions {:?} are not ascending", self.fractions));
        }
        let mut ids = HashMap::new();
        for (i, image) in self.images.iter().enumerate() {
            if image.store >= self.stores.len() {
                return Err(format!(
                    "image {i} names store {} of {}",
                    image.store,
                    self.stores.len()
                ));
            }
            if !self.classes.contains(&image.label) {
                return Err(format!(
                    "image {i} has label {} outside the study's classes",
                    image.label
                ));
            }
            if image.trials.len() != self.fractions.len() {
                return Err(format!(
                    "image {i} has {} trials for {} fractions",
                    image.trials.len(),
                    self.fractions.len()
                ));
            }
            for t in &image.trials {
                if !is_trial_id(&t.id) {
                    return Err(format!(
                        "image {i}: trial id {:?} is not 16 hex digits",
                        t.id
                    ));
                }
                if ids.insert(t.id.clone(), i).is_some() {
                    return Err(format!("trial id {} appears twice", t.id));
                }
                if t.predictions.len() != self.models.len() {
                    return Err(format!(
                        "trial {} has {} predictions for {} models",
                        t.id,
                        t.predictions.len(),
                        self.models.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every trial id → where it sits.
    pub fn trial_index(&self) -> HashMap<String, TrialRef> {
        let mut map = HashMap::new();
        for (i, image) in self.images.iter().enumerate() {
            for (f, t) in image.trials.iter().enumerate() {
                map.insert(
                    t.id.clone(),
                    TrialRef {
                        image: i,
                        fraction: f,
                    },
                );
            }
        }
        map
    }

    /// The trial at `r`.
    pub fn trial(&self, r: TrialRef) -> &Trial {
        &self.images[r.image].trials[r.fraction]
    }

    /// Total trials a participant answers.
    pub fn trials_per_participant(&self) -> usize {
        self.images.len() * self.fractions.len()
    }

    /// Short name of a store for tables: its directory's name (model descriptions
    /// of two checkpoints of one architecture are the same).
    pub fn store_name(&self, store: usize) -> String {
        short_name(&self.stores[store].path.display().to_string())
    }

    /// Short name of an evaluated model for tables: its file or directory name.
    pub fn model_name(&self, model: usize) -> String {
        short_name(&self.models[model].spec)
    }
}

/// The last component of a path (`runs/r20/` → `r20`); an ensemble spec as it is.
fn short_name(path: &str) -> String {
    if path.starts_with("ensemble:") {
        return path.to_string();
    }
    let trimmed = path.trim_end_matches('/');
    trimmed
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(trimmed)
        .to_string()
}

/// A trial id is exactly 16 lowercase hex digits: the only names the image route serves.
pub fn is_trial_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `bytes` to `path` through a temporary file, fsyncs and renames it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), HumanError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| HumanError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| HumanError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HumanError::io(path, e))
}

/// A small study for unit tests: 3 classes × 2 images × fractions 0.1/0.5, two
/// stores, one model tied to store 0 predicting the label everywhere except on
/// store 1's images at 10%.
#[cfg(test)]
pub(crate) fn sample_study() -> StudyManifest {
    let fractions = vec![0.1, 0.5];
    let mut images = Vec::new();
    let mut n = 0u64;
    for label in 0..3i64 {
        for j in 0..2usize {
            let store = (label as usize + j) % 2;
            let trials = fractions
                .iter()
                .enumerate()
                .map(|(f, _)| {
                    n += 1;
                    let wrong = store == 1 && f == 0;
                    Trial {
                        id: format!("{n:016x}"),
                        kept_pixels: 1,
                        predictions: vec![if wrong { (label + 1) % 3 } else { label }],
                    }
                })
                .collect();
            images.push(StudyImage {
                index: n,
                label,
                store,
                confidence: 0.999,
                trials,
            });
        }
    }
    let store = |i: usize| StudyStore {
        path: format!("stores/s{i}").into(),
        model: format!("model-{i}"),
        model_sha256: format!("sha{i}"),
        meta_sha256: String::new(),
        manifest_sha256: String::new(),
        records: 10,
        qualifying: vec![2, 2, 2],
    };
    StudyManifest {
        format: FORMAT.into(),
        version: VERSION,
        dataset: "synthetic/test".into(),
        dataset_sha256: "d".into(),
        data: "synthetic".into(),
        class_names: vec!["cat".into(), "dog".into(), "eel".into()],
        classes: vec![0, 1, 2],
        fractions,
        per_class: 2,
        min_confidence: 0.99,
        seed: 3,
        height: 2,
        width: 2,
        scale: 1,
        stores: vec![store(0), store(1)],
        models: vec![StudyModel {
            spec: "m0".into(),
            describe: "model-0".into(),
            model_sha256: "sha0".into(),
            store: Some(0),
        }],
        images,
    }
}
