//! [`FileSink`]: an append-only file of checksummed `(index, payload)` records.
//!
//! Layout: the 8-byte magic `OVRSINK1`, then records
//! `index: u64 LE | len: u32 LE | crc32: u32 LE | payload: len bytes`, where the CRC
//! covers the index, length and payload bytes. A crash can leave a torn last record;
//! opening the file drops it (truncates to the last whole record), because nothing in
//! it was ever acknowledged. A bad record anywhere else is corruption and is reported.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{ResultSink, SinkError};

const MAGIC: &[u8; 8] = b"OVRSINK1";
const RECORD_HEADER: u64 = 16;
/// Index → (payload offset, payload length).
type RecordMap = HashMap<u64, (u64, u32)>;
/// Largest payload accepted: a record length above this in the file is corruption.
const MAX_PAYLOAD: u32 = crate::proto::MAX_FRAME_LEN as u32;

/// Errors of [`FileSink`]; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// An I/O call failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The sink file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with the sink's magic bytes: not a FileSink file.
    #[error("{path}: not a result sink file (bad magic); refusing to append to it")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A record before the end of the file fails its checksum or has an impossible length.
    #[error("{path}: corrupt record at byte {offset}; restore the file or move it aside")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
    },
    /// A payload larger than the sink accepts.
    #[error(
        "{path}: payload of {len} bytes for image {index} exceeds the {MAX_PAYLOAD}-byte limit"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The image.
        index: u64,
        /// Payload length.
        len: usize,
    },
}

/// A generic durable sink: one file, deduplicated by image index, O(1) lookup.
#[derive(Debug)]
pub struct FileSink {
    /// Where the records live (named in every error).
    path: PathBuf,
    /// Buffered appender; flushed and fsynced by `sync`.
    writer: BufWriter<File>,
    /// Index → (payload offset, payload length), for dedup and lookup.
    records: RecordMap,
    /// File length including buffered bytes: where the next record goes.
    end: u64,
    /// Bytes of a torn tail dropped on open (for the report and tests).
    dropped_tail: u64,
}

impl FileSink {
    /// Opens (or creates) the sink file at `path`, re-reading its records.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileSinkError> {
        let path = path.as_ref().to_path_buf();
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| FileSinkError::Io { path, what, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        if len < MAGIC.len() as u64 {
            // New file (or a crash while writing the magic): start over.
            file.set_len(0).map_err(io("truncate"))?;
            file.write_all(MAGIC).map_err(io("write magic"))?;
            file.sync_all().map_err(io("fsync"))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("fsync directory"))?;
            }
            let writer = BufWriter::with_capacity(1 << 20, file);
            let end = MAGIC.len() as u64;
            return Ok(Self {
                path,
                writer,
                records: HashMap::new(),
                end,
                dropped_tail: 0,
            });
        }
        let (records, good_end) = scan(&path, &file, len)?;
        let dropped_tail = len - good_end;
        if dropped_tail > 0 {
            tracing::warn!(path = %path.display(), dropped_tail, "dropping a torn record at the end of the sink file");
            file.set_len(good_end).map_err(io("truncate torn tail"))?;
            file.sync_all().map_err(io("fsync"))?;
        }
        file.seek(SeekFrom::Start(good_end)).map_err(io("seek"))?;
        let writer = BufWriter::with_capacity(1 << 20, file);
        Ok(Self {
            path,
            writer,
            records,
            end: good_end,
            dropped_tail,
        })
    }

    /// The sink file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of distinct images stored.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no image is stored.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of a torn last record that `open` dropped.
    pub fn dropped_tail(&self) -> u64 {
        self.dropped_tail
    }

    /// Stored indices, ascending.
    pub fn indices(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.records.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The payload stored for `index` (flushes buffered appends first).
    pub fn get(&mut self, index: u64) -> Result<Option<Vec<u8>>, FileSinkError> {
        let Some(&(offset, len)) = self.records.get(&index) else {
            return Ok(None);
        };
        self.writer.flush().map_err(|source| FileSinkError::Io {
            path: self.path.clone(),
            what: "flush",
            source,
        })?;
        let mut buf = vec![0; len as usize];
        self.writer
            .get_ref()
            .read_exact_at(&mut buf, offset)
            .map_err(|source| FileSinkError::Io {
                path: self.path.clone(),
                what: "read record",
                source,
            })?;
        Ok(Some(buf))
    }

    fn append_record(&mut self, index: u64, payload: &[u8]) -> Result<bool, FileSinkError> {
        if self.records.contains_key(&index) {
            return Ok(false);
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| FileSinkError::TooLarge {
                path: self.path.clone(),
                index,
                len: payload.len(),
            })?;
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..8].copy_from_slice(&index.to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&header[..12], payload);
        header[12..].copy_from_slice(&crc.to_le_bytes());
        let io = |source| FileSinkError::Io {
            path: self.path.clone(),
            what: "append",
            source,
        };
        self.writer.write_all(&header).map_err(io)?;
        self.writer
            .write_all(payload)
            .map_err(|source| FileSinkError::Io {
                path: self.path.clone(),
                what: "append",
                source,
            })?;
        self.records.insert(index, (self.end + RECORD_HEADER, len));
        self.end += RECORD_HEADER + u64::from(len);
        Ok(true)
    }

    fn sync_file(&mut self) -> Result<(), FileSinkError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| FileSinkError::Io { path, what, source }
        };
        self.writer.flush().map_err(io("flush"))?;
        self.writer.get_ref().sync_data().map_err(io("fsync"))
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

/// Reads every whole record; returns the index map and the end of the last good one.
fn scan(path: &Path, file: &File, len: u64) -> Result<(RecordMap, u64), FileSinkError> {
    let io = |source| FileSinkError::Io {
        path: path.to_path_buf(),
        what: "read",
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file.try_clone().map_err(io)?);
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(FileSinkError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let mut records = HashMap::new();
    let mut pos = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        if len - pos < RECORD_HEADER {
            return Ok((records, pos)); // clean end or torn header
        }
        let mut header = [0u8; RECORD_HEADER as usize];
        reader.read_exact(&mut header).map_err(io)?;
        let index = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let plen = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[12..].try_into().expect("4 bytes"));
        let end = pos + RECORD_HEADER + u64::from(plen);
        if end > len {
            // Runs past the end: a torn last record (or a corrupt length, which then
            // also can only be the last record we can see).
            return Ok((records, pos));
        }
        if plen > MAX_PAYLOAD {
            return Err(FileSinkError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
            });
        }
        payload.resize(plen as usize, 0);
        reader.read_exact(&mut payload).map_err(io)?;
        if checksum(&header[..12], &payload) != crc {
            if end == len {
                return Ok((records, pos)); // torn: length written, payload not
            }
            return Err(FileSinkError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
            });
        }
        records.entry(index).or_insert((pos + RECORD_HEADER, plen));
        pos = end;
    }
}

impl ResultSink for FileSink {
    fn durable_indices(&self) -> Vec<u64> {
        self.indices()
    }

    fn append(&mut self, index: u64, payload: &[u8]) -> Result<bool, SinkError> {
        self.append_record(index, payload)
            .map_err(|e| SinkError::new("file sink append", e))
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.sync_file()
            .map_err(|e| SinkError::new("file sink sync", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_duplicates_are_ignored() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("results.bin");
        let mut sink = FileSink::open(&path)?;
        assert!(sink.append(5, b"five")?);
        assert!(sink.append(1, b"")?);
        assert!(!sink.append(5, b"FIVE")?);
        sink.sync()?;
        drop(sink);
        // magic 8 + (16 + 4) + (16 + 0) bytes
        assert_eq!(std::fs::metadata(&path)?.len(), 8 + 20 + 16);
        let mut sink = FileSink::open(&path)?;
        assert_eq!(sink.durable_indices(), vec![1, 5]);
        assert_eq!(sink.get(5)?.as_deref(), Some(&b"five"[..]));
        assert_eq!(sink.get(1)?.as_deref(), Some(&b""[..]));
        assert_eq!(sink.get(2)?, None);
        assert!(!sink.append(1, b"x")?);
        Ok(())
    }

    #[test]
    fn a_torn_tail_is_dropped_and_appending_continues() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("r.bin");
        let mut sink = FileSink::open(&path)?;
        sink.append(1, b"one")?;
        sink.append(2, b"two-two")?;
        sink.sync()?;
        drop(sink);
        let full = std::fs::metadata(&path)?.len();
        for cut in [full - 1, full - 7, full - 8, full - 20] {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(cut)?;
            drop(f);
            let mut sink = FileSink::open(&path)?;
            assert_eq!(sink.indices(), vec![1], "cut at {cut}");
            assert_eq!(sink.dropped_tail(), cut - (8 + 16 + 3));
            sink.append(2, b"two-two")?;
            sink.sync()?;
            drop(sink);
            assert_eq!(std::fs::metadata(&path)?.len(), full);
        }
        // A torn payload whose length is intact (bytes zeroed) is also dropped.
        let f = OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(&[0, 0], full - 2)?;
        drop(f);
        assert_eq!(FileSink::open(&path)?.indices(), vec![1]);
        Ok(())
    }

    #[test]
    fn corruption_before_the_end_is_an_error_naming_the_file(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("r.bin");
        let mut sink = FileSink::open(&path)?;
        sink.append(1, b"one")?;
        sink.append(2, b"two")?;
        sink.sync()?;
        drop(sink);
        let f = OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(b"X", 8 + 16)?; // first payload byte
        drop(f);
        let err = FileSink::open(&path).unwrap_err();
        assert!(
            matches!(err, FileSinkError::Corrupt { offset: 8, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("r.bin"));
        std::fs::write(&path, b"NOTASINKFILE")?;
        assert!(matches!(
            FileSink::open(&path),
            Err(FileSinkError::BadMagic { .. })
        ));
        Ok(())
    }
}
