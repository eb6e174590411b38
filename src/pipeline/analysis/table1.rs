//! The Table 1 analog's cells: accuracy over replicates on each test view, and the
//! confidence drop, from the evaluation stages' summaries.

use super::super::analyses::Stat;
use super::super::run::ViewsEval;
use super::super::stages::SubsetKind;
use super::stats::stat;

/// (column name, accuracy over `evals`) for full, BS-q, random-q test images, and
/// the corrupted test set when every evaluation has it.
pub fn columns(evals: &[&ViewsEval], q: f64) -> Vec<(String, Stat)> {
    let pick = |f: &dyn Fn(&ViewsEval) -> Option<f64>| {
        stat(&evals.iter().filter_map(|e| f(e)).collect::<Vec<_>>())
    };
    let mut cols = vec![
        ("Full test".to_string(), pick(&|e| Some(e.full.top1))),
        (
            format!("{} test", SubsetKind::Backselect.label(q)),
            pick(&|e| Some(e.backselect.top1)),
        ),
        (
            format!("{} test", SubsetKind::Random.label(q)),
            pick(&|e| Some(e.random.top1)),
        ),
    ];
    if evals.iter().all(|e| e.corrupted.is_some()) && !evals.is_empty() {
        cols.push((
            "Corrupted test".to_string(),
            pick(&|e| e.corrupted.as_ref().map(|c| c.top1)),
        ));
    }
    cols
}
