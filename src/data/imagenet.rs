//! ImageNet (ILSVRC2012) from its usual folder layout: `train/<wnid>/*.JPEG` and
//! `val/<wnid>/*.JPEG`. Classes are the sorted wnid folder names of the split, so
//! the 1000 classes get torchvision's `ImageFolder` labels.
//!
//! Opening scans the folders once (names and sizes, in parallel) and decodes
//! nothing: the dataset is far too large to hold. [`ImageSource::read_pixels`]
//! decodes its images in parallel (rayon) with `zune-jpeg`, converts grayscale and
//! CMYK to RGB, resizes the shorter side with an antialiased bilinear filter
//! (`fast_image_resize`, as PIL/torchvision do) and centre-crops — torchvision's
//! evaluation transform `Resize(round(crop·256/224))` + `CenterCrop(crop)`:
//! 256 → 224 for ResNet50, 342 → 299 for Inception v3.
//!
//! A file that cannot be decoded either fails the read with its name
//! ([`BadFilePolicy::Fail`]) or is reported and read as the mean image, which
//! normalizes to all zeros, the "fully masked" input ([`BadFilePolicy::Skip`]);
//! [`ImageNet::bad_files`] lists what was skipped. Empty files are found while
//! scanning and, under `Skip`, left out of the index.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::{check_read, DataError, ImageSource, Normalization, Split};

/// Folder of each split under the ImageNet root.
pub const TRAIN_DIR: &str = "train";
/// The labelled held-out images; [`Split::Test`] reads them.
pub const VAL_DIR: &str = "val";
/// The crop of ResNet-style models; Inception v3 uses 299.
pub const DEFAULT_CROP: usize = 224;

/// What to do with a file that cannot be read or decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadFilePolicy {
    /// Stop with an error naming the file (the default: nothing goes unnoticed).
    #[default]
    Fail,
    /// Record the file in [`ImageNet::bad_files`], log a warning, and read it as
    /// the mean image (all zeros after normalization).
    Skip,
}

impl std::str::FromStr for BadFilePolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            _ => Err(DataError::Invalid(format!(
                "bad-file policy {s:?}: expected `fail` or `skip`"
            ))),
        }
    }
}

/// How ImageNet images are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageNetOptions {
    /// Side of the square centre crop: 224 (ResNet50) or 299 (Inception v3).
    pub crop: usize,
    /// Failing or skipping undecodable files.
    pub bad_files: BadFilePolicy,
}

impl Default for ImageNetOptions {
    fn default() -> Self {
        Self {
            crop: DEFAULT_CROP,
            bad_files: BadFilePolicy::Fail,
        }
    }
}

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadFile {
    /// Index of the image in the dataset (`None`: left out of the index while scanning).
    pub index: Option<usize>,
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

/// One image of the index.
#[derive(Debug)]
struct Entry {
    /// Path relative to the split folder (`<wnid>/<file>`).
    rel: String,
    /// Class index (position of the wnid among the sorted wnids).
    label: u16,
}

/// An ImageNet split, decoded on demand.
#[derive(Debug)]
pub struct ImageNet {
    /// The split folder (`<root>/train` or `<root>/val`).
    dir: PathBuf,
    /// Sorted wnids; label = position.
    classes: Vec<String>,
    /// Every usable image, ordered by class, then file name.
    entries: Vec<Entry>,
    /// Crop side and bad-file policy.
    options: ImageNetOptions,
    /// The shorter side before cropping: round(crop · 256/224).
    resize: usize,
    /// Files skipped so far (scan time and read time).
    bad: Mutex<Vec<BadFile>>,
    /// `imagenet/<split>/<crop>`.
    name: String,
    /// SHA-256 over every file's relative path and content hash
    /// ([`super::content_hash`], cached by path, size, mtime and inode).
    hash: String,
}

/// The shorter side to resize to before a centre crop of `crop`, keeping
/// torchvision's ratio 256/224 (256 for 224, 342 for 299).
pub fn resize_for_crop(crop: usize) -> usize {
    (crop * 256 + 112) / 224
}

fn is_jpeg_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jpeg") || lower.ends_with(".jpg")
}

impl ImageNet {
    /// Scans `<root>/train` or `<root>/val` (for `Split::Test`). Files whose name
    /// does not end in `.JPEG`/`.jpg` (any case) are ignored; empty files are bad
    /// files. Nothing is decoded here.
    pub fn open(
        root: impl AsRef<Path>,
        split: Split,
        options: ImageNetOptions,
    ) -> Result<Self, DataError> {
        if options.crop == 0 {
            return Err(DataError::Invalid(
                "ImageNet crop size must be positive".into(),
            ));
        }
        let dir = root.as_ref().join(match split {
            Split::Train => TRAIN_DIR,
            Split::Test => VAL_DIR,
        });
        let what = "an ImageNet split folder of <wnid>/ class folders";
        let read_dir = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e, what))?;
        let mut classes = Vec::new();
        let mut loose_jpegs = 0usize;
        for entry in read_dir {
            let entry = entry.map_err(|e| DataError::io(&dir, e, what))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ty = entry
                .file_type()
                .map_err(|e| DataError::io(entry.path(), e, what))?;
            if ty.is_dir() || (ty.is_symlink() && entry.path().is_dir()) {
                classes.push(name);
            } else if is_jpeg_name(&name) {
                loose_jpegs += 1;
            }
        }
        classes.sort();
        if classes.is_empty() {
            let hint = if loose_jpegs > 0 {
                format!(
                    "{loose_jpegs} JPEGs lie directly in the folder: sort them into <wnid>/ \
                     folders first (as ILSVRC2012's valprep.sh does)"
                )
            } else {
                "no <wnid>/ class folders".to_string()
            };
            return Err(DataError::Format {
                path: dir,
                problem: hint,
            });
        }
        if classes.len() > u16::MAX as usize {
            return Err(DataError::Format {
                path: dir,
                problem: format!("{} class folders", classes.len()),
            });
        }

        // One listing per class, in parallel: (file name, size) sorted by name.
        let listings: Vec<Vec<(String, u64)>> = classes
            .par_iter()
            .map(|wnid| {
                let cdir = dir.join(wnid);
                let mut files = Vec::new();
                for entry in std::fs::read_dir(&cdir).map_err(|e| DataError::io(&cdir, e, what))? {
                    let entry = entry.map_err(|e| DataError::io(&cdir, e, what))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !is_jpeg_name(&name) {
                        continue;
                    }
                    let meta = std::fs::metadata(entry.path())
                        .map_err(|e| DataError::io(entry.path(), e, "an ImageNet JPEG"))?;
                    if meta.is_file() {
                        files.push((name, meta.len()));
                    }
                }
                files.sort();
                Ok(files)
            })
            .collect::<Result<_, DataError>>()?;

        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for (label, (wnid, files)) in classes.iter().zip(listings).enumerate() {
            for (file, size) in files {
                let rel = format!("{wnid}/{file}");
                if size == 0 {
                    let path = dir.join(&rel);
                    match options.bad_files {
                        BadFilePolicy::Fail => {
                            return Err(DataError::Format {
                                path,
                                problem: "empty file (use the skip policy to leave bad files out)"
                                    .into(),
                            })
                        }
                        BadFilePolicy::Skip => {
                            tracing::warn!(path = %path.display(), "skipping empty ImageNet file");
                            bad.push(BadFile {
                                index: None,
                                path,
                                problem: "empty file".into(),
                            });
                            continue;
                        }
                    }
                }
                entries.push(Entry {
                    rel,
                    label: label as u16,
                });
            }
        }
        let rels: Vec<String> = entries.iter().map(|e| e.rel.clone()).collect();
        let file_hashes = super::content_hash::hash_files(&dir, &rels)?;
        let mut hasher = Sha256::new();
        for (rel, sha) in rels.iter().zip(&file_hashes) {
            hasher.update(format!("{rel} {sha}\n"));
        }
        let hash = hex::encode(hasher.finalize());
        Ok(Self {
            dir,
            classes,
            entries,
            options,
            resize: resize_for_crop(options.crop),
            bad: Mutex::new(bad),
            name: format!("imagenet/{split}/{}", options.crop),
            hash,
        })
    }

    /// The sorted wnids; a label is a position in this list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The file of image `index`.
    pub fn path(&self, index: usize) -> Result<PathBuf, DataError> {
        self.entries
            .get(index)
            .map(|e| self.dir.join(&e.rel))
            .ok_or(DataError::OutOfRange {
                index,
                len: self.entries.len(),
            })
    }

    /// Files skipped so far under [`BadFilePolicy::Skip`]: empty files found while
    /// scanning, and files that failed to decode in a read, each once.
    pub fn bad_files(&self) -> Vec<BadFile> {
        self.bad
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The shorter side images are resized to before the crop.
    pub fn resize_side(&self) -> usize {
        self.resize
    }

    /// Decodes image `index` into `out` (CHW), or says why it cannot.
    fn load(&self, index: usize, out: &mut [u8]) -> Result<(), DataError> {
        let path = self.dir.join(&self.entries[index].rel);
        let bytes =
            std::fs::read(&path).map_err(|e| DataError::io(&path, e, "an ImageNet JPEG"))?;
        decode_resize_crop(&bytes, self.resize, self.options.crop, out)
            .map_err(|problem| DataError::Format { path, problem })
    }

    /// Under `Skip`, notes the failure and writes the mean image instead.
    fn skip(&self, index: usize, err: DataError, out: &mut [u8]) {
        let path = self.dir.join(&self.entries[index].rel);
        let problem = match err {
            DataError::Format { problem, .. } => problem,
            other => other.to_string(),
        };
        tracing::warn!(path = %path.display(), %problem, "skipping unreadable ImageNet file");
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        if !bad.iter().any(|b| b.index == Some(index)) {
            bad.push(BadFile {
                index: Some(index),
                path,
                problem,
            });
        }
        drop(bad);
        let plane = self.options.crop * self.options.crop;
        for (c, m) in Normalization::imagenet().mean.iter().enumerate() {
            out[c * plane..(c + 1) * plane].fill((m * 255.0).round() as u8);
        }
    }
}

/// Python's `round` (half to even), which torchvision's `CenterCrop` uses for
/// its offsets: `int(round((size - crop) / 2.0))`.
fn center_offset(size: usize, crop: usize) -> usize {
    let twice = size - crop; // offset = twice / 2, halves rounded to even
    let half = twice / 2;
    if twice % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// JPEG bytes → RGB → shorter side `resize` (antialiased bilinear; the longer side
/// `floor(resize·long/short)` as torchvision computes it) → centre `crop`×`crop` →
/// CHW into `out`. Errors are messages; the caller adds the file name.
pub fn decode_resize_crop(
    bytes: &[u8],
    resize: usize,
    crop: usize,
    out: &mut [u8],
) -> Result<(), String> {
    if resize < crop {
        return Err(format!(
            "resize side {resize} is smaller than the crop {crop}"
        ));
    }
    if out.len() != 3 * crop * crop {
        return Err(format!(
            "output buffer of {} bytes for a {crop}×{crop} RGB crop",
            out.len()
        ));
    }
    let (w, h, rgb) = decode_rgb(bytes)?;
    let (nw, nh) = if w <= h {
        (resize, resize * h / w)
    } else {
        (resize * w / h, resize)
    };
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        let src = Image::from_vec_u8(w as u32, h as u32, rgb, PixelType::U8x3)
            .map_err(|e| format!("cannot wrap the decoded image: {e}"))?;
        let mut dst = Image::new(nw as u32, nh as u32, PixelType::U8x3);
        Resizer::new()
            .resize(
                &src,
                &mut dst,
                &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            )
            .map_err(|e| format!("cannot resize {w}×{h} to {nw}×{nh}: {e}"))?;
        dst.into_vec()
    };
    let (top, left) = (center_offset(nh, crop), center_offset(nw, crop));
    let plane = crop * crop;
    for y in 0..crop {
        let row = &resized[((top + y) * nw + left) * 3..((top + y) * nw + left + crop) * 3];
        for (x, px) in row.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + y * crop + x] = px[c];
            }
        }
    }
    Ok(())
}

/// (width, height, interleaved RGB) of a JPEG; grayscale replicated to three
/// channels, CMYK/YCCK converted by the decoder. A decoder panic on hostile input
/// becomes an error too.
pub fn decode_rgb(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let result = std::panic::catch_unwind(|| {
        let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = JpegDecoder::new_with_options(bytes, options);
        let pixels = decoder
            .decode()
            .map_err(|e| format!("cannot decode JPEG: {e:?}"))?;
        let (w, h) = decoder
            .dimensions()
            .ok_or("cannot decode JPEG: no dimensions")?;
        let space = decoder
            .get_output_colorspace()
            .ok_or("cannot decode JPEG: no colour space")?;
        Ok::<_, String>((w, h, space, pixels))
    });
    let (w, h, space, pixels) =
        result.map_err(|_| "cannot decode JPEG: the decoder panicked".to_string())??;
    if w == 0 || h == 0 {
        return Err(format!("JPEG of {w}×{h} pixels is empty"));
    }
    match space.num_components() {
        3 if pixels.len() >= w * h * 3 => Ok((w, h, pixels[..w * h * 3].to_vec())),
        1 if pixels.len() >= w * h => Ok((
            w,
            h,
            pixels[..w * h].iter().flat_map(|&v| [v, v, v]).collect(),
        )),
        _ => Err(format!(
            "JPEG decoded to {space:?} ({} bytes for {w}×{h}); expected RGB or grayscale",
            pixels.len()
        )),
    }
}

impl ImageSource for ImageNet {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn shape(&self) -> [usize; 3] {
        [3, self.options.crop, self.options.crop]
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn normalization(&self) -> Normalization {
        Normalization::imagenet()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        self.entries
            .get(index)
            .map(|e| i64::from(e.label))
            .ok_or(DataError::OutOfRange {
                index,
                len: self.entries.len(),
            })
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let n = 3 * self.options.crop * self.options.crop;
        check_read(self.len(), n, indices, out)?;
        indices
            .par_iter()
            .zip(out.par_chunks_mut(n))
            .try_for_each(
                |(&i, dst)| match (self.load(i, dst), self.options.bad_files) {
                    (Ok(()), _) => Ok(()),
                    (Err(e), BadFilePolicy::Fail) => Err(e),
                    (Err(e), BadFilePolicy::Skip) => {
                        self.skip(i, e, dst);
                        Ok(())
                    }
                },
            )
    }
    fn content_hash(&self) -> String {
        self.hash.clone()
    }
    fn bad_files(&self) -> Vec<BadFile> {
        ImageNet::bad_files(self)
    }
    /// The split's file-list hash and `n`: the first `n` entries of a sorted list.
    fn prefix_hash(&self, n: usize) -> Option<String> {
        Some(crate::util::sha256_hex(
            format!("{}[:{n}]", self.hash).as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_side_keeps_torchvision_ratio() {
        assert_eq!(resize_for_crop(224), 256);
        assert_eq!(resize_for_crop(299), 342);
    }

    #[test]
    fn center_offset_rounds_half_to_even_like_python() {
        // Python: int(round((341 - 224) / 2.0)) == 58, int(round((343 - 224) / 2.0)) == 60,
        // int(round((256 - 224) / 2.0)) == 16, int(round((342 - 299) / 2.0)) == 22.
        assert_eq!(center_offset(341, 224), 58);
        assert_eq!(center_offset(343, 224), 60);
        assert_eq!(center_offset(256, 224), 16);
        assert_eq!(center_offset(342, 299), 22);
    }
}
