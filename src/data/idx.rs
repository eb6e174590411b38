//! MNIST and Fashion-MNIST in the IDX format: `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
//! each plain or gzipped (`.gz`, as distributed and as Debian's
//! `dataset-fashion-mnist` installs them in `/usr/share/datasets/fashion-mnist`).
//!
//! An IDX file is a big-endian header — magic `0x00000803` for a 3-D `u8` array
//! (images: count, rows, columns) or `0x00000801` for a 1-D one (labels: count) —
//! then the values. Both splits are small (47 MB decoded) and held in memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{memory::InMemory, DataError, Normalization, Split};

/// Magic number of an IDX file holding an unsigned-byte array of rank 3 (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file holding an unsigned-byte array of rank 1 (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Both datasets have ten classes.
pub const NUM_CLASSES: usize = 10;
/// Fashion-MNIST's classes, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// Where Debian's `dataset-fashion-mnist` package puts the four gzipped files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Which of the two IDX datasets a folder holds: same format, different
/// normalization and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdxKind {
    /// Zalando's Fashion-MNIST (mean 0.2860, std 0.3530).
    FashionMnist,
    /// LeCun's handwritten digits (mean 0.1307, std 0.3081).
    Mnist,
}

impl IdxKind {
    /// `"fashion-mnist"` or `"mnist"`, the prefix of the dataset's name.
    pub fn as_str(self) -> &'static str {
        match self {
            IdxKind::FashionMnist => "fashion-mnist",
            IdxKind::Mnist => "mnist",
        }
    }
    /// The dataset's own per-channel statistics.
    pub fn normalization(self) -> Normalization {
        match self {
            IdxKind::FashionMnist => Normalization::fashion_mnist(),
            IdxKind::Mnist => Normalization::mnist(),
        }
    }
}

/// An MNIST or Fashion-MNIST split held in memory (1 channel).
#[derive(Debug)]
pub struct Idx {
    /// The decoded images and labels.
    data: InMemory,
}

impl Idx {
    /// Reads `split` (`train-*` or `t10k-*` files) of a `kind` dataset from `dir`.
    /// Each file may be plain or gzipped; `name-idx3-ubyte` and `name.idx3-ubyte`
    /// spellings are both found.
    pub fn open(dir: impl AsRef<Path>, split: Split, kind: IdxKind) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images_path = find(dir, prefix, "images", "idx3-ubyte")?;
        let labels_path = find(dir, prefix, "labels", "idx1-ubyte")?;
        let (count, rows, cols, pixels) = read_images(&images_path)?;
        let labels = read_labels(&labels_path)?;
        if labels.len() != count {
            return Err(DataError::Format {
                path: labels_path,
                problem: format!(
                    "{} labels, but {} holds {count} images",
                    labels.len(),
                    images_path.display()
                ),
            });
        }
        let data = InMemory::new(
            format!("{}/{split}", kind.as_str()),
            [1, rows, cols],
            NUM_CLASSES,
            kind.normalization(),
            pixels,
            labels,
        )?;
        Ok(Self { data })
    }

    /// The images and labels as an [`InMemory`] dataset.
    pub fn into_inner(self) -> InMemory {
        self.data
    }
}

/// The first of `prefix-what-suffix[.gz]` and `prefix-what.suffix[.gz]` that exists.
fn find(dir: &Path, prefix: &str, what: &str, suffix: &str) -> Result<PathBuf, DataError> {
    let names = [
        format!("{prefix}-{what}-{suffix}"),
        format!("{prefix}-{what}-{suffix}.gz"),
        format!("{prefix}-{what}.{suffix}"),
        format!("{prefix}-{what}.{suffix}.gz"),
    ];
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Missing {
            path: dir.join(&names[0]),
            what: format!(
                "IDX {what} file; also looked for {}, {}, {}",
                names[1], names[2], names[3]
            ),
        })
}

/// The whole file, gunzipped if its name ends in `.gz`.
fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e, "an IDX file"))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                problem: format!("cannot gunzip: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The magic number and the `dims` big-endian sizes after it.
fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>, DataError> {
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "{} bytes is too short for an IDX header ({need} bytes)",
                bytes.len()
            ),
        });
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "wrong magic number {found:#010x}, expected {magic:#010x} (an IDX {} file)",
                if magic == IMAGES_MAGIC {
                    "images"
                } else {
                    "labels"
                }
            ),
        });
    }
    Ok((0..dims).map(|d| word(4 + 4 * d) as usize).collect())
}

/// (count, rows, columns, pixels) of an images file.
fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = read_all(path)?;
    let dims = header(path, &bytes, IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let image = rows * cols;
    if image == 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!("images of {rows}×{cols} pixels are empty"),
        });
    }
    let data = &bytes[16..];
    check_length(path, data.len(), count, image, "image")?;
    Ok((count, rows, cols, data.to_vec()))
}

fn read_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let bytes = read_all(path)?;
    let count = header(path, &bytes, LABELS_MAGIC, 1)?[0];
    let data = &bytes[8..];
    check_length(path, data.len(), count, 1, "label")?;
    data.iter()
        .enumerate()
        .map(|(record, &l)| {
            if (l as usize) < NUM_CLASSES {
                Ok(i64::from(l))
            } else {
                Err(DataError::Record {
                    path: path.to_path_buf(),
                    record,
                    problem: format!("label {l} is out of range 0..{NUM_CLASSES}"),
                })
            }
        })
        .collect()
}

/// The body must hold exactly `count` records of `record_bytes`.
fn check_length(
    path: &Path,
    len: usize,
    count: usize,
    record_bytes: usize,
    what: &str,
) -> Result<(), DataError> {
    let Some(want) = count.checked_mul(record_bytes) else {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "the header promises {count} {what}s of {record_bytes} bytes: too large"
            ),
        });
    };
    if len < want {
        return Err(DataError::Record {
            path: path.to_path_buf(),
            record: len / record_bytes,
            problem: format!(
                "truncated {what}: the header promises {count} {what}s ({want} bytes), \
                 the file holds {len} bytes"
            ),
        });
    }
    if len > want {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "{} bytes after the {count} {what}s the header promises",
                len - want
            ),
        });
    }
    Ok(())
}

crate::data::memory::delegate_image_source!(Idx, data);
