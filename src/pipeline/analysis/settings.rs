//! The report's settings table: what a reader needs to judge the numbers.

use super::super::spec::PipelineSpec;
use crate::train::TrainConfig;

/// (name, value) rows in display order.
pub fn settings(spec: &PipelineSpec) -> Vec<(String, String)> {
    let method = match spec.sis.method {
        crate::sis::Method::Exact => "exact BackSelect".to_string(),
        crate::sis::Method::Gradient { k } => format!(
            "Batched Gradient BackSelect, k = {k}, mini-batch {}",
            spec.sis.batch_size
        ),
        crate::sis::Method::Screened { screen } => format!(
            "screened exact BackSelect, M = {screen} candidates per step by the mask gradient"
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

/// One line for a training configuration.
pub fn describe_train(t: &TrainConfig) -> String {
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
