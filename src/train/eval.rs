//! Evaluation: top-1/top-5 accuracy and per-image predictions, on full images or
//! through a mask source, with per-group accuracy (CIFAR-10-C corruption/severity).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::TrainError;
use crate::data::{self, ImageSource};
use crate::models::Classifier;
use crate::subsets::MaskSource;
use crate::util::Progress;

/// The model's answer on one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub index: usize,
    pub label: i64,
    pub predicted: i64,
    /// Softmax probability of `predicted`.
    pub confidence: f32,
    /// Whether `label` is among the five most probable classes.
    pub top5: bool,
}

/// Accuracy over a split and the predictions behind it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    pub mean_confidence: f64,
    pub predictions: Vec<Prediction>,
}

/// Evaluates `model` (eval mode, no gradient tape) on every image of `source`,
/// masked by `masks` when given.
pub fn evaluate(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
    batch_size: usize,
) -> Result<EvalReport, TrainError> {
    let indices: Vec<usize> = (0..source.len()).collect();
    evaluate_indices(model, source, masks, &indices, batch_size)
}

/// As [`evaluate`], on the images `indices` only.
pub fn evaluate_indices(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
    indices: &[usize],
    batch_size: usize,
) -> Result<EvalReport, TrainError> {
    let mut predictions = Vec::with_capacity(indices.len());
    let mut progress = Progress::new("evaluate", indices.len() as u64);
    for chunk in indices.chunks(batch_size.max(1)) {
        let (probs, ys) = batch_probs(model, source, masks, chunk)?;
        let k = probs.size()[1].min(5);
        let (conf, pred) = probs.max_dim(-1, false);
        let (_, topk) = probs.topk(k, -1, true, true);
        let ys = ys.to_device(tch::Device::Cpu);
        let in_top = topk.eq_tensor(&ys.unsqueeze(-1)).any_dim(-1, false);
        let conf = Vec::<f32>::try_from(conf)?;
        let pred = Vec::<i64>::try_from(pred)?;
        let labels = Vec::<i64>::try_from(ys)?;
        let in_top = Vec::<bool>::try_from(in_top)?;
        for (i, &index) in chunk.iter().enumerate() {
            predictions.push(Prediction {
                index,
                label: labels[i],
                predicted: pred[i],
                confidence: conf[i],
                top5: in_top[i],
            });
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(summarize(predictions))
}

/// Accuracy figures of a set of predictions.
pub fn summarize(predictions: Vec<Prediction>) -> EvalReport {
    let n = predictions.len().max(1) as f64;
    let top1 = predictions
        .iter()
        .filter(|p| p.predicted == p.label)
        .count() as f64
        / n;
    let top5 = predictions.iter().filter(|p| p.top5).count() as f64 / n;
    let mean_confidence = predictions.iter().map(|p| p.confidence as f64).sum::<f64>() / n;
    EvalReport {
        images: predictions.len(),
        top1,
        top5,
        mean_confidence,
        predictions,
    }
}

/// Softmax probabilities (on the CPU) of `model` on the images `chunk` of `source`,
/// through `masks` when given, and their labels (on the model's device).
pub fn batch_probs(
    model: &dyn Classifier,
    source: &dyn ImageSource,
    masks: Option<&dyn MaskSource>,
    chunk: &[usize],
) -> Result<(Tensor, Tensor), TrainError> {
    let device = model.device();
    let (mut xs, ys) = data::batch(source, chunk, device)?;
    if let Some(masks) = masks {
        xs *= masks.masks(chunk)?.to_device(device);
    }
    let probs = tch::no_grad(|| model.forward(&xs, false))?
        .softmax(-1, Kind::Float)
        .to_device(tch::Device::Cpu);
    Ok((probs, ys))
}

/// Splits predictions by a group key (e.g. `"fog/3"` for CIFAR-10-C) and
/// summarizes each group.
pub fn by_group(
    predictions: &[Prediction],
    group: impl Fn(usize) -> String,
) -> BTreeMap<String, EvalReport> {
    let mut groups: BTreeMap<String, Vec<Prediction>> = BTreeMap::new();
    for p in predictions {
        groups.entry(group(p.index)).or_default().push(p.clone());
    }
    groups.into_iter().map(|(k, v)| (k, summarize(v))).collect()
}

/// Writes predictions as CSV with header `index,label,predicted,confidence,top5`.
/// Python: `numpy.genfromtxt(path, delimiter=",", names=True)` or `pandas.read_csv(path)`.
pub fn write_predictions_csv(path: &Path, predictions: &[Prediction]) -> Result<(), TrainError> {
    let mut out = String::from("index,label,predicted,confidence,top5\n");
    for p in predictions {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            p.index, p.label, p.predicted, p.confidence, p.top5 as u8
        ));
    }
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(out.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(index: usize, label: i64, predicted: i64, top5: bool) -> Prediction {
        Prediction {
            index,
            label,
            predicted,
            confidence: 0.5,
            top5,
        }
    }

    #[test]
    fn accuracy_and_groups() {
        let preds = vec![
            p(0, 1, 1, true),
            p(1, 2, 0, true),
            p(2, 3, 3, true),
            p(3, 4, 0, false),
        ];
        let r = summarize(preds.clone());
        assert_eq!((r.top1, r.top5), (0.5, 0.75));
        let g = by_group(&preds, |i| if i < 2 { "a".into() } else { "b".into() });
        assert_eq!(g["a"].top1, 0.5);
        assert_eq!(g["b"].top5, 0.5);
    }
}
