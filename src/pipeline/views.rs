//! A model evaluated on the test views of the Table 1 analog — full images, the
//! original model's backselect subsets, random subsets, the corrupted set — with,
//! beyond accuracy, the two numbers the leakage controls need: **agreement** (how
//! often the model predicts what the original model predicted on the full image)
//! and the mean confidence in the original model's full-image class.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::analysis::stats::Running;
use super::stages::{self, EvalSummary, SubsetKind};
use crate::data::ImageSource;
use crate::models::Classifier;
use crate::store::StoreReader;
use crate::subsets::MaskSource;

/// Evaluations of one model on the test views (Table 1 columns).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewsEval {
    pub full: EvalSummary,
    pub backselect: EvalSummary,
    pub random: EvalSummary,
    pub corrupted: Option<EvalSummary>,
    /// The corrupted set per group (`"<corruption>/<severity>"` on CIFAR-10-C).
    #[serde(default)]
    pub corrupted_groups: Vec<(String, EvalSummary)>,
    /// Inputs were the mask-only control's constant images ([`crate::subsets::mask_only`]):
    /// only the subset views mean anything.
    #[serde(default)]
    pub mask_only: bool,
}

/// The original model's predicted class on each full test image, by image index,
/// from its test store (the SIS target of every record).
pub fn original_predictions(test_store: &Path, images: usize) -> anyhow::Result<Vec<i64>> {
    let reader = StoreReader::open(test_store)?;
    let mut out = vec![-1i64; images];
    for rec in reader.iter() {
        let rec = rec?;
        if let Some(slot) = out.get_mut(rec.index as usize) {
            *slot = rec.predicted;
        }
    }
    if let Some(i) = out.iter().position(|&p| p < 0) {
        anyhow::bail!(
            "the SIS store {} holds no record of test image {i}; the original model's \
             prediction on it is unknown (rerun its SIS stage)",
            test_store.display()
        );
    }
    Ok(out)
}

/// Accuracy, agreement with `originals` and confidence in the original class of
/// `model` on every image of `source` (through `masks` when given), in one pass of
/// batches; memory independent of the number of images.
pub fn evaluate_against(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
    originals: &[i64],
) -> anyhow::Result<EvalSummary> {
    anyhow::ensure!(
        originals.len() == source.len(),
        "{} original predictions for {} images of {}",
        originals.len(),
        source.len(),
        source.name()
    );
    let (mut correct, mut agree) = (0usize, 0usize);
    let (mut top, mut original) = (Running::default(), Running::default());
    let indices: Vec<usize> = (0..source.len()).collect();
    let mut progress = crate::util::Progress::new("evaluate", indices.len() as u64);
    for chunk in indices.chunks(256) {
        let (probs, ys) = crate::train::eval::batch_probs(model, source, masks, chunk)?;
        let (conf, pred) = probs.max_dim(-1, false);
        let targets = Tensor::from_slice(&originals[chunk[0]..chunk[0] + chunk.len()]);
        let p_orig = probs.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
        let conf = Vec::<f32>::try_from(conf)?;
        let pred = Vec::<i64>::try_from(pred)?;
        let labels = Vec::<i64>::try_from(ys.to_device(tch::Device::Cpu))?;
        let p_orig = Vec::<f32>::try_from(p_orig)?;
        for (i, &index) in chunk.iter().enumerate() {
            correct += (pred[i] == labels[i]) as usize;
            agree += (pred[i] == originals[index]) as usize;
            top.add(conf[i] as f64);
            original.add(p_orig[i] as f64);
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    let images = indices.len();
    Ok(EvalSummary {
        top1: correct as f64 / images.max(1) as f64,
        mean_confidence: top.mean(),
        images,
        correct,
        agree: Some(agree),
        original_class_confidence: Some(original.stat()),
    })
}

/// Evaluates `model` on the test views: full test images, the backselect and random
/// test subsets (the backselect ones from `test_store`, i.e. the original model's),
/// and the corrupted set when given (per group too). With `mask_only`, every test
/// image is the mask-only control's constant image and the corrupted set is skipped.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_views(
    model: &dyn Classifier,
    test: &dyn ImageSource,
    corrupted: Option<&dyn ImageSource>,
    test_store: &Path,
    q: f64,
    random_seed: u64,
    hw: (usize, usize),
    mask_only: bool,
) -> anyhow::Result<ViewsEval> {
    let originals = original_predictions(test_store, test.len())?;
    let bs = stages::subset_masks(SubsetKind::Backselect, q, random_seed, test_store, hw)?;
    let random = stages::subset_masks(SubsetKind::Random, q, random_seed, test_store, hw)?;
    let constant = crate::subsets::mask_only::MaskOnly::new(test);
    let test: &dyn ImageSource = if mask_only { &constant } else { test };
    let (corrupted, corrupted_groups) = match corrupted.filter(|_| !mask_only) {
        Some(c) => {
            let (summary, groups) = evaluate_corrupted(model, c)?;
            (Some(summary), groups)
        }
        None => (None, Vec::new()),
    };
    Ok(ViewsEval {
        full: evaluate_against(model, test, None, &originals)?,
        backselect: evaluate_against(model, test, Some(bs.as_ref()), &originals)?,
        random: evaluate_against(model, test, Some(random.as_ref()), &originals)?,
        corrupted,
        corrupted_groups,
        mask_only,
    })
}

/// `model` on a corrupted test set: overall and per group (`"<corruption>/<severity>"`
/// on CIFAR-10-C; `"all"` for a set without groups), groups in name order.
pub fn evaluate_corrupted(
    model: &dyn Classifier,
    corrupted: &dyn ImageSource,
) -> anyhow::Result<(EvalSummary, Vec<(String, EvalSummary)>)> {
    let (summary, report) = stages::evaluate(model, corrupted, None)?;
    let groups = crate::train::eval::by_group(&report.predictions, |i| {
        corrupted.group(i).unwrap_or_else(|| "all".into())
    })
    .into_iter()
    .map(|(g, r)| (g, EvalSummary::of_report(&r)))
    .collect();
    Ok((summary, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Cifar10c, Cifar10cOptions, Split};
    use crate::models::{build, Arch, ModelConfig};

    /// Per-corruption accuracy on CIFAR-10-C files in the release's `.npy` format (the
    /// test fixture: snow and fog, 5 severities, 4 images each): every group's count
    /// equals one computed here image by image, with the group named from the
    /// release's layout (index = (corruption·5 + severity−1)·4 + image).
    #[test]
    fn corrupted_accuracy_per_corruption_and_severity() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10c");
        let c = Cifar10c::open(&dir, Split::Test, &Cifar10cOptions::default()).unwrap();
        tch::manual_seed(3);
        let model = build(
            &ModelConfig::new(Arch::ResNet20, 10, [3, 32, 32]),
            tch::Device::Cpu,
        )
        .unwrap();
        let (all, groups) = evaluate_corrupted(model.as_ref(), &c).unwrap();
        let mut want: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for i in 0..c.len() {
            let (x, y) = crate::data::batch(&c, &[i], tch::Device::Cpu).unwrap();
            let pred = tch::no_grad(|| model.forward(&x, false))
                .unwrap()
                .argmax(-1, false);
            let name = format!("{}/{}", ["snow", "fog"][i / 20], (i / 4) % 5 + 1);
            let cell = want.entry(name).or_default();
            cell.0 += (pred.int64_value(&[0]) == y.int64_value(&[0])) as usize;
            cell.1 += 1;
        }
        assert_eq!(groups.len(), 10);
        for (name, s) in &groups {
            assert_eq!((s.correct, s.images), want[name], "{name}");
        }
        assert_eq!(all.images, 40);
        assert_eq!(all.correct, want.values().map(|c| c.0).sum::<usize>());
    }
}
