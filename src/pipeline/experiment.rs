//! The pipeline's inputs, opened once, and one method per kind of stage: each
//! computes the stage's key (so its directory and hash) and runs or reuses it. The
//! embedded run calls them in order ([`super::run`]); a stage job calls the one it
//! runs and reads the others from their caches ([`super::plan::run_stage`]), so both
//! make the same stage directories.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::analyses::Stability;
use super::plan::{names, SisSet};
use super::run::load;
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{self, Stages, SubsetKind};
use super::views::{evaluate_views, ViewsEval};
use crate::data::{ImageSource, Split};
use crate::job::SisJob;
use crate::train::parallel::GangConfig;
use crate::train::TrainConfig;

/// Test images BackSelected a second time (another noise seed) for the stability of
/// the subsets: enough for a tight interval of the mean Jaccard, cheap beside the
/// whole test split.
pub const STABILITY_IMAGES: usize = 200;

/// How this process runs the ranks of a training stage.
#[derive(Clone, Debug)]
pub enum Ranks {
    /// In this process, or — with the spec's `local_ranks` > 1 — as a local gang of
    /// `overinterp pipeline SPEC --stage NAME` processes reading `spec_file`.
    Local { spec_file: PathBuf },
    /// This process is one rank of a gang (a stage job on Slurm, or a local gang's rank).
    Member(GangConfig),
}

/// The opened pipeline: spec, datasets, stages.
pub struct Experiment<'a> {
    pub spec: &'a PipelineSpec,
    pub stages: Stages,
    pub train_set: Box<dyn ImageSource>,
    pub test_set: Box<dyn ImageSource>,
    pub corrupted: Option<Box<dyn ImageSource>>,
    /// Height and width of the images.
    pub hw: (usize, usize),
    pub ranks: Ranks,
    /// `--device` of a rank (a GPU of its node); the spec's device otherwise.
    pub device_override: Option<String>,
    /// `--threads` passed on to rank processes.
    pub threads: Option<i32>,
}

impl<'a> Experiment<'a> {
    /// Opens the datasets of `spec`; stages live under `stages.root`.
    pub fn open(spec: &'a PipelineSpec, stages: Stages, ranks: Ranks) -> anyhow::Result<Self> {
        let train_set = stages::open_split(&spec.data, Split::Train)?;
        let test_set = stages::open_split(&spec.data, Split::Test)?;
        let corrupted = spec
            .corrupted
            .as_deref()
            .map(|c| stages::open_split(c, Split::Test))
            .transpose()?;
        if let (Some(c), Some(name)) = (&corrupted, &spec.corrupted) {
            let (cs, ts) = (
                (c.shape(), c.num_classes()),
                (test_set.shape(), test_set.num_classes()),
            );
            anyhow::ensure!(
                cs == ts,
                "corrupted set {name}: images {:?} of {} classes, but the test set {} has {:?} of {}; \
                 the models evaluate both, so they must match",
                cs.0,
                cs.1,
                spec.data,
                ts.0,
                ts.1
            );
        }
        let [_, h, w] = test_set.shape();
        Ok(Self {
            spec,
            stages,
            train_set,
            test_set,
            corrupted,
            hw: (h, w),
            ranks,
            device_override: None,
            threads: None,
        })
    }

    /// The device models run on (parsed only when a stage computes).
    pub fn device(&self) -> anyhow::Result<tch::Device> {
        let name = self.device_override.as_deref().unwrap_or(&self.spec.device);
        crate::util::parse_device(name).map_err(anyhow::Error::msg)
    }

    /// The `--model` string of a model of the spec, training it first (stage
    /// `train-<name>`) when it has an `arch`.
    pub fn model(&self, m: &ModelSpec) -> anyhow::Result<String> {
        if let Some(arch) = &m.arch {
            let mut cfg = self.spec.train.clone();
            cfg.seed = m.seed;
            let key = (
                "train",
                arch,
                m.input_dropout,
                &self.spec.data,
                self.train_set.content_hash(),
                &cfg,
            );
            let name = names::train(m);
            let (dir, ()) = self.stages.run(&name, &key, |dir| {
                self.train_stage(
                    dir,
                    &name,
                    arch,
                    m.input_dropout,
                    self.train_set.as_ref(),
                    None,
                    &cfg,
                )
            })?;
            Ok(dir.to_string_lossy().into_owned())
        } else if let Some(path) = &m.torchscript {
            Ok(path.to_string_lossy().into_owned())
        } else {
            let mut members = Vec::new();
            for n in &m.members {
                let member = self
                    .spec
                    .models
                    .iter()
                    .find(|o| &o.name == n)
                    .with_context(|| format!("model {}: no member {n}", m.name))?;
                members.push(self.model(member)?);
            }
            Ok(format!("ensemble:{}", members.join(",")))
        }
    }

    /// The SIS job of a split or the corrupted set (its `out` is set by the stage) and
    /// the model's fingerprint, both part of the stage's key.
    pub fn sis_job(&self, model: &str, set: SisSet) -> anyhow::Result<(SisJob, String)> {
        let mut params = self.spec.sis.clone();
        params.thresholds = vec![self.spec.threshold];
        let data =
            match set {
                SisSet::Corrupted => self.spec.corrupted.clone().context(
                    "a SIS stage over the corrupted set, but the spec has no `corrupted`",
                )?,
                SisSet::Train | SisSet::Test => self.spec.data.clone(),
            };
        let job = SisJob {
            model: model.to_string(),
            data,
            split: set.split(),
            out: PathBuf::new(),
            device: self.spec.device.clone(),
            start: None,
            end: None,
            sis: params,
        };
        let fingerprint = crate::job::model_fingerprint(model)?;
        Ok((job, fingerprint))
    }

    /// Stage `sis-<name>-<set>`: BackSelect over a split or the corrupted set on the
    /// embedded cluster; returns the store. A store that a Slurm SIS job completed is
    /// adopted.
    pub fn sis_store(&self, m: &ModelSpec, model: &str, set: SisSet) -> anyhow::Result<PathBuf> {
        let (job, fingerprint) = self.sis_job(model, set)?;
        let key = ("sis", &job, fingerprint);
        let name = names::sis(m, set);
        stages::adopt_complete_store(&self.stages.dir(&name, &key))?;
        let (dir, ()) = self.stages.run(&name, &key, |dir| {
            stages::note_other_objectives(&self.stages.root, &name, job.sis.objective);
            let job = SisJob {
                out: dir.join("store"),
                ..job.clone()
            };
            stages::sis_split(&job, self.spec.local_workers)
        })?;
        Ok(dir.join("store"))
    }

    /// Stage `stability-<name>` (beyond the paper): gradient BackSelect again over the
    /// first [`STABILITY_IMAGES`] test images with the next noise seed, and the mean
    /// Jaccard of the two runs' backselect-`q` subsets. `None` for methods without
    /// noise (exact BackSelect is deterministic).
    pub fn stability(
        &self,
        m: &ModelSpec,
        model: &str,
        test_store: &Path,
    ) -> anyhow::Result<Option<Stability>> {
        let (mut job, fingerprint) = self.sis_job(model, SisSet::Test)?;
        if !matches!(job.sis.method, crate::sis::Method::Gradient { .. }) {
            return Ok(None);
        }
        let other_seed = job.sis.seed.wrapping_add(1);
        job.sis.seed = other_seed;
        // The precision the test store ran at (`auto` is fixed per SIS stage), so
        // that only the noise seed differs between the two runs.
        if let Ok(p) = crate::store::StoreReader::open(test_store)?
            .meta()
            .precision
            .parse()
        {
            job.sis.precision = p;
        }
        job.start = Some(0);
        job.end = Some(STABILITY_IMAGES.min(self.test_set.len()) as u64);
        let key = (
            "stability",
            &job,
            fingerprint,
            test_store,
            self.spec.fraction,
        );
        let name = names::stability(m);
        let base_seed = self.spec.sis.seed;
        let (_, result) = self.stages.run(&name, &key, |dir| {
            let job = SisJob {
                out: dir.join("store"),
                ..job.clone()
            };
            stages::sis_split(&job, self.spec.local_workers)?;
            let (a, b) = (
                crate::store::StoreReader::open(test_store)?,
                crate::store::StoreReader::open(&job.out)?,
            );
            let Some((jaccard, min_jaccard)) =
                super::analysis::stability::mean_jaccard(&a, &b, self.spec.fraction)?
            else {
                return Ok(None);
            };
            Ok(Some(Stability {
                model: m.name.clone(),
                comparison: format!("gradient BackSelect, noise seed {base_seed} vs. {other_seed}"),
                jaccard,
                min_jaccard,
            }))
        })?;
        Ok(result)
    }

    /// Prepares the SIS stage for a cluster run: its directory, `key.json` and the
    /// job spec `job.toml` (store `store/`). Returns (job file, store).
    pub fn sis_prepare(
        &self,
        m: &ModelSpec,
        model: &str,
        set: SisSet,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (job, fingerprint) = self.sis_job(model, set)?;
        let key = ("sis", &job, fingerprint);
        let name = names::sis(m, set);
        stages::note_other_objectives(&self.stages.root, &name, job.sis.objective);
        let dir = self.stages.begin(&name, &key)?;
        let job = SisJob {
            out: dir.join("store"),
            ..job
        };
        let file = dir.join("job.toml");
        std::fs::write(&file, job.to_toml())
            .with_context(|| format!("writing {}", file.display()))?;
        Ok((file, job.out))
    }

    /// An evaluation stage: `model_dir` on full, backselect and random test images
    /// (and the corrupted set), with agreement with the original model's predictions
    /// in `test_store`. `trained_on` is what the model was trained on: the mask-only
    /// control is evaluated on the constant images of [`crate::subsets::mask_only`].
    pub fn views(
        &self,
        model_dir: &str,
        stage: &str,
        test_store: &Path,
        trained_on: SubsetKind,
    ) -> anyhow::Result<ViewsEval> {
        let spec = self.spec;
        let mask_only = trained_on == SubsetKind::MaskOnly;
        let key = (
            "eval",
            // Version 2: agreement, original-class confidence, corrupted groups.
            2,
            mask_only,
            model_dir,
            crate::job::model_fingerprint(model_dir)?,
            test_store,
            spec.fraction,
            spec.random_seed,
            &spec.corrupted,
        );
        let (_, v) = self.stages.run(stage, &key, |_| {
            let classifier = load(model_dir, self.device()?, self.test_set.as_ref())?;
            evaluate_views(
                classifier.as_ref(),
                self.test_set.as_ref(),
                self.corrupted.as_deref(),
                test_store,
                spec.fraction,
                spec.random_seed,
                self.hw,
                mask_only,
            )
        })?;
        Ok(v)
    }

    /// Stage `retrain-<name>-<kind>-<r>`: replicate `r` retrained on the model's
    /// subsets of one kind; returns its checkpoint directory.
    pub fn retrain(
        &self,
        m: &ModelSpec,
        kind: SubsetKind,
        r: usize,
        train_store: &Path,
    ) -> anyhow::Result<PathBuf> {
        let spec = self.spec;
        let arch = m
            .retrain_arch()
            .with_context(|| format!("model {} has no arch to retrain", m.name))?;
        let mut cfg = spec.retrain.clone();
        cfg.seed = r as u64;
        let key = (
            "retrain",
            arch,
            m.input_dropout,
            kind,
            train_store,
            spec.fraction,
            spec.random_seed,
            &cfg,
            &spec.data,
        );
        let name = names::retrain(m, kind, r);
        let (dir, ()) = self.stages.run(&name, &key, |dir| {
            let masks =
                stages::subset_masks(kind, spec.fraction, spec.random_seed, train_store, self.hw)?;
            let constant = crate::subsets::mask_only::MaskOnly::new(self.train_set.as_ref());
            let train_set: &dyn ImageSource = match kind {
                SubsetKind::MaskOnly => &constant,
                _ => self.train_set.as_ref(),
            };
            self.train_stage(
                dir,
                &name,
                arch,
                m.input_dropout,
                train_set,
                Some(masks.as_ref()),
                &cfg,
            )
        })?;
        Ok(dir)
    }

    /// The body of a (re)training stage on `train_set` (the spec's, or the mask-only
    /// control's constant images): in this process, as this process's rank of a
    /// gang, or as a local gang of rank processes (which rebuild it from the stage).
    #[allow(clippy::too_many_arguments)]
    fn train_stage(
        &self,
        dir: &Path,
        name: &str,
        arch: &str,
        input_dropout: Option<f64>,
        train_set: &dyn ImageSource,
        masks: Option<&dyn crate::subsets::MaskSource>,
        cfg: &TrainConfig,
    ) -> anyhow::Result<()> {
        match &self.ranks {
            Ranks::Member(gang) => stages::train_model(
                dir,
                arch,
                input_dropout,
                train_set,
                masks,
                cfg,
                self.device()?,
                (gang.world_size > 1).then_some(gang),
            ),
            Ranks::Local { .. } if self.spec.local_ranks <= 1 => stages::train_model(
                dir,
                arch,
                input_dropout,
                train_set,
                masks,
                cfg,
                self.device()?,
                None,
            ),
            Ranks::Local { spec_file } => {
                std::fs::write(spec_file, self.spec.to_toml())
                    .with_context(|| format!("writing {}", spec_file.display()))?;
                super::gang::run_local_gang(
                    spec_file,
                    name,
                    self.spec.local_ranks,
                    self.threads,
                    dir,
                )
            }
        }
    }
}
