//! Building blocks shared by the architectures. Each takes an `nn::Path`, so the
//! checkpoint key of every parameter is the path the code gives it (`layer1.0.conv1.weight`),
//! as in PyTorch; see the architecture files for the layouts.

use tch::nn::{self, Init};

/// PyTorch initializes batch-norm scales to one; tch's default is `U(0, 1)`, which
/// would make our freshly built models train differently from the published ones.
pub(crate) fn batch_norm(p: nn::Path, channels: i64, eps: f64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        eps,
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, channels, config)
}

/// A square convolution. Convolutions followed by batch norm have no bias (the norm's
/// shift replaces it), as in torchvision.
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        bias,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, config)
}

/// Number of trainable scalars in a var store: what papers and torchvision's
/// `sum(p.numel() for p in model.parameters())` report (batch-norm running
/// statistics are buffers, not parameters, and are not counted).
pub fn num_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
