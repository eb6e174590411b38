//! The paper's models and the ways a user brings or combines them. Everything a
//! later stage needs is the [`Classifier`] trait: normalized images in, logits out.
//!
//! - Native architectures ([`Arch`]), built from a [`ModelConfig`] by [`build`]:
//!   ResNet20, pre-activation ResNet18, VGG16-BN (CIFAR), a small CNN
//!   (Fashion-MNIST), ResNet50 and Inception v3 (ImageNet, torchvision layouts).
//!   Layers are built from `nn::Path`s, so checkpoint keys are the code's paths.
//! - [`TorchScriptModel`]: any `torch.jit` export, e.g. pretrained torchvision weights.
//! - [`Ensemble`]: mean of the members' logits.
//! - [`InputDropout`]: keep each pixel with probability p at train and test time.
//! - [`load_checkpoint`] / [`load_model`]: what `--model` accepts.

use tch::{nn, Device, Kind, Tensor};

mod checkpoint;
mod config;
mod conv_bn;
mod ensemble;
mod fold;
mod inception;
mod input_dropout;
mod layers;
mod native;
mod resnet50;
mod resnet_cifar;
mod small_cnn;
mod torchscript;
mod vgg;

pub use checkpoint::{
    checkpoint_files, load_checkpoint, load_model, load_weights, read_model_config, CONFIG_FILE,
    ENSEMBLE_PREFIX, WEIGHTS_FILE,
};
pub use config::{build, Arch, ModelConfig};
pub use conv_bn::set_batch_norm_folding;
#[cfg(test)]
pub(crate) use conv_bn::FOLDS;
pub use ensemble::Ensemble;
pub use input_dropout::{eval_keep_mask, InputDropout};
pub use layers::num_parameters;
pub use native::NativeModel;
pub use torchscript::TorchScriptModel;

/// Errors of model construction, loading and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {problem}")]
    Load {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("model output has shape {got:?}; expected [batch, classes] = {expected:?}")]
    OutputShape { got: Vec<i64>, expected: Vec<i64> },
    #[error(
        "model input has shape {got:?}; expected [batch, C, H, W] with [C, H, W] = {expected:?}"
    )]
    InputShape { got: Vec<i64>, expected: Vec<i64> },
    #[error("unknown model architecture '{name}'; valid names: {valid}")]
    UnknownArch { name: String, valid: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Normalized images `[N, C, H, W]` → logits `[N, classes]`.
///
/// `train` selects training behaviour (batch-norm statistics, input dropout).
/// Implementations must not require gradients of their parameters to be enabled:
/// SIS differentiates with respect to the input mask only.
pub trait Classifier: Send {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError>;
    fn num_classes(&self) -> i64;
    /// (C, H, W) the model expects.
    fn input_shape(&self) -> [i64; 3];
    fn device(&self) -> Device;
    /// Trainable parameters, if this model can be trained by `overinterp train`.
    fn var_store(&self) -> Option<&nn::VarStore> {
        None
    }
    fn var_store_mut(&mut self) -> Option<&mut nn::VarStore> {
        None
    }
    /// Stops tracking gradients of the parameters, for SIS and evaluation: backward
    /// passes to the input then skip every weight gradient. Models without a var
    /// store (TorchScript) are frozen from the start; wrappers freeze what they wrap.
    fn freeze(&mut self) {
        if let Some(vs) = self.var_store_mut() {
            vs.freeze();
        }
    }
    /// Converts the parameters to `kind` (BFloat16 or Half for reduced-precision
    /// SIS steps; inputs must then be of that kind). Models without a var store
    /// that cannot convert say so.
    fn set_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
        match self.var_store_mut() {
            Some(vs) => {
                vs.set_kind(kind);
                Ok(())
            }
            None => Err(ModelError::Invalid(format!(
                "{}: cannot convert its parameters to {kind:?}",
                self.describe()
            ))),
        }
    }
    /// The configuration that rebuilds this model (input dropout included), for
    /// training to write into `config.json`; `None` for models not built by [`build`].
    fn model_config(&self) -> Option<ModelConfig> {
        None
    }
    /// One line saying what this model is, for logs and reports.
    fn describe(&self) -> String;
}

/// Shows [`Classifier::describe`], so boxed models can appear in `Result`s and logs.
impl std::fmt::Debug for dyn Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
pub(crate) mod tests;
