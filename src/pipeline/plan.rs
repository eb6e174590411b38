//! The pipeline's stages as a graph: each stage's name, what it does and which
//! stages it reads. An embedded run walks it implicitly ([`super::run`]); a stage job
//! runs one node of it ([`run_stage`]); `--slurm` submits it with dependencies.
//!
//! Stage names are those of the stage directories (`stages/<name>-<hash>`); they come
//! from [`names`], the one place both the embedded run and the graph take them from.

use serde::Serialize;

use super::experiment::Experiment;
use super::spec::{ModelSpec, PipelineSpec};
use super::stages::{Policy, SubsetKind};
use crate::data::Split;

/// Stage names, shared by the embedded run and the graph.
pub mod names {
    use super::*;

    pub fn train(m: &ModelSpec) -> String {
        format!("train-{}", m.name)
    }
    pub fn sis(m: &ModelSpec, set: SisSet) -> String {
        format!("sis-{}-{set}", m.name)
    }
    pub fn stability(m: &ModelSpec) -> String {
        format!("stability-{}", m.name)
    }
    pub fn eval(m: &ModelSpec) -> String {
        format!("eval-{}", m.name)
    }
    pub fn retrain(m: &ModelSpec, kind: SubsetKind, replicate: usize) -> String {
        format!("retrain-{}-{kind:?}-{replicate}", m.name).to_lowercase()
    }
    pub fn retrain_eval(m: &ModelSpec, kind: SubsetKind, replicate: usize) -> String {
        format!("{}-eval", retrain(m, kind, replicate))
    }
    /// The transfer matrix, analyses and report (the `transfer` stage and no cache).
    pub const REPORT: &str = "report";
    pub const TRANSFER: &str = "transfer";
}

/// The images a SIS stage BackSelects: a split of the spec's data, or its corrupted
/// test set (`corrupted`, for the SIS size of correct vs. wrong predictions there,
/// the paper's Figure S3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SisSet {
    Train,
    Test,
    Corrupted,
}

impl SisSet {
    /// The split of the dataset spec it reads (the corrupted set is a test split).
    pub fn split(self) -> Split {
        match self {
            SisSet::Train => Split::Train,
            SisSet::Test | SisSet::Corrupted => Split::Test,
        }
    }
}

impl std::fmt::Display for SisSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SisSet::Train => "train",
            SisSet::Test => "test",
            SisSet::Corrupted => "corrupted",
        })
    }
}

/// What a stage does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StageKind {
    /// Train a model of the spec on full images (a gang on Slurm).
    Train,
    /// BackSelect every image of a split or the corrupted set (a leader and workers).
    Sis(SisSet),
    /// Evaluate an original model on the test views.
    Eval,
    /// BackSelect a sample of test images with another noise seed (subset stability).
    Stability,
    /// Retrain on one kind of subset, one replicate (a gang; replicates form an array).
    Retrain(SubsetKind, usize),
    /// Evaluate a retrained replicate.
    RetrainEval(SubsetKind, usize),
    /// Transfer matrix, analyses, report.
    Report,
}

/// One node of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedStage {
    pub name: String,
    pub kind: StageKind,
    /// The model of the spec it belongs to (none for the report).
    pub model: Option<String>,
    /// Stages it reads, all earlier in the plan.
    pub deps: Vec<String>,
}

/// Whether the spec retrains on this model's subsets.
pub fn retrains(m: &ModelSpec) -> bool {
    m.retrain && m.retrain_arch().is_some()
}

/// Every stage of the spec, each after the stages it reads.
pub fn plan(spec: &PipelineSpec) -> Vec<PlannedStage> {
    let mut out = Vec::new();
    let mut push = |name: String, kind, model: Option<&ModelSpec>, deps: Vec<String>| {
        out.push(PlannedStage {
            name,
            kind,
            model: model.map(|m| m.name.clone()),
            deps,
        })
    };
    let by_name = |n: &str| spec.models.iter().find(|m| m.name == n);
    // Stages a model's `--model` string needs: its training, or its members'.
    let model_deps = |m: &ModelSpec| -> Vec<String> {
        if m.arch.is_some() {
            vec![names::train(m)]
        } else {
            m.members
                .iter()
                .filter_map(|n| by_name(n))
                .filter(|o| o.arch.is_some())
                .map(names::train)
                .collect()
        }
    };
    for m in spec.models.iter().filter(|m| m.arch.is_some()) {
        push(names::train(m), StageKind::Train, Some(m), vec![]);
    }
    let ordered = spec
        .models
        .iter()
        .filter(|m| m.members.is_empty())
        .chain(spec.models.iter().filter(|m| !m.members.is_empty()));
    for m in ordered {
        let deps = model_deps(m);
        let test = names::sis(m, SisSet::Test);
        push(
            test.clone(),
            StageKind::Sis(SisSet::Test),
            Some(m),
            deps.clone(),
        );
        if spec.corrupted.is_some() {
            push(
                names::sis(m, SisSet::Corrupted),
                StageKind::Sis(SisSet::Corrupted),
                Some(m),
                deps.clone(),
            );
        }
        let mut eval_deps = deps.clone();
        eval_deps.push(test.clone());
        push(names::eval(m), StageKind::Eval, Some(m), eval_deps.clone());
        if matches!(spec.sis.method, crate::sis::Method::Gradient { .. }) {
            push(
                names::stability(m),
                StageKind::Stability,
                Some(m),
                eval_deps,
            );
        }
        if !retrains(m) {
            continue;
        }
        let train_store = names::sis(m, SisSet::Train);
        push(
            train_store.clone(),
            StageKind::Sis(SisSet::Train),
            Some(m),
            deps,
        );
        for kind in SubsetKind::RETRAINED {
            for r in 0..spec.replicates {
                let retrain = names::retrain(m, kind, r);
                push(
                    retrain.clone(),
                    StageKind::Retrain(kind, r),
                    Some(m),
                    vec![train_store.clone()],
                );
                push(
                    names::retrain_eval(m, kind, r),
                    StageKind::RetrainEval(kind, r),
                    Some(m),
                    vec![retrain, test.clone()],
                );
            }
        }
    }
    let all = out.iter().map(|s| s.name.clone()).collect();
    out.push(PlannedStage {
        name: names::REPORT.into(),
        kind: StageKind::Report,
        model: None,
        deps: all,
    });
    out
}

/// The policy of a job that runs stage `name` (as rank 0 unless `record` is false).
pub fn policy_for(name: &str, record: bool) -> Policy {
    let stages = if name == names::REPORT {
        vec![names::TRANSFER.to_string()]
    } else {
        vec![name.to_string()]
    };
    Policy::Only { stages, record }
}

/// Runs one stage of the plan (its dependencies must be cached, which the
/// experiment's policy enforces). `spec_text` is quoted in the report.
pub fn run_stage(exp: &Experiment, stage: &PlannedStage, spec_text: &str) -> anyhow::Result<()> {
    let spec = exp.spec;
    let model_spec = || -> anyhow::Result<&ModelSpec> {
        let name = stage.model.as_deref().unwrap_or_default();
        spec.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow::anyhow!("stage {}: no model {name} in the spec", stage.name))
    };
    match stage.kind {
        StageKind::Report => {
            super::run::run_experiment(exp, spec_text)?;
        }
        StageKind::Train => {
            exp.model(model_spec()?)?;
        }
        StageKind::Sis(set) => {
            let m = model_spec()?;
            let model = exp.model(m)?;
            exp.sis_store(m, &model, set)?;
        }
        StageKind::Eval => {
            let m = model_spec()?;
            let model = exp.model(m)?;
            let test_store = exp.sis_store(m, &model, SisSet::Test)?;
            exp.views(&model, &stage.name, &test_store, SubsetKind::Full)?;
        }
        StageKind::Stability => {
            let m = model_spec()?;
            let model = exp.model(m)?;
            let test_store = exp.sis_store(m, &model, SisSet::Test)?;
            exp.stability(m, &model, &test_store)?;
        }
        StageKind::Retrain(kind, r) | StageKind::RetrainEval(kind, r) => {
            let m = model_spec()?;
            let model = exp.model(m)?;
            let train_store = exp.sis_store(m, &model, SisSet::Train)?;
            let dir = exp.retrain(m, kind, r, &train_store)?;
            if let StageKind::RetrainEval(..) = stage.kind {
                let test_store = exp.sis_store(m, &model, SisSet::Test)?;
                exp.views(&dir.to_string_lossy(), &stage.name, &test_store, kind)?;
            }
        }
    }
    Ok(())
}

/// Finds a stage of the plan by name; `{task}` in the name is replaced by
/// `SLURM_ARRAY_TASK_ID` (a replicate of a job array).
pub fn find<'a>(plan: &'a [PlannedStage], name: &str) -> anyhow::Result<&'a PlannedStage> {
    let name = if name.contains("{task}") {
        let task = std::env::var("SLURM_ARRAY_TASK_ID").map_err(|_| {
            anyhow::anyhow!("--stage {name} names an array task but SLURM_ARRAY_TASK_ID is not set")
        })?;
        name.replace("{task}", &task)
    } else {
        name.to_string()
    };
    plan.iter().find(|s| s.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no stage {name} in this spec; its stages: {}",
            plan.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}
