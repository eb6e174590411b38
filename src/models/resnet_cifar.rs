//! The two CIFAR ResNets of the paper (Section S1).
//!
//! - [`resnet20`]: He et al. 2016a, Section 4.2 — a 3×3 stem with 16 filters, three
//!   stages of three basic blocks (16/32/64 filters, stride 2 at the start of stages 2
//!   and 3), global average pooling, one linear layer. Shortcuts are **option A**
//!   (identity; when the shape changes, subsample by 2 and zero-pad the new channels),
//!   the variant of the paper's CIFAR experiments: 269,722 parameters for 10 classes
//!   ("0.27M" in He et al. Table 6 and in Carter et al. S1). Keys follow the common
//!   PyTorch port (`conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`, `linear`).
//! - [`preact_resnet18`]: He et al. 2016b ("v2", pre-activation), 64 filters, 3×3 stem
//!   with stride 1 and no max-pool, four stages of two pre-activation blocks, 1×1
//!   projection shortcuts where the shape changes, and the final BN-ReLU that the
//!   pre-activation design puts after the last block: 11,172,170 parameters for 10
//!   classes ("11.2M"). Keys: `conv1`, `layer{1..4}.{i}.{bn1,conv1,bn2,conv2,shortcut.0}`,
//!   `bn`, `linear`.
//!
//! Both end in adaptive average pooling, so they accept any `H, W ≥ 8`; 32×32 is
//! what they were designed for.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::{ConvBn, ConvShape};
use super::layers::{batch_norm, conv2d};

/// A post-activation basic block with an option-A shortcut.
#[derive(Debug)]
struct BasicBlockA {
    unit1: ConvBn,
    unit2: ConvBn,
    /// Channels added on each side of the subsampled identity, 0 when shapes match.
    pad_channels: i64,
    stride: i64,
}

impl BasicBlockA {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self {
            unit1: ConvBn::no_bias(
                &p / "conv1",
                &p / "bn1",
                (c_in, c_out),
                ConvShape::square(3, stride, 1),
            ),
            unit2: ConvBn::no_bias(
                &p / "conv2",
                &p / "bn2",
                (c_out, c_out),
                ConvShape::square(3, 1, 1),
            ),
            pad_channels: (c_out - c_in) / 2,
            stride,
        }
    }
}

impl ModuleT for BasicBlockA {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = xs.apply_t(&self.unit1, train).relu();
        let out = out.apply_t(&self.unit2, train);
        let shortcut = if self.stride == 1 && self.pad_channels == 0 {
            xs.shallow_clone()
        } else {
            // Option A: x[:, :, ::s, ::s], zero-padded to the new channel count.
            let sub = xs
                .slice(2, 0, None, self.stride)
                .slice(3, 0, None, self.stride);
            sub.constant_pad_nd([0, 0, 0, 0, self.pad_channels, self.pad_channels])
        };
        (out + shortcut).relu()
    }
}

/// ResNet20 for CIFAR-sized inputs.
#[derive(Debug)]
pub(crate) struct ResNet20 {
    stem: ConvBn,
    blocks: Vec<BasicBlockA>,
    linear: nn::Linear,
}

/// Builds ResNet20 (option-A shortcuts) under `p` for `c_in` input channels.
pub(crate) fn resnet20(p: &nn::Path, c_in: i64, num_classes: i64) -> ResNet20 {
    let mut blocks = Vec::new();
    let mut channels = 16;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        let layer = p / format!("layer{}", stage + 1);
        for i in 0..3 {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            blocks.push(BasicBlockA::new(&layer / i, channels, width, stride));
            channels = width;
        }
    }
    ResNet20 {
        stem: ConvBn::no_bias(
            p / "conv1",
            p / "bn1",
            (c_in, 16),
            ConvShape::square(3, 1, 1),
        ),
        blocks,
        linear: nn::linear(p / "linear", 64, num_classes, Default::default()),
    }
}

impl ModuleT for ResNet20 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = xs.apply_t(&self.stem, train).relu(); // [N, 16, H, W]
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        } // [N, 64, H/4, W/4]
        out.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.linear) // [N, classes]
    }
}

/// A pre-activation basic block (BN-ReLU-conv, twice) with a 1×1 projection
/// shortcut taken from the pre-activated input when the shape changes.
#[derive(Debug)]
struct PreActBlock {
    bn1: nn::BatchNorm,
    /// conv1 → bn2, the one pair of the block with nothing in between.
    unit1: ConvBn,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| conv2d(&p / "shortcut" / 0, c_in, c_out, 1, stride, 0, false));
        Self {
            bn1: batch_norm(&p / "bn1", c_in, 1e-5),
            unit1: ConvBn::no_bias(
                &p / "conv1",
                &p / "bn2",
                (c_in, c_out),
                ConvShape::square(3, stride, 1),
            ),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1, false),
            shortcut,
        }
    }
}

impl ModuleT for PreActBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let pre = xs.apply_t(&self.bn1, train).relu();
        let shortcut = match &self.shortcut {
            Some(conv) => pre.apply(conv),
            None => xs.shallow_clone(),
        };
        let out = pre.apply_t(&self.unit1, train).relu().apply(&self.conv2);
        out + shortcut
    }
}

/// Pre-activation ResNet18 for CIFAR-sized inputs.
#[derive(Debug)]
pub(crate) struct PreActResNet18 {
    conv1: nn::Conv2D,
    blocks: Vec<PreActBlock>,
    bn: nn::BatchNorm,
    linear: nn::Linear,
}

/// Builds pre-activation ResNet18 under `p` for `c_in` input channels.
pub(crate) fn preact_resnet18(p: &nn::Path, c_in: i64, num_classes: i64) -> PreActResNet18 {
    let mut blocks = Vec::new();
    let mut channels = 64;
    for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
        let layer = p / format!("layer{}", stage + 1);
        for i in 0..2 {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            blocks.push(PreActBlock::new(&layer / i, channels, width, stride));
            channels = width;
        }
    }
    PreActResNet18 {
        conv1: conv2d(p / "conv1", c_in, 64, 3, 1, 1, false),
        blocks,
        bn: batch_norm(p / "bn", 512, 1e-5),
        linear: nn::linear(p / "linear", 512, num_classes, Default::default()),
    }
}

impl ModuleT for PreActResNet18 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = xs.apply(&self.conv1); // [N, 64, H, W]
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        } // [N, 512, H/8, W/8]
        let out = out.apply_t(&self.bn, train).relu();
        out.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.linear) // [N, classes]
    }
}
