//! What a native model is, as data: [`Arch`] names an architecture the way the CLI
//! does, [`ModelConfig`] is the serializable description training writes into a
//! checkpoint's `config.json` (under the key `"model"`), and [`build`] turns one into
//! a ready [`Classifier`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::input_dropout::InputDropout;
use super::native::NativeModel;
use super::{Classifier, ModelError};

/// The architectures `overinterp` builds itself. Serialized (and parsed from the
/// command line) by the names in [`Arch::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// ResNet20 for CIFAR, option-A shortcuts, 0.27M parameters.
    #[serde(rename = "resnet20")]
    ResNet20,
    /// Pre-activation ResNet18 for CIFAR, 11.2M parameters.
    #[serde(rename = "resnet18")]
    ResNet18,
    /// VGG16 with batch norm for 32×32, 14.7M parameters.
    #[serde(rename = "vgg16")]
    Vgg16,
    /// The small CNN for 28×28 grayscale (Fashion-MNIST).
    #[serde(rename = "small-cnn")]
    SmallCnn,
    /// torchvision's ResNet50 (ImageNet, 224×224).
    #[serde(rename = "resnet50")]
    ResNet50,
    /// torchvision's Inception v3 without auxiliary logits (ImageNet, 299×299).
    #[serde(rename = "inception-v3")]
    InceptionV3,
}

impl Arch {
    /// Every architecture, in the order help texts list them.
    pub const ALL: [Arch; 6] = [
        Arch::ResNet20,
        Arch::ResNet18,
        Arch::Vgg16,
        Arch::SmallCnn,
        Arch::ResNet50,
        Arch::InceptionV3,
    ];

    /// The command-line (and `config.json`) name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet20 => "resnet20",
            Arch::ResNet18 => "resnet18",
            Arch::Vgg16 => "vgg16",
            Arch::SmallCnn => "small-cnn",
            Arch::ResNet50 => "resnet50",
            Arch::InceptionV3 => "inception-v3",
        }
    }

    /// The `[C, H, W]` the architecture was designed for: CIFAR's 3×32×32,
    /// Fashion-MNIST's 1×28×28, ImageNet's 3×224×224 (ResNet50) or 3×299×299
    /// (Inception v3).
    pub fn default_input_shape(self) -> [i64; 3] {
        match self {
            Arch::ResNet20 | Arch::ResNet18 | Arch::Vgg16 => [3, 32, 32],
            Arch::SmallCnn => [1, 28, 28],
            Arch::ResNet50 => [3, 224, 224],
            Arch::InceptionV3 => [3, 299, 299],
        }
    }

    /// The smallest height and width the architecture accepts: every one ends in
    /// adaptive average pooling (or, for the small CNN, sizes its linear layer from
    /// the input), so only the down-sampling path sets a floor — five 2× reductions
    /// for VGG16 and ResNet50, Inception's stem and grid reductions need 75 (as
    /// torchvision documents).
    pub fn min_spatial(self) -> i64 {
        match self {
            Arch::SmallCnn => 4,
            Arch::ResNet20 | Arch::ResNet18 => 8,
            Arch::Vgg16 | Arch::ResNet50 => 32,
            Arch::InceptionV3 => 75,
        }
    }

    fn valid_names() -> String {
        Arch::ALL
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Parses a CLI name, case-insensitively; the error lists the valid names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| ModelError::UnknownArch {
                name: s.to_string(),
                valid: Arch::valid_names(),
            })
    }
}

/// Everything needed to rebuild a native model before its weights are loaded.
/// Training writes it to `config.json` under `"model"`; [`load_checkpoint`]
/// reads it back.
///
/// [`load_checkpoint`]: super::load_checkpoint
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which architecture.
    pub arch: Arch,
    /// Output width: 10 for CIFAR-10 and Fashion-MNIST, 1000 for ImageNet.
    pub num_classes: i64,
    /// `[C, H, W]` of the normalized images the model takes; checked by [`build`]
    /// against the architecture and by every forward pass against the input.
    pub input_shape: [i64; 3],
    /// Input dropout as the paper uses it: the probability of **keeping** each pixel
    /// (0.8 in the paper), at train and test time. `None`: no input dropout.
    pub input_dropout: Option<f64>,
    /// Seed of the fixed evaluation keep-mask of input dropout (see
    /// [`InputDropout`]); kept here so a reloaded checkpoint evaluates the very
    /// same function. Ignored without input dropout; absent in JSON means 0.
    #[serde(default)]
    pub input_dropout_seed: u64,
}

impl ModelConfig {
    /// A configuration without input dropout.
    pub fn new(arch: Arch, num_classes: i64, input_shape: [i64; 3]) -> Self {
        Self {
            arch,
            num_classes,
            input_shape,
            input_dropout: None,
            input_dropout_seed: 0,
        }
    }

    /// The same configuration with input dropout keeping each pixel with
    /// probability `keep_prob`, its evaluation mask drawn from `seed`.
    pub fn with_input_dropout(mut self, keep_prob: f64, seed: u64) -> Self {
        self.input_dropout = Some(keep_prob);
        self.input_dropout_seed = seed;
        self
    }

    /// Checks that the architecture can take this input shape and class count.
    pub fn validate(&self) -> Result<(), ModelError> {
        let [c, h, w] = self.input_shape;
        let arch = self.arch;
        if c < 1 || h < 1 || w < 1 {
            return Err(ModelError::Invalid(format!(
                "{arch}: input shape {:?} must be positive [C, H, W]",
                self.input_shape
            )));
        }
        let min = arch.min_spatial();
        if h < min || w < min {
            return Err(ModelError::Invalid(format!(
                "{arch} needs images of at least {min}×{min} pixels, got {h}×{w} \
                 (it was designed for {:?})",
                arch.default_input_shape()
            )));
        }
        if self.num_classes < 2 {
            return Err(ModelError::Invalid(format!(
                "{arch}: num_classes must be at least 2, got {}",
                self.num_classes
            )));
        }
        if let Some(p) = self.input_dropout {
            super::input_dropout::check_keep_prob(p)?;
        }
        Ok(())
    }
}

/// Builds a freshly initialized model on `device`: the architecture in a
/// [`NativeModel`], wrapped in [`InputDropout`] when the configuration asks for it.
/// Parameters are trainable (see [`Classifier::freeze`]).
pub fn build(config: &ModelConfig, device: Device) -> Result<Box<dyn Classifier>, ModelError> {
    let native = NativeModel::new(config.clone(), device)?;
    match config.input_dropout {
        None => Ok(Box::new(native)),
        Some(keep_prob) => Ok(Box::new(InputDropout::new(
            Box::new(native),
            keep_prob,
            config.input_dropout_seed,
        )?)),
    }
}
