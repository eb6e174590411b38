//! Writing `.npz` files (a zip of `.npy` arrays) that `numpy.load` reads.

use std::io::Write;
use std::path::Path;

use super::SubsetError;

/// One array of an `.npz`: numpy dtype string (`|u1`, `<i8`, `<f4`, `<u4`), shape
/// and little-endian bytes.
pub struct NpyArray {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl NpyArray {
    pub fn u8(name: &str, shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            dtype: "|u1",
            shape,
            bytes: data,
        }
    }
    pub fn i64(name: &str, shape: Vec<usize>, data: &[i64]) -> Self {
        Self {
            name: name.into(),
            dtype: "<i8",
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: "<f4",
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// The `.npy` version 1.0 encoding of an array: magic, header padded so the data
/// starts on a 64-byte boundary, then the data in C order.
pub fn npy_bytes(array: &NpyArray) -> Vec<u8> {
    let shape = match array.shape.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        array.dtype
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.bytes.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&array.bytes);
    out
}

/// Writes `arrays` to `path` as an uncompressed `.npz` (temp file + rename, so a
/// crash never leaves a half-written file under the final name).
pub fn write_npz(path: &Path, arrays: &[NpyArray]) -> Result<(), SubsetError> {
    let io = |e: std::io::Error| SubsetError::Invalid(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("npz.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for array in arrays {
        zip.start_file(format!("{}.npy", array.name), options)
            .map_err(|e| SubsetError::Invalid(format!("{}: {e}", path.display())))?;
        zip.write_all(&npy_bytes(array)).map_err(io)?;
    }
    let file = zip
        .finish()
        .map_err(|e| SubsetError::Invalid(format!("{}: {e}", path.display())))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
