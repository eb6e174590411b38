//! A SIS job: which model, which dataset split, which method and parameters, and
//! where the results go. The same description drives a single-process run
//! (`overinterp sis`) and a cluster run (`overinterp run|leader|worker`, where it
//! travels to workers as TOML), so both produce the same store.
//!
//! ```toml
//! model = "runs/resnet20"               # checkpoint dir, TorchScript .pt, or ensemble:a,b
//! data = "cifar10:data/cifar-10-batches-bin"
//! split = "test"
//! out = "stores/resnet20-test-exact"
//! device = "cpu"                        # per worker; cuda:N on GPU nodes
//! # start = 0                           # optional index range [start, end)
//! # end = 1000
//! [sis]
//! method = { kind = "exact" }           # or { kind = "gradient", k = 100 }
//! thresholds = [0.99]
//! batch_size = 32
//! ```

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::{self, ImageSource, Split};
use crate::models::{self, Classifier};
use crate::sis::{self, ImageSis, SisParams};
use crate::store::{StoreMeta, StoreWriter, FORMAT_VERSION};
use crate::util::{sha256_hex, Progress};

/// Everything a SIS run needs; serialized as TOML for cluster jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SisJob {
    /// `--model`: checkpoint dir, TorchScript file, or `ensemble:A,B,...`.
    pub model: String,
    /// `--data`: `KIND:PATH` (see `overinterp train --help`).
    pub data: String,
    pub split: Split,
    /// Result store directory.
    pub out: PathBuf,
    /// Device each process computes on.
    #[serde(default = "default_device")]
    pub device: String,
    /// First image index (inclusive) and last (exclusive); default the whole split.
    #[serde(default)]
    pub start: Option<u64>,
    #[serde(default)]
    pub end: Option<u64>,
    pub sis: SisParams,
}

fn default_device() -> String {
    "cpu".into()
}

/// A model and dataset opened for a job.
pub struct Opened {
    pub model: Box<dyn Classifier>,
    /// A second copy of the model in the job's reduced precision, if it has one.
    pub reduced: Option<Box<dyn Classifier>>,
    /// `lanes − 1` further copies of both, for the job's CPU lanes.
    pub lanes: sis::Lanes,
    pub source: Box<dyn ImageSource>,
    pub meta: StoreMeta,
}

impl SisJob {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("job spec is not valid TOML for a SIS job")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a SIS job serializes to TOML")
    }

    /// The indices this job covers.
    pub fn range(&self, len: usize) -> anyhow::Result<std::ops::Range<u64>> {
        let (start, end) = (
            self.start.unwrap_or(0),
            self.end.unwrap_or(len as u64).min(len as u64),
        );
        anyhow::ensure!(
            start <= end,
            "job range start {start} is after end {end} (the split has {len} images)"
        );
        Ok(start..end)
    }

    /// Fixes everything a job leaves to `auto` ([`Self::fix_precision`],
    /// [`Self::fix_lanes`]), once, where the job is decided.
    pub fn fix_auto(&mut self) -> anyhow::Result<()> {
        self.fix_precision()?;
        self.fix_lanes()
    }

    /// Fixes `lanes = 0` (auto): a resumed store keeps the lanes it records (1
    /// where it records none); otherwise libtorch's CPU thread count in this process
    /// (what `--threads` sets), at most one lane per image of a mini-batch, on CPU,
    /// and 1 on a GPU. See [`sis::lanes`].
    pub fn fix_lanes(&mut self) -> anyhow::Result<()> {
        if self.sis.lanes != 0 {
            return Ok(());
        }
        let meta_file = self.out.join(crate::store::META_FILE);
        let lanes = match std::fs::read_to_string(&meta_file) {
            Ok(text) => {
                let meta: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", meta_file.display()))?;
                match meta.pointer("/extra/lanes").and_then(|v| v.as_str()) {
                    Some(n) => n.parse().with_context(|| {
                        format!("{}: extra.lanes '{n}' is not a count", meta_file.display())
                    })?,
                    None => 1,
                }
            }
            // From the device's name: a leader need not have the job's GPU.
            Err(_) => {
                if self.device == "cpu" {
                    let batch = u32::try_from(self.sis.batch_size).unwrap_or(u32::MAX);
                    (tch::get_num_threads().max(1) as u32).min(batch.max(1))
                } else {
                    1
                }
            }
        };
        tracing::info!(lanes, "CPU lanes fixed by the job");
        self.sis.lanes = lanes;
        Ok(())
    }

    /// Fixes `precision = auto` for this job, once, where the job is decided (the
    /// single `overinterp sis` process or the leader), never on a worker: a resumed
    /// store keeps the precision it records; otherwise [`sis::precision::resolve`]
    /// measures on the job's device when it computes a reduced kind natively. A
    /// job whose device this process does not have stays fp32.
    pub fn fix_precision(&mut self) -> anyhow::Result<()> {
        use sis::precision::{self, Precision};
        if self.sis.precision != Precision::Auto {
            return Ok(());
        }
        let meta_file = self.out.join(crate::store::META_FILE);
        if let Ok(text) = std::fs::read_to_string(&meta_file) {
            let recorded = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("precision")?.as_str()?.parse::<Precision>().ok());
            if let Some(p) = recorded.filter(|p| *p != Precision::Auto) {
                tracing::info!(precision = %p, store = %self.out.display(), "precision auto: the store's");
                self.sis.precision = p;
                return Ok(());
            }
        }
        let device = crate::util::parse_device(&self.device).map_err(anyhow::Error::msg)?;
        let resolved = if device.is_cuda() && !tch::Cuda::is_available() {
            precision::Resolved {
                precision: Precision::Fp32,
                why: "auto: this process has no CUDA device to measure on".into(),
            }
        } else {
            let [c, h, w] = self.input_shape()?;
            let model_err = |source| sis::SisError::Model {
                model: self.model.clone(),
                source,
            };
            precision::resolve(Precision::Auto, device, |kind| {
                // Frozen as SIS runs them, so both are timed as they will evaluate.
                let load = || -> Result<Box<dyn Classifier>, sis::SisError> {
                    let mut m =
                        models::load_model(&self.model, device, [c, h, w]).map_err(model_err)?;
                    m.freeze();
                    Ok(m)
                };
                let fp32 = load()?;
                let mut low = load()?;
                low.set_kind(kind).map_err(model_err)?;
                precision::measure_speedup(
                    fp32.as_ref(),
                    low.as_ref(),
                    kind,
                    self.sis.candidate_batch as i64,
                )
            })?
        };
        tracing::info!(precision = %resolved.precision, why = %resolved.why, "precision fixed by the job");
        self.sis.precision = resolved.precision;
        Ok(())
    }

    /// The job's model, frozen, and its copy in the job's reduced precision: what one
    /// lane computes with.
    fn load_models(&self, device: tch::Device, shape: [i64; 3]) -> anyhow::Result<sis::Lane> {
        let load = || -> anyhow::Result<Box<dyn Classifier>> {
            let mut model = models::load_model(&self.model, device, shape)
                .with_context(|| format!("loading model {}", self.model))?;
            model.freeze();
            Ok(model)
        };
        let reduced = match self.sis.precision.reduced_kind() {
            Some(kind) => {
                let mut low = load()?;
                low.set_kind(kind)
                    .with_context(|| format!("model {} in {}", self.model, self.sis.precision))?;
                Some(low)
            }
            None => None,
        };
        Ok(sis::Lane {
            model: load()?,
            reduced,
        })
    }

    /// `[C, H, W]` of the job's dataset.
    fn input_shape(&self) -> anyhow::Result<[i64; 3]> {
        let [c, h, w] = self.open_source()?.shape();
        Ok([c as i64, h as i64, w as i64])
    }

    /// The job's dataset split.
    fn open_source(&self) -> anyhow::Result<Box<dyn data::ImageSource>> {
        let spec: data::DatasetSpec = self
            .data
            .parse()
            .with_context(|| format!("data {}", self.data))?;
        data::open_dataset(&spec, self.split)
            .with_context(|| format!("opening {} ({} split)", self.data, self.split))
    }

    /// Opens the dataset and the model (and its reduced-precision copy) and
    /// describes the store they make. The precision must be fixed
    /// ([`Self::fix_precision`]).
    pub fn open(&self) -> anyhow::Result<Opened> {
        self.sis.validate()?;
        anyhow::ensure!(
            self.sis.precision != sis::Precision::Auto,
            "precision auto must be fixed by the job before it is opened (the leader or \
             `overinterp sis` does so); a worker never chooses it"
        );
        let device = crate::util::parse_device(&self.device).map_err(anyhow::Error::msg)?;
        let source = self.open_source()?;
        let [c, h, w] = source.shape();
        let shape = [c as i64, h as i64, w as i64];
        let sis::Lane { model, reduced } = self.load_models(device, shape)?;
        let extra_lanes = (1..self.sis.lanes.max(1))
            .map(|_| self.load_models(device, shape))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let meta = StoreMeta {
            format_version: FORMAT_VERSION,
            model: model.describe(),
            model_sha256: model_fingerprint(&self.model)?,
            dataset: source.name(),
            dataset_sha256: source.content_hash(),
            split: self.split.to_string(),
            method: self.sis.method,
            thresholds: self.sis.thresholds.clone(),
            height: h as u32,
            width: w as u32,
            num_images: source.len() as u64,
            seed: self.sis.seed,
            objective: self.sis.objective,
            precision: self.sis.precision.as_str().into(),
            created_by: Some(crate::store::Provenance::current()),
            extra: [("collection".to_string(), self.sis.collection.to_string())]
                .into_iter()
                .chain(
                    // The fp32 re-ranking changes results only in reduced precision.
                    self.sis
                        .precision
                        .reduced_kind()
                        .map(|_| ("rerank".to_string(), self.sis.rerank.to_string())),
                )
                // One lane is how stores were made before lanes existed.
                .chain(
                    (self.sis.lanes > 1).then(|| ("lanes".to_string(), self.sis.lanes.to_string())),
                )
                .collect(),
        };
        Ok(Opened {
            model,
            reduced,
            lanes: sis::Lanes::new(extra_lanes),
            source,
            meta,
        })
    }

    /// Runs the whole job in this process, resuming whatever the store already
    /// holds; every mini-batch is made durable before the next starts, so a kill
    /// loses at most one mini-batch of work. Returns the number of images computed.
    pub fn run_local(&self, stop: &AtomicBool) -> anyhow::Result<usize> {
        let mut job = self.clone();
        job.fix_auto()?;
        let opened = job.open()?;
        let range = self.range(opened.source.len())?;
        let mut writer = StoreWriter::open(&self.out, opened.meta.clone())?;
        let todo = writer.missing(range.clone());
        tracing::info!(store = %self.out.display(), total = range.end - range.start, todo = todo.len(), "sis job");
        let mut progress = Progress::new("sis", todo.len() as u64);
        let mut done = 0;
        for group in mini_batch_groups(&todo, job.sis.batch_size) {
            let summary = compute(&opened, group, range.clone(), &job.sis, stop, |rec| {
                // A duplicate (already durable) is skipped: exactly once per index.
                let _ = writer.append(rec)?;
                Ok::<_, crate::store::StoreError>(())
            })?;
            writer.flush()?;
            done += summary.emitted;
            progress.inc(summary.emitted as u64);
            if summary.stopped {
                break;
            }
        }
        progress.finish();
        Ok(done)
    }
}

/// SIS for `indices` (strictly ascending, inside `range`; anything else is refused)
/// of a job covering `range`, results to `emit` in index order.
///
/// Mini-batches are fixed by image index, not by where a run starts: for a given
/// `range`, image `i` is always computed together with the images of its group
/// `[g·b, (g+1)·b) ∩ range`,
/// `g = ⌊i / b⌋`, `b = params.batch_size`. Batched float arithmetic can differ in the
/// last bits with a batch's make-up (a batch of one takes another kernel path in
/// libtorch), which changes removal orders; so a resumed run, or a shard holding
/// part of a group, computes the whole group again and emits only `indices`. A
/// resume thus recomputes, without storing, at most `b − 1` stored images per
/// partly stored group, and its store is record-identical to an uninterrupted one.
/// The summary counts emitted images only.
pub fn compute<E>(
    opened: &Opened,
    indices: &[u64],
    range: std::ops::Range<u64>,
    params: &SisParams,
    stop: &AtomicBool,
    mut emit: impl FnMut(ImageSis) -> Result<(), E>,
) -> Result<sis::SisRunSummary, sis::SisError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(w) = indices.windows(2).find(|w| w[0] >= w[1]) {
        return Err(sis::SisError::Params(format!(
            "image indices must be strictly ascending; got {} before {}",
            w[0], w[1]
        )));
    }
    if let Some(i) = indices.iter().find(|i| !range.contains(i)) {
        return Err(sis::SisError::Params(format!(
            "image {i} is outside the job's images {}..{}",
            range.start, range.end
        )));
    }
    let b = params.batch_size.max(1) as u64;
    let mut summary = sis::SisRunSummary {
        emitted: 0,
        stopped: false,
    };
    for wanted in mini_batch_groups(indices, params.batch_size) {
        let g = wanted[0] / b;
        let whole: Vec<u64> = ((g * b).max(range.start)..((g + 1) * b).min(range.end)).collect();
        let mut emitted = 0;
        let run = sis::run_sis_with(
            opened.model.as_ref(),
            opened.reduced.as_deref(),
            &opened.lanes,
            opened.source.as_ref(),
            &whole,
            params,
            |rec| {
                if wanted.contains(&rec.index) {
                    emitted += 1;
                    emit(rec)
                } else {
                    Ok(())
                }
            },
            stop,
        )?;
        summary.emitted += emitted;
        if run.stopped {
            summary.stopped = true;
            break;
        }
    }
    Ok(summary)
}

/// `indices` (ascending) split into runs that share the mini-batch group
/// `⌊i / batch_size⌋` (see [`compute`]).
pub fn mini_batch_groups(indices: &[u64], batch_size: usize) -> impl Iterator<Item = &[u64]> {
    let b = batch_size.max(1) as u64;
    indices.chunk_by(move |x, y| x / b == y / b)
}

/// A content hash of the model files a `--model` spec names (weights and config
/// of checkpoints, the file of TorchScript models, every member of an ensemble),
/// so a store records exactly which weights made it.
pub fn model_fingerprint(spec: &str) -> anyhow::Result<String> {
    let members: Vec<&str> = match spec.strip_prefix("ensemble:") {
        Some(list) => list.split(',').collect(),
        None => vec![spec],
    };
    let mut hashes = String::new();
    for member in members {
        let path = PathBuf::from(member);
        let files = if path.is_dir() {
            vec![path.join("config.json"), path.join("model.safetensors")]
        } else {
            vec![path]
        };
        for file in files {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("reading model file {}", file.display()))?;
            hashes.push_str(&sha256_hex(&bytes));
        }
    }
    Ok(sha256_hex(hashes.as_bytes()))
}

/// Parses `cpu`/`cuda`/`cuda:N` for a job (kept for callers holding a `Device`).
pub fn device_of(job: &SisJob) -> anyhow::Result<Device> {
    crate::util::parse_device(&job.device).map_err(anyhow::Error::msg)
}
