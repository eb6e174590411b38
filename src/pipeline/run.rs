//! `overinterp pipeline`: the paper's experiment end to end (train → backselect
//! every train and test image and the corrupted set → subsets → evaluate → retrain on subsets →
//! evaluate → analyses → report), every stage cached (see [`super::stages`]).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::analyses::*;
use super::analysis::{self, table1::columns};
use super::experiment::{Experiment, Ranks};
use super::plan::{names, retrains, SisSet};
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{self, Stages, SubsetKind};
use super::views::ViewsEval;
use crate::data::ImageSource;
use crate::models;
use crate::store::StoreReader;

/// A model of the spec once its stages ran.
struct Built {
    spec: ModelSpec,
    /// `--model` string: checkpoint dir, TorchScript path or `ensemble:...`.
    model: String,
    test_store: PathBuf,
    /// The SIS store of the corrupted test set, where the spec has one.
    corrupted_store: Option<PathBuf>,
    original: ViewsEval,
    /// The subsets' stability between two noise seeds (gradient BackSelect).
    stability: Option<Stability>,
    /// Evaluations of retrained replicates, by subset kind (label), in
    /// [`SubsetKind::RETRAINED`] order.
    retrained: Vec<(String, Vec<ViewsEval>)>,
}

/// Runs the pipeline and writes the report; returns the report directory.
/// `threads` (`--threads`) is passed on to the ranks of local training gangs, so they
/// compute with the same thread count as this process (and as a Slurm run with the
/// same `--threads`: libtorch's CPU reductions depend on it).
pub fn run_pipeline(
    spec: &PipelineSpec,
    spec_text: &str,
    threads: Option<i32>,
) -> anyhow::Result<PathBuf> {
    let ranks = Ranks::Local {
        spec_file: spec.out.join("pipeline-spec.toml"),
    };
    let mut exp = Experiment::open(spec, Stages::new(spec.out.clone()), ranks)?;
    exp.threads = threads;
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
        let test_store = exp.sis_store(m, &model, SisSet::Test)?;
        let corrupted_store = match spec.corrupted {
            Some(_) => Some(exp.sis_store(m, &model, SisSet::Corrupted)?),
            None => None,
        };
        let train_store = if retrain {
            Some(exp.sis_store(m, &model, SisSet::Train)?)
        } else {
            None
        };
        let original = exp.views(&model, &names::eval(m), &test_store, SubsetKind::Full)?;
        let stability = exp.stability(m, &model, &test_store)?;

        let mut retrained = Vec::new();
        if let Some(train_store) = &train_store {
            for kind in SubsetKind::RETRAINED {
                let mut evals = Vec::new();
                for r in 0..spec.replicates {
                    let dir = exp.retrain(m, kind, r, train_store)?;
                    let name = names::retrain_eval(m, kind, r);
                    evals.push(exp.views(&dir.to_string_lossy(), &name, &test_store, kind)?);
                }
                retrained.push((kind.label(q), evals));
            }
        }
        built.push(Built {
            spec: m.clone(),
            model,
            test_store,
            corrupted_store,
            original,
            stability,
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
        (train_set.as_ref(), test_set.as_ref()),
        transfer,
        &report_dir,
        device,
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

/// The analyses of every built model: Table 1 rows (with agreement, the mask-only
/// control and the corrupted set per group), confidence drops in the original
/// class, subset stability, and one streaming pass over each test store.
fn analyze(
    spec: &PipelineSpec,
    spec_text: &str,
    built: &[Built],
    (train, test): (&dyn ImageSource, &dyn ImageSource),
    transfer: Option<TransferMatrix>,
    report_dir: &Path,
    device: tch::Device,
) -> anyhow::Result<Analyses> {
    let q = spec.fraction;
    let mut a = Analyses {
        name: spec.name.clone(),
        dataset: spec.data.clone(),
        train_images: train.len(),
        test_images: test.len(),
        class_names: analysis::classes::class_names(&spec.data, test.num_classes()),
        fraction: q,
        settings: analysis::settings::settings(spec),
        table1: Vec::new(),
        corruption: Vec::new(),
        stability: Vec::new(),
        confidence: Vec::new(),
        sis_size: Vec::new(),
        correct_vs_wrong: Vec::new(),
        corrupted_correct_vs_wrong: Vec::new(),
        heatmaps: Vec::new(),
        confidence_history: Vec::new(),
        transfer,
        galleries: Vec::new(),
        spec: spec_text.to_string(),
    };
    for b in built {
        let name = &b.spec.name;
        let rows = std::iter::once(("Full".to_string(), vec![&b.original])).chain(
            b.retrained
                .iter()
                .map(|(kind, evals)| (kind.clone(), evals.iter().collect())),
        );
        for (train_on, evals) in rows {
            a.table1.push(Table1Row {
                model: name.clone(),
                train_on: train_on.clone(),
                eval_on: columns(&evals, q),
            });
            let groups = analysis::table1::corrupted_groups(&evals);
            if !groups.is_empty() {
                a.corruption.push(CorruptionRow {
                    model: name.clone(),
                    train_on,
                    groups,
                });
            }
        }
        // Every evaluation stage of this version records it; a summary without it
        // would be a top-class confidence, which the report must not show as this.
        let ci = |e: &super::stages::EvalSummary| {
            e.original_class_confidence
                .as_ref()
                .map(analysis::stats::mean_ci_of)
                .with_context(|| {
                    format!("model {name}: an evaluation holds no confidence in the original class; rerun its eval stage")
                })
        };
        a.confidence.push(ConfidenceDrop {
            model: name.clone(),
            full: ci(&b.original.full)?,
            backselect: ci(&b.original.backselect)?,
            random: ci(&b.original.random)?,
        });
        a.stability.extend(b.stability.clone());
        let store = StoreReader::open(&b.test_store)
            .with_context(|| format!("opening {}", b.test_store.display()))?;
        let s = analysis::analyze_store(name, &store, &spec.sweep, spec.threshold, q)
            .with_context(|| format!("reading {}", b.test_store.display()))?;
        a.sis_size.push(s.sis_size);
        a.correct_vs_wrong.push(s.correct_vs_wrong);
        if let Some(c) = &b.corrupted_store {
            let store = StoreReader::open(c).with_context(|| format!("opening {}", c.display()))?;
            a.corrupted_correct_vs_wrong.push(
                analysis::sis_size::correct_vs_wrong(name, &store, spec.threshold)
                    .with_context(|| format!("reading {}", c.display()))?,
            );
        }
        a.heatmaps.extend(s.heatmaps);
        a.confidence_history.push(s.confidence_history);
        let mut picks = s.gallery;
        let model = load(&b.model, device, test)?;
        let checked = picks.verify(model.as_ref(), test)?;
        a.galleries
            .push(picks.write(name, test, report_dir, checked)?);
    }
    Ok(a)
}
