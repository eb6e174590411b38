//! Checkpoints: a directory holding `model.safetensors`, `optimizer.safetensors`
//! (momentum buffers) and `config.json` (how the model was made and how far
//! training got). Every file is written to a temporary name, fsynced and renamed,
//! so a crash leaves either the previous checkpoint or the new one, never a mix
//! that loads: `config.json` is renamed last and names the epoch the weights hold.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

use super::{TrainConfig, TrainError};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// What `config.json` records: enough to rebuild the model and to say what it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The model's configuration (`models::ModelConfig` as JSON), read back by
    /// `models::load_checkpoint`.
    pub model: serde_json::Value,
    pub train: TrainConfig,
    pub data: DataRecord,
    /// Epochs completed; the weights are those after epoch `epochs_done`.
    pub epochs_done: usize,
    pub versions: Versions,
}

/// The training data a checkpoint was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub name: String,
    pub content_hash: String,
    pub images: usize,
    /// The mask source applied to the training images, if any.
    pub masks: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Versions {
    pub overinterp: String,
    pub tch: String,
    pub libtorch: String,
}

impl Versions {
    pub fn current() -> Self {
        Self {
            overinterp: env!("CARGO_PKG_VERSION").into(),
            tch: "0.24.0".into(),
            libtorch: "2.11.0".into(),
        }
    }
}

/// Writes a checkpoint into `dir` (created if missing).
pub fn save(
    dir: &Path,
    vs: &VarStore,
    optimizer: &[(String, Tensor)],
    config: &CheckpointConfig,
) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // tch picks the format from the extension: the temp name must end in .safetensors.
    let model_tmp = dir.join(format!("tmp.{MODEL_FILE}"));
    vs.save(&model_tmp).map_err(|e| TrainError::Checkpoint {
        path: model_tmp.clone(),
        problem: e.to_string(),
    })?;
    let opt_tmp = dir.join(format!("tmp.{OPTIMIZER_FILE}"));
    let named: Vec<(&str, &Tensor)> = optimizer.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &opt_tmp).map_err(|e| TrainError::Checkpoint {
        path: opt_tmp.clone(),
        problem: e.to_string(),
    })?;
    let json = serde_json::to_vec_pretty(config).expect("checkpoint config serializes");
    let cfg_tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    write_synced(&cfg_tmp, &json)?;
    for tmp in [&model_tmp, &opt_tmp] {
        sync_file(tmp)?;
    }
    rename(&model_tmp, &dir.join(MODEL_FILE))?;
    rename(&opt_tmp, &dir.join(OPTIMIZER_FILE))?;
    rename(&cfg_tmp, &dir.join(CONFIG_FILE))?;
    sync_file(dir)
}

/// Reads `config.json` of a checkpoint directory, if there is one.
pub fn read_config(dir: &Path) -> Result<Option<CheckpointConfig>, TrainError> {
    let path = dir.join(CONFIG_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrainError::Checkpoint {
                path,
                problem: format!("not a checkpoint config: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(&path, e)),
    }
}

/// Loads weights and optimizer state from `dir` into `vs`.
pub fn load(dir: &Path, vs: &mut VarStore) -> Result<Vec<(String, Tensor)>, TrainError> {
    let model = dir.join(MODEL_FILE);
    vs.load(&model).map_err(|e| TrainError::Checkpoint {
        path: model.clone(),
        problem: e.to_string(),
    })?;
    let opt = dir.join(OPTIMIZER_FILE);
    Tensor::read_safetensors(&opt).map_err(|e| TrainError::Checkpoint {
        path: opt,
        problem: e.to_string(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

fn sync_file(path: &Path) -> Result<(), TrainError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

fn rename(from: &Path, to: &Path) -> Result<(), TrainError> {
    fs::rename(from, to).map_err(|e| TrainError::io(to, e))
}

/// `dir/name` helper for callers that need the model file of a checkpoint.
pub fn model_file(dir: &Path) -> PathBuf {
    dir.join(MODEL_FILE)
}
