//! ResNet50 in torchvision's layout (v1.5: the stride of a down-sampling bottleneck
//! sits on its 3×3 convolution). 25,557,032 parameters for 1000 classes, as
//! `torchvision.models.resnet50()`. Parameter keys are torchvision's (`conv1`, `bn1`,
//! `layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}`, `fc`);
//! only the batch-norm buffer `num_batches_tracked` has no counterpart.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::{ConvBn, ConvShape};

#[derive(Debug)]
struct Bottleneck {
    unit1: ConvBn,
    unit2: ConvBn,
    unit3: ConvBn,
    downsample: Option<ConvBn>,
}

/// torchvision's Bottleneck.expansion.
const EXPANSION: i64 = 4;

impl Bottleneck {
    fn new(p: nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * EXPANSION;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            let shape = ConvShape::square(1, stride, 0);
            ConvBn::no_bias(&d / 0, &d / 1, (c_in, c_out), shape)
        });
        let one = ConvShape::square(1, 1, 0);
        Self {
            unit1: ConvBn::no_bias(&p / "conv1", &p / "bn1", (c_in, planes), one),
            unit2: ConvBn::no_bias(
                &p / "conv2",
                &p / "bn2",
                (planes, planes),
                ConvShape::square(3, stride, 1),
            ),
            unit3: ConvBn::no_bias(&p / "conv3", &p / "bn3", (planes, c_out), one),
            downsample,
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = xs.apply_t(&self.unit1, train).relu();
        let out = out.apply_t(&self.unit2, train).relu();
        let out = out.apply_t(&self.unit3, train);
        let identity = match &self.downsample {
            Some(unit) => xs.apply_t(unit, train),
            None => xs.shallow_clone(),
        };
        (out + identity).relu()
    }
}

/// ResNet50.
#[derive(Debug)]
pub(crate) struct ResNet50 {
    stem: ConvBn,
    blocks: Vec<Bottleneck>,
    fc: nn::Linear,
}

/// Builds ResNet50 under `p` for `c_in` input channels.
pub(crate) fn resnet50(p: &nn::Path, c_in: i64, num_classes: i64) -> ResNet50 {
    let mut blocks = Vec::new();
    let mut channels = 64;
    for (stage, (planes, count)) in [(64, 3), (128, 4), (256, 6), (512, 3)]
        .into_iter()
        .enumerate()
    {
        let layer = p / format!("layer{}", stage + 1);
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            blocks.push(Bottleneck::new(&layer / i, channels, planes, stride));
            channels = planes * EXPANSION;
        }
    }
    ResNet50 {
        stem: ConvBn::no_bias(
            p / "conv1",
            p / "bn1",
            (c_in, 64),
            ConvShape::square(7, 2, 3),
        ),
        blocks,
        fc: nn::linear(p / "fc", 512 * EXPANSION, num_classes, Default::default()),
    }
}

impl ModuleT for ResNet50 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = xs.apply_t(&self.stem, train).relu(); // [N, 64, H/2, W/2]
        let mut out = out.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // [N, 64, H/4, W/4]
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        } // [N, 2048, H/32, W/32]
        out.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.fc) // [N, classes]
    }
}
