//! A pixel subset as the PNG a participant sees: kept pixels as they are, masked
//! pixels at the masking value (the dataset mean — what the model saw, 0 after
//! normalization), each pixel upscaled to a `scale × scale` block by nearest
//! neighbour so one pixel stays one block. The PNG carries pixels only (no text
//! chunks): nothing in it can name the label.

use crate::data::Normalization;

use super::HumanError;

/// The 8-bit value a masked pixel of each channel is shown with: the dataset mean.
pub fn mask_value(norm: &Normalization) -> Vec<u8> {
    norm.mean
        .iter()
        .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// The upscale factor that makes an `h × w` image at least `target` pixels on its
/// longer side (at least 1).
pub fn scale_for(height: u32, width: u32, target: u32) -> u32 {
    let side = height.max(width).max(1);
    target.div_ceil(side).max(1)
}

/// RGB pixels `[H·scale, W·scale, 3]` of image `chw` (`u8`, C = 1 or 3) with only
/// `kept` (pixel indices `y·W + x`) visible.
pub fn subset_rgb(
    chw: &[u8],
    [c, h, w]: [usize; 3],
    kept: &[u32],
    masked: &[u8],
    scale: usize,
) -> Result<Vec<u8>, HumanError> {
    if c != 1 && c != 3 || chw.len() != c * h * w || masked.len() != c {
        return Err(HumanError::Invalid(format!(
            "cannot render a {c}×{h}×{w} image from {} bytes with {} mask values (1 or 3 channels)",
            chw.len(),
            masked.len()
        )));
    }
    let p = h * w;
    let mut keep = vec![false; p];
    for &q in kept {
        *keep.get_mut(q as usize).ok_or_else(|| {
            HumanError::Invalid(format!("kept pixel {q} is outside the {h}×{w} image"))
        })? = true;
    }
    let (sw, sh) = (w * scale, h * scale);
    let mut rgb = vec![0u8; sw * sh * 3];
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            let px: [u8; 3] = std::array::from_fn(|ch| {
                let ch = if c == 1 { 0 } else { ch };
                if keep[q] {
                    chw[ch * p + q]
                } else {
                    masked[ch]
                }
            });
            for yy in y * scale..(y + 1) * scale {
                for xx in x * scale..(x + 1) * scale {
                    rgb[(yy * sw + xx) * 3..(yy * sw + xx) * 3 + 3].copy_from_slice(&px);
                }
            }
        }
    }
    Ok(rgb)
}

/// Encodes RGB pixels as an 8-bit PNG in memory.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>, HumanError> {
    let mut out = Vec::new();
    let err = |e: png::EncodingError| HumanError::Invalid(format!("encoding a PNG: {e}"));
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(rgb).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_pixels_show_masked_pixels_are_the_mean_and_blocks_are_square() {
        // 1×2×2 image [10, 20, 30, 40], keep pixels 1 and 2, mean 0.5 → 128, scale 2.
        let rgb = subset_rgb(&[10, 20, 30, 40], [1, 2, 2], &[1, 2], &[128], 2).unwrap();
        let at = |y: usize, x: usize| rgb[(y * 4 + x) * 3];
        assert_eq!([at(0, 0), at(0, 1), at(1, 0), at(1, 1)], [128; 4]);
        assert_eq!([at(0, 2), at(0, 3), at(1, 2), at(1, 3)], [20; 4]);
        assert_eq!([at(2, 0), at(3, 1)], [30, 30]);
        assert_eq!(at(3, 3), 128);
        assert_eq!(mask_value(&Normalization::fashion_mnist()), vec![73]); // 0.2860·255 = 72.93
        assert_eq!(scale_for(28, 28, 280), 10);
        assert_eq!(scale_for(32, 32, 280), 9);
    }

    #[test]
    fn pixels_outside_the_image_are_refused() {
        assert!(subset_rgb(&[0; 4], [1, 2, 2], &[4], &[0], 1).is_err());
    }
}
