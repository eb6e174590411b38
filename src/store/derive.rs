//! What can be re-derived from a stored BackSelect run without the model: the total
//! removal order and the backselect subset of any fraction. (The SIS for any
//! threshold is [`crate::sis::find_sis`].)
//!
//! These are pure functions of one image's `removal_step`, so the store's reader,
//! the subset builder and tests share one rule.

/// The pixels in the order BackSelect removed them (first removed first).
///
/// Pixels are sorted by `(removal_step, pixel index)` ascending. Exact BackSelect gives
/// every pixel its own step, so this is its recorded order. Batched Gradient BackSelect
/// removes a block of `k` pixels per step and records no order inside a block; there
/// the block's pixels follow in ascending pixel index. That tie rule is arbitrary but
/// fixed and simple to repeat elsewhere: in numpy it is
/// `np.argsort(removal_step.ravel(), kind="stable")`.
///
/// Runs in `O(p + S)` (a counting sort over the `S` steps).
pub fn removal_order(removal_step: &[u32]) -> Vec<u32> {
    let steps = removal_step
        .iter()
        .map(|&s| s as usize + 1)
        .max()
        .unwrap_or(0);
    // starts[s] = position in the order of the first pixel removed at step s.
    let mut starts = vec![0usize; steps + 1];
    for &s in removal_step {
        starts[s as usize + 1] += 1;
    }
    for s in 0..steps {
        starts[s + 1] += starts[s];
    }
    let mut order = vec![0u32; removal_step.len()];
    for (pixel, &s) in removal_step.iter().enumerate() {
        order[starts[s as usize]] = pixel as u32;
        starts[s as usize] += 1;
    }
    order
}

/// `⌈q·p⌉`, the number of pixels a subset of fraction `q` keeps out of `p`.
///
/// Computed in f64; a product within 1e-9 (relative) of an integer counts as that
/// integer, so `q = 0.07, p = 100` keeps 7 pixels and not 8 as a bare `ceil` of
/// `7.000000000000001` would. CIFAR-10 at 5%: `⌈0.05·1024⌉ = 52`.
pub fn subset_size(q: f64, p: usize) -> usize {
    let x = q * p as f64;
    let nearest = x.round();
    let m = if (x - nearest).abs() <= 1e-9 * x.abs().max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    (m.max(0.0) as usize).min(p)
}

/// The backselect subset of fraction `q`: the last `⌈q·p⌉` pixels of
/// [`removal_order`], i.e. the pixels BackSelect kept longest, returned sorted by
/// pixel index (it is a set).
///
/// `q` must lie in `[0, 1]`; the caller validates it.
pub fn top_fraction(removal_step: &[u32], q: f64) -> Vec<u32> {
    let order = removal_order(removal_step);
    let m = subset_size(q, order.len());
    let mut top = order[order.len() - m..].to_vec();
    top.sort_unstable();
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_order_sorts_by_step_then_pixel() {
        // Hand example: 6 pixels, k = 2 blocks: step 0 = {4, 1}, step 1 = {0, 5},
        // step 2 = {2, 3}. Within a step the lower pixel index comes first.
        let steps = [1, 0, 2, 2, 0, 1];
        assert_eq!(removal_order(&steps), vec![1, 4, 0, 5, 2, 3]);
        // Exact BackSelect: one pixel per step, order is the inverse permutation.
        let exact = [2, 0, 3, 1];
        assert_eq!(removal_order(&exact), vec![1, 3, 0, 2]);
        assert!(removal_order(&[]).is_empty());
    }

    #[test]
    fn subset_size_is_ceiling_without_float_noise() {
        assert_eq!(subset_size(0.05, 1024), 52); // 51.2 → 52, the paper's CIFAR figure
        assert_eq!(subset_size(0.10, 299 * 299), 8941); // 8940.1 → 8941
        assert_eq!(subset_size(0.07, 100), 7); // 0.07*100 = 7.000000000000001 in f64
        assert_eq!(subset_size(0.0, 100), 0);
        assert_eq!(subset_size(1.0, 100), 100);
        assert_eq!(subset_size(0.011, 100), 2); // 1.1 → 2
    }

    #[test]
    fn top_fraction_takes_the_last_removed() {
        // Order (from the test above) is [1, 4, 0, 5, 2, 3]; the last 3 are {5, 2, 3}.
        let steps = [1, 0, 2, 2, 0, 1];
        assert_eq!(top_fraction(&steps, 0.5), vec![2, 3, 5]);
        assert_eq!(top_fraction(&steps, 1.0 / 6.0), vec![3]);
        assert_eq!(top_fraction(&steps, 1.0), vec![0, 1, 2, 3, 4, 5]);
        assert!(top_fraction(&steps, 0.0).is_empty());
    }
}
