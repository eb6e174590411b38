//! A small CNN for 28×28 grayscale images (Fashion-MNIST): about 4.2M
//! multiply-adds per image forward (almost all in conv2 at 14×14), so an epoch of
//! 60k images is ~1.5 TFLOP of training work (forward + backward ≈ 3× forward):
//!
//! ```text
//! conv1 3×3, 32 → BN → ReLU → max-pool 2    [N, 32, H/2, W/2]
//! conv2 3×3, 64 → BN → ReLU → max-pool 2    [N, 64, H/4, W/4]
//! flatten → dropout 0.25 → fc1 128 → ReLU → dropout 0.5 → fc2 classes
//! ```
//!
//! 421,738 parameters for 1×28×28 and 10 classes. The flattened width follows the
//! configured input shape, so the same architecture also serves any `C×H×W` with
//! `H, W ≥ 4` (e.g. tiny synthetic datasets in tests, or CIFAR-sized inputs).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::{ConvBn, ConvShape};

/// The small CNN.
#[derive(Debug)]
pub(crate) struct SmallCnn {
    unit1: ConvBn,
    unit2: ConvBn,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// Builds the small CNN under `p` for inputs `[c, h, w]`.
pub(crate) fn small_cnn(p: &nn::Path, [c, h, w]: [i64; 3], num_classes: i64) -> SmallCnn {
    let flat = 64 * (h / 4) * (w / 4);
    SmallCnn {
        unit1: unit(p / "conv1", p / "bn1", (c, 32)),
        unit2: unit(p / "conv2", p / "bn2", (32, 64)),
        fc1: nn::linear(p / "fc1", flat, 128, Default::default()),
        fc2: nn::linear(p / "fc2", 128, num_classes, Default::default()),
    }
}

/// A 3×3 convolution with padding 1 and its batch norm.
fn unit(conv: nn::Path, bn: nn::Path, channels: (i64, i64)) -> ConvBn {
    ConvBn::no_bias(conv, bn, channels, ConvShape::square(3, 1, 1))
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = xs.apply_t(&self.unit1, train).relu().max_pool2d_default(2);
        let out = out.apply_t(&self.unit2, train).relu().max_pool2d_default(2);
        out.flatten(1, -1) // [N, 64·(H/4)·(W/4)]
            .dropout(0.25, train)
            .apply(&self.fc1)
            .relu()
            .dropout(0.5, train)
            .apply(&self.fc2) // [N, classes]
    }
}
