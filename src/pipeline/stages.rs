//! The pipeline's stages, each cached by the content hash of its inputs.
//!
//! A stage's directory is `stages/<name>-<hash>` where the hash covers its
//! parameters and the directories of the stages it reads. A finished stage leaves
//! `done.json` (its result); a rerun returns that without work. An unfinished one
//! resumes: training from its last checkpoint, SIS from its store. So a rerun
//! after a crash, or with one more replicate, redoes only what changed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::data::{self, ImageSource, Split};
use crate::job::SisJob;
use crate::models::{self, Arch, ModelConfig};
use crate::subsets::{MaskSource, RandomSubset, Selection, StoredSubsets};
use crate::train::parallel::{train_data_parallel, Gang, GangConfig, EXIT_GANG_LOST};
use crate::train::{self, eval, TrainConfig, TrainJob};

/// Runs stages under `root/stages`.
pub struct Stages {
    pub root: PathBuf,
    /// Which stages this process may run (all of them, except in a stage job).
    pub policy: Policy,
}

/// Which stages a process may run; any other must already be cached.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Run whatever is not cached (an embedded run).
    Run,
    /// Run only these stages (a Slurm stage job, a rank of a gang, the report job);
    /// any other that is not cached is a [`NotDone`] error. `record`: write `key.json`
    /// and `done.json` (false on ranks other than 0, which write nothing).
    Only { stages: Vec<String>, record: bool },
}

/// A stage this process may not run has not finished yet: `dir` is where it will be.
#[derive(Debug, thiserror::Error)]
#[error("stage {name} has not finished ({}); run the pipeline again once it has", dir.display())]
pub struct NotDone {
    pub name: String,
    pub dir: PathBuf,
}

impl Stages {
    /// Stages under `root` that run whatever is not cached.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            policy: Policy::Run,
        }
    }

    /// The directory of stage `name` with inputs `key`: `stages/<name>-<hash>`.
    pub fn dir<K: Serialize>(&self, name: &str, key: &K) -> PathBuf {
        let json = serde_json::to_vec(key).expect("stage keys serialize");
        let hash = crate::util::sha256_hex(&json);
        self.root
            .join("stages")
            .join(format!("{name}-{}", &hash[..12]))
    }

    /// Creates the stage's directory and its `key.json`; returns the directory.
    pub fn begin<K: Serialize>(&self, name: &str, key: &K) -> anyhow::Result<PathBuf> {
        let dir = self.dir(name, key);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("key.json"), serde_json::to_vec_pretty(key)?)
            .with_context(|| format!("writing {}", dir.join("key.json").display()))?;
        Ok(dir)
    }

    /// Records a finished stage's result (atomically) as its `done.json`.
    pub fn finish<T: Serialize>(dir: &Path, value: &T) -> anyhow::Result<()> {
        let tmp = dir.join("done.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("done.json"))
            .with_context(|| format!("writing {}", dir.join("done.json").display()))?;
        Ok(())
    }

    /// The cached result of a finished stage.
    pub fn cached<T: DeserializeOwned>(dir: &Path) -> Option<T> {
        let bytes = std::fs::read(dir.join("done.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Returns the cached result of stage `name` with inputs `key`, or runs `run`
    /// in its directory and caches what it returns (as the policy allows).
    pub fn run<K: Serialize, T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        key: &K,
        run: impl FnOnce(&Path) -> anyhow::Result<T>,
    ) -> anyhow::Result<(PathBuf, T)> {
        let dir = self.dir(name, key);
        if let Some(value) = Self::cached(&dir) {
            tracing::info!(stage = name, dir = %dir.display(), "cached");
            return Ok((dir, value));
        }
        let record = match &self.policy {
            Policy::Run => true,
            Policy::Only { stages, record } if stages.iter().any(|s| s == name) => *record,
            Policy::Only { .. } => {
                return Err(NotDone {
                    name: name.to_string(),
                    dir,
                }
                .into())
            }
        };
        if record {
            self.begin(name, key)?;
        } else {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let span = tracing::info_span!("stage", name);
        let _enter = span.enter();
        tracing::info!(dir = %dir.display(), "running");
        let value = run(&dir).with_context(|| format!("stage {name} ({})", dir.display()))?;
        if record {
            Self::finish(&dir, &value)?;
        }
        Ok((dir, value))
    }
}

/// Marks a SIS stage finished when its store holds every image of its split but no
/// `done.json` (a Slurm SIS job ends with its leader, which knows nothing of stages).
pub fn adopt_complete_store(dir: &Path) -> anyhow::Result<bool> {
    if dir.join("done.json").exists() || !dir.join("store").exists() {
        return Ok(false);
    }
    let Ok(reader) = crate::store::StoreReader::open(dir.join("store")) else {
        return Ok(false);
    };
    if (reader.len() as u64) < reader.meta().num_images {
        return Ok(false);
    }
    Stages::finish(dir, &())?;
    Ok(true)
}

/// Trains `arch` on full training images (or on `masks`) into `dir`, in this process
/// or as one rank of the data-parallel `gang` (only rank 0 writes the checkpoint).
#[allow(clippy::too_many_arguments)]
pub fn train_model(
    dir: &Path,
    arch: &str,
    input_dropout: Option<f64>,
    train_set: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
    config: &TrainConfig,
    device: tch::Device,
    gang: Option<&GangConfig>,
) -> anyhow::Result<()> {
    let arch: Arch = arch.parse()?;
    let [c, h, w] = train_set.shape();
    let mut model_config = ModelConfig::new(
        arch,
        train_set.num_classes() as i64,
        [c as i64, h as i64, w as i64],
    );
    if let Some(p) = input_dropout {
        model_config = model_config.with_input_dropout(p, config.seed);
    }
    tch::manual_seed(config.seed as i64);
    let mut model = models::build(&model_config, device)?;
    let job = TrainJob {
        model: model.as_mut(),
        model_config: serde_json::to_value(&model_config)?,
        train_set,
        train_masks: masks,
        test_set: None,
        test_masks: None,
        config: config.clone(),
        out_dir: dir.to_path_buf(),
    };
    match gang {
        None => {
            train::train(job)?;
        }
        Some(config) => {
            let (rank, world_size) = (config.rank, config.world_size);
            let lost = |source| train::TrainError::Collective {
                rank,
                world_size,
                source,
            };
            let result = Gang::join(config)
                .map_err(lost)
                .and_then(|mut gang| train_data_parallel(job, &mut gang));
            match result {
                Ok(_) => {}
                Err(err @ train::TrainError::Collective { .. }) => {
                    return Err(anyhow::Error::new(GangLost).context(err.to_string()))
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

/// A rank's gang lost a member: the gang restarts from the last checkpoint (the rank
/// process exits with [`EXIT_GANG_LOST`]).
#[derive(Debug, thiserror::Error)]
#[error("the gang lost a member (exit status {EXIT_GANG_LOST}: restart from the last checkpoint)")]
pub struct GangLost;

/// Runs SIS over a whole split through the embedded cluster into `store`.
pub fn sis_split(job: &SisJob, workers: usize) -> anyhow::Result<()> {
    let tuning = crate::exec::Tuning {
        shard_size: (job.sis.batch_size as u64).max(1) * 2,
        ..Default::default()
    };
    let report = crate::exec::run_job_local(job, workers, &tuning)?;
    let status = &report.job.status;
    anyhow::ensure!(
        status.images_done == status.images_total,
        "SIS job stopped with {} of {} images",
        status.images_done,
        status.images_total
    );
    Ok(())
}

/// Warns about stages `root/stages/<name>-<hash>` whose key names another BackSelect
/// objective than `objective` (or none: made before the objective was recorded, so
/// `confidence`). Their results are not reused — the objective is part of the key, so
/// this stage is computed afresh in its own directory — and the message says why.
pub fn note_other_objectives(root: &Path, name: &str, objective: crate::sis::Objective) {
    let Ok(entries) = std::fs::read_dir(root.join("stages")) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let hash = file_name
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'));
        if hash.is_none_or(|h| h.contains('-')) {
            continue;
        }
        let key = std::fs::read(entry.path().join("key.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let Some(key) = key else { continue };
        let found = key
            .pointer("/1/sis/objective")
            .and_then(|v| v.as_str())
            .unwrap_or("confidence");
        if found != objective.as_str() {
            tracing::warn!(
                stage = name,
                old = %entry.path().display(),
                old_objective = found,
                objective = %objective,
                "a SIS stage made with another BackSelect objective exists; its results are \
                 not reused and this stage is recomputed"
            );
        }
    }
}

/// Opens a split of the pipeline's dataset.
pub fn open_split(spec: &str, split: Split) -> anyhow::Result<Box<dyn ImageSource>> {
    let spec: data::DatasetSpec = spec.parse().with_context(|| format!("data {spec}"))?;
    Ok(data::open_dataset(&spec, split)?)
}

/// The masks of one subset kind for one split.
pub fn subset_masks(
    kind: SubsetKind,
    fraction: f64,
    seed: u64,
    store: &Path,
    (h, w): (usize, usize),
) -> anyhow::Result<Box<dyn MaskSource>> {
    Ok(match kind {
        SubsetKind::Full => anyhow::bail!("full images need no mask"),
        SubsetKind::Backselect | SubsetKind::MaskOnly => {
            let reader = crate::store::StoreReader::open(store)?;
            Box::new(StoredSubsets::from_store(
                &reader,
                Selection::BackselectTop(fraction),
            )?)
        }
        SubsetKind::Random => Box::new(RandomSubset::new(fraction, seed, h, w)?),
    })
}

/// What a model sees of each image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum SubsetKind {
    Full,
    Backselect,
    Random,
    /// The mask-only control: the backselect subsets' keep-masks over constant
    /// images ([`crate::subsets::mask_only`]), so only the subsets' shape is seen.
    MaskOnly,
}

impl SubsetKind {
    /// The kinds a model is retrained on, in the order the report shows them.
    pub const RETRAINED: [SubsetKind; 3] = [
        SubsetKind::Backselect,
        SubsetKind::Random,
        SubsetKind::MaskOnly,
    ];

    pub fn label(self, fraction: f64) -> String {
        let pct = format!("{}%", crate::pipeline::report_pct(fraction));
        match self {
            SubsetKind::Full => "Full".into(),
            SubsetKind::Backselect => format!("BS {pct}"),
            SubsetKind::Random => format!("Random {pct}"),
            SubsetKind::MaskOnly => format!("Mask of BS {pct} (control)"),
        }
    }
}

/// Accuracy and mean confidence of a model on one test view.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct EvalSummary {
    pub top1: f64,
    pub mean_confidence: f64,
    pub images: usize,
    /// Images classified correctly (for Wilson intervals over images).
    #[serde(default)]
    pub correct: usize,
    /// Images on which the model predicts the class the original model predicted on
    /// the full image (the leakage control's agreement); `None` where not measured.
    #[serde(default)]
    pub agree: Option<usize>,
    /// Softmax probability of the original model's full-image class: mean, sd and
    /// images (the confidence drop is measured in this class, not the masked top one).
    #[serde(default)]
    pub original_class_confidence: Option<crate::pipeline::analyses::Stat>,
}

impl EvalSummary {
    /// Accuracy and mean confidence of an evaluation report (no agreement).
    pub fn of_report(report: &eval::EvalReport) -> Self {
        let correct = report
            .predictions
            .iter()
            .filter(|p| p.predicted == p.label)
            .count();
        EvalSummary {
            top1: report.top1,
            mean_confidence: report.mean_confidence,
            images: report.images,
            correct,
            agree: None,
            original_class_confidence: None,
        }
    }
}

pub fn evaluate(
    model: &dyn models::Classifier,
    source: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
) -> anyhow::Result<(EvalSummary, eval::EvalReport)> {
    let report = eval::evaluate(model, source, masks, 256)?;
    Ok((EvalSummary::of_report(&report), report))
}
