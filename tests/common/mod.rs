//! Shared helpers of the integration tests: small real models and datasets.
#![allow(dead_code)]

pub mod cli;
pub mod fmnist14;
pub mod planted;
pub mod slurm;

use overinterp::data::{DataError, ImageSource, Normalization};
use overinterp::models::{Classifier, ModelError};
use tch::{nn, nn::Module, Device, Tensor};

/// A synthetic dataset held in memory: `n` images of shape (c, h, w).
pub struct Synthetic {
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub shape: [usize; 3],
    pub classes: usize,
}

impl Synthetic {
    /// Class `y` is written into the image as a bright pixel at position `y` on a
    /// noisy background: learnable, and a planted shortcut for SIS.
    pub fn planted(n: usize, classes: usize, seed: u64) -> Self {
        let shape = [1, 4, 4];
        let p = 16;
        let mut rng = overinterp::util::SplitMix64::new(seed);
        let mut pixels = vec![0u8; n * p];
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let y = rng.below(classes);
            for v in &mut pixels[i * p..(i + 1) * p] {
                *v = rng.below(100) as u8;
            }
            pixels[i * p + y] = 255;
            labels.push(y as i64);
        }
        Self {
            pixels,
            labels,
            shape,
            classes,
        }
    }
}

impl ImageSource for Synthetic {
    fn name(&self) -> String {
        "synthetic".into()
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn normalization(&self) -> Normalization {
        Normalization {
            mean: vec![0.25],
            std: vec![0.3],
        }
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        self.labels
            .get(index)
            .copied()
            .ok_or(DataError::OutOfRange {
                index,
                len: self.len(),
            })
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let p = self.shape.iter().product::<usize>();
        for (k, &i) in indices.iter().enumerate() {
            let src = self
                .pixels
                .get(i * p..(i + 1) * p)
                .ok_or(DataError::OutOfRange {
                    index: i,
                    len: self.len(),
                })?;
            out[k * p..(k + 1) * p].copy_from_slice(src);
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        overinterp::util::sha256_hex(&self.pixels)
    }
}

/// A two-layer perceptron over the flattened image, trainable through its VarStore.
pub struct Mlp {
    pub vs: nn::VarStore,
    net: nn::Sequential,
    classes: i64,
    shape: [i64; 3],
}

impl Mlp {
    pub fn new(shape: [i64; 3], classes: i64, seed: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = &vs.root();
        let inputs = shape.iter().product::<i64>();
        let net = nn::seq()
            .add_fn(|x| x.flatten(1, -1))
            .add(nn::linear(p / "fc1", inputs, 32, zeros()))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "fc2", 32, classes, zeros()));
        // The weights come from the seed alone, not from libtorch's global RNG: tests
        // of one binary run in parallel threads, and training seeds that RNG each epoch
        // (`tch::manual_seed`), which would race with a model being initialized here.
        let mut rng = overinterp::util::SplitMix64::new(seed as u64);
        let mut vars = vs.variables().into_iter().collect::<Vec<_>>();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut t) in vars {
                // PyTorch's default for Linear: U(-1/√fan_in, 1/√fan_in) for both.
                let fan_in = if name.starts_with("fc1") { inputs } else { 32 };
                let bound = 1.0 / (fan_in as f64).sqrt();
                let values: Vec<f32> = (0..t.numel())
                    .map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32)
                    .collect();
                t.copy_(&Tensor::from_slice(&values).view(t.size().as_slice()));
            }
        });
        Self {
            vs,
            net,
            classes,
            shape,
        }
    }
}

/// A linear layer initialized to zeros, which draws nothing from libtorch's RNG.
fn zeros() -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    }
}

impl Classifier for Mlp {
    fn forward(&self, xs: &Tensor, _train: bool) -> Result<Tensor, ModelError> {
        Ok(self.net.forward(xs))
    }
    fn num_classes(&self) -> i64 {
        self.classes
    }
    fn input_shape(&self) -> [i64; 3] {
        self.shape
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn var_store(&self) -> Option<&nn::VarStore> {
        Some(&self.vs)
    }
    fn var_store_mut(&mut self) -> Option<&mut nn::VarStore> {
        Some(&mut self.vs)
    }
    fn describe(&self) -> String {
        "mlp".into()
    }
}
