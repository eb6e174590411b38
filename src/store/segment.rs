//! One segment file: `n` records as safetensors tensors (schema in the module doc of
//! [`crate::store`]), encoded in one go and decoded one row at a time.
//!
//! Decoding goes through [`Source`], so the same code reads one row of a file with a
//! few positioned reads (O(1) lookup, no full parse) or every row of a segment that
//! was read whole (iteration, verification).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, View};

use super::meta::StoreMeta;
use super::StoreError;
use crate::sis::{ImageSis, SisCollection};

/// Value of `__metadata__["format"]` in every segment.
pub const SEGMENT_FORMAT: &str = "overinterp-sis-store";

/// Largest safetensors header we accept (the crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Most BackSelect steps whose `removal_step` (0..steps) fits in U16 (format 2).
pub const U16_STEPS: usize = 1 << 16;

/// dtype of `removal_step` in a store of `meta`'s format and size: U16 when the
/// steps fit (format 2), I32 otherwise and in format 1.
pub fn removal_step_dtype(meta: &StoreMeta) -> Dtype {
    if meta.format_version >= 2 && meta.steps() <= U16_STEPS {
        Dtype::U16
    } else {
        Dtype::I32
    }
}

/// dtype of `rank_in_block` (format 2, `k > 1` only): the smallest of U8, U16, I32
/// that holds `0..k`. `None`: the store has no such tensor.
pub fn rank_dtype(meta: &StoreMeta) -> Option<Dtype> {
    let k = meta.k();
    match () {
        _ if meta.format_version < 2 || k <= 1 => None,
        _ if k <= 1 << 8 => Some(Dtype::U8),
        _ if k <= 1 << 16 => Some(Dtype::U16),
        _ => Some(Dtype::I32),
    }
}

/// A tensor of small non-negative integers in `dtype` (U8, U16 or I32).
fn uints(dtype: Dtype, shape: Vec<usize>, values: impl IntoIterator<Item = u32>) -> Raw {
    match dtype {
        Dtype::U8 => raw(dtype, shape, values, |v: u32| [v as u8]),
        Dtype::U16 => raw(dtype, shape, values, |v: u32| (v as u16).to_le_bytes()),
        _ => raw(Dtype::I32, shape, values, |v: u32| (v as i32).to_le_bytes()),
    }
}

/// A tensor to serialize: owned little-endian bytes.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw<T: Copy, const N: usize>(
    dtype: Dtype,
    shape: Vec<usize>,
    values: impl IntoIterator<Item = T>,
    to_le: impl Fn(T) -> [u8; N],
) -> Raw {
    let mut data = Vec::new();
    for v in values {
        data.extend_from_slice(&to_le(v));
    }
    Raw { dtype, shape, data }
}

/// Serializes records into one segment file's bytes.
///
/// `records` must be sorted by index, validated against `meta`, and carry exactly one
/// collection per meta threshold, in meta order (the writer normalizes them). Writes
/// the layout of `meta.format_version` (the writer only creates the current one).
pub(crate) fn encode(records: &[ImageSis], meta: &StoreMeta) -> Result<Vec<u8>, StoreError> {
    let n = records.len();
    let t = meta.thresholds.len();
    let mut collection_offsets = Vec::with_capacity(n * t + 1);
    let mut sis_offsets = vec![0i64];
    let mut sis_pixels: Vec<i32> = Vec::new();
    collection_offsets.push(0i64);
    for r in records {
        for c in &r.collections {
            for sis in &c.sis {
                sis_pixels.extend(sis.iter().map(|&p| p as i32));
                sis_offsets.push(sis_pixels.len() as i64);
            }
            collection_offsets.push(sis_offsets.len() as i64 - 1);
        }
    }
    let p = meta.pixels();
    let (h, w) = (meta.height as usize, meta.width as usize);
    let i64le = |v: i64| v.to_le_bytes();
    let i32le = |v: i32| v.to_le_bytes();
    let f32le = |v: f32| v.to_le_bytes();
    let tensors: Vec<(&str, Raw)> = vec![
        (
            "index",
            raw(
                Dtype::I64,
                vec![n],
                records.iter().map(|r| r.index as i64),
                i64le,
            ),
        ),
        (
            "label",
            raw(Dtype::I64, vec![n], records.iter().map(|r| r.label), i64le),
        ),
        (
            "predicted",
            raw(
                Dtype::I64,
                vec![n],
                records.iter().map(|r| r.predicted),
                i64le,
            ),
        ),
        (
            "confidence",
            raw(
                Dtype::F32,
                vec![n],
                records.iter().map(|r| r.confidence),
                f32le,
            ),
        ),
        (
            "removal_step",
            uints(
                removal_step_dtype(meta),
                vec![n, h, w],
                records.iter().flat_map(|r| r.removal_step.iter().copied()),
            ),
        ),
        (
            "confidence_history",
            raw(
                Dtype::F32,
                vec![n, meta.steps()],
                records
                    .iter()
                    .flat_map(|r| r.confidence_history.iter().copied()),
                f32le,
            ),
        ),
        (
            "thresholds",
            raw(Dtype::F32, vec![t], meta.thresholds.iter().copied(), f32le),
        ),
        (
            "sis_collection_offsets",
            raw(
                Dtype::I64,
                vec![collection_offsets.len()],
                collection_offsets,
                i64le,
            ),
        ),
        (
            "sis_offsets",
            raw(Dtype::I64, vec![sis_offsets.len()], sis_offsets, i64le),
        ),
        (
            "sis_pixels",
            raw(Dtype::I32, vec![sis_pixels.len()], sis_pixels, i32le),
        ),
    ];
    let mut tensors = tensors;
    if let Some(dtype) = rank_dtype(meta) {
        // normalize_record gave every record of a k > 1 store p ranks.
        tensors.push((
            "rank_in_block",
            uints(
                dtype,
                vec![n, h, w],
                records.iter().flat_map(|r| r.rank_in_block.iter().copied()),
            ),
        ));
    }
    debug_assert!(records.iter().all(|r| r.removal_step.len() == p));
    let mut info: HashMap<String, String> = [
        ("format", SEGMENT_FORMAT.to_string()),
        ("format_version", meta.format_version.to_string()),
        ("height", meta.height.to_string()),
        ("width", meta.width.to_string()),
        ("steps", meta.steps().to_string()),
        ("method", super::meta::method_name(meta.method)),
        ("k", meta.k().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if meta.format_version >= 2 {
        info.insert("objective".into(), meta.objective.to_string());
        info.insert("written_by".into(), env!("CARGO_PKG_VERSION").into());
    }
    safetensors::serialize(tensors.iter().map(|(k, v)| (*k, v)), &Some(info)).map_err(|e| {
        StoreError::InvalidRecord {
            index: records.first().map_or(0, |r| r.index),
            reason: format!("could not serialize the segment: {e}"),
        }
    })
}

/// Where segment bytes come from: a file (positioned reads) or a buffer.
pub(crate) trait Source {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>>;
    fn total_len(&self) -> u64;
}

impl Source for [u8] {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        start
            .checked_add(len)
            .and_then(|end| self.get(start..end))
            .map(Cow::Borrowed)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
    fn total_len(&self) -> u64 {
        self.len() as u64
    }
}

/// A file and its length at open.
pub(crate) struct FileSource {
    pub file: File,
    pub len: u64,
}

impl Source for FileSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Cow::Owned(buf))
    }
    fn total_len(&self) -> u64 {
        self.len
    }
}

/// Position of one tensor's bytes in the file.
#[derive(Clone, Debug)]
struct Slot {
    /// Absolute file offset of element 0.
    start: u64,
    /// Number of elements.
    len: u64,
    /// Element type.
    dtype: Dtype,
}

/// A segment's parsed header: where each tensor lies. Enough to read any row.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    rows: u64,
    height: u32,
    width: u32,
    pixels: u64,
    steps: u64,
    /// Pixels per step: every rank is below it.
    k: u64,
    thresholds: Vec<f32>,
    index: Slot,
    label: Slot,
    predicted: Slot,
    confidence: Slot,
    removal_step: Slot,
    /// Format 2 with `k > 1` only.
    rank_in_block: Option<Slot>,
    confidence_history: Slot,
    collection_offsets: Slot,
    sis_offsets: Slot,
    sis_pixels: Slot,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::SegmentCorrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_err(path: &Path, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        corrupt(path, "file ends inside a tensor (truncated)")
    } else {
        StoreError::io(path, e)
    }
}

/// Reads and checks a segment header against what the manifest and meta say the
/// segment holds (`rows` records of `meta`'s shape). Reads only the header.
pub(crate) fn parse_layout(
    src: &(impl Source + ?Sized),
    path: &Path,
    rows: u64,
    meta: &StoreMeta,
) -> Result<Layout, StoreError> {
    let file_len = src.total_len();
    let n_bytes = src.read_at(0, 8).map_err(|e| read_err(path, e))?;
    let header_len = u64::from_le_bytes(n_bytes[..8].try_into().unwrap_or([0; 8]));
    if header_len > MAX_HEADER || header_len + 8 > file_len {
        return Err(corrupt(
            path,
            format!("header length {header_len} does not fit in a file of {file_len} bytes"),
        ));
    }
    let header = src
        .read_at(8, header_len as usize)
        .map_err(|e| read_err(path, e))?;
    let parsed: Metadata = serde_json::from_slice(&header)
        .map_err(|e| corrupt(path, format!("header is not safetensors JSON: {e}")))?;
    let data_start = 8 + header_len;
    let infos = parsed.tensors();
    // The byte buffer must be covered exactly, without holes or overlaps.
    let mut spans: Vec<(usize, usize)> = infos.values().map(|i| i.data_offsets).collect();
    spans.sort_unstable();
    let mut end = 0usize;
    for (s, e) in spans {
        if s != end || e < s {
            return Err(corrupt(path, "tensor byte ranges overlap or leave holes"));
        }
        end = e;
    }
    if data_start + end as u64 != file_len {
        return Err(corrupt(
            path,
            format!(
                "tensors end at byte {} but the file has {file_len} bytes",
                data_start + end as u64
            ),
        ));
    }
    match parsed.metadata().as_ref().and_then(|m| m.get("format")) {
        Some(f) if f == SEGMENT_FORMAT => {}
        _ => {
            return Err(corrupt(
                path,
                format!("not an {SEGMENT_FORMAT} segment (__metadata__.format)"),
            ))
        }
    }
    let t = meta.thresholds.len() as u64;
    let slot = |name: &str, dtype: Dtype, shape: Option<&[u64]>| -> Result<Slot, StoreError> {
        let info = infos
            .get(name)
            .ok_or_else(|| corrupt(path, format!("tensor `{name}` is missing")))?;
        if info.dtype != dtype {
            return Err(corrupt(
                path,
                format!("tensor `{name}` is {:?}, expected {dtype:?}", info.dtype),
            ));
        }
        let got: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        // Checked: a damaged header must give an error, not an overflow.
        let numel = got.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let nbytes = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        let numel = numel.unwrap_or(u64::MAX);
        match shape {
            Some(want) if got != want => Err(corrupt(
                path,
                format!("tensor `{name}` has shape {got:?}, expected {want:?}"),
            )),
            None if got.len() != 1 => Err(corrupt(
                path,
                format!("tensor `{name}` has shape {got:?}, expected one dimension"),
            )),
            _ if nbytes != Some((info.data_offsets.1 - info.data_offsets.0) as u64) => {
                Err(corrupt(
                    path,
                    format!("tensor `{name}` size disagrees with its shape"),
                ))
            }
            _ => Ok(Slot {
                start: data_start + info.data_offsets.0 as u64,
                len: numel,
                dtype,
            }),
        }
    };
    let (h, w) = (meta.height as u64, meta.width as u64);
    let steps = meta.steps() as u64;
    let layout = Layout {
        rows,
        height: meta.height,
        width: meta.width,
        pixels: h * w,
        steps,
        k: u64::from(meta.k()),
        thresholds: meta.thresholds.clone(),
        index: slot("index", Dtype::I64, Some(&[rows]))?,
        label: slot("label", Dtype::I64, Some(&[rows]))?,
        predicted: slot("predicted", Dtype::I64, Some(&[rows]))?,
        confidence: slot("confidence", Dtype::F32, Some(&[rows]))?,
        removal_step: slot(
            "removal_step",
            removal_step_dtype(meta),
            Some(&[rows, h, w]),
        )?,
        rank_in_block: match rank_dtype(meta) {
            Some(dtype) => Some(slot("rank_in_block", dtype, Some(&[rows, h, w]))?),
            None => None,
        },
        confidence_history: slot("confidence_history", Dtype::F32, Some(&[rows, steps]))?,
        collection_offsets: slot("sis_collection_offsets", Dtype::I64, Some(&[rows * t + 1]))?,
        sis_offsets: slot("sis_offsets", Dtype::I64, None)?,
        sis_pixels: slot("sis_pixels", Dtype::I32, None)?,
    };
    let thresholds = slot("thresholds", Dtype::F32, Some(&[t]))?;
    let stored = read_f32s(src, path, &thresholds, 0, t as usize)?;
    if stored
        .iter()
        .zip(&meta.thresholds)
        .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(corrupt(
            path,
            format!(
                "thresholds {stored:?} differ from the store's {:?}",
                meta.thresholds
            ),
        ));
    }
    if layout.sis_offsets.len == 0 {
        return Err(corrupt(path, "tensor `sis_offsets` is empty"));
    }
    Ok(layout)
}

fn read_elems<const N: usize>(
    src: &(impl Source + ?Sized),
    path: &Path,
    slot: &Slot,
    first: u64,
    count: usize,
) -> Result<Vec<[u8; N]>, StoreError> {
    if first + count as u64 > slot.len {
        return Err(corrupt(
            path,
            format!(
                "offset {first}+{count} lies outside a tensor of {} elements",
                slot.len
            ),
        ));
    }
    let bytes = src
        .read_at(slot.start + first * N as u64, count * N)
        .map_err(|e| read_err(path, e))?;
    Ok(bytes
        .chunks_exact(N)
        .map(|c| c.try_into().unwrap_or([0; N]))
        .collect())
}

fn read_i64s(
    src: &(impl Source + ?Sized),
    path: &Path,
    slot: &Slot,
    first: u64,
    count: usize,
) -> Result<Vec<i64>, StoreError> {
    Ok(read_elems::<8>(src, path, slot, first, count)?
        .into_iter()
        .map(i64::from_le_bytes)
        .collect())
}

fn read_i32s(
    src: &(impl Source + ?Sized),
    path: &Path,
    slot: &Slot,
    first: u64,
    count: usize,
) -> Result<Vec<i32>, StoreError> {
    Ok(read_elems::<4>(src, path, slot, first, count)?
        .into_iter()
        .map(i32::from_le_bytes)
        .collect())
}

fn read_f32s(
    src: &(impl Source + ?Sized),
    path: &Path,
    slot: &Slot,
    first: u64,
    count: usize,
) -> Result<Vec<f32>, StoreError> {
    Ok(read_elems::<4>(src, path, slot, first, count)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect())
}

/// `count` elements of an integer tensor stored as U8, U16 or I32, widened to i64.
fn read_ints(
    src: &(impl Source + ?Sized),
    path: &Path,
    slot: &Slot,
    first: u64,
    count: usize,
) -> Result<Vec<i64>, StoreError> {
    Ok(match slot.dtype {
        Dtype::U8 => read_elems::<1>(src, path, slot, first, count)?
            .into_iter()
            .map(|b| i64::from(b[0]))
            .collect(),
        Dtype::U16 => read_elems::<2>(src, path, slot, first, count)?
            .into_iter()
            .map(|b| i64::from(u16::from_le_bytes(b)))
            .collect(),
        _ => read_i32s(src, path, slot, first, count)?
            .into_iter()
            .map(i64::from)
            .collect(),
    })
}

/// Converts stored i32 values to `u32`s below `bound`, or names the tensor at fault.
fn to_u32_below<T: Copy + std::fmt::Display + TryInto<u32>>(
    values: Vec<T>,
    bound: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u32>, StoreError> {
    values
        .into_iter()
        .map(|v| match v.try_into() {
            Ok(u) if u64::from(u) < bound => Ok(u),
            _ => Err(corrupt(
                path,
                format!("{what} value {v} is outside 0..{bound}"),
            )),
        })
        .collect()
}

/// Decodes the image index stored in `row` (one 8-byte read).
pub(crate) fn read_index(
    src: &(impl Source + ?Sized),
    path: &Path,
    layout: &Layout,
    row: u64,
) -> Result<u64, StoreError> {
    let v = read_i64s(src, path, &layout.index, row, 1)?[0];
    u64::try_from(v).map_err(|_| corrupt(path, format!("row {row} has negative index {v}")))
}

/// Decodes `row` into a record with a handful of positioned reads.
pub(crate) fn read_row(
    src: &(impl Source + ?Sized),
    path: &Path,
    layout: &Layout,
    row: u64,
) -> Result<ImageSis, StoreError> {
    if row >= layout.rows {
        return Err(corrupt(
            path,
            format!("row {row} is beyond its {} rows", layout.rows),
        ));
    }
    let p = layout.pixels;
    let s = layout.steps;
    let t = layout.thresholds.len() as u64;
    let index = read_index(src, path, layout, row)?;
    let label = read_i64s(src, path, &layout.label, row, 1)?[0];
    let predicted = read_i64s(src, path, &layout.predicted, row, 1)?[0];
    let confidence = read_f32s(src, path, &layout.confidence, row, 1)?[0];
    let removal_step = to_u32_below(
        read_ints(src, path, &layout.removal_step, row * p, p as usize)?,
        s,
        path,
        "removal_step",
    )?;
    let rank_in_block = match &layout.rank_in_block {
        Some(slot) => to_u32_below(
            read_ints(src, path, slot, row * p, p as usize)?,
            layout.k,
            path,
            "rank_in_block",
        )?,
        None => Vec::new(),
    };
    let confidence_history = read_f32s(src, path, &layout.confidence_history, row * s, s as usize)?;
    // Collections of this row: entries row*T ..= row*T + T of the offsets table.
    let co = read_i64s(
        src,
        path,
        &layout.collection_offsets,
        row * t,
        t as usize + 1,
    )?;
    let offset = |v: i64, what: &str| -> Result<u64, StoreError> {
        u64::try_from(v).map_err(|_| corrupt(path, format!("negative {what} {v}")))
    };
    let first_sis = offset(co[0], "sis_collection_offsets")?;
    let last_sis = offset(co[t as usize], "sis_collection_offsets")?;
    if last_sis < first_sis {
        return Err(corrupt(path, "sis_collection_offsets decrease"));
    }
    let so = read_i64s(
        src,
        path,
        &layout.sis_offsets,
        first_sis,
        (last_sis - first_sis) as usize + 1,
    )?;
    let first_pixel = offset(so[0], "sis_offsets")?;
    let last_pixel = offset(so[so.len() - 1], "sis_offsets")?;
    if last_pixel < first_pixel {
        return Err(corrupt(path, "sis_offsets decrease"));
    }
    let pixels = to_u32_below(
        read_i32s(
            src,
            path,
            &layout.sis_pixels,
            first_pixel,
            (last_pixel - first_pixel) as usize,
        )?,
        p,
        path,
        "sis_pixels",
    )?;
    // Offsets relative to this row's first SIS and first pixel; every one is checked,
    // so a damaged table gives an error, never a panic or a wrong slice.
    let rel = |v: i64, base: u64, bound: usize, what: &str| -> Result<usize, StoreError> {
        u64::try_from(v)
            .ok()
            .and_then(|v| v.checked_sub(base))
            .map(|v| v as usize)
            .filter(|&v| v <= bound)
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("{what} value {v} is out of range for row {row}"),
                )
            })
    };
    let mut collections = Vec::with_capacity(t as usize);
    for (k, &threshold) in layout.thresholds.iter().enumerate() {
        let a = rel(co[k], first_sis, so.len() - 1, "sis_collection_offsets")?;
        let b = rel(co[k + 1], first_sis, so.len() - 1, "sis_collection_offsets")?;
        if b < a {
            return Err(corrupt(
                path,
                format!("sis_collection_offsets decrease at row {row}"),
            ));
        }
        let mut sis = Vec::with_capacity(b - a);
        for j in a..b {
            let x = rel(so[j], first_pixel, pixels.len(), "sis_offsets")?;
            let y = rel(so[j + 1], first_pixel, pixels.len(), "sis_offsets")?;
            if y < x {
                return Err(corrupt(path, format!("sis_offsets decrease at row {row}")));
            }
            sis.push(pixels[x..y].to_vec());
        }
        collections.push(SisCollection { threshold, sis });
    }
    Ok(ImageSis {
        index,
        label,
        predicted,
        confidence,
        height: layout.height,
        width: layout.width,
        removal_step,
        rank_in_block,
        confidence_history,
        collections,
    })
}
