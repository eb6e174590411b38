//! A small, strict reader of NumPy's `.npy` format (versions 1.0, 2.0 and 3.0), for
//! the integer arrays CIFAR-10-C ships. Only what `np.save` writes for a C-ordered
//! integer array is accepted; anything else is an error that names the file and
//! says what was found, so a wrong or damaged file never reads as garbage.
//!
//! Layout: the magic `\x93NUMPY`, major and minor version bytes, the header length
//! (`u16` little-endian in 1.0, `u32` in 2.0/3.0), then a Python dict literal such as
//! `{'descr': '|u1', 'fortran_order': False, 'shape': (50000, 32, 32, 3), }` padded
//! with spaces and a newline, then the raw array in C order.

use std::fs::File;
use std::io::Read;
#[cfg(unix)]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::DataError;

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Largest header we accept; `np.save` writes a few hundred bytes at most.
const MAX_HEADER_BYTES: usize = 1 << 16;

/// An integer element type, as written in the header's `descr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntDtype {
    /// `i` (true) or `u` (false).
    pub signed: bool,
    /// Bytes per element: 1, 2, 4 or 8.
    pub size: usize,
    /// `>` in the descr; `<`, `|` and `=` read as little-endian.
    pub big_endian: bool,
}

impl IntDtype {
    /// The `u8` element type CIFAR-10-C images use (`|u1`).
    pub const U8: IntDtype = IntDtype {
        signed: false,
        size: 1,
        big_endian: false,
    };

    /// Decodes one element.
    fn read(self, b: &[u8]) -> i128 {
        let mut buf = [0u8; 16];
        let v = &b[..self.size];
        if self.big_endian {
            buf[..self.size].copy_from_slice(v);
            buf[..self.size].reverse();
        } else {
            buf[..self.size].copy_from_slice(v);
        }
        let negative = self.signed && buf[self.size - 1] & 0x80 != 0;
        if negative {
            buf[self.size..].fill(0xff);
        }
        i128::from_le_bytes(buf)
    }
}

/// What the header says about the array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type.
    pub dtype: IntDtype,
    /// The array's shape; `()` is a scalar.
    pub shape: Vec<usize>,
    /// Byte offset of the first element in the file.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Number of elements (1 for a scalar).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of array data the file must hold after the header.
    pub fn data_bytes(&self) -> usize {
        self.len() * self.dtype.size
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Parses the header at the start of `bytes` (which may hold more than the header).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader, DataError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(
            path,
            "not a .npy file: it does not start with the magic \\x93NUMPY",
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) | (3, 0) => (4, major == 3),
        _ => {
            return Err(bad(
                path,
                format!("unsupported .npy version {major}.{minor} (1.0, 2.0 or 3.0)"),
            ))
        }
    };
    let start = 8 + len_bytes;
    if bytes.len() < start {
        return Err(bad(path, "file ends inside the .npy header"));
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(
            path,
            format!("header of {header_len} bytes is implausibly long"),
        ));
    }
    let text = bytes.get(start..start + header_len).ok_or_else(|| {
        bad(
            path,
            format!("file ends inside the {header_len}-byte .npy header"),
        )
    })?;
    if !utf8 && !text.is_ascii() {
        return Err(bad(path, format!("version {major}.0 header is not ASCII")));
    }
    let text = std::str::from_utf8(text).map_err(|_| bad(path, "header is not UTF-8"))?;
    let dict = parse_dict(text).map_err(|p| bad(path, format!("header {text:?}: {p}")))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in dict {
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k, v) => return Err(bad(path, format!("unexpected header entry {k:?}: {v:?}"))),
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err(bad(
            path,
            "header lacks one of 'descr', 'fortran_order', 'shape'",
        ));
    };
    if fortran {
        return Err(bad(
            path,
            "array is in Fortran order; save it C-ordered (np.ascontiguousarray)",
        ));
    }
    let dtype = parse_descr(&descr).ok_or_else(|| {
        bad(
            path,
            format!(
                "dtype {descr:?} is not supported: expected an integer type such as '|u1' or '<i8'"
            ),
        )
    })?;
    shape
        .iter()
        .try_fold(dtype.size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {shape:?} is too large")))?;
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: (start + header_len) as u64,
    })
}

/// `|u1`, `<i8`, `>u2`, `=i4`, … → the integer type.
fn parse_descr(descr: &str) -> Option<IntDtype> {
    let b = descr.as_bytes();
    if b.len() != 3 {
        return None;
    }
    let size = match b[2] {
        b'1' => 1,
        b'2' => 2,
        b'4' => 4,
        b'8' => 8,
        _ => return None,
    };
    let signed = match b[1] {
        b'i' => true,
        b'u' => false,
        _ => return None,
    };
    let big_endian = match b[0] {
        b'<' | b'=' => false,
        b'>' => true,
        b'|' if size == 1 => false,
        _ => return None,
    };
    Some(IntDtype {
        signed,
        size,
        big_endian,
    })
}

#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header's dict literal: string keys; string, `True`/`False` or
/// tuple-of-integer values; trailing commas; trailing spaces and newline.
fn parse_dict(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut c = Cursor {
        s: text.as_bytes(),
        pos: 0,
    };
    c.ws();
    c.expect(b'{')?;
    let mut out = Vec::new();
    loop {
        c.ws();
        if c.eat(b'}') {
            break;
        }
        let key = c.string()?;
        c.ws();
        c.expect(b':')?;
        c.ws();
        let value = c.value()?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("key {key:?} appears twice"));
        }
        out.push((key, value));
        c.ws();
        if c.eat(b',') {
            continue;
        }
        c.expect(b'}')?;
        break;
    }
    c.ws();
    if c.pos != c.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", c.pos));
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", b as char, self.pos))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.s.get(self.pos) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.pos)),
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != quote {
            if self.s[self.pos] == b'\\' {
                return Err("escapes in header strings are not supported".into());
            }
            self.pos += 1;
        }
        let s = std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| e.to_string())?;
        self.expect(quote)?;
        Ok(s.to_string())
    }
    fn value(&mut self) -> Result<Value, String> {
        let rest = &self.s[self.pos..];
        if rest.starts_with(b"True") {
            self.pos += 4;
            return Ok(Value::Bool(true));
        }
        if rest.starts_with(b"False") {
            self.pos += 5;
            return Ok(Value::Bool(false));
        }
        if self.eat(b'(') {
            let mut dims = Vec::new();
            loop {
                self.ws();
                if self.eat(b')') {
                    break;
                }
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let d = digits
                    .parse::<usize>()
                    .map_err(|_| format!("expected a dimension at byte {start}"))?;
                dims.push(d);
                self.ws();
                if self.eat(b',') {
                    continue;
                }
                self.expect(b')')?;
                break;
            }
            return Ok(Value::Tuple(dims));
        }
        self.string().map(Value::Str)
    }
}

/// An open `.npy` file whose header has been checked against the file size, read
/// piecewise: a 150 MB CIFAR-10-C array is never loaded whole.
#[derive(Debug)]
pub struct NpyFile {
    /// For error messages.
    path: PathBuf,
    /// Read with positioned reads, so many threads share it.
    file: File,
    /// The parsed header.
    header: NpyHeader,
}

impl NpyFile {
    /// Opens `path`, parses its header and checks that the file holds exactly the
    /// array the header describes (shorter: truncated; longer: trailing bytes).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| DataError::io(&path, e, "a .npy array"))?;
        let mut head = Vec::with_capacity(1024);
        (&mut file)
            .take(MAX_HEADER_BYTES as u64 + 12)
            .read_to_end(&mut head)
            .map_err(|e| DataError::io(&path, e, "a .npy array"))?;
        let header = parse_header(&path, &head)?;
        let size = file
            .metadata()
            .map_err(|e| DataError::io(&path, e, "a .npy array"))?
            .len();
        let want = header.data_offset + header.data_bytes() as u64;
        if size < want {
            return Err(bad(
                &path,
                format!(
                    "truncated: the header promises shape {:?} ({} data bytes), the file has {} \
                     bytes after the header",
                    header.shape,
                    header.data_bytes(),
                    size.saturating_sub(header.data_offset)
                ),
            ));
        }
        if size > want {
            return Err(bad(&path, format!("{} bytes after the array", size - want)));
        }
        Ok(Self { path, file, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `out.len()` raw bytes starting at element `first_element` (C order).
    pub fn read_raw(&self, first_element: usize, out: &mut [u8]) -> Result<(), DataError> {
        let offset = first_element as u64 * self.header.dtype.size as u64;
        if offset + out.len() as u64 > self.header.data_bytes() as u64 {
            return Err(bad(
                &self.path,
                format!(
                    "read of {} bytes at element {first_element} is past the end",
                    out.len()
                ),
            ));
        }
        read_exact_at(&self.file, out, self.header.data_offset + offset)
            .map_err(|e| DataError::io(&self.path, e, "a .npy array"))
    }

    /// The whole array as `i64` (for label arrays). Values that do not fit are an
    /// error naming the element.
    pub fn read_all_i64(&self) -> Result<Vec<i64>, DataError> {
        let mut raw = vec![0u8; self.header.data_bytes()];
        self.read_raw(0, &mut raw)?;
        raw.chunks_exact(self.header.dtype.size)
            .enumerate()
            .map(|(i, b)| {
                i64::try_from(self.header.dtype.read(b)).map_err(|_| DataError::Record {
                    path: self.path.clone(),
                    record: i,
                    problem: "value does not fit in int64".into(),
                })
            })
            .collect()
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, dict: &str) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend([version, 0]);
        if version == 1 {
            v.extend((dict.len() as u16).to_le_bytes());
        } else {
            v.extend((dict.len() as u32).to_le_bytes());
        }
        v.extend(dict.as_bytes());
        v
    }

    #[test]
    fn parses_what_np_save_writes() {
        // Header of `np.save(f, np.zeros((50000, 32, 32, 3), np.uint8))`, numpy 2.4.
        let d =
            "{'descr': '|u1', 'fortran_order': False, 'shape': (50000, 32, 32, 3), }          \n";
        let h = parse_header(Path::new("x.npy"), &npy(1, d)).unwrap();
        assert_eq!(h.shape, vec![50000, 32, 32, 3]);
        assert_eq!(h.dtype, IntDtype::U8);
        assert_eq!(h.data_offset, 10 + d.len() as u64);
        let h = parse_header(
            Path::new("x.npy"),
            &npy(
                2,
                "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }\n",
            ),
        )
        .unwrap();
        assert_eq!(
            (h.shape, h.dtype.size, h.dtype.signed, h.data_offset),
            (vec![7], 8, true, 12 + 58)
        );
        let h = parse_header(
            Path::new("x.npy"),
            &npy(
                3,
                "{\"shape\": (), \"fortran_order\": False, \"descr\": \">u2\"}",
            ),
        )
        .unwrap();
        assert_eq!((h.len(), h.dtype.big_endian), (1, true));
    }

    #[test]
    fn rejects_what_it_cannot_read_with_the_reason() {
        let e = |bytes: &[u8]| {
            parse_header(Path::new("c.npy"), bytes)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(b"PK\x03\x04zipfile"),
            "c.npy: not a .npy file: it does not start with the magic \\x93NUMPY"
        );
        let mut v = npy(
            1,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }",
        );
        v[6] = 4;
        assert_eq!(
            e(&v),
            "c.npy: unsupported .npy version 4.0 (1.0, 2.0 or 3.0)"
        );
        assert_eq!(
            e(&npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }")),
            "c.npy: dtype \"<f4\" is not supported: expected an integer type such as '|u1' or '<i8'"
        );
        assert_eq!(
            e(&npy(
                1,
                "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }"
            )),
            "c.npy: array is in Fortran order; save it C-ordered (np.ascontiguousarray)"
        );
        assert!(e(&npy(1, "{'descr': '|u1', 'shape': (2,), }")).contains("lacks one of"));
        assert!(e(&npy(
            1,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), 'x': 1}"
        ))
        .contains("header"));
        let short = npy(
            1,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }",
        );
        assert_eq!(
            e(&short[..30]),
            "c.npy: file ends inside the 57-byte .npy header"
        );
    }

    #[test]
    fn decodes_signed_and_big_endian_integers() {
        let i2 = IntDtype {
            signed: true,
            size: 2,
            big_endian: false,
        };
        assert_eq!(i2.read(&[0xfe, 0xff]), -2);
        let u2be = IntDtype {
            signed: false,
            size: 2,
            big_endian: true,
        };
        assert_eq!(u2be.read(&[0x01, 0x02]), 258);
        let u8le = IntDtype {
            signed: false,
            size: 8,
            big_endian: false,
        };
        assert_eq!(u8le.read(&[0xff; 8]), u64::MAX as i128);
    }
}
