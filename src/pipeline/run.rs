//! `overinterp pipeline`: the paper's experiment end to end (train → backselect
//! every train and test image → subsets → evaluate → retrain on subsets →
//! evaluate → analyses → report), every stage cached (see [`super::stages`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::analyses::*;
use super::analysis::{self, table1::columns};
use super::experiment::{Experiment, Ranks};
use super::plan::{names, retrains};
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{self, EvalSummary, Stages, SubsetKind};
use crate::data::{ImageSource, Split};
use crate::models;
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
        settings: analysis::settings::settings(spec),
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
        let s = analysis::analyze_store(name, &store, &spec.sweep, spec.threshold, q)
            .with_context(|| format!("reading {}", b.test_store.display()))?;
        a.sis_size.push(s.sis_size);
        a.correct_vs_wrong.push(s.correct_vs_wrong);
        a.heatmaps.extend(s.heatmaps);
        a.galleries.push(s.gallery.write(name, test, report_dir)?);
    }
    Ok(a)
}
