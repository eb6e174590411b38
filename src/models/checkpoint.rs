//! Getting a trained model back: from a checkpoint directory written by training
//! (`config.json` with the [`ModelConfig`] under `"model"`, and `model.safetensors`
//! with the var store), from a TorchScript file, or as an ensemble of those — the
//! forms the CLI's `--model` accepts, see [`load_model`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};

use super::config::{build, ModelConfig};
use super::ensemble::Ensemble;
use super::torchscript::TorchScriptModel;
use super::{Classifier, ModelError};

/// Name of the checkpoint file holding the run's configuration (the model's under `"model"`).
pub const CONFIG_FILE: &str = "config.json";
/// Name of the checkpoint file holding the var store, in safetensors format.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Prefix of an ensemble spec in [`load_model`]: `ensemble:a,b,c`.
pub const ENSEMBLE_PREFIX: &str = "ensemble:";

/// Reads the [`ModelConfig`] stored under `"model"` in a checkpoint's `config.json`.
pub fn read_model_config(config_path: &Path) -> Result<ModelConfig, ModelError> {
    let err = |problem: String| ModelError::Load {
        path: config_path.to_path_buf(),
        problem,
    };
    let text =
        std::fs::read_to_string(config_path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let model = json
        .get_mut("model")
        .ok_or_else(|| {
            err(
                "has no \"model\" entry; is this a checkpoint written by `overinterp train`?"
                    .into(),
            )
        })?
        .take();
    let config: ModelConfig =
        serde_json::from_value(model).map_err(|e| err(format!("invalid \"model\" entry: {e}")))?;
    config.validate().map_err(|e| err(e.to_string()))?;
    Ok(config)
}

/// Copies the tensors of the safetensors file at `path` into `vs`, strictly: every
/// variable of the store must be in the file with the same shape, and the file must
/// hold nothing else — a checkpoint of another architecture or class count is an
/// error naming the file and the first tensors that differ, never a silent partial
/// load (tch's own `VarStore::load` would broadcast a mis-shaped tensor).
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<(), ModelError> {
    let err = |problem: String| ModelError::Load {
        path: path.to_path_buf(),
        problem,
    };
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| err(format!("cannot read safetensors: {e}")))?
        .into_iter()
        .collect();
    let vars = vs.variables();
    let mut missing: Vec<&str> = vars
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        missing.sort_unstable();
        unexpected.sort_unstable();
        let show = |v: &[&str]| {
            let head = v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                format!("{head}, … ({} in all)", v.len())
            } else {
                head
            }
        };
        return Err(err(format!(
            "does not match the model: missing [{}], unexpected [{}] (was it saved from another architecture?)",
            show(&missing),
            show(&unexpected)
        )));
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_unstable();
    for name in names {
        let (var, src) = (&vars[name], &tensors[name]);
        if var.size() != src.size() {
            return Err(err(format!(
                "tensor {name} has shape {:?}; the model expects {:?}",
                src.size(),
                var.size()
            )));
        }
        let mut dst = var.shallow_clone();
        tch::no_grad(|| dst.f_copy_(src))
            .map_err(|e| err(format!("cannot copy tensor {name}: {e}")))?;
    }
    Ok(())
}

/// The `(config.json, model.safetensors)` pair a checkpoint path names: a directory
/// holding both, or either file (the other is taken from the same directory).
pub fn checkpoint_files(dir_or_file: &Path) -> (PathBuf, PathBuf) {
    let dir = if dir_or_file.is_dir() {
        dir_or_file.to_path_buf()
    } else {
        dir_or_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    (dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE))
}

/// Loads a native model saved by training: builds it from `config.json` (input
/// dropout included, with its recorded seed) and loads `model.safetensors` into it.
/// `dir_or_file` is the checkpoint directory or one of its two files.
pub fn load_checkpoint(
    dir_or_file: impl AsRef<Path>,
    device: Device,
) -> Result<Box<dyn Classifier>, ModelError> {
    let dir_or_file = dir_or_file.as_ref();
    if !dir_or_file.exists() {
        return Err(ModelError::Load {
            path: dir_or_file.to_path_buf(),
            problem: "no such checkpoint directory or file".into(),
        });
    }
    let (config_path, weights_path) = checkpoint_files(dir_or_file);
    let config = read_model_config(&config_path)?;
    let mut model = build(&config, device)?;
    let vs = model.var_store_mut().ok_or_else(|| {
        ModelError::Invalid(format!(
            "{}: the built model has no parameters to load",
            config_path.display()
        ))
    })?;
    if !weights_path.is_file() {
        return Err(ModelError::Load {
            path: weights_path,
            problem: "no such file".into(),
        });
    }
    load_weights(vs, &weights_path)?;
    Ok(model)
}

/// Loads what the CLI's `--model SPEC` names:
///
/// - `path/to/checkpoint_dir` (or its `config.json` / `model.safetensors`): a native
///   model trained by `overinterp train`, see [`load_checkpoint`];
/// - `path/to/model.pt` (any other file): a TorchScript model, see
///   [`TorchScriptModel::load`];
/// - `ensemble:a,b,c`: the mean-of-logits [`Ensemble`] of the models `a`, `b`, `c`,
///   each of the two forms above.
///
/// `input_shape` is the data's `[C, H, W]`: every model must take exactly that shape
/// (a model trained on 32×32 CIFAR cannot read 224×224 ImageNet), and TorchScript
/// models, which do not record it, are loaded for it. `--input-dropout` is the
/// caller's: wrap the result in [`super::InputDropout`].
pub fn load_model(
    spec: &str,
    device: Device,
    input_shape: [i64; 3],
) -> Result<Box<dyn Classifier>, ModelError> {
    match spec.strip_prefix(ENSEMBLE_PREFIX) {
        Some(list) => {
            let parts: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if parts.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "--model {spec}: an ensemble lists its members after '{ENSEMBLE_PREFIX}', separated by commas"
                )));
            }
            let members = parts
                .into_iter()
                .map(|p| load_single(p, device, input_shape))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Box::new(Ensemble::new(members)?))
        }
        None => load_single(spec, device, input_shape),
    }
}

fn load_single(
    spec: &str,
    device: Device,
    input_shape: [i64; 3],
) -> Result<Box<dyn Classifier>, ModelError> {
    let path = Path::new(spec);
    if !path.exists() {
        return Err(ModelError::Load {
            path: path.to_path_buf(),
            problem: format!(
                "no such file or directory; a model is a checkpoint directory, a TorchScript .pt file, \
                 or {ENSEMBLE_PREFIX}a,b,c"
            ),
        });
    }
    let is_checkpoint = path.is_dir()
        || path.file_name().is_some_and(|n| n == CONFIG_FILE)
        || path.extension().is_some_and(|e| e == "safetensors");
    let model: Box<dyn Classifier> = if is_checkpoint {
        load_checkpoint(path, device)?
    } else {
        Box::new(TorchScriptModel::load(path, device, input_shape)?)
    };
    if model.input_shape() != input_shape {
        return Err(ModelError::Load {
            path: path.to_path_buf(),
            problem: format!(
                "the model takes {:?} images but the data are {:?}",
                model.input_shape(),
                input_shape
            ),
        });
    }
    Ok(model)
}
