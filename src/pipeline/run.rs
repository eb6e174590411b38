//! `overinterp pipeline`: the paper's experiment end to end (train → backselect
//! every train and test image → subsets → evaluate → retrain on subsets →
//! evaluate → analyses → report), every stage cached (see [`super::stages`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::analyses::*;
use super::experiment::{Experiment, Ranks};
use super::plan::{names, retrains};
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{self, EvalSummary, Stages, SubsetKind};
use crate::data::{ImageSource, Split};
use crate::models;
use crate::sis::ImageSis;
use crate::store::StoreReader;

/// Evaluations of one model on the test views (Table 1 columns).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewsEval {
    pub full: EvalSummary,
    pub backselect: EvalSummary,
    pub random: EvalSummary,
    pub corrupted: Option<EvalSummary>,
}

/// A model of the spec once its stages ran.
struct Built {
    spec: ModelSpec,
    /// `--model` string: checkpoint dir, TorchScript path or `ensemble:...`.
    model: String,
    test_store: PathBuf,
    original: ViewsEval,
    /// Evaluations of retrained replicates, by subset kind.
    retrained: BTreeMap<String, Vec<ViewsEval>>,
}

/// Runs the pipeline and writes the report; returns the report directory.
pub fn run_pipeline(spec: &PipelineSpec, spec_text: &str) -> anyhow::Result<PathBuf> {
    let ranks = Ranks::Local {
        spec_file: spec.out.join("pipeline-spec.toml"),
    };
    let exp = Experiment::open(spec, Stages::new(spec.out.clone()), ranks)?;
    run_experiment(&exp, spec_text)
}

/// Runs (or reads from their caches) every stage of an opened pipeline and writes
/// the report; returns the report directory.
pub fn run_experiment(exp: &Experiment, spec_text: &str) -> anyhow::Result<PathBuf> {
    let spec = exp.spec;
    let stages = &exp.stages;
    let device = exp.device()?;
    let (train_set, test_set) = (&exp.train_set, &exp.test_set);
    let q = spec.fraction;

    let mut built = Vec::new();
    // Plain models first, so ensembles can name them.
    let mut order: Vec<&ModelSpec> = spec
        .models
        .iter()
        .filter(|m| m.members.is_empty())
        .collect();
    order.extend(spec.models.iter().filter(|m| !m.members.is_empty()));
    for m in order {
        let model = exp.model(m)?;
        let retrain = retrains(m);
        let test_store = exp.sis_store(m, &model, Split::Test)?;
        let train_store = if retrain {
            Some(exp.sis_store(m, &model, Split::Train)?)
        } else {
            None
        };
        let original = exp.views(&model, &names::eval(m), &test_store)?;

        let mut retrained = BTreeMap::new();
        if let Some(train_store) = &train_store {
            for kind in [SubsetKind::Backselect, SubsetKind::Random] {
                let mut evals = Vec::new();
                for r in 0..spec.replicates {
                    let dir = exp.retrain(m, kind, r, train_store)?;
                    let name = names::retrain_eval(m, kind, r);
                    evals.push(exp.views(&dir.to_string_lossy(), &name, &test_store)?);
                }
                retrained.insert(kind.label(q), evals);
            }
        }
        built.push(Built {
            spec: m.clone(),
            model,
            test_store,
            original,
            retrained,
        });
    }

    let report_dir = spec.out.join("report");
    std::fs::create_dir_all(&report_dir)?;
    let transfer = transfer_matrix(stages, &built, test_set.as_ref(), q, device)?;
    let analyses = analyze(
        spec,
        spec_text,
        &built,
        train_set.as_ref(),
        test_set.as_ref(),
        transfer,
        &report_dir,
    )?;
    super::report::write_report(&analyses, &report_dir)?;
    if let Some(study) = &spec.study {
        let added = crate::human::report::append_to_pipeline_report(study, &report_dir)?;
        tracing::info!(study = %study.display(), added, "human study section");
    }
    Ok(report_dir)
}

pub(crate) fn load(
    model: &str,
    device: tch::Device,
    source: &dyn ImageSource,
) -> anyhow::Result<Box<dyn models::Classifier>> {
    let [c, h, w] = source.shape();
    let mut m = models::load_model(model, device, [c as i64, h as i64, w as i64])?;
    m.freeze();
    Ok(m)
}

/// Accuracy on full test images, the backselect and random test subsets (the
/// backselect ones from `test_store`, i.e. the original model's), and the
/// corrupted test set when given.
pub(crate) fn evaluate_views(
    model: &dyn models::Classifier,
    test: &dyn ImageSource,
    corrupted: Option<&dyn ImageSource>,
    test_store: &Path,
    q: f64,
    random_seed: u64,
    hw: (usize, usize),
) -> anyhow::Result<ViewsEval> {
    let bs = stages::subset_masks(SubsetKind::Backselect, q, random_seed, test_store, hw)?;
    let random = stages::subset_masks(SubsetKind::Random, q, random_seed, test_store, hw)?;
    Ok(ViewsEval {
        full: stages::evaluate(model, test, None)?.0,
        backselect: stages::evaluate(model, test, Some(bs.as_ref()))?.0,
        random: stages::evaluate(model, test, Some(random.as_ref()))?.0,
        corrupted: corrupted
            .map(|c| stages::evaluate(model, c, None).map(|r| r.0))
            .transpose()?,
    })
}

/// Section 4.1: every model evaluated on every other model's backselect test subsets.
fn transfer_matrix(
    stages: &Stages,
    built: &[Built],
    test: &dyn ImageSource,
    q: f64,
    device: tch::Device,
) -> anyhow::Result<Option<TransferMatrix>> {
    if built.len() < 2 {
        return Ok(None);
    }
    let names: Vec<String> = built.iter().map(|b| b.spec.name.clone()).collect();
    let key = (
        "transfer",
        built
            .iter()
            .map(|b| (&b.model, &b.test_store))
            .collect::<Vec<_>>(),
        q,
    );
    let (_, accuracy) = stages.run(names::TRANSFER, &key, |_| {
        let [_, h, w] = test.shape();
        let mut rows = Vec::new();
        for source in built {
            let masks =
                stages::subset_masks(SubsetKind::Backselect, q, 0, &source.test_store, (h, w))?;
            let mut row = Vec::new();
            for evaluator in built {
                let model = load(&evaluator.model, device, test)?;
                row.push(
                    stages::evaluate(model.as_ref(), test, Some(masks.as_ref()))?
                        .0
                        .top1,
                );
            }
            rows.push(row);
        }
        Ok(rows)
    })?;
    Ok(Some(TransferMatrix {
        sources: names.clone(),
        evaluators: names,
        accuracy,
    }))
}

fn stat(values: &[f64]) -> Stat {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Stat {
        mean,
        std: var.sqrt(),
        n,
    }
}

fn mean_ci(values: &[f64]) -> Option<MeanCi> {
    if values.is_empty() {
        return None;
    }
    let s = stat(values);
    let half = 1.96 * s.std / (s.n as f64).sqrt();
    Some(MeanCi {
        mean: s.mean,
        lo: s.mean - half,
        hi: s.mean + half,
        n: s.n,
    })
}

fn columns(evals: &[&ViewsEval], q: f64) -> Vec<(String, Stat)> {
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

#[allow(clippy::too_many_arguments)]
fn analyze(
    spec: &PipelineSpec,
    spec_text: &str,
    built: &[Built],
    train: &dyn ImageSource,
    test: &dyn ImageSource,
    transfer: Option<TransferMatrix>,
    report_dir: &Path,
) -> anyhow::Result<Analyses> {
    let q = spec.fraction;
    let mut a = Analyses {
        name: spec.name.clone(),
        dataset: spec.data.clone(),
        train_images: train.len(),
        test_images: test.len(),
        fraction: q,
        settings: settings(spec),
        table1: Vec::new(),
        confidence: Vec::new(),
        sis_size: Vec::new(),
        correct_vs_wrong: Vec::new(),
        heatmaps: Vec::new(),
        transfer,
        galleries: Vec::new(),
        spec: spec_text.to_string(),
    };
    for b in built {
        let name = &b.spec.name;
        a.table1.push(Table1Row {
            model: name.clone(),
            train_on: "Full".into(),
            eval_on: columns(&[&b.original], q),
        });
        for (kind, evals) in &b.retrained {
            a.table1.push(Table1Row {
                model: name.clone(),
                train_on: kind.clone(),
                eval_on: columns(&evals.iter().collect::<Vec<_>>(), q),
            });
        }
        a.confidence.push(ConfidenceDrop {
            model: name.clone(),
            full: b.original.full.mean_confidence,
            backselect: b.original.backselect.mean_confidence,
            random: b.original.random.mean_confidence,
        });
        let store = StoreReader::open(&b.test_store)?;
        let records: Vec<ImageSis> = store
            .iter()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", b.test_store.display()))?;
        let p = (records.first().map_or(1, |r| r.height * r.width)) as f64;
        let sizes = |tau: f32| -> Vec<(bool, f64)> {
            records
                .iter()
                .filter_map(|r| {
                    r.find_sis(tau)
                        .map(|s| (r.predicted == r.label, s.len() as f64 / p))
                })
                .collect()
        };
        let curve: Vec<Vec<(bool, f64)>> = spec.sweep.iter().map(|&t| sizes(t)).collect();
        a.sis_size.push(SisSizeCurve {
            model: name.clone(),
            thresholds: spec.sweep.clone(),
            mean_fraction: curve
                .iter()
                .map(|c| c.iter().map(|x| x.1).sum::<f64>() / c.len().max(1) as f64)
                .collect(),
            images_with_sis: curve.iter().map(Vec::len).collect(),
        });
        let at_tau = sizes(spec.threshold);
        let part = |correct: bool| {
            at_tau
                .iter()
                .filter(|x| x.0 == correct)
                .map(|x| x.1)
                .collect::<Vec<_>>()
        };
        a.correct_vs_wrong.push(CorrectVsWrong {
            model: name.clone(),
            threshold: spec.threshold,
            correct: mean_ci(&part(true)),
            wrong: mean_ci(&part(false)),
        });
        a.heatmaps.extend(heatmaps(name, &records, q));
        a.galleries
            .push(gallery(name, &records, test, spec.threshold, report_dir)?);
    }
    Ok(a)
}

/// Frequency of each pixel in the backselect top-q subsets, overall and per predicted class.
fn heatmaps(model: &str, records: &[ImageSis], q: f64) -> Vec<Heatmap> {
    let Some(first) = records.first() else {
        return Vec::new();
    };
    let (h, w) = (first.height as usize, first.width as usize);
    let mut by_class: BTreeMap<Option<i64>, (Vec<f32>, usize)> = BTreeMap::new();
    for r in records {
        let kept = r.top_fraction(q);
        for class in [None, Some(r.predicted)] {
            let entry = by_class
                .entry(class)
                .or_insert_with(|| (vec![0.0; h * w], 0));
            for &p in &kept {
                entry.0[p as usize] += 1.0;
            }
            entry.1 += 1;
        }
    }
    by_class
        .into_iter()
        .map(|(class, (counts, n))| Heatmap {
            model: model.to_string(),
            class,
            height: h,
            width: w,
            values: counts.iter().map(|c| c / n as f32).collect(),
            images: n,
        })
        .collect()
}

/// One row per predicted class: the first test image of that class with a SIS at τ.
fn gallery(
    model: &str,
    records: &[ImageSis],
    test: &dyn ImageSource,
    tau: f32,
    dir: &Path,
) -> anyhow::Result<Gallery> {
    let mut rows: BTreeMap<i64, (usize, i64, Vec<u32>)> = BTreeMap::new();
    for r in records {
        if rows.contains_key(&r.predicted) {
            continue;
        }
        if let Some(sis) = r.find_sis(tau) {
            rows.insert(r.predicted, (r.index as usize, r.label, sis));
        }
    }
    let indices: Vec<usize> = rows.values().map(|r| r.0).collect();
    let kept_by_index: BTreeMap<usize, Vec<u32>> =
        rows.values().map(|r| (r.0, r.2.clone())).collect();
    let file = format!(
        "gallery-{}.png",
        model.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    );
    let kept = |i: usize| Ok(kept_by_index.get(&i).cloned().unwrap_or_default());
    if !indices.is_empty() {
        crate::subsets::export::export_png_gallery(test, &kept, &indices, 4, &dir.join(&file))?;
    }
    Ok(Gallery {
        model: model.to_string(),
        threshold: tau,
        png: file,
        rows: rows.iter().map(|(pred, r)| (r.0, r.1, *pred)).collect(),
    })
}

fn settings(spec: &PipelineSpec) -> Vec<(String, String)> {
    let method = match spec.sis.method {
        crate::sis::Method::Exact => "exact BackSelect".to_string(),
        crate::sis::Method::Gradient { k } => format!(
            "Batched Gradient BackSelect, k = {k}, mini-batch {}",
            spec.sis.batch_size
        ),
    };
    vec![
        (
            "Models".into(),
            spec.models
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("SIS method".into(), method),
        (
            "SIS threshold (galleries, Figure 4)".into(),
            spec.threshold.to_string(),
        ),
        (
            "Training of original models".into(),
            describe_train(&spec.train),
        ),
        (
            "Retraining on subsets".into(),
            format!(
                "{}; {} replicate(s) per subset kind",
                describe_train(&spec.retrain),
                spec.replicates
            ),
        ),
        ("Random subset seed".into(), spec.random_seed.to_string()),
        (
            "Embedded cluster".into(),
            format!("leader + {} local worker(s)", spec.local_workers),
        ),
    ]
}

fn describe_train(t: &crate::train::TrainConfig) -> String {
    format!(
        "{} epoch(s), batch {}, SGD lr {} (×{} at epochs {:?}), momentum {}{}, weight decay {}, augmentation {}",
        t.epochs,
        t.batch_size,
        t.schedule.lr,
        t.schedule.gamma,
        t.schedule.milestones,
        t.momentum,
        if t.nesterov { " (Nesterov)" } else { "" },
        t.weight_decay,
        if t.augment { "on" } else { "off" }
    )
}
