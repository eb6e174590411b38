//! CIFAR-10 in its binary version (`cifar-10-batches-bin`): `data_batch_1.bin` …
//! `data_batch_5.bin` are the 50 000 training images, `test_batch.bin` the 10 000
//! test images. Each file is a run of 3073-byte records: one label byte, then the
//! 32×32 image as 1024 red, 1024 green and 1024 blue bytes (CHW, rows top to bottom).
//! The whole split (150 MB for train) is read into memory once.

use std::path::{Path, PathBuf};

use super::{memory::InMemory, DataError, Normalization, Split};

/// Bytes of the label that opens each record.
pub const LABEL_BYTES: usize = 1;
/// Channels, height and width of a CIFAR-10 image.
pub const CHANNELS: usize = 3;
pub const HEIGHT: usize = 32;
pub const WIDTH: usize = 32;
/// Pixel bytes of one image: 3 × 32 × 32 = 3072.
pub const IMAGE_BYTES: usize = CHANNELS * HEIGHT * WIDTH;
/// Bytes of one record: 1 + 3072 = 3073.
pub const RECORD_BYTES: usize = LABEL_BYTES + IMAGE_BYTES;
/// The ten classes, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Files of the training split, in the order their records are numbered.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// File of the test split.
pub const TEST_FILES: [&str; 1] = ["test_batch.bin"];
/// The folder name inside the official `cifar-10-binary.tar.gz`; [`Cifar10::open`]
/// also accepts the folder that contains it.
pub const ARCHIVE_DIR: &str = "cifar-10-batches-bin";

/// A CIFAR-10 split held in memory.
#[derive(Debug)]
pub struct Cifar10 {
    /// The decoded images and labels.
    data: InMemory,
}

impl Cifar10 {
    /// Reads `split` from `dir` (the `cifar-10-batches-bin` folder, or the folder
    /// holding it). Errors name the file and, for a bad record, its number within
    /// that file (0-based).
    pub fn open(dir: impl AsRef<Path>, split: Split) -> Result<Self, DataError> {
        let mut dir = dir.as_ref().to_path_buf();
        if !dir.join(TRAIN_FILES[0]).exists()
            && !dir.join(TEST_FILES[0]).exists()
            && dir.join(ARCHIVE_DIR).is_dir()
        {
            dir = dir.join(ARCHIVE_DIR);
        }
        let files: &[&str] = match split {
            Split::Train => &TRAIN_FILES,
            Split::Test => &TEST_FILES,
        };
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for name in files {
            read_file(&dir.join(name), &mut pixels, &mut labels)?;
        }
        let data = InMemory::new(
            format!("cifar10/{split}"),
            [CHANNELS, HEIGHT, WIDTH],
            CLASSES.len(),
            Normalization::cifar10(),
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

/// Appends the records of one batch file.
fn read_file(path: &PathBuf, pixels: &mut Vec<u8>, labels: &mut Vec<i64>) -> Result<(), DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::io(path, e, "a CIFAR-10 binary batch of 3073-byte records"))?;
    if bytes.is_empty() {
        return Err(DataError::Format {
            path: path.clone(),
            problem: "file is empty".into(),
        });
    }
    if bytes.len() % RECORD_BYTES != 0 {
        let whole = bytes.len() / RECORD_BYTES;
        return Err(DataError::Record {
            path: path.clone(),
            record: whole,
            problem: format!(
                "truncated record: the file has {} bytes, {} whole {RECORD_BYTES}-byte records \
                 and {} bytes over (an interrupted download or the wrong file?)",
                bytes.len(),
                whole,
                bytes.len() % RECORD_BYTES
            ),
        });
    }
    pixels.reserve(bytes.len() / RECORD_BYTES * IMAGE_BYTES);
    for (record, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = chunk[0];
        if label as usize >= CLASSES.len() {
            return Err(DataError::Record {
                path: path.clone(),
                record,
                problem: format!("label {label} is not a CIFAR-10 class (0..=9)"),
            });
        }
        labels.push(i64::from(label));
        pixels.extend_from_slice(&chunk[LABEL_BYTES..]);
    }
    Ok(())
}

crate::data::memory::delegate_image_source!(Cifar10, data);
