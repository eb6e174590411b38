//! Exporting pixel-subset datasets for other tools: `.npz`, the CIFAR-10 binary
//! format, and PNG galleries of examples (original | SIS location | SIS image).
//!
//! Masked pixels are written at the dataset mean (rounded to `u8`), which is what
//! a masked pixel is after normalization (0): a reader that normalizes with the
//! dataset's statistics sees (almost exactly) the masked images our models see.

use std::io::Write;
use std::path::Path;

use super::npz::{write_npz, NpyArray};
use super::SubsetError;
use crate::data::ImageSource;

/// Kept pixels (row-major) of an image, by dataset index.
pub type KeptPixels<'a> = dyn Fn(usize) -> Result<Vec<u32>, SubsetError> + 'a;

/// `u8` pixels of `indices` with every pixel outside the subset set to the mean.
fn masked_pixels(
    source: &dyn ImageSource,
    kept: &KeptPixels<'_>,
    indices: &[usize],
) -> Result<(Vec<u8>, Vec<u8>), SubsetError> {
    let [c, h, w] = source.shape();
    let p = h * w;
    let mut pixels = vec![0u8; indices.len() * c * p];
    source.read_pixels(indices, &mut pixels)?;
    let mean: Vec<u8> = source
        .normalization()
        .mean
        .iter()
        .map(|m| (m * 255.0).round() as u8)
        .collect();
    let mut masks = vec![0u8; indices.len() * p];
    for (row, &index) in indices.iter().enumerate() {
        for pixel in kept(index)? {
            let pixel = pixel as usize;
            if pixel >= p {
                return Err(SubsetError::Invalid(format!(
                    "image {index}: pixel {pixel} outside a {h}×{w} image"
                )));
            }
            masks[row * p + pixel] = 1;
        }
        let image = &mut pixels[row * c * p..(row + 1) * c * p];
        for (ch, m) in mean.iter().enumerate() {
            for q in 0..p {
                if masks[row * p + q] == 0 {
                    image[ch * p + q] = *m;
                }
            }
        }
    }
    Ok((pixels, masks))
}

/// Writes `indices`, `labels` (int64), `masks` (uint8 `[N, H, W]`, 1 = kept) and
/// `images` (uint8 `[N, C, H, W]`, masked pixels at the mean) to an `.npz`.
pub fn export_npz(
    source: &dyn ImageSource,
    kept: &KeptPixels<'_>,
    indices: &[usize],
    path: &Path,
) -> Result<(), SubsetError> {
    let [c, h, w] = source.shape();
    let (pixels, masks) = masked_pixels(source, kept, indices)?;
    let labels = indices
        .iter()
        .map(|&i| source.label(i))
        .collect::<Result<Vec<_>, _>>()?;
    let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    let n = indices.len();
    write_npz(
        path,
        &[
            NpyArray::i64("indices", vec![n], &idx),
            NpyArray::i64("labels", vec![n], &labels),
            NpyArray::u8("masks", vec![n, h, w], masks),
            NpyArray::u8("images", vec![n, c, h, w], pixels),
        ],
    )
}

/// Writes the CIFAR-10 binary format (one byte label + 3072 bytes CHW per record),
/// masked pixels at the mean, so any CIFAR-10 reader can train on the subsets.
pub fn export_cifar_binary(
    source: &dyn ImageSource,
    kept: &KeptPixels<'_>,
    indices: &[usize],
    path: &Path,
) -> Result<(), SubsetError> {
    if source.shape() != [3, 32, 32] || source.num_classes() > 256 {
        return Err(SubsetError::Invalid(format!(
            "the CIFAR-10 binary format holds 3×32×32 images with byte labels; {} has shape {:?} and {} classes (export to npz instead)",
            source.name(),
            source.shape(),
            source.num_classes()
        )));
    }
    let io = |e: std::io::Error| SubsetError::Invalid(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("bin.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    for chunk in indices.chunks(1024) {
        let (pixels, _) = masked_pixels(source, kept, chunk)?;
        for (row, &index) in chunk.iter().enumerate() {
            out.write_all(&[source.label(index)? as u8]).map_err(io)?;
            out.write_all(&pixels[row * 3072..(row + 1) * 3072])
                .map_err(io)?;
        }
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// An extra gallery panel's colour for every pixel (row-major) of an image, by
/// dataset index.
pub type PixelColours<'a> = dyn Fn(usize) -> Result<Vec<[u8; 3]>, SubsetError> + 'a;

/// A PNG gallery: one row per image with three panels — the original, the SIS
/// location (kept pixels white on black) and the SIS image (kept pixels in their
/// colours, the rest at the dataset mean) — and, with `extra`, a fourth panel of
/// given colours (the report's removal-order panel, the paper's Figure S9), each
/// scaled up `scale`× (nearest).
pub fn export_png_gallery(
    source: &dyn ImageSource,
    kept: &KeptPixels<'_>,
    extra: Option<&PixelColours<'_>>,
    indices: &[usize],
    scale: usize,
    path: &Path,
) -> Result<(), SubsetError> {
    let [c, h, w] = source.shape();
    let p = h * w;
    let scale = scale.max(1);
    let gap = 2 * scale.max(2);
    let (panel_w, panel_h) = (w * scale, h * scale);
    let panels = 3 + usize::from(extra.is_some());
    let width = panels * panel_w + (panels + 1) * gap;
    let height = indices.len() * (panel_h + gap) + gap;
    let mut rgb = vec![255u8; width * height * 3];
    let mut original = vec![0u8; indices.len() * c * p];
    source.read_pixels(indices, &mut original)?;
    let (masked, masks) = masked_pixels(source, kept, indices)?;
    let colour = |img: &[u8], q: usize| -> [u8; 3] {
        if c >= 3 {
            [img[q], img[p + q], img[2 * p + q]]
        } else {
            [img[q]; 3]
        }
    };
    for row in 0..indices.len() {
        let top = gap + row * (panel_h + gap);
        let orig = &original[row * c * p..(row + 1) * c * p];
        let sis = &masked[row * c * p..(row + 1) * c * p];
        let extra = match extra {
            Some(f) => {
                let colours = f(indices[row])?;
                if colours.len() != p {
                    return Err(SubsetError::Invalid(format!(
                        "image {}: {} panel colours for {p} pixels",
                        indices[row],
                        colours.len()
                    )));
                }
                colours
            }
            None => Vec::new(),
        };
        for q in 0..p {
            let location = if masks[row * p + q] == 1 {
                [255; 3]
            } else {
                [0; 3]
            };
            for (panel, value) in [colour(orig, q), location, colour(sis, q)]
                .into_iter()
                .chain(extra.get(q).copied())
                .enumerate()
            {
                let left = gap + panel * (panel_w + gap);
                let (y0, x0) = (top + (q / w) * scale, left + (q % w) * scale);
                for y in y0..y0 + scale {
                    for x in x0..x0 + scale {
                        rgb[(y * width + x) * 3..(y * width + x) * 3 + 3].copy_from_slice(&value);
                    }
                }
            }
        }
    }
    write_png(path, width, height, &rgb)
}

/// Writes an 8-bit RGB PNG.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), SubsetError> {
    let err = |e: String| SubsetError::Invalid(format!("{}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))
}
