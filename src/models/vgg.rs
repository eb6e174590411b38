//! VGG16 with batch norm for 32×32 inputs, the common CIFAR variant (Simonyan &
//! Zisserman 2014 configuration D, 13 conv-BN-ReLU layers and 5 max-pools, then a
//! single `Linear(512, classes)`): 14,728,266 parameters for 10 classes ("14.7M" in
//! Carter et al. S1). Keys follow that PyTorch port's `nn.Sequential` indices:
//! `features.{i}` (convolutions with bias at i, their batch norms at i+1) and
//! `classifier`, so its checkpoints map one to one.
//!
//! Where the port flattens a 1×1 map, we average-pool adaptively to 1×1: identical
//! for 32×32 inputs, and it lets the model accept any `H, W ≥ 32`.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::{ConvBn, ConvShape};

/// Configuration D: output channels of each conv, `None` for a 2×2 max-pool.
const VGG16_LAYERS: [Option<i64>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

// Built once per model; boxing the conv variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Layer {
    ConvBnRelu(ConvBn),
    MaxPool,
}

/// VGG16-BN for CIFAR-sized inputs.
#[derive(Debug)]
pub(crate) struct Vgg16Bn {
    features: Vec<Layer>,
    classifier: nn::Linear,
}

/// Builds VGG16-BN under `p` for `c_in` input channels.
pub(crate) fn vgg16_bn(p: &nn::Path, c_in: i64, num_classes: i64) -> Vgg16Bn {
    let f = p / "features";
    let mut features = Vec::new();
    // Index in the PyTorch Sequential: conv, bn, relu take three slots, a pool one.
    let mut index = 0;
    let mut channels = c_in;
    for layer in VGG16_LAYERS {
        match layer {
            Some(width) => {
                features.push(Layer::ConvBnRelu(ConvBn::new(
                    &f / index,
                    &f / (index + 1),
                    (channels, width),
                    ConvShape::square(3, 1, 1),
                    true,
                    1e-5,
                )));
                channels = width;
                index += 3;
            }
            None => {
                features.push(Layer::MaxPool);
                index += 1;
            }
        }
    }
    Vgg16Bn {
        features,
        classifier: nn::linear(p / "classifier", 512, num_classes, Default::default()),
    }
}

impl ModuleT for Vgg16Bn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = xs.shallow_clone();
        for layer in &self.features {
            out = match layer {
                Layer::ConvBnRelu(unit) => out.apply_t(unit, train).relu(),
                Layer::MaxPool => out.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        } // [N, 512, H/32, W/32]
        out.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.classifier) // [N, classes]
    }
}
