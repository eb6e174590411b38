//! The indexed SIS result store: one directory per (model, dataset split, method,
//! parameters), holding every image's [`ImageSis`] exactly once, durably, readable
//! from Python.
//!
//! # Layout of a store directory
//!
//! ```text
//! STORE/
//!   meta.json                     StoreMeta: what the store was made from (written once)
//!   manifest.jsonl                one line per durable segment (append-only)
//!   seg-00000001.safetensors      a segment: n records as tensors (immutable once listed)
//!   seg-00000002.safetensors
//!   writer.lock                   held (flock) by the one StoreWriter at a time
//! ```
//!
//! # Durability protocol
//!
//! [`StoreWriter::append`] buffers; [`StoreWriter::flush`] writes the buffered records
//! as one segment to `seg-N.safetensors.tmp`, fsyncs it, renames it into place, fsyncs
//! the directory, then appends the segment's manifest line and fsyncs the manifest.
//! Only then does `flush` return `Ok` — the acknowledgement. A process killed at any
//! moment therefore leaves either a listed, complete segment, or files that no
//! complete manifest line names (a `*.tmp`, an unlisted segment, a torn last manifest
//! line): those were never acknowledged, readers ignore them, and the next writer
//! removes them. No partial record is ever visible.
//!
//! # Manifest line
//!
//! ```json
//! {"segment":"seg-00000001.safetensors","count":32,"bytes":270536,
//!  "sha256":"<hex of the whole segment file>","indices":[[0,32]],"check":"<hex>"}
//! ```
//!
//! `indices` are sorted half-open ranges `[start, end)`; a segment's rows hold these
//! indices in ascending order. `check` is the sha256 of the line's other fields as
//! canonical JSON, so a damaged line is detected even if it still parses.
//!
//! A torn last line (no trailing `\n`; only possible when a writer died before its
//! fsync, so never acknowledged) is **tolerated and reported**
//! ([`StoreReader::torn_manifest_bytes`], [`Recovery`]). Any other bad line, a missing
//! or wrongly sized segment, or a segment whose sha256 differs is an **error** naming
//! the file (and line); nothing is skipped silently.
//!
//! # Segment schema (safetensors, little-endian, C order)
//!
//! `n` = records in the segment, `H×W` = image shape, `p = H·W`, `S = ⌈p/k⌉` BackSelect
//! steps (`k = 1` for exact), `T` = number of thresholds in `meta.json`.
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `index` | I64 | `[n]` | image index in the split, ascending |
//! | `label` | I64 | `[n]` | true label |
//! | `predicted` | I64 | `[n]` | predicted class on the full image (the SIS target) |
//! | `confidence` | F32 | `[n]` | `f(x)`, softmax probability of `predicted` |
//! | `removal_step` | I32 | `[n, H, W]` | BackSelect step at which each pixel was removed (0 = first) |
//! | `confidence_history` | F32 | `[n, S]` | `f` once the pixels of steps `0..=s` are masked |
//! | `thresholds` | F32 | `[T]` | the thresholds τ, as in `meta.json` |
//! | `sis_collection_offsets` | I64 | `[n·T + 1]` | collection `c = row·T + t` is SISes `[co[c], co[c+1])` |
//! | `sis_offsets` | I64 | `[num_sis + 1]` | SIS `s` is `sis_pixels[so[s]:so[s+1]]` |
//! | `sis_pixels` | I32 | `[total]` | pixel indices (row-major `y·W + x`), each SIS sorted |
//!
//! `__metadata__` carries `format = overinterp-sis-store`, `format_version`, `height`,
//! `width`, `steps`, `method`, `k`. Signed integer types are used because torch and
//! numpy index with them; every stored value fits.
//!
//! Every record carries exactly one collection per store threshold, in `meta.json`
//! order; a collection the engine did not report (image below τ) is stored as an empty
//! one. That is the only way a read-back record can differ from the appended one.
//!
//! # Derived data (no model needed)
//!
//! * **Removal order**: pixels sorted by `(removal_step, pixel index)` — within a
//!   Batched Gradient block, ascending pixel index ([`removal_order`]).
//! * **SIS for any τ**: [`crate::sis::find_sis`] on the record
//!   ([`StoreReader::sis_for_threshold`]).
//! * **Backselect subset of fraction q**: the last `⌈q·p⌉` pixels of the removal
//!   order ([`top_fraction`], [`StoreReader::top_fraction_pixels`]).
//!
//! Reading from Python with numpy only: see `src/store/README.md` (that snippet is run
//! by the tests).

mod derive;
mod manifest;
mod meta;
mod reader;
mod segment;
mod sink;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use derive::{removal_order, subset_size, top_fraction};
pub use manifest::{ManifestEntry, MANIFEST_FILE};
pub use meta::{Provenance, StoreMeta, FORMAT_VERSION, READABLE_VERSIONS};
pub use reader::{StoreIter, StoreReader};
pub use segment::{rank_dtype, removal_step_dtype, SEGMENT_FORMAT, U16_STEPS};
pub use writer::{decode_payload, encode_payload, Appended, Recovery, StoreWriter};

use crate::sis::ImageSis;

/// File name of the store's meta inside its directory.
pub const META_FILE: &str = "meta.json";
/// File name of the writer's lock inside a store directory.
pub const LOCK_FILE: &str = "writer.lock";

/// How much of a store to check when opening it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Check every segment's sha256 and index tensor at open: cost proportional to the
    /// store's size (≈ 1 s per 400 MB).
    Full,
    /// At open, check only that every listed segment exists with the listed size; a
    /// segment's sha256 is checked the first time a reader reads from it, and on every
    /// full-segment read (iteration). A writer never reads segments, so for it this
    /// is the size check only.
    #[default]
    OnRead,
}

/// Errors of the result store. Each names the store, file, line or image at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed on a store file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The requested [`StoreMeta`] is not self-consistent.
    #[error("invalid store parameters: {reason}")]
    InvalidMeta {
        /// What is wrong.
        reason: String,
    },
    /// `meta.json` does not parse.
    #[error("{}: not a valid store meta ({reason}); the store is damaged or not a result store", .path.display())]
    BadMeta {
        /// The meta file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The store was written in another layout version.
    #[error(
        "{}: store format version {found}, but this build reads versions {:?}; \
         use the overinterp version that wrote it, or recompute into a new directory",
        .path.display(), READABLE_VERSIONS
    )]
    FormatVersion {
        /// The meta file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The store exists in an older format: readable, but not to be continued.
    #[error(
        "store {} has format version {found} (BackSelect objective {objective}); this \
         build reads it but writes only format {} (objective and in-block ranks \
         recorded), and results of the two must not mix in one store. Write the new \
         results into another directory",
        .dir.display(), FORMAT_VERSION
    )]
    OldFormat {
        /// The store directory.
        dir: PathBuf,
        /// Its format version.
        found: u32,
        /// The objective its records were made with.
        objective: crate::sis::Objective,
    },
    /// The store exists and was made from something else than what was asked for.
    #[error(
        "store {} was made by {}; you asked for {} (they differ in: {}). Use another \
         output directory, or the store's own parameters to continue it",
        .dir.display(), .existing.describe(), .requested.describe(), .fields.join(", ")
    )]
    MetaMismatch {
        /// The store directory.
        dir: PathBuf,
        /// What the store holds.
        existing: Box<StoreMeta>,
        /// What the caller asked for.
        requested: Box<StoreMeta>,
        /// Names of the differing fields.
        fields: Vec<&'static str>,
    },
    /// A directory that holds other files but no `meta.json`.
    #[error(
        "{} is not empty and has no {META_FILE}: it is not a result store; choose an empty \
         or new output directory",
        .dir.display()
    )]
    NotAStore {
        /// The directory.
        dir: PathBuf,
    },
    /// Nothing to read: no `meta.json`.
    #[error("{}: no result store here (no {META_FILE})", .dir.display())]
    NoStore {
        /// The directory.
        dir: PathBuf,
    },
    /// Another writer holds the store.
    #[error(
        "{}: another process is writing to this store; wait for it to finish or stop it",
        .path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A record handed to the writer does not fit the store.
    #[error("record for image {index}: {reason}")]
    InvalidRecord {
        /// The record's image index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A complete manifest line that is not a valid entry.
    #[error(
        "{} line {line}: corrupt manifest entry: {reason}. The store is damaged; restore \
         the file from a backup or recompute into a new directory",
        .path.display()
    )]
    ManifestCorrupt {
        /// The manifest.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A segment's sha256 differs from its manifest entry.
    #[error(
        "{}: checksum mismatch (manifest: sha256 {expected}, file: {actual}); the segment \
         is corrupt. Restore it from a backup, or remove its manifest line and the file \
         and rerun to recompute its images",
        .path.display()
    )]
    Checksum {
        /// The segment file.
        path: PathBuf,
        /// sha256 from the manifest.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
    /// A segment is missing, truncated or does not decode as the schema says.
    #[error("{}: corrupt segment: {reason}", .path.display())]
    SegmentCorrupt {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest lists one image twice.
    #[error(
        "image {index} is listed in two segments, {} and {}; the manifest is damaged",
        .first.display(), .second.display()
    )]
    DuplicateIndex {
        /// The image index.
        index: u64,
        /// The first segment holding it.
        first: PathBuf,
        /// The second one.
        second: PathBuf,
    },
    /// A lookup of an image that the store does not hold.
    #[error("image {index} is not in the store {}", .dir.display())]
    NotInStore {
        /// The store directory.
        dir: PathBuf,
        /// The image index.
        index: u64,
    },
    /// A failed flush could not restore the manifest; this writer stops accepting work.
    #[error(
        "{}: an earlier write failed and the manifest could not be restored; reopen the \
         store (unacknowledged records will be recomputed)",
        .dir.display()
    )]
    Poisoned {
        /// The store directory.
        dir: PathBuf,
    },
    /// A cluster payload that is not an encoded [`ImageSis`].
    #[error("payload for image {index}: {reason}")]
    BadPayload {
        /// The index the payload was delivered for.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A caller argument out of range (e.g. a subset fraction outside `[0, 1]`).
    #[error("{0}")]
    InvalidArgument(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// fsyncs a directory, so that a rename or create inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Normalizes and checks a record against a store's meta: exactly one collection per
/// store threshold, in store order (missing ones become empty), and every array of
/// the right length with values in range.
pub(crate) fn normalize_record(
    mut rec: ImageSis,
    meta: &StoreMeta,
) -> Result<ImageSis, StoreError> {
    let index = rec.index;
    let bad = |reason: String| Err(StoreError::InvalidRecord { index, reason });
    if index >= meta.num_images {
        return bad(format!(
            "index is beyond the split's {} images",
            meta.num_images
        ));
    }
    if (rec.height, rec.width) != (meta.height, meta.width) {
        return bad(format!(
            "image is {}x{}, the store holds {}x{}",
            rec.height, rec.width, meta.height, meta.width
        ));
    }
    let p = meta.pixels();
    let steps = meta.steps();
    if rec.removal_step.len() != p {
        return bad(format!(
            "removal_step has {} entries for {p} pixels",
            rec.removal_step.len()
        ));
    }
    if let Some(s) = rec.removal_step.iter().find(|&&s| s as usize >= steps) {
        return bad(format!(
            "removal_step {s} is beyond the {steps} steps of {} on {p} pixels",
            meta::method_name(meta.method)
        ));
    }
    check_rank_in_block(&mut rec, meta)
        .map_err(|reason| StoreError::InvalidRecord { index, reason })?;
    if rec.confidence_history.len() != steps {
        return bad(format!(
            "confidence_history has {} entries, the store expects {steps} (⌈{p}/{}⌉)",
            rec.confidence_history.len(),
            meta.k()
        ));
    }
    let mut collections = Vec::with_capacity(meta.thresholds.len());
    for &tau in &meta.thresholds {
        let mut found = rec
            .collections
            .iter()
            .filter(|c| c.threshold.to_bits() == tau.to_bits());
        let c = found.next();
        if found.next().is_some() {
            return bad(format!("two collections for threshold {tau}"));
        }
        collections.push(crate::sis::SisCollection {
            threshold: tau,
            sis: c.map(|c| c.sis.clone()).unwrap_or_default(),
        });
    }
    if let Some(c) = rec.collections.iter().find(|c| {
        !meta
            .thresholds
            .iter()
            .any(|t| t.to_bits() == c.threshold.to_bits())
    }) {
        return bad(format!(
            "collection for threshold {} but the store's thresholds are {:?}",
            c.threshold, meta.thresholds
        ));
    }
    for c in &collections {
        for sis in &c.sis {
            if let Some(q) = sis.iter().find(|&&q| q as usize >= p) {
                return bad(format!(
                    "SIS at threshold {} names pixel {q} of {p}",
                    c.threshold
                ));
            }
        }
    }
    rec.collections = collections;
    Ok(rec)
}

/// A gradient store (`k > 1`) needs every pixel's rank inside its block, and inside
/// each block the ranks must be `0..block size`, each once; with `k = 1` every block
/// has one pixel and the rank is dropped. Call after `removal_step` is checked.
fn check_rank_in_block(rec: &mut ImageSis, meta: &StoreMeta) -> Result<(), String> {
    let p = meta.pixels();
    if meta.k() <= 1 {
        if rec.rank_in_block.iter().any(|&r| r != 0) {
            return Err("rank_in_block is nonzero but every block has one pixel".into());
        }
        rec.rank_in_block.clear();
        return Ok(());
    }
    if rec.rank_in_block.len() != p {
        return Err(format!(
            "rank_in_block has {} entries for {p} pixels (a store with k = {} orders \
             every block)",
            rec.rank_in_block.len(),
            meta.k()
        ));
    }
    // starts[s]: first position of step s's block in the removal order.
    let mut starts = vec![0usize; meta.steps() + 1];
    for &s in &rec.removal_step {
        starts[s as usize + 1] += 1;
    }
    for s in 0..meta.steps() {
        starts[s + 1] += starts[s];
    }
    let mut seen = vec![false; p];
    for (q, (&s, &r)) in rec.removal_step.iter().zip(&rec.rank_in_block).enumerate() {
        let (first, end) = (starts[s as usize], starts[s as usize + 1]);
        let slot = first.saturating_add(r as usize);
        if slot >= end || seen[slot] {
            return Err(format!(
                "pixel {q}: rank_in_block {r} is not a free rank of step {s}'s block of {}",
                end - first
            ));
        }
        seen[slot] = true;
    }
    Ok(())
}
