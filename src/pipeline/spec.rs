//! The pipeline spec (TOML): which dataset, which models, how to train, how to
//! compute SIS, which subsets, how many replicates. Checked-in examples live in
//! `scripts/pipelines/`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sis::SisParams;
use crate::train::TrainConfig;

/// One model of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name used in tables and figures.
    pub name: String,
    /// Train this architecture on the full images (resnet20, small-cnn, ...).
    #[serde(default)]
    pub arch: Option<String>,
    /// Or use this TorchScript file as it is (e.g. pretrained torchvision weights).
    #[serde(default)]
    pub torchscript: Option<PathBuf>,
    /// Or average the logits of these models (names of other models).
    #[serde(default)]
    pub members: Vec<String>,
    /// Input dropout: keep probability at train and test time (paper: 0.8).
    #[serde(default)]
    pub input_dropout: Option<f64>,
    /// Training seed of this model.
    #[serde(default)]
    pub seed: u64,
    /// Whether to retrain on this model's subsets (default: true for trained models).
    #[serde(default = "yes")]
    pub retrain: bool,
    /// The architecture retrained on this model's subsets when it is not `arch`: a
    /// TorchScript model computes the SIS, a fresh native network of this
    /// architecture (e.g. `inception-v3`) is trained on the subsets (paper Table S4).
    #[serde(default)]
    pub retrain_arch: Option<String>,
}

impl ModelSpec {
    /// The architecture retrained on this model's subsets: `retrain_arch`, else `arch`.
    pub fn retrain_arch(&self) -> Option<&String> {
        self.retrain_arch.as_ref().or(self.arch.as_ref())
    }
}

fn yes() -> bool {
    true
}

/// The whole experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    /// Dataset spec `KIND:PATH[?options]`; its train split trains, its test split evaluates.
    pub data: String,
    /// Optional corrupted test set (e.g. `cifar10c:data/CIFAR-10-C?sample=2000`),
    /// evaluated on full images as an extra Table 1 column and BackSelected in its own
    /// SIS stage (Figure S3). Without `sample=`, CIFAR-10-C is 950 000 images: its SIS
    /// stage then costs about 95 times the test set's.
    #[serde(default)]
    pub corrupted: Option<String>,
    /// Output directory: stages/, report/.
    pub out: PathBuf,
    #[serde(default = "cpu")]
    pub device: String,
    /// Workers of the embedded cluster for SIS stages.
    #[serde(default = "two")]
    pub local_workers: usize,
    /// Rank processes of each (re)training stage in an embedded run: a data-parallel
    /// gang on this machine, like `overinterp train --local-ranks`. Not part of any
    /// stage's hash (as `local_workers`); on Slurm `[slurm.train]`/`[slurm.retrain]` decide.
    #[serde(default = "one")]
    pub local_ranks: usize,
    /// Subset fraction q (paper: 0.05 on CIFAR-10, 0.10 on ImageNet).
    pub fraction: f64,
    /// Retrained models per subset kind, with seeds 0..replicates.
    #[serde(default = "two")]
    pub replicates: usize,
    /// Seed of the random baseline subsets.
    #[serde(default)]
    pub random_seed: u64,
    /// Thresholds τ of the SIS-size curve (Figure 5), read from the stored histories.
    #[serde(default = "default_sweep")]
    pub sweep: Vec<f32>,
    /// τ of the SIS shown in galleries and the correct-vs-wrong analysis.
    #[serde(default = "default_tau")]
    pub threshold: f32,
    pub models: Vec<ModelSpec>,
    /// Training of the original models on full images.
    pub train: TrainConfig,
    /// Retraining on pixel subsets (the paper uses no augmentation there).
    pub retrain: TrainConfig,
    /// BackSelect on every train and test image and the corrupted set (`thresholds` is
    /// set to `[threshold]`).
    pub sis: SisParams,
    /// How `overinterp pipeline --slurm` submits the stages; not part of any stage's hash.
    #[serde(default)]
    pub slurm: SlurmSettings,
    /// A human study (`overinterp human build`) whose section the report appends
    /// once the study has answers.
    #[serde(default)]
    pub study: Option<PathBuf>,
}

/// The `[slurm]` table: scheduler settings for every job, and per stage kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition` of every job (a stage kind may override it).
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account` of every job.
    #[serde(default)]
    pub account: Option<String>,
    /// Directory holding `train.sbatch` and `sis.sbatch` (default: `slurm/` in the
    /// current directory, else the one of the repository the binary was built in).
    #[serde(default)]
    pub scripts: Option<PathBuf>,
    /// The `overinterp` binary the jobs run (default: this executable); it must be on
    /// storage every node sees, as must `out` and the data.
    #[serde(default)]
    pub bin: Option<PathBuf>,
    /// Extra sbatch options for every job, e.g. `["--qos=high"]`.
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Training of the original models: a data-parallel gang (`slurm/train.sbatch`).
    #[serde(default)]
    pub train: SlurmResources,
    /// Retraining on subsets: one gang per replicate, the replicates of a subset kind
    /// as one job array.
    #[serde(default)]
    pub retrain: SlurmResources,
    /// SIS over a split: a leader and one worker per node or GPU (`slurm/sis.sbatch`).
    #[serde(default)]
    pub sis: SlurmResources,
    /// Evaluations of original and retrained models (small jobs).
    #[serde(default)]
    pub eval: SlurmResources,
    /// The transfer matrix, analyses and report (one small job).
    #[serde(default)]
    pub report: SlurmResources,
}

/// What one kind of stage asks of the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    /// `--nodes`: ranks of a training gang, or SIS workers, one per node (default 1).
    #[serde(default = "one")]
    pub nodes: usize,
    /// GPUs per node (`--gres=gpu:N`); a rank or worker per GPU. 0: one CPU process per node.
    #[serde(default)]
    pub gpus_per_node: usize,
    /// `--cpus-per-task`.
    #[serde(default)]
    pub cpus_per_task: Option<usize>,
    /// `--time` limit, e.g. `"2-00:00:00"` (a timed-out stage resumes when resubmitted).
    #[serde(default)]
    pub time: Option<String>,
    /// `--partition` for this kind (default: `[slurm] partition`).
    #[serde(default)]
    pub partition: Option<String>,
    /// Extra sbatch options for this kind, e.g. `["--constraint=a100"]`.
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Environment of the job, e.g. `{ OVERINTERP_SHARD_SIZE = "64" }` for SIS.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

impl Default for SlurmResources {
    fn default() -> Self {
        Self {
            nodes: 1,
            gpus_per_node: 0,
            cpus_per_task: None,
            time: None,
            partition: None,
            sbatch: Vec::new(),
            env: Default::default(),
        }
    }
}

fn cpu() -> String {
    "cpu".into()
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn default_sweep() -> Vec<f32> {
    vec![0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
}
fn default_tau() -> f32 {
    0.9
}

impl PipelineSpec {
    /// Parses and validates a spec (see [`PipelineSpec::validate`]); files are checked
    /// by [`PipelineSpec::check_inputs`].
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let spec: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("pipeline spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as TOML, for stage jobs and rank processes to read back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a pipeline spec serializes to TOML")
    }

    /// Every check that needs no file, all at once, before any stage runs or is
    /// submitted: a bad value fails in a second, not after hours of training. The
    /// error lists every problem, each naming its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        self.check_values(&mut problems);
        self.check_models(&mut problems);
        self.check_slurm(&mut problems);
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("pipeline spec: {}", problems.join("; "))
    }

    fn check_values(&self, problems: &mut Vec<String>) {
        let mut need = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        need(!self.name.trim().is_empty(), "name is empty".into());
        need(
            self.fraction > 0.0 && self.fraction <= 1.0,
            format!("fraction = {} is not in (0, 1]", self.fraction),
        );
        need(
            self.replicates >= 1,
            "replicates = 0: give at least 1".into(),
        );
        need(
            self.local_workers >= 1,
            "local_workers = 0: give at least 1".into(),
        );
        need(
            self.local_ranks >= 1,
            "local_ranks = 0: give at least 1".into(),
        );
        need(
            in_unit(self.threshold),
            format!("threshold = {} is not in (0, 1]", self.threshold),
        );
        need(!self.sweep.is_empty(), "sweep is empty".into());
        for t in &self.sweep {
            need(in_unit(*t), format!("sweep value {t} is not in (0, 1]"));
        }
        need(
            device_syntax(&self.device),
            format!("device = {:?}: use cpu, cuda or cuda:N", self.device),
        );
        for (key, data) in [
            ("data", Some(&self.data)),
            ("corrupted", self.corrupted.as_ref()),
        ] {
            if let Some(data) = data {
                if let Err(e) = data.parse::<crate::data::DatasetSpec>() {
                    problems.push(format!("{key} = {data:?}: {e}"));
                }
            }
        }
        for (key, t) in [("train", &self.train), ("retrain", &self.retrain)] {
            if t.epochs == 0 || t.batch_size == 0 {
                problems.push(format!("[{key}] epochs and batch_size must be at least 1"));
            }
            if t.schedule.lr.is_nan() || t.schedule.lr <= 0.0 {
                problems.push(format!(
                    "[{key}] schedule.lr = {} must be positive",
                    t.schedule.lr
                ));
            }
        }
        let mut sis = self.sis.clone();
        sis.thresholds = vec![self.threshold.clamp(f32::MIN_POSITIVE, 1.0)];
        if let Err(e) = sis.validate() {
            problems.push(format!("[sis] {e}"));
        }
    }

    fn check_models(&self, problems: &mut Vec<String>) {
        if self.models.is_empty() {
            problems.push("give at least one [[models]]".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.models {
            if !safe_name(&m.name) {
                problems.push(format!(
                    "model name {:?} is not usable as a directory name: use letters, digits, '.', '_' and '-', not starting with '.' or '-'",
                    m.name
                ));
            }
            // Stage directories of retrained models are lowercased.
            if !seen.insert(m.name.to_ascii_lowercase()) {
                problems.push(format!(
                    "model name {:?} is used twice (names are compared ignoring case)",
                    m.name
                ));
            }
            let kinds = m.arch.is_some() as u8
                + m.torchscript.is_some() as u8
                + (!m.members.is_empty()) as u8;
            if kinds != 1 {
                problems.push(format!(
                    "model {}: give exactly one of arch, torchscript, members",
                    m.name
                ));
            }
            if let Some(arch) = &m.arch {
                if let Err(e) = arch.parse::<crate::models::Arch>() {
                    problems.push(format!("model {}: arch: {e}", m.name));
                }
            }
            if let Some(p) = m.input_dropout {
                if !(p > 0.0 && p <= 1.0) {
                    problems.push(format!(
                        "model {}: input_dropout = {p} is not a keep probability in (0, 1]",
                        m.name
                    ));
                }
            }
            if let Some(Err(e)) = m
                .retrain_arch
                .as_ref()
                .map(|a| a.parse::<crate::models::Arch>())
            {
                problems.push(format!("model {}: retrain_arch: {e}", m.name));
            }
            for member in &m.members {
                if !self
                    .models
                    .iter()
                    .any(|o| &o.name == member && o.members.is_empty())
                {
                    problems.push(format!(
                        "model {}: member {member} is not another (non-ensemble) model of the spec",
                        m.name
                    ));
                }
            }
        }
    }

    fn check_slurm(&self, problems: &mut Vec<String>) {
        let s = &self.slurm;
        for (kind, r) in [
            ("train", &s.train),
            ("retrain", &s.retrain),
            ("sis", &s.sis),
            ("eval", &s.eval),
            ("report", &s.report),
        ] {
            if r.nodes == 0 {
                problems.push(format!("[slurm.{kind}] nodes = 0: give at least 1"));
            }
            if r.cpus_per_task == Some(0) {
                problems.push(format!("[slurm.{kind}] cpus_per_task = 0: give at least 1"));
            }
            for key in r.env.keys() {
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    problems.push(format!(
                        "[slurm.{kind}] env name {key:?} is not a variable name"
                    ));
                }
            }
        }
    }

    /// Checks that the files the stages read exist (the dataset folders, TorchScript
    /// models), so a typo fails before anything runs rather than in a job hours later.
    pub fn check_inputs(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for (key, data) in [
            ("data", Some(&self.data)),
            ("corrupted", self.corrupted.as_ref()),
        ] {
            let Some(data) = data else { continue };
            if let Ok(spec) = data.parse::<crate::data::DatasetSpec>() {
                if !spec.root.exists() {
                    problems.push(format!("{key}: {} does not exist", spec.root.display()));
                }
            }
        }
        for m in &self.models {
            if let Some(path) = &m.torchscript {
                if !path.is_file() {
                    problems.push(format!(
                        "model {}: torchscript file {} does not exist",
                        m.name,
                        path.display()
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("pipeline spec: {}", problems.join("; "))
    }
}

fn in_unit(t: f32) -> bool {
    t > 0.0 && t <= 1.0
}

/// `cpu`, `cuda` or `cuda:N`, without asking libtorch (a login node may have no GPU).
fn device_syntax(device: &str) -> bool {
    device == "cpu"
        || device == "cuda"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// A model name that is one path component on every file system the pipeline writes to.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_specs_parse() {
        for (name, text) in [
            (
                "fashion-mnist-demo",
                include_str!("../../scripts/pipelines/fashion-mnist-demo.toml"),
            ),
            (
                "cifar10-paper",
                include_str!("../../scripts/pipelines/cifar10-paper.toml"),
            ),
            (
                "imagenet-paper",
                include_str!("../../scripts/pipelines/imagenet-paper.toml"),
            ),
        ] {
            let spec = PipelineSpec::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!spec.models.is_empty(), "{name}");
        }
    }

    #[test]
    fn an_ensemble_must_name_models_of_the_spec() {
        let text = include_str!("../../scripts/pipelines/cifar10-paper.toml")
            .replace("\"vgg16\"]", "\"vgg19\"]");
        let err = PipelineSpec::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("member vgg19"), "{err}");
    }

    fn demo() -> String {
        include_str!("../../scripts/pipelines/fashion-mnist-demo.toml").to_string()
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", PipelineSpec::from_toml(text).unwrap_err())
    }

    #[test]
    fn a_bad_threshold_fails_naming_the_key() {
        let text = demo().replace("threshold = 0.9", "threshold = 1.5");
        assert_ne!(text, demo(), "the demo spec sets threshold = 0.9");
        let err = error_of(&text);
        assert!(err.contains("threshold = 1.5 is not in (0, 1]"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{}\n{}",
            demo()
                .replace("fraction = 0.05", "fraction = 0")
                .replace("replicates = 2", "replicates = 0"),
            "[[models]]\nname = \"Small-CNN\"\narch = \"small-cnn\"\n\n[[models]]\nname = \"../up\"\narch = \"lenet\"\n"
        );
        let err = error_of(&text);
        for want in [
            "fraction = 0 is not in (0, 1]",
            "replicates = 0",
            "model name \"Small-CNN\" is used twice",
            "model name \"../up\" is not usable as a directory name",
            "model ../up: arch:",
        ] {
            assert!(err.contains(want), "{want:?} missing from: {err}");
        }
    }

    #[test]
    fn sweep_and_slurm_settings_are_checked() {
        let text = demo().replace("sweep = [", "sweep = [1.2, ") + "\n[slurm.retrain]\nnodes = 0\n";
        let err = error_of(&text);
        assert!(err.contains("sweep value 1.2 is not in (0, 1]"), "{err}");
        assert!(err.contains("[slurm.retrain] nodes = 0"), "{err}");
    }

    #[test]
    fn missing_inputs_are_named() {
        let text = demo().replace(
            "data = \"fashion-mnist?",
            "data = \"fashion-mnist:/nonexistent/fmnist?",
        );
        let spec = PipelineSpec::from_toml(&text).unwrap();
        let err = spec.check_inputs().unwrap_err().to_string();
        assert!(
            err.contains("data: /nonexistent/fmnist does not exist"),
            "{err}"
        );
        let mut spec = spec;
        spec.data = "mnist:/".into();
        spec.models[0].arch = None;
        spec.models[0].torchscript = Some("/nonexistent/model.pt".into());
        let err = spec.check_inputs().unwrap_err().to_string();
        assert!(
            err.contains("torchscript file /nonexistent/model.pt does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_spec_survives_its_toml() {
        let spec = PipelineSpec::from_toml(
            &(demo() + "\n[slurm]\npartition = \"gpu\"\n[slurm.retrain]\nnodes = 2\nenv = { A = \"1\" }\n"),
        )
        .unwrap();
        assert_eq!(spec.slurm.retrain.nodes, 2);
        assert_eq!(PipelineSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }
}
