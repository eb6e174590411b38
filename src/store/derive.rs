//! What can be re-derived from a stored BackSelect run without the model: the total
//! removal order and the backselect subset of any fraction. (The SIS for any
//! threshold is [`crate::sis::find_sis`].)
//!
//! These are pure functions of one image's `removal_step` and `rank_in_block`, so
//! the store's reader, the subset builder, the analyses and tests share one rule.

/// The pixels in the order BackSelect removed them (first removed first).
///
/// Pixels are sorted by `(removal_step, rank_in_block)` ascending. Exact BackSelect
/// gives every pixel its own step, so this is its recorded order. Batched Gradient
/// BackSelect removes a block of `k` pixels per step; `rank_in_block` orders a block
/// by the score each pixel had at that step (0 = highest score = counted as removed
/// first, as `k = 1` steps would have removed it). An empty `rank_in_block` (exact
/// BackSelect, or a store of format 1, which recorded no rank) puts a block's pixels
/// in ascending pixel index. In numpy:
/// `np.lexsort((rank_in_block.ravel(), removal_step.ravel()))` (stable, so equal
/// keys keep pixel order).
///
/// Runs in `O(p + S)` (a counting sort over the `S` steps) for valid ranks (a
/// permutation of `0..block size` inside each block); anything else falls back to a
/// sort by `(step, rank, pixel)`.
pub fn removal_order(removal_step: &[u32], rank_in_block: &[u32]) -> Vec<u32> {
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
    if rank_in_block.is_empty() {
        let mut order = vec![0u32; removal_step.len()];
        for (pixel, &s) in removal_step.iter().enumerate() {
            order[starts[s as usize]] = pixel as u32;
            starts[s as usize] += 1;
        }
        return order;
    }
    if rank_in_block.len() != removal_step.len() {
        return removal_order_by_sort(removal_step, rank_in_block);
    }
    let mut order = vec![u32::MAX; removal_step.len()];
    for (pixel, (&s, &r)) in removal_step.iter().zip(rank_in_block).enumerate() {
        let (first, end) = (starts[s as usize], starts[s as usize + 1]);
        let slot = first + r as usize;
        if slot >= end || order[slot] != u32::MAX {
            return removal_order_by_sort(removal_step, rank_in_block);
        }
        order[slot] = pixel as u32;
    }
    order
}

/// [`removal_order`] for ranks that are not a permutation inside each block.
fn removal_order_by_sort(removal_step: &[u32], rank_in_block: &[u32]) -> Vec<u32> {
    let mut keyed: Vec<(u32, u32, u32)> = removal_step
        .iter()
        .enumerate()
        .map(|(q, &s)| (s, rank_in_block.get(q).copied().unwrap_or(0), q as u32))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, _, q)| q).collect()
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
/// pixel index (it is a set). Where `⌈q·p⌉` cuts a gradient block, the block's
/// pixels with the lowest scores (highest `rank_in_block`) are the ones kept.
///
/// `q` must lie in `[0, 1]`; the caller validates it.
pub fn top_fraction(removal_step: &[u32], rank_in_block: &[u32], q: f64) -> Vec<u32> {
    let order = removal_order(removal_step, rank_in_block);
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
        assert_eq!(removal_order(&steps, &[]), vec![1, 4, 0, 5, 2, 3]);
        // Exact BackSelect: one pixel per step, order is the inverse permutation.
        let exact = [2, 0, 3, 1];
        assert_eq!(removal_order(&exact, &[]), vec![1, 3, 0, 2]);
        assert!(removal_order(&[], &[]).is_empty());
    }

    #[test]
    fn rank_orders_inside_a_block() {
        // Same blocks; ranks reverse the index order in steps 0 and 2, keep it in 1.
        let steps = [1, 0, 2, 2, 0, 1];
        let rank = [0, 1, 1, 0, 0, 1];
        assert_eq!(removal_order(&steps, &rank), vec![4, 1, 0, 5, 3, 2]);
        // Kept longest: the last three of that order; the last one alone is pixel 2.
        assert_eq!(top_fraction(&steps, &rank, 0.5), vec![2, 3, 5]);
        assert_eq!(top_fraction(&steps, &rank, 1.0 / 6.0), vec![2]);
        assert_eq!(top_fraction(&steps, &[], 1.0 / 6.0), vec![3]);
        // Invalid ranks (two pixels of a block with rank 0) still give a total order.
        let bad = [0, 0, 0, 0, 0, 0];
        assert_eq!(removal_order(&steps, &bad), vec![1, 4, 0, 5, 2, 3]);
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
        assert_eq!(top_fraction(&steps, &[], 0.5), vec![2, 3, 5]);
        assert_eq!(top_fraction(&steps, &[], 1.0 / 6.0), vec![3]);
        assert_eq!(top_fraction(&steps, &[], 1.0), vec![0, 1, 2, 3, 4, 5]);
        assert!(top_fraction(&steps, &[], 0.0).is_empty());
    }
}
