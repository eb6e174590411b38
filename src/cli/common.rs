//! Flags shared by several subcommands, and their validation.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tch::Device;

use crate::data::{self, ImageSource, Split};
use crate::models::{self, Classifier};

/// Which dataset to read.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset as KIND:PATH. KIND is one of cifar10, cifar10c, fashion-mnist, mnist,
    /// imagenet; PATH is the directory holding its files, e.g.
    /// `fashion-mnist:/usr/share/datasets/fashion-mnist` or `cifar10:~/data/cifar-10-batches-bin`.
    /// `fashion-mnist` alone means Debian's folder (`apt-get install dataset-fashion-mnist`).
    /// Options follow a `?`: `limit=N` (first N images of each split, any dataset), `test-limit=M`,
    /// CIFAR-10-C `corruptions=fog,snow&severities=1,5&sample=2000&seed=0`, ImageNet
    /// `crop=224|299&bad-files=fail|skip`.
    #[arg(long, value_name = "KIND:PATH")]
    pub data: String,
    /// Reader options, repeatable: CIFAR-10-C `corruptions=fog,snow`, `severities=1,5`,
    /// `sample=2000`, `seed=0`; ImageNet `crop=224|299`, `bad-files=fail|skip`.
    #[arg(long = "data-opt", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

impl DataArgs {
    /// The validated dataset spec.
    pub fn spec(&self) -> anyhow::Result<data::DatasetSpec> {
        let mut spec: data::DatasetSpec = self
            .data
            .parse()
            .with_context(|| format!("--data {}", self.data))?;
        for option in &self.options {
            spec.set_option(option)
                .with_context(|| format!("--data-opt {option}"))?;
        }
        Ok(spec)
    }

    /// Opens `split` of the dataset, cut to `--limit` images if given.
    pub fn open(&self, split: Split) -> anyhow::Result<Box<dyn ImageSource>> {
        data::open_dataset(&self.spec()?, split)
            .with_context(|| format!("opening --data {} ({split} split)", self.data))
    }
}

/// Where to compute.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::util::parse_device)]
    pub device: Device,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl DeviceArgs {
    pub fn apply(&self) -> Device {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        self.device
    }
}

/// Loads the model named by `--model`: a checkpoint directory written by
/// `overinterp train`, a TorchScript file (`.pt`), or `ensemble:A,B,...` of either.
/// `input_shape` comes from the dataset (TorchScript files do not record it).
pub fn load_model(
    spec: &str,
    device: Device,
    input_shape: [i64; 3],
) -> anyhow::Result<Box<dyn Classifier>> {
    models::load_model(spec, device, input_shape).with_context(|| format!("loading --model {spec}"))
}

/// `[C, H, W]` of a dataset as the `i64`s tch wants.
pub fn input_shape(source: &dyn ImageSource) -> [i64; 3] {
    let [c, h, w] = source.shape();
    [c as i64, h as i64, w as i64]
}

/// Writes pretty JSON to `path`, naming the file on failure.
pub fn write_json(path: &PathBuf, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serializes");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
