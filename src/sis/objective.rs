//! What BackSelect compares candidates by.
//!
//! The paper keeps the removal that leaves the highest softmax probability `f` of the
//! target class `c`. In fp32, `f` rounds to exactly 1.0 once the logit gap exceeds
//! about 17 (common for ≥ 99 %-confident models): every candidate then ties and the
//! tie rule (lowest pixel index) decides the whole order, and the mask gradient
//! `∇f = −f(1−f)·∇L` vanishes so the tie-break noise decides it. Both methods
//! therefore compare by
//!
//! `L = logsumexp_{j≠c}(z_j − z_c)`, computed from the logits `z`, with `log f = −softplus(L)`:
//!
//! the smallest `L` is the largest `f` in exact arithmetic, and the gradient `−∇L`
//! orders pixels of one image exactly as `∇f` does (a positive per-image factor
//! `f(1−f)` apart) but keeps its magnitude when `f` saturates.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How BackSelect ranks candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Rank by `L = logsumexp_{j≠c}(z_j − z_c)` (exact: smallest `L`, in float64 from
    /// the fp32 logits; gradient: largest `−∇_M L`). The default.
    #[default]
    LogOdds,
    /// Rank by the fp32 softmax probability `f` itself (exact: largest `f`; gradient:
    /// largest `∇_M f`), as the paper writes it. Saturates for confident models; kept
    /// to read stores made before `log-odds` existed and as a control.
    Confidence,
}

impl Objective {
    /// What stores of format 1 were made with.
    pub fn legacy() -> Self {
        Objective::Confidence
    }

    /// `log-odds` or `confidence`, as in job specs and `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::LogOdds => "log-odds",
            Objective::Confidence => "confidence",
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log-odds" => Ok(Objective::LogOdds),
            "confidence" => Ok(Objective::Confidence),
            other => Err(format!(
                "unknown BackSelect objective `{other}` (expected log-odds or confidence)"
            )),
        }
    }
}

/// `L = logsumexp_{j≠c}(z_j − z_c)` per row of `logits` `[N, K]` for targets `[N]`,
/// computed in `kind` (Float or Double); differentiable. With one class, `L = −∞`.
pub fn log_odds(logits: &Tensor, targets: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    let z = logits.f_to_kind(kind)?;
    let t = targets.f_unsqueeze(1)?;
    let diff = z.f_sub(&z.f_gather(1, &t, false)?)?;
    let own = diff
        .f_zeros_like()?
        .f_to_kind(Kind::Bool)?
        .f_scatter_value(1, &t, 1)?;
    diff.f_masked_fill(&own, f64::NEG_INFINITY)?
        .f_logsumexp(&[1i64][..], false)
}
