//! Training-time augmentation: random crop with zero padding and horizontal flip,
//! as torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`.

use tch::{Kind, Tensor};

use crate::data::Normalization;
use crate::util::SplitMix64;

/// Augments a normalized batch `[N, C, H, W]`. Padding is black in pixel space
/// (torchvision pads the raw image with 0), i.e. `-mean/std` after normalization.
/// Draws two numbers per image from `rng`, so a seed reproduces the batch.
pub fn crop_and_flip(xs: &Tensor, pad: i64, norm: &Normalization, rng: &mut SplitMix64) -> Tensor {
    let (n, c, h, w) = xs.size4().expect("batch is [N, C, H, W]");
    let black: Vec<f32> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(m, s)| -m / s)
        .collect();
    let padded = Tensor::from_slice(&black)
        .view([1, c, 1, 1])
        .to_device(xs.device())
        .expand([n, c, h + 2 * pad, w + 2 * pad], false)
        .to_kind(Kind::Float)
        .contiguous();
    padded.narrow(2, pad, h).narrow(3, pad, w).copy_(xs);
    let side = (2 * pad + 1) as usize;
    let crops: Vec<Tensor> = (0..n)
        .map(|i| {
            let dy = rng.below(side) as i64;
            let dx = rng.below(side) as i64;
            let flip = rng.below(2) == 1;
            let crop = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
            if flip {
                crop.flip([2])
            } else {
                crop
            }
        })
        .collect();
    Tensor::stack(&crops, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_shifted_windows_of_the_padded_image() {
        let norm = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        // 1×1×3×3 image with values 1..9; padding value is -0.5/0.25 = -2.
        let x = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8., 9.]).view([1, 1, 3, 3]);
        let mut rng = SplitMix64::new(3);
        for _ in 0..20 {
            let y = crop_and_flip(&x, 1, &norm, &mut rng);
            let v = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
            // Every crop keeps the centre pixel 5 at some position (pad 1, 3×3) and
            // every value is either an image value or the padding value.
            assert!(v.contains(&5.0), "{v:?}");
            assert!(v.iter().all(|&e| e == -2.0 || (1.0..=9.0).contains(&e)));
            // A 3×3 window of a 5×5 padded image contains 9, 6 or 4 image pixels.
            let inside = v.iter().filter(|&&e| e != -2.0).count();
            assert!([4, 6, 9].contains(&inside), "{v:?}");
        }
    }
}
