//! A model built by this crate: an architecture's layers plus the [`nn::VarStore`]
//! that owns their parameters (so training can optimize and checkpoint them).

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::config::{Arch, ModelConfig};
use super::{inception, layers, resnet50, resnet_cifar, small_cnn, vgg, Classifier, ModelError};

/// A native model: one of the [`Arch`]itectures with its parameters.
#[derive(Debug)]
pub struct NativeModel {
    /// How the model was built; what a checkpoint's `config.json` records.
    config: ModelConfig,
    /// Owns every parameter and batch-norm buffer, keyed by the layer paths.
    vs: nn::VarStore,
    /// The layers; they hold shallow handles on the tensors in `vs`.
    net: Box<dyn ModuleT>,
    /// Feed convolutions channels-last (NHWC) inputs on CPU, which oneDNN runs faster
    /// than NCHW; results are the same up to float rounding. See [`Self::set_channels_last`].
    channels_last: bool,
}

impl NativeModel {
    /// Builds the architecture of `config`, freshly initialized, on `device`.
    /// Input dropout in `config` is not applied here; [`super::build`] adds it.
    pub fn new(config: ModelConfig, device: Device) -> Result<Self, ModelError> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let [c, _, _] = config.input_shape;
        let k = config.num_classes;
        let net: Box<dyn ModuleT> = match config.arch {
            Arch::ResNet20 => Box::new(resnet_cifar::resnet20(&root, c, k)),
            Arch::ResNet18 => Box::new(resnet_cifar::preact_resnet18(&root, c, k)),
            Arch::Vgg16 => Box::new(vgg::vgg16_bn(&root, c, k)),
            Arch::SmallCnn => Box::new(small_cnn::small_cnn(&root, config.input_shape, k)),
            Arch::ResNet50 => Box::new(resnet50::resnet50(&root, c, k)),
            Arch::InceptionV3 => Box::new(inception::inception_v3(&root, c, k)),
        };
        Ok(Self {
            config,
            vs,
            net,
            channels_last: device == Device::Cpu,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of trainable parameters (as `sum(p.numel() for p in model.parameters())`).
    pub fn num_parameters(&self) -> i64 {
        layers::num_parameters(&self.vs)
    }

    /// Chooses whether inputs are converted to channels-last memory format before
    /// the first convolution (on by default on CPU, off elsewhere). PyTorch then keeps
    /// channels-last through the network; on the 2-core CI machine this made ResNet20
    /// inference measurably faster (see `DESIGN.md`), and it changes nothing but the
    /// order of float additions.
    pub fn set_channels_last(&mut self, on: bool) {
        self.channels_last = on;
    }
}

/// Checks that `xs` is a batch `[N, C, H, W]` of the expected image shape, so a wrong
/// input is a typed error instead of a panic deep in libtorch.
pub(crate) fn check_input(xs: &Tensor, expected: [i64; 3]) -> Result<(), ModelError> {
    let size = xs.size();
    if size.len() != 4 || size[1..] != expected {
        return Err(ModelError::InputShape {
            got: size,
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

impl Classifier for NativeModel {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        check_input(xs, self.config.input_shape)?;
        if xs.device() != self.vs.device() {
            return Err(ModelError::Invalid(format!(
                "{}: input is on {:?} but the model is on {:?}",
                self.config.arch,
                xs.device(),
                self.vs.device()
            )));
        }
        if xs.kind() != self.vs.kind() {
            return Err(ModelError::Invalid(format!(
                "{}: input has dtype {:?} but the model's parameters are {:?}",
                self.config.arch,
                xs.kind(),
                self.vs.kind()
            )));
        }
        let xs = if self.channels_last {
            // NCHW shape with NHWC strides: PyTorch's channels_last memory format.
            xs.f_permute([0, 2, 3, 1])?
                .f_contiguous()?
                .f_permute([0, 3, 1, 2])?
        } else {
            xs.shallow_clone()
        };
        Ok(self.net.forward_t(&xs, train))
    }

    fn num_classes(&self) -> i64 {
        self.config.num_classes
    }

    fn input_shape(&self) -> [i64; 3] {
        self.config.input_shape
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn var_store(&self) -> Option<&nn::VarStore> {
        Some(&self.vs)
    }

    fn var_store_mut(&mut self) -> Option<&mut nn::VarStore> {
        Some(&mut self.vs)
    }

    fn model_config(&self) -> Option<ModelConfig> {
        Some(self.config.clone())
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.config.input_shape;
        format!(
            "{} ({} classes, {c}×{h}×{w} input, {} parameters)",
            self.config.arch,
            self.config.num_classes,
            self.num_parameters()
        )
    }
}
