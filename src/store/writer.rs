//! [`StoreWriter`]: creates or resumes a store and appends records durably, each
//! image exactly once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{read_manifest, segment_name, segment_number, ManifestEntry, MANIFEST_FILE};
use super::meta::StoreMeta;
use super::segment::{self, FileSource};
use super::{normalize_record, sync_dir, StoreError, Verify, LOCK_FILE, META_FILE};
use crate::sis::ImageSis;

/// What [`StoreWriter::append`] did with a record.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Buffered; durable after the next successful [`StoreWriter::flush`].
    Buffered,
    /// Ignored: the store already holds this index durably.
    AlreadyDurable,
    /// Ignored: this index is already buffered (the first copy wins).
    AlreadyPending,
}

impl Appended {
    /// Whether the record was taken (not a duplicate).
    pub fn is_new(self) -> bool {
        self == Appended::Buffered
    }
}

/// What opening the store cleaned up after an earlier crash. None of it was ever
/// acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn last manifest line that were cut off.
    pub torn_manifest_bytes: u64,
    /// Temporary files and unlisted segments that were removed.
    pub removed: Vec<PathBuf>,
}

impl Recovery {
    /// Whether there was anything to clean up.
    pub fn is_empty(&self) -> bool {
        self.torn_manifest_bytes == 0 && self.removed.is_empty()
    }
}

/// A bitset over image indices `0..num_images`: the durable ones.
#[derive(Clone, Debug)]
struct IndexSet {
    words: Vec<u64>,
    count: u64,
}

impl IndexSet {
    fn new(n: u64) -> Self {
        IndexSet {
            words: vec![0; n.div_ceil(64) as usize],
            count: 0,
        }
    }
    fn contains(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Inserts `i` (which must be in range); false if it was already there.
    fn insert(&mut self, i: u64) -> bool {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.count += new as u64;
        new
    }
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(k, &w)| {
            (0..64u64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| k as u64 * 64 + b)
        })
    }
}

/// The single writer of a store.
///
/// ```no_run
/// # use overinterp::store::{StoreMeta, StoreWriter};
/// # fn demo(meta: StoreMeta, results: Vec<overinterp::sis::ImageSis>) -> Result<(), overinterp::store::StoreError> {
/// let mut w = StoreWriter::open("runs/sis-resnet20-test", meta)?;
/// for r in results {
///     if !w.is_durable(r.index) {
///         let _ = w.append(r)?;
///     }
///     if w.pending_count() >= 256 {
///         w.flush()?; // after Ok, these records survive any crash
///     }
/// }
/// w.flush()?;
/// # Ok(()) }
/// ```
///
/// Records appended but not flushed are lost if the process dies or the writer is
/// dropped: they were never acknowledged, and a rerun recomputes them.
pub struct StoreWriter {
    /// The store directory.
    dir: PathBuf,
    /// What the store was made from.
    meta: StoreMeta,
    /// `manifest.jsonl`, opened for appending.
    manifest: File,
    /// Length of the manifest's complete lines: where a failed append truncates back to.
    manifest_len: u64,
    /// Indices durable in the store.
    durable: IndexSet,
    /// Buffered records by index (sorted, one per index).
    pending: BTreeMap<u64, ImageSis>,
    /// Number of the next segment file.
    next_segment: u64,
    /// Set when a failed flush left the manifest in an unknown state.
    poisoned: bool,
    /// What opening cleaned up.
    recovery: Recovery,
    /// Holds the exclusive lock for the writer's lifetime.
    _lock: File,
}

impl StoreWriter {
    /// Creates the store at `dir` for `meta`, or resumes it if it exists with the
    /// same meta. Segments are checked with [`Verify::OnRead`] (existence and size).
    pub fn open(dir: impl AsRef<Path>, meta: StoreMeta) -> Result<Self, StoreError> {
        Self::open_with(dir, meta, Verify::OnRead)
    }

    /// As [`open`](Self::open), choosing how much to verify.
    ///
    /// Errors, leaving the directory as it was: a different meta
    /// ([`StoreError::MetaMismatch`]), a non-store directory, another writer holding
    /// the lock, a corrupt manifest or segment.
    pub fn open_with(
        dir: impl AsRef<Path>,
        meta: StoreMeta,
        verify: Verify,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        meta.validate()?;
        // Check before creating anything, so a wrong request leaves the store untouched.
        check_existing(&dir, &meta)?;

        let created_dir = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        if created_dir {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(StoreError::io(&lock_path, e)),
        }
        // Under the lock: the meta is ours to create, or must still match.
        let meta_path = dir.join(META_FILE);
        if meta_path.exists() {
            check_existing(&dir, &meta)?;
        } else {
            write_atomically(&dir, META_FILE, &serde_json_pretty(&meta))?;
        }

        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = read_manifest(&manifest_path)?;
        let mut recovery = Recovery::default();
        let mut durable = IndexSet::new(meta.num_images);
        for (k, entry) in manifest.entries.iter().enumerate() {
            check_segment(&dir, entry, &meta, verify)?;
            for i in entry.iter_indices() {
                if i >= meta.num_images {
                    return Err(StoreError::ManifestCorrupt {
                        path: manifest_path.clone(),
                        line: k + 1,
                        reason: format!(
                            "index {i} is beyond the split's {} images",
                            meta.num_images
                        ),
                    });
                }
                if !durable.insert(i) {
                    let first = manifest
                        .entries
                        .iter()
                        .find(|e| e.iter_indices().any(|j| j == i))
                        .map_or_else(|| entry.segment.clone(), |e| e.segment.clone());
                    return Err(StoreError::DuplicateIndex {
                        index: i,
                        first: dir.join(first),
                        second: dir.join(&entry.segment),
                    });
                }
            }
        }

        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&manifest_path)
            .map_err(|e| StoreError::io(&manifest_path, e))?;
        if manifest.torn_tail > 0 {
            tracing::warn!(
                manifest = %manifest_path.display(),
                bytes = manifest.torn_tail,
                "cutting off a torn last manifest line (written by a process that died before acknowledging it)"
            );
            file.set_len(manifest.complete_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(&manifest_path, e))?;
            recovery.torn_manifest_bytes = manifest.torn_tail;
        }
        file.flush()
            .map_err(|e| StoreError::io(&manifest_path, e))?;

        // Remove what no manifest line names: unacknowledged leftovers of a crash.
        let listed: std::collections::HashSet<&str> = manifest
            .entries
            .iter()
            .map(|e| e.segment.as_str())
            .collect();
        let mut next_segment = manifest
            .entries
            .iter()
            .filter_map(|e| segment_number(&e.segment))
            .max()
            .map_or(1, |n| n + 1);
        for item in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let item = item.map_err(|e| StoreError::io(&dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let orphan_segment = segment_number(&name).is_some() && !listed.contains(name.as_str());
            if name.ends_with(".tmp") || orphan_segment {
                let path = item.path();
                tracing::warn!(file = %path.display(), "removing an unacknowledged leftover of an earlier run");
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                recovery.removed.push(path);
            }
            if let Some(n) = segment_number(&name) {
                next_segment = next_segment.max(n + 1);
            }
        }
        // Creating the manifest or removing leftovers changed the directory.
        sync_dir(&dir)?;

        Ok(StoreWriter {
            dir,
            meta,
            manifest: file,
            manifest_len: manifest.complete_len,
            durable,
            pending: BTreeMap::new(),
            next_segment,
            poisoned: false,
            recovery,
            _lock: lock,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the store was made from.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// What opening cleaned up after an earlier crash.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Buffers `rec`, unless its index is already durable or buffered (then it is
    /// ignored and the return value says so). The record is validated against the
    /// store's meta first; its collections are normalized to one per store threshold.
    pub fn append(&mut self, rec: ImageSis) -> Result<Appended, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        let rec = normalize_record(rec, &self.meta)?;
        if self.durable.contains(rec.index) {
            return Ok(Appended::AlreadyDurable);
        }
        if self.pending.contains_key(&rec.index) {
            return Ok(Appended::AlreadyPending);
        }
        self.pending.insert(rec.index, rec);
        Ok(Appended::Buffered)
    }

    /// Writes the buffered records as one segment and makes them durable; returns how
    /// many. After `Ok`, a crash loses none of them. On error nothing buffered is lost
    /// from memory and `flush` may be retried.
    pub fn flush(&mut self) -> Result<usize, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        if self.pending.is_empty() {
            return Ok(0);
        }
        let records: Vec<ImageSis> = self.pending.values().cloned().collect();
        let bytes = segment::encode(&records, &self.meta)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let name = segment_name(self.next_segment);
        // A failed attempt must not reuse the number: its file may linger.
        self.next_segment += 1;
        write_atomically(&self.dir, &name, &bytes)?;

        let indices: Vec<u64> = self.pending.keys().copied().collect();
        let entry = ManifestEntry::new(name.clone(), bytes.len() as u64, sha256, &indices);
        let line = entry.to_line();
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let appended = self
            .manifest
            .write_all(line.as_bytes())
            .and_then(|()| self.manifest.sync_data());
        if let Err(e) = appended {
            // Cut off whatever part of the line landed, so later lines stay parseable.
            let restored = self
                .manifest
                .set_len(self.manifest_len)
                .and_then(|()| self.manifest.sync_data());
            if restored.is_err() {
                self.poisoned = true;
            }
            let _ = std::fs::remove_file(self.dir.join(&name));
            return Err(StoreError::io(&manifest_path, e));
        }
        self.manifest_len += line.len() as u64;
        for &i in &indices {
            self.durable.insert(i);
        }
        self.pending.clear();
        tracing::debug!(segment = %name, records = indices.len(), "segment durable");
        Ok(indices.len())
    }

    /// Whether `index` is durable in the store (buffered records are not).
    pub fn is_durable(&self, index: u64) -> bool {
        self.durable.contains(index)
    }

    /// All durable indices, ascending.
    pub fn durable_indices(&self) -> Vec<u64> {
        self.durable.iter().collect()
    }

    /// Number of durable records.
    pub fn durable_count(&self) -> u64 {
        self.durable.count
    }

    /// Number of buffered, not yet durable records.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The indices of `range` that are not durable yet: what a resumed run still has
    /// to compute.
    pub fn missing(&self, range: std::ops::Range<u64>) -> Vec<u64> {
        range.filter(|&i| !self.durable.contains(i)).collect()
    }

    /// Cluster sink entry point: decodes a payload made by [`encode_payload`] and
    /// appends it. `Ok(false)` when the index is already held (durable or buffered).
    ///
    /// The cluster's `ResultSink::append` for this store is this method;
    /// `ResultSink::sync` is [`Self::flush`].
    pub fn append_payload(&mut self, index: u64, payload: &[u8]) -> Result<bool, StoreError> {
        let rec = decode_payload(index, payload)?;
        Ok(self.append(rec)?.is_new())
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::warn!(
                store = %self.dir.display(),
                records = self.pending.len(),
                "store writer dropped with unflushed records; they were never acknowledged"
            );
        }
    }
}

/// The payload a cluster worker sends for one image: bincode (standard config) of
/// the [`ImageSis`].
pub fn encode_payload(rec: &ImageSis) -> Vec<u8> {
    // Encoding plain numbers and vectors into a Vec cannot fail.
    bincode::serde::encode_to_vec(rec, bincode::config::standard()).unwrap_or_default()
}

/// Decodes a payload made by [`encode_payload`], checking it is for `index`.
pub fn decode_payload(index: u64, payload: &[u8]) -> Result<ImageSis, StoreError> {
    let bad = |reason: String| StoreError::BadPayload { index, reason };
    let (rec, used): (ImageSis, usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(|e| bad(format!("not an encoded ImageSis: {e}")))?;
    if used != payload.len() {
        return Err(bad(format!(
            "{} trailing bytes after the record",
            payload.len() - used
        )));
    }
    if rec.index != index {
        return Err(bad(format!("it holds image {} instead", rec.index)));
    }
    Ok(rec)
}

/// Errors if `dir` holds a store with another meta, or is a non-empty non-store.
/// Changes nothing on disk.
fn check_existing(dir: &Path, meta: &StoreMeta) -> Result<(), StoreError> {
    let meta_path = dir.join(META_FILE);
    if meta_path.exists() {
        let existing = StoreMeta::read(&meta_path)?;
        if existing.format_version != meta.format_version {
            return Err(StoreError::OldFormat {
                dir: dir.to_path_buf(),
                found: existing.format_version,
                objective: existing.objective,
            });
        }
        let fields = existing.differing_fields(meta);
        if !fields.is_empty() {
            return Err(StoreError::MetaMismatch {
                dir: dir.to_path_buf(),
                existing: Box::new(existing),
                requested: Box::new(meta.clone()),
                fields,
            });
        }
        return Ok(());
    }
    if dir.exists() {
        let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        for item in entries {
            let item = item.map_err(|e| StoreError::io(dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            // A crash during creation leaves at most the lock and a temp meta.
            if name != LOCK_FILE && !name.ends_with(".tmp") {
                return Err(StoreError::NotAStore {
                    dir: dir.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// Checks a listed segment at open: it exists with the listed size, and with
/// [`Verify::Full`] its sha256 and its index tensor match the entry.
pub(crate) fn check_segment(
    dir: &Path,
    entry: &ManifestEntry,
    meta: &StoreMeta,
    verify: Verify,
) -> Result<(), StoreError> {
    let path = dir.join(&entry.segment);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::SegmentCorrupt {
                path,
                reason: "listed in the manifest but missing".into(),
            })
        }
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    if len != entry.bytes {
        return Err(StoreError::SegmentCorrupt {
            path,
            reason: format!(
                "{len} bytes, the manifest says {} (truncated or overwritten)",
                entry.bytes
            ),
        });
    }
    if verify == Verify::Full {
        let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        verify_bytes(&path, entry, &bytes)?;
        let layout = segment::parse_layout(&bytes[..], &path, entry.count, meta)?;
        check_indices(&bytes[..], &path, &layout, entry)?;
    }
    Ok(())
}

/// Compares a segment's bytes with the manifest's sha256.
pub(crate) fn verify_bytes(
    path: &Path,
    entry: &ManifestEntry,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != entry.sha256 {
        return Err(StoreError::Checksum {
            path: path.to_path_buf(),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Checks that the segment's `index` tensor lists exactly the entry's indices.
pub(crate) fn check_indices(
    src: &(impl segment::Source + ?Sized),
    path: &Path,
    layout: &segment::Layout,
    entry: &ManifestEntry,
) -> Result<(), StoreError> {
    for (row, want) in entry.iter_indices().enumerate() {
        let got = segment::read_index(src, path, layout, row as u64)?;
        if got != want {
            return Err(StoreError::SegmentCorrupt {
                path: path.to_path_buf(),
                reason: format!("row {row} holds image {got}, the manifest says {want}"),
            });
        }
    }
    Ok(())
}

/// Opens a listed segment for positioned reads.
pub(crate) fn open_segment(path: &Path, entry: &ManifestEntry) -> Result<FileSource, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    Ok(FileSource {
        file,
        len: entry.bytes,
    })
}

/// Writes `dir/name` so that it appears whole or not at all: write `name.tmp`, fsync,
/// rename, fsync the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(|e| StoreError::io(&dst, e))?;
    sync_dir(dir)
}

fn serde_json_pretty(meta: &StoreMeta) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(meta).unwrap_or_default();
    v.push(b'\n');
    v
}
