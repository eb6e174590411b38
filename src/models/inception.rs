//! Inception v3 in torchvision's layout with `aux_logits=False` and
//! `transform_input=False` (inputs arrive normalized by the data layer): 299×299
//! inputs (any `H, W ≥ 75` work), 23,834,568 parameters for 1000 classes, as
//! `torchvision.models.inception_v3(aux_logits=False, init_weights=False)`. The
//! often quoted 27.2M includes the auxiliary classifier (27,161,264), which the paper
//! switches off (S1). Keys are torchvision's (`Conv2d_1a_3x3.conv`, `Mixed_5b.branch1x1.bn`,
//! …, `fc`); only `num_batches_tracked` has no counterpart.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::{ConvBn, ConvShape};

/// torchvision's `BasicConv2d`: conv (no bias) → BN (eps 0.001) → ReLU.
#[derive(Debug)]
struct BasicConv(ConvBn);

impl BasicConv {
    /// A square kernel.
    fn new(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        Self::shaped(p, c_in, c_out, ConvShape::square(kernel, stride, padding))
    }

    fn shaped(p: nn::Path, c_in: i64, c_out: i64, shape: ConvShape) -> Self {
        Self(ConvBn::new(
            &p / "conv",
            &p / "bn",
            (c_in, c_out),
            shape,
            false,
            0.001,
        ))
    }
}

impl ModuleT for BasicConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.0, train).relu()
    }
}

/// 1×7 (padding 0,3) — torchvision's factorized 7×7 convolutions.
const K1X7: ([i64; 2], [i64; 2]) = ([1, 7], [0, 3]);
/// 7×1 (padding 3,0).
const K7X1: ([i64; 2], [i64; 2]) = ([7, 1], [3, 0]);
/// 1×3 (padding 0,1).
const K1X3: ([i64; 2], [i64; 2]) = ([1, 3], [0, 1]);
/// 3×1 (padding 1,0).
const K3X1: ([i64; 2], [i64; 2]) = ([3, 1], [1, 0]);

fn rect(p: nn::Path, c_in: i64, c_out: i64, (kernel, padding): ([i64; 2], [i64; 2])) -> BasicConv {
    let shape = ConvShape {
        kernel,
        stride: [1, 1],
        padding,
    };
    BasicConv::shaped(p, c_in, c_out, shape)
}

/// torchvision's `F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)` (padding counted).
fn avg_pool_3x3(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None)
}

/// torchvision's `F.max_pool2d(x, kernel_size=3, stride=2)`.
fn max_pool_3x3_s2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// One of the Mixed blocks, each named by torchvision's class for it.
// Built once per model; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Mixed {
    /// InceptionA: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1.
    A {
        b1: BasicConv,
        b5: [BasicConv; 2],
        b3dbl: [BasicConv; 3],
        pool: BasicConv,
    },
    /// InceptionB (grid reduction): 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2.
    B {
        b3: BasicConv,
        b3dbl: [BasicConv; 3],
    },
    /// InceptionC: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg-pool→1×1.
    C {
        b1: BasicConv,
        b7: [BasicConv; 3],
        b7dbl: [BasicConv; 5],
        pool: BasicConv,
    },
    /// InceptionD (grid reduction): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2.
    D {
        b3: [BasicConv; 2],
        b7x3: [BasicConv; 4],
    },
    /// InceptionE: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | avg-pool→1×1.
    E {
        b1: BasicConv,
        b3_1: BasicConv,
        b3_2: [BasicConv; 2],
        b3dbl_12: [BasicConv; 2],
        b3dbl_3: [BasicConv; 2],
        pool: BasicConv,
    },
}

fn inception_a(p: nn::Path, c_in: i64, pool_features: i64) -> Mixed {
    Mixed::A {
        b1: BasicConv::new(&p / "branch1x1", c_in, 64, 1, 1, 0),
        b5: [
            BasicConv::new(&p / "branch5x5_1", c_in, 48, 1, 1, 0),
            BasicConv::new(&p / "branch5x5_2", 48, 64, 5, 1, 2),
        ],
        b3dbl: [
            BasicConv::new(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            BasicConv::new(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            BasicConv::new(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
        ],
        pool: BasicConv::new(&p / "branch_pool", c_in, pool_features, 1, 1, 0),
    }
}

fn inception_b(p: nn::Path, c_in: i64) -> Mixed {
    Mixed::B {
        b3: BasicConv::new(&p / "branch3x3", c_in, 384, 3, 2, 0),
        b3dbl: [
            BasicConv::new(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            BasicConv::new(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            BasicConv::new(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
        ],
    }
}

fn inception_c(p: nn::Path, c_in: i64, c7: i64) -> Mixed {
    Mixed::C {
        b1: BasicConv::new(&p / "branch1x1", c_in, 192, 1, 1, 0),
        b7: [
            BasicConv::new(&p / "branch7x7_1", c_in, c7, 1, 1, 0),
            rect(&p / "branch7x7_2", c7, c7, K1X7),
            rect(&p / "branch7x7_3", c7, 192, K7X1),
        ],
        b7dbl: [
            BasicConv::new(&p / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
            rect(&p / "branch7x7dbl_2", c7, c7, K7X1),
            rect(&p / "branch7x7dbl_3", c7, c7, K1X7),
            rect(&p / "branch7x7dbl_4", c7, c7, K7X1),
            rect(&p / "branch7x7dbl_5", c7, 192, K1X7),
        ],
        pool: BasicConv::new(&p / "branch_pool", c_in, 192, 1, 1, 0),
    }
}

fn inception_d(p: nn::Path, c_in: i64) -> Mixed {
    Mixed::D {
        b3: [
            BasicConv::new(&p / "branch3x3_1", c_in, 192, 1, 1, 0),
            BasicConv::new(&p / "branch3x3_2", 192, 320, 3, 2, 0),
        ],
        b7x3: [
            BasicConv::new(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0),
            rect(&p / "branch7x7x3_2", 192, 192, K1X7),
            rect(&p / "branch7x7x3_3", 192, 192, K7X1),
            BasicConv::new(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
        ],
    }
}

fn inception_e(p: nn::Path, c_in: i64) -> Mixed {
    Mixed::E {
        b1: BasicConv::new(&p / "branch1x1", c_in, 320, 1, 1, 0),
        b3_1: BasicConv::new(&p / "branch3x3_1", c_in, 384, 1, 1, 0),
        b3_2: [
            rect(&p / "branch3x3_2a", 384, 384, K1X3),
            rect(&p / "branch3x3_2b", 384, 384, K3X1),
        ],
        b3dbl_12: [
            BasicConv::new(&p / "branch3x3dbl_1", c_in, 448, 1, 1, 0),
            BasicConv::new(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
        ],
        b3dbl_3: [
            rect(&p / "branch3x3dbl_3a", 384, 384, K1X3),
            rect(&p / "branch3x3dbl_3b", 384, 384, K3X1),
        ],
        pool: BasicConv::new(&p / "branch_pool", c_in, 192, 1, 1, 0),
    }
}

/// Applies convolutions one after another.
fn chain(xs: &Tensor, convs: &[BasicConv], train: bool) -> Tensor {
    convs
        .iter()
        .fold(xs.shallow_clone(), |out, conv| conv.forward_t(&out, train))
}

impl ModuleT for Mixed {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let branches = match self {
            Mixed::A {
                b1,
                b5,
                b3dbl,
                pool,
            } => vec![
                b1.forward_t(xs, train),
                chain(xs, b5, train),
                chain(xs, b3dbl, train),
                pool.forward_t(&avg_pool_3x3(xs), train),
            ],
            Mixed::B { b3, b3dbl } => {
                vec![
                    b3.forward_t(xs, train),
                    chain(xs, b3dbl, train),
                    max_pool_3x3_s2(xs),
                ]
            }
            Mixed::C {
                b1,
                b7,
                b7dbl,
                pool,
            } => vec![
                b1.forward_t(xs, train),
                chain(xs, b7, train),
                chain(xs, b7dbl, train),
                pool.forward_t(&avg_pool_3x3(xs), train),
            ],
            Mixed::D { b3, b7x3 } => vec![
                chain(xs, b3, train),
                chain(xs, b7x3, train),
                max_pool_3x3_s2(xs),
            ],
            Mixed::E {
                b1,
                b3_1,
                b3_2,
                b3dbl_12,
                b3dbl_3,
                pool,
            } => {
                let b3 = b3_1.forward_t(xs, train);
                let b3dbl = chain(xs, b3dbl_12, train);
                vec![
                    b1.forward_t(xs, train),
                    b3_2[0].forward_t(&b3, train),
                    b3_2[1].forward_t(&b3, train),
                    b3dbl_3[0].forward_t(&b3dbl, train),
                    b3dbl_3[1].forward_t(&b3dbl, train),
                    pool.forward_t(&avg_pool_3x3(xs), train),
                ]
            }
        };
        Tensor::cat(&branches, 1)
    }
}

/// Inception v3 without the auxiliary classifier.
#[derive(Debug)]
pub(crate) struct InceptionV3 {
    /// Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3 (then max-pool).
    stem1: [BasicConv; 3],
    /// Conv2d_3b_1x1, Conv2d_4a_3x3 (then max-pool).
    stem2: [BasicConv; 2],
    /// Mixed_5b … Mixed_7c.
    mixed: Vec<Mixed>,
    fc: nn::Linear,
}

/// Builds Inception v3 under `p` for `c_in` input channels.
pub(crate) fn inception_v3(p: &nn::Path, c_in: i64, num_classes: i64) -> InceptionV3 {
    let mixed = vec![
        inception_a(p / "Mixed_5b", 192, 32),
        inception_a(p / "Mixed_5c", 256, 64),
        inception_a(p / "Mixed_5d", 288, 64),
        inception_b(p / "Mixed_6a", 288),
        inception_c(p / "Mixed_6b", 768, 128),
        inception_c(p / "Mixed_6c", 768, 160),
        inception_c(p / "Mixed_6d", 768, 160),
        inception_c(p / "Mixed_6e", 768, 192),
        inception_d(p / "Mixed_7a", 768),
        inception_e(p / "Mixed_7b", 1280),
        inception_e(p / "Mixed_7c", 2048),
    ];
    InceptionV3 {
        stem1: [
            BasicConv::new(p / "Conv2d_1a_3x3", c_in, 32, 3, 2, 0),
            BasicConv::new(p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            BasicConv::new(p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
        ],
        stem2: [
            BasicConv::new(p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            BasicConv::new(p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ],
        mixed,
        fc: nn::linear(p / "fc", 2048, num_classes, Default::default()),
    }
}

impl ModuleT for InceptionV3 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = max_pool_3x3_s2(&chain(xs, &self.stem1, train)); // [N, 64, 73, 73] at 299
        let mut out = max_pool_3x3_s2(&chain(&out, &self.stem2, train)); // [N, 192, 35, 35]
        for block in &self.mixed {
            out = block.forward_t(&out, train);
        } // [N, 2048, 8, 8]
        out.adaptive_avg_pool2d([1, 1])
            .dropout(0.5, train)
            .flatten(1, -1)
            .apply(&self.fc) // [N, classes]
    }
}
