//! [`StoreReader`]: O(1) lookup of one image, iteration over all, and what can be
//! re-derived without the model.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::manifest::{read_manifest, ManifestEntry, MANIFEST_FILE};
use super::meta::StoreMeta;
use super::segment::{self, Layout};
use super::writer::{check_indices, check_segment, open_segment, verify_bytes};
use super::{StoreError, Verify, META_FILE};
use crate::sis::ImageSis;

/// One listed segment and what has been learned about it.
struct Segment {
    path: PathBuf,
    entry: ManifestEntry,
    /// Parsed header, filled on first use.
    layout: OnceLock<Layout>,
    /// Set once the file's sha256 matched the manifest.
    verified: OnceLock<()>,
}

/// Read access to a store. Opening reads `meta.json` and the manifest and builds an
/// in-memory map image index → (segment, row); a lookup then costs a few positioned
/// reads in one segment, whatever the store's size.
///
/// A reader sees the segments listed when it was opened; it may run while a writer
/// appends (segments are immutable once listed).
pub struct StoreReader {
    dir: PathBuf,
    meta: StoreMeta,
    segments: Vec<Segment>,
    /// Image index → (segment number in `segments`, row in that segment).
    lookup: HashMap<u64, (u32, u64)>,
    verify: Verify,
    torn_tail: u64,
}

impl StoreReader {
    /// Opens the store at `dir` with [`Verify::OnRead`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, Verify::OnRead)
    }

    /// Opens the store at `dir`, verifying as asked.
    pub fn open_with(dir: impl AsRef<Path>, verify: Verify) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let meta_path = dir.join(META_FILE);
        if !meta_path.exists() {
            return Err(StoreError::NoStore { dir });
        }
        let meta = StoreMeta::read(&meta_path)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = read_manifest(&manifest_path)?;
        if manifest.torn_tail > 0 {
            tracing::warn!(
                manifest = %manifest_path.display(),
                bytes = manifest.torn_tail,
                "ignoring a torn last manifest line (never acknowledged; the next writer removes it)"
            );
        }
        let mut lookup = HashMap::new();
        let mut segments = Vec::with_capacity(manifest.entries.len());
        for (k, entry) in manifest.entries.into_iter().enumerate() {
            check_segment(&dir, &entry, &meta, verify)?;
            for (row, i) in entry.iter_indices().enumerate() {
                if i >= meta.num_images {
                    return Err(StoreError::ManifestCorrupt {
                        path: manifest_path,
                        line: k + 1,
                        reason: format!(
                            "index {i} is beyond the split's {} images",
                            meta.num_images
                        ),
                    });
                }
                if let Some((other, _)) = lookup.insert(i, (k as u32, row as u64)) {
                    let other: &Segment = &segments[other as usize];
                    return Err(StoreError::DuplicateIndex {
                        index: i,
                        first: other.path.clone(),
                        second: dir.join(&entry.segment),
                    });
                }
            }
            let verified = OnceLock::new();
            if verify == Verify::Full {
                // check_segment hashed it already.
                let _ = verified.set(());
            }
            segments.push(Segment {
                path: dir.join(&entry.segment),
                entry,
                layout: OnceLock::new(),
                verified,
            });
        }
        Ok(StoreReader {
            dir,
            meta,
            segments,
            lookup,
            verify,
            torn_tail: manifest.torn_tail,
        })
    }

    /// Opens the store at `dir` and checks it was made from `expected`
    /// ([`StoreError::MetaMismatch`] otherwise).
    pub fn open_expecting(
        dir: impl AsRef<Path>,
        expected: &StoreMeta,
        verify: Verify,
    ) -> Result<Self, StoreError> {
        let reader = Self::open_with(dir, verify)?;
        let fields = reader.meta.differing_fields(expected);
        if !fields.is_empty() {
            return Err(StoreError::MetaMismatch {
                dir: reader.dir.clone(),
                existing: Box::new(reader.meta.clone()),
                requested: Box::new(expected.clone()),
                fields,
            });
        }
        Ok(reader)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the store was made from.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Bytes of a torn last manifest line that were ignored (0 for a clean store).
    pub fn torn_manifest_bytes(&self) -> u64 {
        self.torn_tail
    }

    /// Number of images held.
    pub fn len(&self) -> usize {
        self.lookup.len()
    }

    /// Whether the store holds no image.
    pub fn is_empty(&self) -> bool {
        self.lookup.is_empty()
    }

    /// Whether image `index` is held.
    pub fn contains(&self, index: u64) -> bool {
        self.lookup.contains_key(&index)
    }

    /// The held indices, ascending.
    pub fn indices(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.lookup.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The manifest entries, in file order.
    pub fn segments(&self) -> impl Iterator<Item = &ManifestEntry> {
        self.segments.iter().map(|s| &s.entry)
    }

    /// The record of image `index`, or `None` if the store does not hold it.
    ///
    /// Reads one row with positioned reads (no parse of the rest of the segment).
    /// With [`Verify::OnRead`], the first read from a segment also checks its sha256.
    pub fn get(&self, index: u64) -> Result<Option<ImageSis>, StoreError> {
        let Some(&(seg, row)) = self.lookup.get(&index) else {
            return Ok(None);
        };
        let seg = &self.segments[seg as usize];
        self.ensure_verified(seg)?;
        let src = open_segment(&seg.path, &seg.entry)?;
        let layout = match seg.layout.get() {
            Some(l) => l,
            None => {
                let l = segment::parse_layout(&src, &seg.path, seg.entry.count, &self.meta)?;
                seg.layout.get_or_init(|| l)
            }
        };
        let rec = segment::read_row(&src, &seg.path, layout, row)?;
        if rec.index != index {
            return Err(StoreError::SegmentCorrupt {
                path: seg.path.clone(),
                reason: format!(
                    "row {row} holds image {}, the manifest says {index}",
                    rec.index
                ),
            });
        }
        Ok(Some(rec))
    }

    /// The record of image `index`; [`StoreError::NotInStore`] if absent.
    pub fn require(&self, index: u64) -> Result<ImageSis, StoreError> {
        self.get(index)?.ok_or_else(|| StoreError::NotInStore {
            dir: self.dir.clone(),
            index,
        })
    }

    /// Every record, segment by segment in manifest order (rows ascending by index
    /// inside a segment; use [`indices`](Self::indices) + [`get`](Self::get) for global
    /// index order). Each segment is read whole and its sha256 checked.
    pub fn iter(&self) -> StoreIter<'_> {
        StoreIter {
            reader: self,
            next_segment: 0,
            rows: Vec::new().into_iter(),
            failed: false,
        }
    }

    /// Image `index`'s pixels in removal order (see [`removal_order`](super::removal_order)).
    pub fn removal_order(&self, index: u64) -> Result<Vec<u32>, StoreError> {
        Ok(self.require(index)?.removal_order())
    }

    /// The first SIS of image `index` for any threshold `tau`, re-derived from the
    /// stored BackSelect history without the model ([`crate::sis::find_sis`]).
    /// `Ok(None)` when the image's confidence is below `tau`.
    ///
    /// For a threshold of the store this equals the first SIS of the stored
    /// collection; the collection's further SISes needed the model and are only
    /// stored for the store's thresholds.
    pub fn sis_for_threshold(&self, index: u64, tau: f32) -> Result<Option<Vec<u32>>, StoreError> {
        if !tau.is_finite() {
            return Err(StoreError::InvalidArgument(format!(
                "threshold {tau} is not a finite number"
            )));
        }
        Ok(self.require(index)?.find_sis(tau))
    }

    /// The backselect subset of fraction `q` of image `index`: the last `⌈q·p⌉`
    /// pixels removed ([`top_fraction`](super::top_fraction), in-block ranks
    /// included), sorted by pixel index.
    pub fn top_fraction_pixels(&self, index: u64, q: f64) -> Result<Vec<u32>, StoreError> {
        if !(0.0..=1.0).contains(&q) {
            return Err(StoreError::InvalidArgument(format!(
                "subset fraction {q} is not in [0, 1]"
            )));
        }
        Ok(self.require(index)?.top_fraction(q))
    }

    /// Checks a segment's sha256 once (with [`Verify::OnRead`]).
    fn ensure_verified(&self, seg: &Segment) -> Result<(), StoreError> {
        if seg.verified.get().is_some() {
            return Ok(());
        }
        let mut file = std::fs::File::open(&seg.path).map_err(|e| StoreError::io(&seg.path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| StoreError::io(&seg.path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != seg.entry.sha256 {
            return Err(StoreError::Checksum {
                path: seg.path.clone(),
                expected: seg.entry.sha256.clone(),
                actual,
            });
        }
        let _ = seg.verified.set(());
        Ok(())
    }

    /// Reads, verifies and decodes a whole segment.
    fn read_segment(&self, seg: &Segment) -> Result<Vec<ImageSis>, StoreError> {
        let bytes = std::fs::read(&seg.path).map_err(|e| StoreError::io(&seg.path, e))?;
        verify_bytes(&seg.path, &seg.entry, &bytes)?;
        let _ = seg.verified.set(());
        let layout = segment::parse_layout(&bytes[..], &seg.path, seg.entry.count, &self.meta)?;
        check_indices(&bytes[..], &seg.path, &layout, &seg.entry)?;
        (0..seg.entry.count)
            .map(|row| segment::read_row(&bytes[..], &seg.path, &layout, row))
            .collect()
    }

    /// How this reader verifies segments.
    pub fn verify_mode(&self) -> Verify {
        self.verify
    }
}

/// Iterator over every record of a store; see [`StoreReader::iter`]. Stops after
/// the first error.
pub struct StoreIter<'a> {
    reader: &'a StoreReader,
    next_segment: usize,
    rows: std::vec::IntoIter<ImageSis>,
    failed: bool,
}

impl Iterator for StoreIter<'_> {
    type Item = Result<ImageSis, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(r) = self.rows.next() {
                return Some(Ok(r));
            }
            let seg = self.reader.segments.get(self.next_segment)?;
            self.next_segment += 1;
            match self.reader.read_segment(seg) {
                Ok(rows) => self.rows = rows.into_iter(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
