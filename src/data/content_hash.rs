//! Content hashes of dataset files, so that two nodes whose files differ (another
//! version of a JPEG, a corrupted `.npy`) never pass for the same dataset.
//!
//! Hashing a large split (ImageNet train: 140 GB) on every worker start would
//! dominate it, so the SHA-256 of each file is cached per folder, keyed by the
//! file's path, size, modification time (ns) and inode. The cache lives in
//! `$OVERINTERP_HASH_CACHE` (a directory; `off` disables it), else
//! `$XDG_CACHE_HOME/overinterp/content-hashes`, else `~/.cache/overinterp/content-hashes`,
//! one small TSV file per dataset folder. A cache that cannot be read or written is
//! skipped with a warning; the hashes are then computed from the bytes.
//!
//! What the cache cannot see: a file rewritten in place (same inode) that keeps its
//! size and has its modification time set back (`touch -d`, `rsync --inplace
//! --times`). Replacing a file (a copy, `mv`, an unpacked archive) changes the
//! inode or the time and is seen. Set `OVERINTERP_HASH_CACHE=off` to hash every
//! byte on each open.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::DataError;

/// Where the per-folder caches live; `None` when disabled.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("OVERINTERP_HASH_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("overinterp").join("content-hashes")),
    }
}

/// The cache key of a file besides its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

fn stamp(path: &Path) -> Result<Stamp, DataError> {
    let m = std::fs::metadata(path).map_err(|e| DataError::io(path, e, "a dataset file"))?;
    Ok(Stamp {
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        inode: m.ino(),
    })
}

/// SHA-256 of a file's bytes, streamed.
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e, "a dataset file"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| DataError::io(path, e, "a dataset file"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

type Cache = HashMap<String, (Stamp, String)>;

fn cache_file(cache: &Path, root: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let key = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
    cache.join(format!("{key}.tsv"))
}

/// Reads `size mtime_ns inode sha256 rel` lines; anything malformed is ignored.
fn load(path: &Path) -> Cache {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Cache::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(5, '\t');
            let size = f.next()?.parse().ok()?;
            let mtime_ns = f.next()?.parse().ok()?;
            let inode = f.next()?.parse().ok()?;
            let sha = f.next()?.to_string();
            let rel = f.next()?.to_string();
            Some((
                rel,
                (
                    Stamp {
                        size,
                        mtime_ns,
                        inode,
                    },
                    sha,
                ),
            ))
        })
        .collect()
}

fn save(path: &Path, entries: &[(String, Stamp, String)]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::new();
    for (rel, s, sha) in entries {
        if rel.contains(['\t', '\n']) {
            continue;
        }
        text.push_str(&format!(
            "{}\t{}\t{}\t{sha}\t{rel}\n",
            s.size, s.mtime_ns, s.inode
        ));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// SHA-256 of each file `root/rel`, in the order given, from the cache where the
/// file's size, mtime and inode are unchanged, from its bytes otherwise (in
/// parallel). Updates the cache.
pub fn hash_files(root: &Path, rels: &[String]) -> Result<Vec<String>, DataError> {
    hash_files_cached(root, rels, cache_dir().as_deref())
}

/// [`hash_files`] with the cache in `cache` (`None`: no cache).
pub fn hash_files_cached(
    root: &Path,
    rels: &[String],
    cache: Option<&Path>,
) -> Result<Vec<String>, DataError> {
    let cache_path = cache.map(|c| cache_file(c, root));
    let cache = cache_path.as_deref().map(load).unwrap_or_default();
    let results: Vec<(Stamp, String, bool)> = rels
        .par_iter()
        .map(|rel| {
            let path = root.join(rel);
            let s = stamp(&path)?;
            if let Some((cached, sha)) = cache.get(rel) {
                if *cached == s {
                    return Ok((s, sha.clone(), false));
                }
            }
            let sha = file_sha256(&path)?;
            // A file that changed while it was read would get a hash of neither version.
            let after = stamp(&path)?;
            if after != s {
                return Err(DataError::Format {
                    path,
                    problem: "the file changed while it was being hashed".into(),
                });
            }
            Ok((s, sha, true))
        })
        .collect::<Result<_, DataError>>()?;
    let fresh = results.iter().filter(|r| r.2).count();
    if let Some(path) = cache_path.filter(|_| fresh > 0 || cache.len() != rels.len()) {
        let entries: Vec<(String, Stamp, String)> = rels
            .iter()
            .zip(&results)
            .map(|(rel, (s, sha, _))| (rel.clone(), *s, sha.clone()))
            .collect();
        if let Err(e) = save(&path, &entries) {
            tracing::warn!(cache = %path.display(), error = %e, "cannot write the content-hash cache; hashes will be recomputed next time");
        }
    }
    tracing::debug!(root = %root.display(), files = rels.len(), hashed = fresh, "dataset content hashed");
    Ok(results.into_iter().map(|r| r.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs: i64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn hashes_follow_content_and_the_cache_follows_size_mtime_inode() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hash_files =
            |root: &Path, rels: &[String]| hash_files_cached(root, rels, Some(cache.path()));
        let root = dir.path();
        std::fs::write(root.join("a.JPEG"), b"first image bytes").unwrap();
        std::fs::write(root.join("b.JPEG"), b"other").unwrap();
        set_mtime(&root.join("a.JPEG"), 1_000_000);
        let rels = vec!["a.JPEG".to_string(), "b.JPEG".to_string()];
        let first = hash_files(root, &rels).unwrap();
        // sha256(b"first image bytes"), from `printf 'first image bytes' | sha256sum`.
        assert_eq!(first[0], hex::encode(Sha256::digest(b"first image bytes")));
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
        // Same size, same mtime, same inode, other bytes: the documented blind spot.
        std::fs::write(root.join("a.JPEG"), b"FIRST IMAGE BYTES").unwrap();
        set_mtime(&root.join("a.JPEG"), 1_000_000);
        assert_eq!(hash_files(root, &rels).unwrap(), first);
        // A new mtime (an ordinary write) is seen.
        set_mtime(&root.join("a.JPEG"), 2_000_000);
        let second = hash_files(root, &rels).unwrap();
        assert_eq!(second[0], hex::encode(Sha256::digest(b"FIRST IMAGE BYTES")));
        // A replaced file (new inode) with the old size and mtime is seen too.
        std::fs::write(root.join("new"), b"first image bytes").unwrap();
        set_mtime(&root.join("new"), 2_000_000);
        std::fs::rename(root.join("new"), root.join("a.JPEG")).unwrap();
        assert_eq!(hash_files(root, &rels).unwrap()[0], first[0]);
    }
}
