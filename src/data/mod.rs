//! Dataset readers. Every reader yields raw `u8` pixels in CHW order plus labels,
//! behind one trait, [`ImageSource`]; [`batch`] turns a list of indices into a
//! normalized tensor on a device. Normalization lives here, once, so a masked pixel
//! (0 after normalization) is the dataset mean everywhere.
//!
//! # Layout
//!
//! - [`cifar10`]: CIFAR-10 binary batches (3073-byte records), held in memory.
//! - [`cifar10c`]: CIFAR-10-C `.npy` corruption arrays, read on demand, with a seeded
//!   sample across corruptions and severities; [`npy`] is its strict `.npy` parser.
//! - [`idx`]: MNIST / Fashion-MNIST IDX files, gzipped or not, held in memory.
//! - [`imagenet`]: ILSVRC2012 folders, JPEGs decoded, resized and centre-cropped on
//!   demand, in parallel.
//! - [`memory`]: [`InMemory`], the dataset of synthetic tests and of subsets.
//! - [`limit`]: [`Limited`], the first N images of any source, without a copy.
//! - [`spec`]: [`DatasetSpec`] (what the CLI's `--data kind:root` names) and
//!   [`open_dataset`].

pub mod cifar10;
pub mod cifar10c;
pub mod content_hash;
pub mod idx;
pub mod imagenet;
pub mod limit;
pub mod memory;
pub mod npy;
pub mod spec;

use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

pub use cifar10::Cifar10;
pub use cifar10c::{Cifar10c, Cifar10cOptions, CORRUPTIONS};
pub use idx::{Idx, IdxKind};
pub use imagenet::{BadFile, BadFilePolicy, ImageNet, ImageNetOptions};
pub use limit::Limited;
pub use memory::{subset, InMemory};
pub use spec::{open_dataset, DatasetKind, DatasetSpec};

/// Per-channel mean and standard deviation, both in `[0, 1]` pixel units.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Subtracted from each channel after scaling pixels to `[0, 1]`.
    pub mean: Vec<f32>,
    /// Divides each channel after the mean is subtracted.
    pub std: Vec<f32>,
}

impl Normalization {
    /// CIFAR-10, as in the paper's official code: mean `[125.3,123.0,113.9]/255`,
    /// std `[63.0,62.1,66.7]/255`. CIFAR-10-C uses the same statistics, because
    /// its models are CIFAR-10 models.
    pub fn cifar10() -> Self {
        Self {
            mean: vec![125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0],
            std: vec![63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0],
        }
    }
    /// torchvision's ImageNet statistics.
    pub fn imagenet() -> Self {
        Self {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }
    /// Fashion-MNIST training-set statistics (mean 0.2860, std 0.3530).
    pub fn fashion_mnist() -> Self {
        Self {
            mean: vec![0.2860],
            std: vec![0.3530],
        }
    }
    /// MNIST training-set statistics (mean 0.1307, std 0.3081), the values of the
    /// PyTorch MNIST example.
    pub fn mnist() -> Self {
        Self {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }
}

/// Which half of a dataset to read. ImageNet's labelled held-out set is its
/// validation set (`val/`): the ILSVRC test labels were never published, so
/// `Test` means `val/` there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out images (ImageNet: `val/`).
    Test,
}

impl Split {
    /// `"train"` or `"test"`, as used in dataset names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    /// Accepts `train`, `test`, and `val`/`validation` as a synonym of `test`.
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "val" | "validation" => Ok(Split::Test),
            other => Err(DataError::Invalid(format!(
                "unknown split {other:?}: expected `train` or `test` (ImageNet's `val` is `test`)"
            ))),
        }
    }
}

/// Errors of the dataset readers. Each names the file (and record) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file the dataset needs does not exist; `what` says what it should hold.
    #[error("{path}: file not found ({what})")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("{path}: record {record}: {problem}")]
    Record {
        path: PathBuf,
        record: usize,
        problem: String,
    },
    #[error("index {index} is out of range: the dataset has {len} images")]
    OutOfRange { index: usize, len: usize },
    #[error("{0}")]
    Invalid(String),
    /// libtorch refused an operation (for example, a CUDA device that is absent).
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl DataError {
    /// An I/O error on `path`, with "not found" turned into [`DataError::Missing`]
    /// so the user reads which file the dataset expected.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error, what: &str) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path,
                what: what.to_string(),
            }
        } else {
            DataError::Io { path, source }
        }
    }
}

/// A dataset split: `len()` images of shape `shape()` (C, H, W) with labels in
/// `0..num_classes()`. Readers for large data (ImageNet) decode on demand.
pub trait ImageSource: Send + Sync {
    /// Short name used in logs, store keys and content hashes ("fashion-mnist/train").
    fn name(&self) -> String;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (C, H, W).
    fn shape(&self) -> [usize; 3];
    fn num_classes(&self) -> usize;
    fn normalization(&self) -> Normalization;
    fn label(&self, index: usize) -> Result<i64, DataError>;
    /// Writes the `u8` CHW pixels of `indices`, one image after the other, into `out`
    /// (`out.len() == indices.len() * C*H*W`).
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError>;
    /// A hash of the split's content (for folders of files, of every file's bytes,
    /// through the cache of [`content_hash`]),
    /// recorded in checkpoint configs so an artifact says what it was made from.
    fn content_hash(&self) -> String;
    /// A group key for per-group evaluation: `"<corruption>/<severity>"` (e.g.
    /// `"fog/3"`) for CIFAR-10-C, so evaluation through a `dyn ImageSource` can
    /// report per corruption and severity; `None` for datasets without groups.
    fn group(&self, index: usize) -> Option<String> {
        let _ = index;
        None
    }
    /// Files that could not be read and were skipped (ImageNet `bad-files=skip`);
    /// empty for other datasets.
    fn bad_files(&self) -> Vec<BadFile> {
        Vec::new()
    }
    /// The content hash of the first `n` images when the reader can compute it
    /// without decoding them (ImageNet: from its file list). `None` (the default):
    /// [`limit::Limited`] hashes the pixels and labels it reads, which equals the
    /// hash of an in-memory copy of those images.
    fn prefix_hash(&self, n: usize) -> Option<String> {
        let _ = n;
        None
    }
}

/// Checks the `out` buffer of [`ImageSource::read_pixels`] and every index, so
/// readers fail with a clear error instead of panicking on a slice bound.
pub(crate) fn check_read(
    source_len: usize,
    image_bytes: usize,
    indices: &[usize],
    out: &[u8],
) -> Result<(), DataError> {
    if out.len() != indices.len() * image_bytes {
        return Err(DataError::Invalid(format!(
            "read_pixels: output buffer holds {} bytes, {} images of {} bytes need {}",
            out.len(),
            indices.len(),
            image_bytes,
            indices.len() * image_bytes
        )));
    }
    match indices.iter().find(|&&i| i >= source_len) {
        Some(&index) => Err(DataError::OutOfRange {
            index,
            len: source_len,
        }),
        None => Ok(()),
    }
}

/// Images of `indices` as a normalized float tensor `[N, C, H, W]` on `device`,
/// and their labels `[N]` (int64).
pub fn batch(
    source: &dyn ImageSource,
    indices: &[usize],
    device: Device,
) -> Result<(Tensor, Tensor), DataError> {
    let [c, h, w] = source.shape();
    let mut pixels = vec![0u8; indices.len() * c * h * w];
    source.read_pixels(indices, &mut pixels)?;
    let labels = indices
        .iter()
        .map(|&i| source.label(i))
        .collect::<Result<Vec<_>, _>>()?;
    let x = Tensor::from_slice(&pixels)
        .f_view([indices.len() as i64, c as i64, h as i64, w as i64])?
        .f_to_device(device)?;
    let y = Tensor::from_slice(&labels).f_to_device(device)?;
    Ok((f_normalize(&x, &source.normalization())?, y))
}

/// `u8` pixels `[N, C, H, W]` → `(x/255 − mean) / std` as float32.
///
/// Panics if the channel count of `pixels` differs from that of `norm`; library
/// code that cannot rule this out uses [`f_normalize`].
pub fn normalize(pixels: &Tensor, norm: &Normalization) -> Tensor {
    match f_normalize(pixels, norm) {
        Ok(x) => x,
        Err(e) => panic!("normalize: {e}"),
    }
}

/// Fallible [`normalize`]: `u8` (or float 0–255) pixels `[N, C, H, W]` →
/// `(x/255 − mean) / std` as float32 on the pixels' device.
pub fn f_normalize(pixels: &Tensor, norm: &Normalization) -> Result<Tensor, DataError> {
    let device = pixels.device();
    let c = norm.mean.len() as i64;
    if norm.std.len() != norm.mean.len() {
        return Err(DataError::Invalid(format!(
            "normalization has {} means but {} standard deviations",
            norm.mean.len(),
            norm.std.len()
        )));
    }
    let size = pixels.size();
    if size.len() != 4 || size[1] != c {
        return Err(DataError::Invalid(format!(
            "normalize: pixels of shape {size:?} do not match a {c}-channel normalization \
             (expected [N, {c}, H, W])"
        )));
    }
    let mean = Tensor::from_slice(&norm.mean)
        .f_view([1, c, 1, 1])?
        .f_to_device(device)?;
    let std = Tensor::from_slice(&norm.std)
        .f_view([1, c, 1, 1])?
        .f_to_device(device)?;
    Ok(pixels
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?
        .f_sub(&mean)?
        .f_div(&std)?)
}
