//! Models exported by PyTorch (`torch.jit.trace(...)` or `torch.jit.script(...)`,
//! then `.save(path)`): how users bring pretrained weights, e.g. torchvision's
//! Inception v3. The file says nothing reliable about its input, so the caller gives
//! the input shape (from the dataset) and loading probes the model once to learn —
//! and check — its number of classes.

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::{Classifier, ModelError};

/// Batch size of the probe forward at load: 2, so a model that confuses the batch
/// dimension with something else is caught.
const PROBE_BATCH: i64 = 2;

/// A TorchScript module used as a classifier, always in evaluation mode and with its
/// parameters frozen (`requires_grad = false`): gradients flow to the input only,
/// which is all SIS needs, and backward passes skip the weight gradients.
pub struct TorchScriptModel {
    /// The loaded module; forward calls run its `forward` method.
    module: CModule,
    /// Where it was loaded from, for errors and descriptions.
    path: PathBuf,
    /// `[C, H, W]` given at load and checked on every forward.
    input_shape: [i64; 3],
    /// Learned from the probe forward at load.
    num_classes: i64,
    /// Where the module's parameters live.
    device: Device,
    /// Feed inputs to the module in channels-last (NHWC) memory format; see
    /// [`Self::set_channels_last`].
    channels_last: bool,
    /// `Some(batch norms freezing left unfolded)` when the module was frozen with its
    /// batch norms folded ([`super::fold`]), `None` when it runs as saved.
    frozen: Option<usize>,
}

impl std::fmt::Debug for TorchScriptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// libtorch's messages carry a C++ backtrace after the first lines; a user needs the
/// reason, not the stack.
fn short_reason(err: &tch::TchError) -> String {
    first_lines(&err.to_string())
}

/// The first three meaningful lines of a libtorch message, without its backtrace.
pub(super) fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Exception raised from") && !l.starts_with("frame #")
        })
        .take(3)
        .collect();
    lines.join(" ")
}

impl TorchScriptModel {
    /// Loads the TorchScript file at `path` onto `device`, switches it to evaluation
    /// mode, freezes its parameters, folds the batch norms that directly follow a
    /// convolution into it ([`super::fold`]; a module libtorch cannot freeze is used
    /// as saved, with a warning saying why) and probes it with a zero batch of `[2, C, H, W]`
    /// (`input_shape = [C, H, W]`). The probe must return one tensor `[2, K]`; `K`
    /// becomes [`Classifier::num_classes`].
    pub fn load(
        path: impl AsRef<Path>,
        device: Device,
        input_shape: [i64; 3],
    ) -> Result<Self, ModelError> {
        Self::load_with(path, device, input_shape, true)
    }

    /// [`Self::load`] with batch-norm folding chosen: `fold = false` evaluates the
    /// module exactly as saved (what `scripts/bench-vs-reference` compares against).
    pub fn load_with(
        path: impl AsRef<Path>,
        device: Device,
        input_shape: [i64; 3],
        fold: bool,
    ) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let load_err = |problem: String| ModelError::Load {
            path: path.clone(),
            problem,
        };
        if !path.is_file() {
            return Err(load_err(
                "no such file (expected a TorchScript model saved by torch.jit.save)".into(),
            ));
        }
        if input_shape.iter().any(|&d| d < 1) {
            return Err(load_err(format!(
                "input shape {input_shape:?} must be positive [C, H, W]"
            )));
        }
        let (module, frozen) = load_module(&path, device, fold)?;
        let params = module
            .named_parameters()
            .map_err(|e| load_err(format!("cannot list parameters: {}", short_reason(&e))))?;
        for (_, p) in params {
            // Shares the module's TensorImpl, so this freezes the module's own parameter.
            let _frozen = p.f_set_requires_grad(false)?;
        }
        let [c, h, w] = input_shape;
        let probe = Tensor::f_zeros([PROBE_BATCH, c, h, w], (Kind::Float, device))?;
        let out = tch::no_grad(|| module.forward_is(&[IValue::Tensor(probe)])).map_err(|e| {
            load_err(format!(
                "forward on a {:?} batch failed: {}",
                [PROBE_BATCH, c, h, w],
                short_reason(&e)
            ))
        })?;
        let logits = match out {
            IValue::Tensor(t) => t,
            other => {
                return Err(load_err(format!(
                "forward returned {} instead of one logits tensor (export the model in eval mode, \
                     without auxiliary outputs)",
                ivalue_kind(&other)
            )))
            }
        };
        let size = logits.size();
        if size.len() != 2 || size[0] != PROBE_BATCH || size[1] < 1 {
            return Err(ModelError::OutputShape {
                got: size,
                expected: vec![PROBE_BATCH, -1],
            });
        }
        Ok(Self {
            module,
            path,
            input_shape,
            num_classes: size[1],
            device,
            channels_last: device == Device::Cpu,
            frozen,
        })
    }

    /// Whether the module runs frozen, its foldable batch norms folded.
    pub fn folded(&self) -> bool {
        self.frozen.is_some()
    }

    /// Batch-norm nodes the frozen module still runs (0 when every one was folded,
    /// and 0 for a module not frozen).
    pub fn batch_norms_left(&self) -> usize {
        self.frozen.unwrap_or(0)
    }

    /// Chooses whether inputs reach the module in channels-last memory format (on by
    /// default on CPU, off elsewhere); oneDNN's CPU convolutions then run NHWC. The
    /// rule is fixed, not measured per process, so two processes on one machine compute
    /// the same bits. `scripts/bench-vs-reference` measures both layouts: evaluation
    /// forwards run faster NHWC on every CPU measured; the gradient method's
    /// forward + backward to the input ran 1.23× faster NHWC on a 2-core AMD EPYC with
    /// AVX2 (13.43 against 10.90 steps/s), and on a 2-core Intel Xeon with AVX-512
    /// and AMX about 2% slower than the NCHW reference's steps (23.08 against 23.6
    /// steps/s). So NHWC is used for both, as native models do. Only the order of
    /// float additions changes.
    pub fn set_channels_last(&mut self, on: bool) {
        self.channels_last = on;
    }

    /// The module's parameters (shared with it, not copies), e.g. to check that they
    /// are frozen. A folded module has none: freezing made them constants.
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        Ok(self.module.named_parameters()?)
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The module at `path` in evaluation mode: frozen with its batch norms folded when
/// `fold` and libtorch can (then also the count of batch norms left), else as saved.
/// Freezing is tried first, so a model is read once in the usual case; when it fails,
/// the plain load reports a bad file, and only a loadable module's failure to freeze
/// is a warning.
fn load_module(
    path: &Path,
    device: Device,
    fold: bool,
) -> Result<(CModule, Option<usize>), ModelError> {
    let load_err = |problem: String| ModelError::Load {
        path: path.to_path_buf(),
        problem,
    };
    let reason = if fold {
        match super::fold::load_folded(path, device, None) {
            Ok(frozen) => {
                let left = frozen.batch_norms_left;
                if left > 0 {
                    tracing::info!(path = %path.display(), batch_norms_left = left, "frozen; these batch norms do not directly follow a convolution and stay");
                }
                return Ok((frozen.module, Some(left)));
            }
            Err(reason) => Some(reason),
        }
    } else {
        None
    };
    let mut module = CModule::load_on_device(path, device).map_err(|e| {
        load_err(format!(
            "not a loadable TorchScript model: {}",
            short_reason(&e)
        ))
    })?;
    module
        .f_set_eval()
        .map_err(|e| load_err(format!("cannot switch to eval mode: {}", short_reason(&e))))?;
    if let Some(reason) = reason {
        tracing::warn!(path = %path.display(), %reason, "batch norm not folded; evaluating the module as saved");
    }
    Ok((module, None))
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_) | IValue::TensorList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Object(_) => "an object",
        _ => "a non-tensor value",
    }
}

impl Classifier for TorchScriptModel {
    /// Evaluation only: `train = true` is an error, since a TorchScript model here is
    /// a fixed, pretrained function (fine-tuning it is out of scope).
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        if train {
            return Err(ModelError::Invalid(format!(
                "{}: TorchScript models are evaluation-only; train a native architecture instead",
                self.path.display()
            )));
        }
        super::native::check_input(xs, self.input_shape)?;
        let logits = if self.channels_last {
            // NCHW shape with NHWC strides: PyTorch's channels_last memory format.
            let nhwc = xs
                .f_permute([0, 2, 3, 1])?
                .f_contiguous()?
                .f_permute([0, 3, 1, 2])?;
            self.module.forward_ts(&[nhwc])?
        } else {
            self.module.forward_ts(&[xs])?
        };
        let size = logits.size();
        if size.len() != 2 || size[0] != xs.size()[0] || size[1] != self.num_classes {
            return Err(ModelError::OutputShape {
                got: size,
                expected: vec![xs.size()[0], self.num_classes],
            });
        }
        Ok(logits)
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn input_shape(&self) -> [i64; 3] {
        self.input_shape
    }

    fn device(&self) -> Device {
        self.device
    }

    /// Nothing to do: parameters were frozen at load.
    fn freeze(&mut self) {}

    /// A folded module's weights are graph constants, which `to` does not cast, so it
    /// is frozen again from the file after casting (folding then rounds in `kind`).
    fn set_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
        if self.folded() {
            let frozen = super::fold::load_folded(&self.path, self.device, Some(kind)).map_err(
                |problem| ModelError::Load {
                    path: self.path.clone(),
                    problem: format!("cannot fold batch norm at {kind:?}: {problem}"),
                },
            )?;
            self.module = frozen.module;
        } else {
            self.module.to(self.device, kind, false);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.input_shape;
        format!(
            "TorchScript {} ({} classes, {c}×{h}×{w} input)",
            self.path.display(),
            self.num_classes
        )
    }
}
