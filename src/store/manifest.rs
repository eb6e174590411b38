//! `manifest.jsonl`: the list of durable segments, one JSON line per segment.
//!
//! A line is appended (and fsynced) only after its segment file is durable, so a
//! line that is present and complete names a segment that was fully written. The
//! writer acknowledges records only after the line's fsync; a crash before that can
//! leave a *torn tail* — a last line without its `\n` — which by construction was
//! never acknowledged. Readers ignore a torn tail and report it; the next writer cuts
//! it off. Anything else that does not parse, or whose `check` disagrees, is
//! corruption and an error naming the line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// File name of the manifest inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.jsonl";

/// One durable segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name of the segment inside the store directory, `seg-NNNNNNNN.safetensors`.
    pub segment: String,
    /// Number of records (rows) in the segment.
    pub count: u64,
    /// Size of the segment file in bytes; checked on every open (cheap truncation test).
    pub bytes: u64,
    /// sha256 of the whole segment file, lowercase hex.
    pub sha256: String,
    /// The segment's image indices as sorted half-open ranges `[start, end)`; rows are
    /// stored in this (ascending) order, so row `r` holds the `r`-th listed index.
    pub indices: Vec<[u64; 2]>,
}

/// What is written on disk: the entry plus a checksum of the entry itself, so a
/// flipped byte in the manifest is caught even where it would still parse.
#[derive(Serialize, Deserialize)]
struct ManifestLine {
    #[serde(flatten)]
    entry: ManifestEntry,
    /// sha256 (hex) of the entry's canonical JSON (this struct without `check`).
    check: String,
}

impl ManifestEntry {
    /// Builds the entry for a segment holding `sorted_indices` (ascending, unique).
    pub fn new(segment: String, bytes: u64, sha256: String, sorted_indices: &[u64]) -> Self {
        let mut indices: Vec<[u64; 2]> = Vec::new();
        for &i in sorted_indices {
            match indices.last_mut() {
                Some(r) if r[1] == i => r[1] = i + 1,
                _ => indices.push([i, i + 1]),
            }
        }
        ManifestEntry {
            segment,
            count: sorted_indices.len() as u64,
            bytes,
            sha256,
            indices,
        }
    }

    /// The image indices in row order.
    pub fn iter_indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.indices.iter().flat_map(|r| r[0]..r[1])
    }

    /// The line to append, with its trailing newline.
    pub(crate) fn to_line(&self) -> String {
        let line = ManifestLine {
            entry: self.clone(),
            check: entry_check(self),
        };
        // Serializing plain strings and integers cannot fail.
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }

    fn parse_line(line: &[u8]) -> Result<ManifestEntry, String> {
        let parsed: ManifestLine =
            serde_json::from_slice(line).map_err(|e| format!("not a manifest entry: {e}"))?;
        let entry = parsed.entry;
        if entry_check(&entry) != parsed.check {
            return Err("its check digest does not match its content (edited or bit rot)".into());
        }
        if !is_segment_name(&entry.segment) {
            return Err(format!(
                "segment name `{}` is not of the form seg-NNNNNNNN.safetensors",
                entry.segment
            ));
        }
        let mut previous_end = 0u64;
        let mut total = 0u64;
        for (k, r) in entry.indices.iter().enumerate() {
            if r[0] >= r[1] || (k > 0 && r[0] < previous_end) {
                return Err(format!("index ranges are not sorted and disjoint at {r:?}"));
            }
            previous_end = r[1];
            total = total.saturating_add(r[1] - r[0]);
        }
        if total != entry.count {
            return Err(format!(
                "count {} but its index ranges hold {total}",
                entry.count
            ));
        }
        Ok(entry)
    }
}

fn entry_check(entry: &ManifestEntry) -> String {
    let canonical = serde_json::to_vec(entry).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// `seg-` + 8 digits + `.safetensors`: the only names a manifest may point at, so
/// a damaged manifest can never make the store open a path outside its directory.
pub(crate) fn is_segment_name(name: &str) -> bool {
    segment_number(name).is_some()
}

/// The number in a segment file name.
pub(crate) fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".safetensors")?;
    if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The file name of segment number `n`.
pub(crate) fn segment_name(n: u64) -> String {
    format!("seg-{n:08}.safetensors")
}

/// The manifest as read from disk.
#[derive(Debug, Default)]
pub(crate) struct Manifest {
    /// Complete, verified entries in file order.
    pub entries: Vec<ManifestEntry>,
    /// Length in bytes of the complete lines; where the next line goes.
    pub complete_len: u64,
    /// Bytes after the last newline: a torn, never-acknowledged last line.
    pub torn_tail: u64,
}

/// Reads `manifest.jsonl`; a missing file is an empty manifest (a store that was
/// created but crashed before its first segment).
pub(crate) fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut entries = Vec::new();
    for (k, line) in bytes[..complete_len]
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
    {
        let line = &line[..line.len() - 1]; // every complete line ends with '\n'
        let entry =
            ManifestEntry::parse_line(line).map_err(|reason| StoreError::ManifestCorrupt {
                path: path.to_path_buf(),
                line: k + 1,
                reason,
            })?;
        entries.push(entry);
    }
    Ok(Manifest {
        entries,
        complete_len: complete_len as u64,
        torn_tail: (bytes.len() - complete_len) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact_and_round_trip() {
        let e = ManifestEntry::new(segment_name(3), 10, "ab".into(), &[0, 1, 2, 5, 7, 8]);
        assert_eq!(e.indices, vec![[0, 3], [5, 6], [7, 9]]);
        assert_eq!(e.count, 6);
        assert_eq!(e.iter_indices().collect::<Vec<_>>(), vec![0, 1, 2, 5, 7, 8]);
        let line = e.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(
            ManifestEntry::parse_line(line.trim_end().as_bytes()).unwrap(),
            e
        );
    }

    #[test]
    fn edited_line_fails_its_check() {
        let e = ManifestEntry::new(segment_name(1), 10, "ab".into(), &[4, 5]);
        let line = e.to_line().replace("\"bytes\":10", "\"bytes\":11");
        let err = ManifestEntry::parse_line(line.trim_end().as_bytes()).unwrap_err();
        assert!(err.contains("check digest"), "{err}");
    }

    #[test]
    fn segment_names_are_confined() {
        assert_eq!(segment_number("seg-00000012.safetensors"), Some(12));
        assert!(!is_segment_name("../seg-00000012.safetensors"));
        assert!(!is_segment_name("seg-12.safetensors"));
        assert!(!is_segment_name("seg-0000001a.safetensors"));
    }
}
