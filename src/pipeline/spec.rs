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
    /// evaluated on full images as an extra Table 1 column.
    #[serde(default)]
    pub corrupted: Option<String>,
    /// Output directory: stages/, report/.
    pub out: PathBuf,
    #[serde(default = "cpu")]
    pub device: String,
    /// Workers of the embedded cluster for SIS stages.
    #[serde(default = "two")]
    pub local_workers: usize,
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
    /// BackSelect on every train and test image (`thresholds` is set to `[threshold]`).
    pub sis: SisParams,
    /// A human study (`overinterp human build`) whose section the report appends
    /// once the study has answers.
    #[serde(default)]
    pub study: Option<PathBuf>,
}

fn cpu() -> String {
    "cpu".into()
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
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let spec: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("pipeline spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.models.is_empty(),
            "pipeline spec: give at least one [[models]]"
        );
        anyhow::ensure!(
            self.fraction > 0.0 && self.fraction <= 1.0,
            "pipeline spec: fraction must be in (0, 1]"
        );
        anyhow::ensure!(
            self.replicates >= 1,
            "pipeline spec: replicates must be at least 1"
        );
        for m in &self.models {
            let kinds = m.arch.is_some() as u8
                + m.torchscript.is_some() as u8
                + (!m.members.is_empty()) as u8;
            anyhow::ensure!(
                kinds == 1,
                "model {}: give exactly one of arch, torchscript, members",
                m.name
            );
            for member in &m.members {
                anyhow::ensure!(
                    self.models
                        .iter()
                        .any(|o| &o.name == member && o.members.is_empty()),
                    "model {}: member {member} is not another (non-ensemble) model of the spec",
                    m.name
                );
            }
        }
        Ok(())
    }
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
}
