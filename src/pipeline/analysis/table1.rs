//! The Table 1 analog's cells: accuracy over replicates on each test view, the
//! agreement with the original model, and the corrupted set per group, from the
//! evaluation stages' summaries.

use super::super::analyses::Stat;
use super::super::stages::{EvalSummary, SubsetKind};
use super::super::views::ViewsEval;
use super::stats::stat;

/// A proportion over replicates: mean ± std and range; with one replicate also its
/// (successes, images) for a Wilson interval.
fn proportion(cells: &[(usize, usize)]) -> Stat {
    let values: Vec<f64> = cells
        .iter()
        .map(|&(k, n)| k as f64 / n.max(1) as f64)
        .collect();
    let mut s = stat(&values);
    if let [one] = cells {
        s.count = Some(*one);
    }
    s
}

fn correct(e: &EvalSummary) -> (usize, usize) {
    // Stages cached before `correct` was recorded: recover it from the accuracy.
    let k = if e.correct == 0 && e.top1 > 0.0 {
        (e.top1 * e.images as f64).round() as usize
    } else {
        e.correct
    };
    (k, e.images)
}

/// (column name, statistic over `evals`): accuracy on full, BS-q and random-q test
/// images, the agreement with the original model's full-image prediction on the BS-q
/// test subsets, and the corrupted test set when every evaluation has it. The
/// mask-only control has no full-image or corrupted column (its inputs are constant).
pub fn columns(evals: &[&ViewsEval], q: f64) -> Vec<(String, Stat)> {
    let pick = |f: &dyn Fn(&ViewsEval) -> Option<(usize, usize)>| {
        proportion(&evals.iter().filter_map(|e| f(e)).collect::<Vec<_>>())
    };
    let mask_only = evals.iter().any(|e| e.mask_only);
    let bs = SubsetKind::Backselect.label(q);
    let mut cols = Vec::new();
    if !mask_only {
        cols.push(("Full test".to_string(), pick(&|e| Some(correct(&e.full)))));
    }
    cols.push((
        format!("{bs} test"),
        pick(&|e| Some(correct(&e.backselect))),
    ));
    cols.push((
        format!("{} test", SubsetKind::Random.label(q)),
        pick(&|e| Some(correct(&e.random))),
    ));
    if evals.iter().all(|e| e.backselect.agree.is_some()) && !evals.is_empty() {
        cols.push((
            format!("Agreement on {bs} test"),
            pick(&|e| Some((e.backselect.agree?, e.backselect.images))),
        ));
    }
    if !mask_only && evals.iter().all(|e| e.corrupted.is_some()) && !evals.is_empty() {
        cols.push((
            "Corrupted test".to_string(),
            pick(&|e| e.corrupted.as_ref().map(correct)),
        ));
    }
    cols
}

/// Accuracy per corruption group (`"fog/3"`) over `evals`, groups in name order.
pub fn corrupted_groups(evals: &[&ViewsEval]) -> Vec<(String, Stat)> {
    let mut names: Vec<&String> = evals
        .iter()
        .flat_map(|e| e.corrupted_groups.iter().map(|(g, _)| g))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|g| {
            let cells: Vec<(usize, usize)> = evals
                .iter()
                .filter_map(|e| e.corrupted_groups.iter().find(|(n, _)| n == g))
                .map(|(_, s)| correct(s))
                .collect();
            (g.clone(), proportion(&cells))
        })
        .collect()
}
