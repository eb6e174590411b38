//! `overinterp pipeline`: the paper's experiment end to end (train → backselect
//! every train and test image → subsets → evaluate → retrain on subsets →
//! evaluate → analyses → report), every stage cached (see [`super::stages`]).
//!
//! This file only orders the stages; each stage body is a function of
//! [`super::stages`] callable on its own, and the maths lives in
//! [`super::analysis`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::analyses::{Analyses, ConfidenceDrop, Table1Row, TransferMatrix};
use super::analysis::{self, table1::columns};
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{self, Stages, SubsetKind};
use crate::data::{ImageSource, Split};
use crate::job::SisJob;
use crate::models;
use crate::store::StoreReader;

pub use super::analysis::table1::ViewsEval;

/// A model of the spec once its stages ran.
pub struct Built {
    pub spec: ModelSpec,
    /// `--model` string: checkpoint dir, TorchScript path or `ensemble:...`.
    pub model: String,
    pub test_store: PathBuf,
    pub original: ViewsEval,
    /// Evaluations of retrained replicates, by subset kind.
    pub retrained: BTreeMap<String, Vec<ViewsEval>>,
}

/// The datasets every stage reads, opened once.
pub struct Data {
    pub train: Box<dyn ImageSource>,
    pub test: Box<dyn ImageSource>,
    pub corrupted: Option<Box<dyn ImageSource>>,
}

impl Data {
    pub fn open(spec: &PipelineSpec) -> anyhow::Result<Self> {
        Ok(Self {
            train: stages::open_split(&spec.data, Split::Train)?,
            test: stages::open_split(&spec.data, Split::Test)?,
            corrupted: spec
                .corrupted
                .as_deref()
                .map(|c| stages::open_split(c, Split::Test))
                .transpose()?,
        })
    }
}

/// Runs the pipeline and writes the report; returns the report directory.
pub fn run_pipeline(spec: &PipelineSpec, spec_text: &str) -> anyhow::Result<PathBuf> {
    let stages = Stages {
        root: spec.out.clone(),
    };
    let device = crate::util::parse_device(&spec.device).map_err(anyhow::Error::msg)?;
    let data = Data::open(spec)?;
    let mut model_strings: BTreeMap<String, String> = BTreeMap::new();
    let mut built = Vec::new();
    // Plain models first, so ensembles can name them.
    let mut order: Vec<&ModelSpec> = spec
        .models
        .iter()
        .filter(|m| m.members.is_empty())
        .collect();
    order.extend(spec.models.iter().filter(|m| !m.members.is_empty()));
    for m in order {
        let model = original_model(&stages, spec, m, &data, &model_strings, device)?;
        model_strings.insert(m.name.clone(), model.clone());
        built.push(build_model(&stages, spec, m, model, &data, device)?);
    }
    let report_dir = spec.out.join("report");
    std::fs::create_dir_all(&report_dir)?;
    let transfer = transfer_matrix(&stages, &built, data.test.as_ref(), spec.fraction, device)?;
    let analyses = analyze(spec, spec_text, &built, &data, transfer, &report_dir)?;
    super::report::write_report(&analyses, &report_dir)?;
    Ok(report_dir)
}

/// The `--model` string of a model of the spec: trains it on full images (stage
/// `train-NAME`) if it names an architecture.
pub fn original_model(
    stages: &Stages,
    spec: &PipelineSpec,
    m: &ModelSpec,
    data: &Data,
    model_strings: &BTreeMap<String, String>,
    device: tch::Device,
) -> anyhow::Result<String> {
    Ok(if let Some(arch) = &m.arch {
        let mut cfg = spec.train.clone();
        cfg.seed = m.seed;
        let key = (
            "train",
            arch,
            m.input_dropout,
            &spec.data,
            data.train.content_hash(),
            &cfg,
        );
        let (dir, ()) = stages.run(&format!("train-{}", m.name), &key, |dir| {
            stages::train_model(
                dir,
                arch,
                m.input_dropout,
                data.train.as_ref(),
                None,
                &cfg,
                device,
            )
        })?;
        dir.to_string_lossy().into_owned()
    } else if let Some(path) = &m.torchscript {
        path.to_string_lossy().into_owned()
    } else {
        format!(
            "ensemble:{}",
            m.members
                .iter()
                .map(|n| model_strings[n].clone())
                .collect::<Vec<_>>()
                .join(",")
        )
    })
}

/// Stage `sis-NAME-SPLIT`: BackSelect of every image of `split` through the
/// embedded cluster; returns the store.
pub fn sis_store(
    stages: &Stages,
    spec: &PipelineSpec,
    name: &str,
    model: &str,
    split: Split,
) -> anyhow::Result<PathBuf> {
    let mut params = spec.sis.clone();
    params.thresholds = vec![spec.threshold];
    let job = SisJob {
        model: model.to_string(),
        data: spec.data.clone(),
        split,
        out: PathBuf::new(),
        device: spec.device.clone(),
        start: None,
        end: None,
        sis: params,
    };
    let key = ("sis", &job, crate::job::model_fingerprint(model)?);
    let (dir, ()) = stages.run(&format!("sis-{name}-{split}"), &key, |dir| {
        let job = SisJob {
            out: dir.join("store"),
            ..job.clone()
        };
        stages::sis_split(&job, spec.local_workers)
    })?;
    Ok(dir.join("store"))
}

/// Stage `STAGE`: `model_dir` evaluated on the test views (full, BS and random
/// subsets of `test_store`, corrupted).
pub fn views_stage(
    stages: &Stages,
    spec: &PipelineSpec,
    data: &Data,
    test_store: &Path,
    model_dir: &str,
    stage: &str,
    device: tch::Device,
) -> anyhow::Result<ViewsEval> {
    let q = spec.fraction;
    let key = (
        "eval",
        model_dir,
        crate::job::model_fingerprint(model_dir)?,
        test_store,
        q,
        spec.random_seed,
        &spec.corrupted,
    );
    let (_, v) = stages.run(stage, &key, |_| {
        let classifier = load(model_dir, device, data.test.as_ref())?;
        evaluate_views(classifier.as_ref(), data, test_store, q, spec.random_seed)
    })?;
    Ok(v)
}

/// The architecture retrained on this model's subsets, if any: `retrain_arch`
/// (e.g. a native Inception v3 for a TorchScript one), else the model's own `arch`.
pub fn retrain_arch(m: &ModelSpec) -> Option<&str> {
    if !m.retrain {
        return None;
    }
    m.retrain_arch.as_deref().or(m.arch.as_deref())
}

/// SIS stores, evaluation and retraining of one model of the spec.
fn build_model(
    stages: &Stages,
    spec: &PipelineSpec,
    m: &ModelSpec,
    model: String,
    data: &Data,
    device: tch::Device,
) -> anyhow::Result<Built> {
    let retrain = retrain_arch(m);
    let test_store = sis_store(stages, spec, &m.name, &model, Split::Test)?;
    let train_store = match retrain {
        Some(_) => Some(sis_store(stages, spec, &m.name, &model, Split::Train)?),
        None => None,
    };
    let original = views_stage(
        stages,
        spec,
        data,
        &test_store,
        &model,
        &format!("eval-{}", m.name),
        device,
    )?;
    let mut retrained = BTreeMap::new();
    if let (Some(arch), Some(train_store)) = (retrain, &train_store) {
        for kind in [SubsetKind::Backselect, SubsetKind::Random] {
            let mut evals = Vec::new();
            for r in 0..spec.replicates {
                let dir = retrain_stage(stages, spec, m, arch, kind, r, train_store, data, device)?;
                let name = format!("retrain-{}-{kind:?}-{r}", m.name).to_lowercase();
                evals.push(views_stage(
                    stages,
                    spec,
                    data,
                    &test_store,
                    &dir.to_string_lossy(),
                    &format!("{name}-eval"),
                    device,
                )?);
            }
            retrained.insert(kind.label(spec.fraction), evals);
        }
    }
    Ok(Built {
        spec: m.clone(),
        model,
        test_store,
        original,
        retrained,
    })
}

/// Stage `retrain-NAME-KIND-R`: a fresh `arch` trained with seed `r` on the `kind`
/// subsets of the training images; returns its checkpoint directory.
#[allow(clippy::too_many_arguments)]
pub fn retrain_stage(
    stages: &Stages,
    spec: &PipelineSpec,
    m: &ModelSpec,
    arch: &str,
    kind: SubsetKind,
    r: usize,
    train_store: &Path,
    data: &Data,
    device: tch::Device,
) -> anyhow::Result<PathBuf> {
    let q = spec.fraction;
    let mut cfg = spec.retrain.clone();
    cfg.seed = r as u64;
    let key = (
        "retrain",
        arch,
        m.input_dropout,
        kind,
        train_store,
        q,
        spec.random_seed,
        &cfg,
        &spec.data,
    );
    let name = format!("retrain-{}-{kind:?}-{r}", m.name).to_lowercase();
    let [_, h, w] = data.train.shape();
    let (dir, ()) = stages.run(&name, &key, |dir| {
        if spec.retrain_ranks > 1 {
            let masks = stages::masks_flag(kind, q, spec.random_seed, train_store);
            return stages::train_model_data_parallel(
                dir,
                arch,
                m.input_dropout,
                &spec.data,
                &masks,
                &cfg,
                &spec.device,
                spec.retrain_ranks,
            );
        }
        let masks = stages::subset_masks(kind, q, spec.random_seed, train_store, (h, w))?;
        stages::train_model(
            dir,
            arch,
            m.input_dropout,
            data.train.as_ref(),
            Some(masks.as_ref()),
            &cfg,
            device,
        )
    })?;
    Ok(dir)
}

fn load(
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
fn evaluate_views(
    model: &dyn models::Classifier,
    data: &Data,
    test_store: &Path,
    q: f64,
    random_seed: u64,
) -> anyhow::Result<ViewsEval> {
    let test = data.test.as_ref();
    let [_, h, w] = test.shape();
    let bs = stages::subset_masks(SubsetKind::Backselect, q, random_seed, test_store, (h, w))?;
    let random = stages::subset_masks(SubsetKind::Random, q, random_seed, test_store, (h, w))?;
    Ok(ViewsEval {
        full: stages::evaluate(model, test, None)?.0,
        backselect: stages::evaluate(model, test, Some(bs.as_ref()))?.0,
        random: stages::evaluate(model, test, Some(random.as_ref()))?.0,
        corrupted: data
            .corrupted
            .as_deref()
            .map(|c| stages::evaluate(model, c, None).map(|r| r.0))
            .transpose()?,
    })
}

/// Section 4.1: every model evaluated on every other model's backselect test subsets.
pub fn transfer_matrix(
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
    let (_, accuracy) = stages.run("transfer", &key, |_| {
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

/// Every analysis of the report: Table 1 and the confidence drop from the
/// evaluation stages, the rest from one streaming pass over each test store.
pub fn analyze(
    spec: &PipelineSpec,
    spec_text: &str,
    built: &[Built],
    data: &Data,
    transfer: Option<TransferMatrix>,
    report_dir: &Path,
) -> anyhow::Result<Analyses> {
    let q = spec.fraction;
    let mut a = Analyses {
        name: spec.name.clone(),
        dataset: spec.data.clone(),
        train_images: data.train.len(),
        test_images: data.test.len(),
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
        a.galleries
            .push(s.gallery.write(name, data.test.as_ref(), report_dir)?);
    }
    Ok(a)
}
