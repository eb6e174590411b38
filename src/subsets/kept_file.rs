//! The on-disk subset dataset (`kept.safetensors`, see [`super::stored`]), written
//! and read in bounded memory: the writer streams pixel lists to a scratch file and
//! keeps only 16 bytes per image (index and offset); the reader keeps the same and
//! reads each image's pixels with one positioned read when a batch asks for it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SubsetError;

/// The file name inside a subset dataset directory.
pub const KEPT_FILE: &str = "kept.safetensors";

fn io_err(path: &Path, e: impl std::fmt::Display) -> SubsetError {
    SubsetError::Invalid(format!("{}: {e}", path.display()))
}

/// Streams `(index, kept pixels)` rows into `kept.safetensors`.
pub struct KeptWriter {
    path: PathBuf,
    scratch_path: PathBuf,
    scratch: BufWriter<File>,
    indices: Vec<i64>,
    offsets: Vec<i64>,
}

impl KeptWriter {
    /// Starts `dir/kept.safetensors` (written at [`finish`](Self::finish)).
    pub fn create(dir: &Path) -> Result<Self, SubsetError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let scratch_path = dir.join("tmp.pixels");
        let scratch = File::create(&scratch_path).map_err(|e| io_err(&scratch_path, e))?;
        Ok(Self {
            path: dir.join(KEPT_FILE),
            scratch_path,
            scratch: BufWriter::new(scratch),
            indices: Vec::new(),
            offsets: vec![0],
        })
    }

    /// Appends image `index` keeping `pixels`.
    pub fn push(&mut self, index: usize, pixels: &[u32]) -> Result<(), SubsetError> {
        for &p in pixels {
            self.scratch
                .write_all(&(p as i32).to_le_bytes())
                .map_err(|e| io_err(&self.scratch_path, e))?;
        }
        self.indices.push(index as i64);
        let last = *self.offsets.last().expect("starts with 0");
        self.offsets.push(last + pixels.len() as i64);
        Ok(())
    }

    /// Writes the safetensors file (header, `indices`, `offsets`, then the pixels
    /// copied from the scratch file) and renames it into place.
    pub fn finish(self) -> Result<(), SubsetError> {
        let n = self.indices.len();
        let m = *self.offsets.last().expect("starts with 0") as usize;
        let (a, b, c) = (8 * n, 8 * n + 8 * (n + 1), 8 * n + 8 * (n + 1) + 4 * m);
        let header = format!(
            "{{\"indices\":{{\"dtype\":\"I64\",\"shape\":[{n}],\"data_offsets\":[0,{a}]}},\
             \"offsets\":{{\"dtype\":\"I64\",\"shape\":[{}],\"data_offsets\":[{a},{b}]}},\
             \"pixels\":{{\"dtype\":\"I32\",\"shape\":[{m}],\"data_offsets\":[{b},{c}]}}}}",
            n + 1
        );
        let mut header = header.into_bytes();
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let mut scratch = self
            .scratch
            .into_inner()
            .map_err(|e| io_err(&self.scratch_path, e))?;
        scratch
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err(&self.scratch_path, e))?;
        let tmp = self.path.with_extension("tmp");
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| io_err(&tmp, e))?);
        let mut write = |bytes: &[u8]| out.write_all(bytes).map_err(|e| io_err(&tmp, e));
        write(&(header.len() as u64).to_le_bytes())?;
        write(&header)?;
        for v in self.indices.iter().chain(&self.offsets) {
            write(&v.to_le_bytes())?;
        }
        let mut reopened =
            File::open(&self.scratch_path).map_err(|e| io_err(&self.scratch_path, e))?;
        drop(scratch);
        std::io::copy(&mut reopened, &mut out).map_err(|e| io_err(&tmp, e))?;
        let file = out.into_inner().map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        let _ = std::fs::remove_file(&self.scratch_path);
        Ok(())
    }

    /// Images written so far and pixels kept in all.
    pub fn counts(&self) -> (usize, u64) {
        (
            self.indices.len(),
            *self.offsets.last().expect("starts with 0") as u64,
        )
    }
}

/// A `kept.safetensors` opened for per-batch reads.
#[derive(Debug)]
pub struct KeptFile {
    path: PathBuf,
    file: File,
    /// Image index → row, sorted by index for binary search.
    rows: Vec<(i64, u32)>,
    offsets: Vec<i64>,
    /// Byte position of `pixels[0]` in the file.
    pixels_at: u64,
    /// Pixels per image (`height · width`): every stored pixel number is below it.
    p: usize,
}

impl KeptFile {
    /// Opens and checks the file's header, indices and offsets (not yet the pixels:
    /// each is range-checked when read).
    pub fn open(path: &Path, p: usize) -> Result<Self, SubsetError> {
        let bad = |problem: String| io_err(path, problem);
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut word = [0u8; 8];
        file.read_exact(&mut word).map_err(|e| io_err(path, e))?;
        let header_len = u64::from_le_bytes(word);
        if header_len > len.saturating_sub(8).min(1 << 20) {
            return Err(bad(format!("header length {header_len} is impossible")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| io_err(path, e))?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let tensor = |name: &str| -> Result<(String, Vec<u64>, u64, u64), SubsetError> {
            let t = header
                .get(name)
                .ok_or_else(|| bad(format!("has no tensor {name:?}")))?;
            let dtype = t["dtype"].as_str().unwrap_or_default().to_string();
            let shape = t["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
                .unwrap_or_default();
            let offs = t["data_offsets"].as_array();
            let at = |i: usize| offs.and_then(|o| o.get(i)).and_then(|v| v.as_u64());
            match (at(0), at(1)) {
                (Some(a), Some(b)) if a <= b => Ok((dtype, shape, a, b)),
                _ => Err(bad(format!("tensor {name:?} has bad data_offsets"))),
            }
        };
        let data_at = 8 + header_len;
        let read_i64s = |file: &File, (dtype, shape, a, b): &(String, Vec<u64>, u64, u64)| {
            if dtype != "I64" || shape.len() != 1 || (b - a) != 8 * shape[0] {
                return Err(bad(format!(
                    "expected a 1-d int64 tensor, found {dtype} {shape:?}"
                )));
            }
            let mut bytes = vec![0u8; (b - a) as usize];
            file.read_exact_at(&mut bytes, data_at + a)
                .map_err(|e| io_err(path, e))?;
            Ok(bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect::<Vec<i64>>())
        };
        let indices = read_i64s(&file, &tensor("indices")?)?;
        let offsets = read_i64s(&file, &tensor("offsets")?)?;
        let (dtype, shape, a, b) = tensor("pixels")?;
        if dtype != "I32" || shape.len() != 1 || b - a != 4 * shape[0] || data_at + b > len {
            return Err(bad(format!(
                "tensor \"pixels\": expected 1-d int32 inside the file, found {dtype} {shape:?}"
            )));
        }
        if offsets.len() != indices.len() + 1
            || offsets.first() != Some(&0)
            || offsets.windows(2).any(|w| w[0] > w[1])
            || offsets.last().copied() != Some(shape[0] as i64)
        {
            return Err(bad(
                "is inconsistent (offsets or pixel numbers out of range)".into(),
            ));
        }
        let mut rows: Vec<(i64, u32)> = indices
            .iter()
            .enumerate()
            .map(|(row, &i)| (i, row as u32))
            .collect();
        rows.sort_unstable();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            rows,
            offsets,
            pixels_at: data_at + a,
            p,
        })
    }

    /// The image indices held, ascending.
    pub fn indices(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.0 as usize).collect()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the file holds no image.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Kept pixels of image `index`, or `None` if the file does not hold it.
    pub fn pixels(&self, index: usize) -> Result<Option<Vec<u32>>, SubsetError> {
        let Ok(at) = self.rows.binary_search_by_key(&(index as i64), |r| r.0) else {
            return Ok(None);
        };
        let row = self.rows[at].1 as usize;
        let (a, b) = (self.offsets[row] as u64, self.offsets[row + 1] as u64);
        let mut bytes = vec![0u8; (4 * (b - a)) as usize];
        self.file
            .read_exact_at(&mut bytes, self.pixels_at + 4 * a)
            .map_err(|e| io_err(&self.path, e))?;
        bytes
            .chunks_exact(4)
            .map(|c| {
                let q = i32::from_le_bytes(c.try_into().expect("4 bytes"));
                if q < 0 || q as usize >= self.p {
                    Err(io_err(
                        &self.path,
                        format!(
                            "image {index}: pixel {q} is outside the {}-pixel image",
                            self.p
                        ),
                    ))
                } else {
                    Ok(q as u32)
                }
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(Some)
    }
}
