//! `--precision fp32|bf16|fp16|auto`: which BackSelect steps may run in reduced
//! precision, and how `auto` decides.
//!
//! Reduced precision ranks; fp32 decides what is reported:
//! - exact BackSelect evaluates every candidate in reduced precision, then the best
//!   `rerank` (default 8) of that ranking in fp32, and removes the fp32 best of those.
//!   Its order equals fp32 exact's wherever fp32's best candidate is among them;
//! - Batched Gradient BackSelect runs its forward+backward steps in reduced precision
//!   (its recorded history too);
//! - screened exact takes its mask gradient in reduced precision and evaluates its
//!   `M` candidates in fp32.
//!
//! The target class and `f(x)` are always fp32, and every SIS reported is re-checked
//! in fp32 (`f(x_S) ≥ τ`, blocks restored until it holds; see [`super::engine`]).
//!
//! `auto` is fp32 unless the device computes a reduced kind natively — CUDA (tensor
//! cores), or an x86 CPU with AVX512-BF16 or AMX-BF16, detected with `cpuid` — *and*
//! the model's forwards measure faster in it ([`measure_speedup`]). The job fixes
//! the result once, on the leader (or the single `overinterp sis` process), and
//! records it in the store; workers compute in what they are sent.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::engine::{BackSelectInput, Evaluator};
use super::exact::{score_candidates, screened_exact, Screen};
use super::{BackSelectTrace, Objective, SisError};
use crate::models::Classifier;

/// Candidates re-evaluated in fp32 per step of reduced-precision exact BackSelect.
pub const DEFAULT_RERANK: u32 = 8;

/// Speed-up over fp32 a reduced kind must show before `auto` picks it.
pub const AUTO_MIN_SPEEDUP: f64 = 1.2;

/// The arithmetic of the steps that may run in reduced precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The default (issue 11 asked for `auto`): results must not depend on what a
    /// process happened to measure. With `auto` as default, on a CPU with AMX-BF16
    /// `scripts/chaos`'s single-process reference resolved fp32 and its leader bf16,
    /// and every record differed; every test comparing two stores would be as fragile.
    #[default]
    Fp32,
    /// bfloat16 parameters and activations (8-bit mantissa, fp32's range).
    Bf16,
    /// IEEE half (11-bit mantissa, narrow range).
    Fp16,
    /// Resolved by the job: a reduced kind where native and faster, else fp32. A
    /// timing decision: two jobs on one machine may resolve differently, so stores
    /// meant to be compared should name their precision.
    Auto,
}

impl Precision {
    /// `fp32`, `bf16`, `fp16` or `auto`, as in specs and `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Auto => "auto",
        }
    }

    /// The tensor kind of a reduced precision; `None` for fp32 (and unresolved
    /// `auto`, which the engine computes as fp32).
    pub fn reduced_kind(self) -> Option<Kind> {
        match self {
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
            Precision::Fp32 | Precision::Auto => None,
        }
    }

    fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::BFloat16 => Precision::Bf16,
            Kind::Half => Precision::Fp16,
            _ => Precision::Fp32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            "auto" => Ok(Precision::Auto),
            other => Err(format!(
                "unknown precision `{other}` (expected fp32, bf16, fp16 or auto)"
            )),
        }
    }
}

/// Reduced-precision support of this CPU, from `cpuid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuReduced {
    /// AVX512-BF16 (`cpuid` leaf 7 subleaf 1, EAX bit 5), with AVX-512 enabled by the OS.
    pub avx512_bf16: bool,
    /// AMX-BF16 (`cpuid` leaf 7 subleaf 0, EDX bit 22).
    pub amx_bf16: bool,
}

impl CpuReduced {
    /// Whether bf16 matrix arithmetic is native here.
    pub fn native_bf16(self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }
}

/// Detects [`CpuReduced`] on this machine (all false off x86-64).
pub fn cpu_reduced() -> CpuReduced {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 7 is read only when the maximum basic leaf (leaf 0, EAX) includes it.
        let max_leaf = __cpuid(0).eax;
        if max_leaf < 7 {
            return CpuReduced {
                avx512_bf16: false,
                amx_bf16: false,
            };
        }
        let leaf7 = __cpuid_count(7, 0);
        let leaf7_1 = if leaf7.eax >= 1 {
            __cpuid_count(7, 1).eax
        } else {
            0
        };
        CpuReduced {
            avx512_bf16: std::arch::is_x86_feature_detected!("avx512f") && leaf7_1 & (1 << 5) != 0,
            amx_bf16: leaf7.edx & (1 << 22) != 0,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuReduced {
            avx512_bf16: false,
            amx_bf16: false,
        }
    }
}

/// The reduced kinds worth measuring on `device`: bf16 and fp16 on CUDA, bf16 on a
/// CPU with native bf16, none elsewhere.
pub fn native_reduced_kinds(device: Device) -> Vec<Kind> {
    match device {
        Device::Cuda(_) => vec![Kind::BFloat16, Kind::Half],
        _ if cpu_reduced().native_bf16() => vec![Kind::BFloat16],
        _ => Vec::new(),
    }
}

/// What `auto` became, and why (logged and kept in the store meta's `extra`).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub precision: Precision,
    pub why: String,
}

/// Resolves `auto` for `device`: each native reduced kind is measured with
/// `measure(kind)` (its speed-up over fp32 on the model's forwards) and the fastest
/// taken if at least [`AUTO_MIN_SPEEDUP`]; otherwise fp32. Other precisions stay.
pub fn resolve(
    requested: Precision,
    device: Device,
    mut measure: impl FnMut(Kind) -> Result<f64, SisError>,
) -> Result<Resolved, SisError> {
    if requested != Precision::Auto {
        return Ok(Resolved {
            precision: requested,
            why: "requested".into(),
        });
    }
    let kinds = native_reduced_kinds(device);
    if kinds.is_empty() {
        return Ok(Resolved {
            precision: Precision::Fp32,
            why: format!(
                "auto: no native reduced precision on {device:?} ({:?})",
                cpu_reduced()
            ),
        });
    }
    let mut best = (Precision::Fp32, 1.0f64);
    let mut measured = Vec::new();
    for kind in kinds {
        let speedup = measure(kind)?;
        measured.push(format!("{} {speedup:.2}x", Precision::of_kind(kind)));
        if speedup >= AUTO_MIN_SPEEDUP && speedup > best.1 {
            best = (Precision::of_kind(kind), speedup);
        }
    }
    Ok(Resolved {
        precision: best.0,
        why: format!(
            "auto on {device:?}: measured forwards vs fp32: {} (needs {AUTO_MIN_SPEEDUP}x)",
            measured.join(", ")
        ),
    })
}

/// fp32 time over reduced time of no-grad forwards of `batch` random images through
/// `fp32` and `reduced` (the same model in `kind`): one warm-up and three timed
/// forwards each, the fastest of each counted.
pub fn measure_speedup(
    fp32: &dyn Classifier,
    reduced: &dyn Classifier,
    kind: Kind,
    batch: i64,
) -> Result<f64, SisError> {
    let _guard = tch::no_grad_guard();
    let [c, h, w] = fp32.input_shape();
    let xs = Tensor::f_randn([batch.max(1), c, h, w], (Kind::Float, fp32.device()))?;
    let time = |eval: &Evaluator| -> Result<f64, SisError> {
        let mut best = f64::INFINITY;
        for i in 0..4 {
            let started = Instant::now();
            let logits = eval.logits(&xs, &[])?;
            // Reading one value waits for the device.
            let _ = logits.f_sum(Kind::Float)?.f_double_value(&[])?;
            if i > 0 {
                best = best.min(started.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    };
    let full = Evaluator::new(fp32);
    let low = Evaluator::new(fp32).with_reduced(reduced, kind);
    let low = low
        .reduced()
        .ok_or_else(|| SisError::Params("no reduced evaluator".into()))?;
    Ok(time(&full)? / time(&low)?.max(1e-12))
}

/// Exact BackSelect with candidates ranked in reduced precision (`low`) and the best
/// `rerank` per job and step re-evaluated in fp32 (`eval`), which chooses among them
/// (smallest fp32 `L`, ties to the lowest pixel index). The history is fp32.
pub fn reduced_exact_backselect(
    eval: &Evaluator,
    low: &Evaluator,
    input: &BackSelectInput,
    objective: Objective,
    rerank: u32,
    candidate_batch: usize,
    max_steps: Option<usize>,
) -> Result<Vec<BackSelectTrace>, SisError> {
    let (_, _, _, device) = input.geometry()?;
    let mut screen = ReducedScreen {
        low,
        input,
        targets: Tensor::from_slice(input.targets).f_to_device(device)?,
        objective,
        rerank: rerank.max(1) as usize,
        candidate_batch,
    };
    screened_exact(
        eval,
        input,
        objective,
        candidate_batch,
        max_steps,
        Some(&mut screen),
    )
}

/// Ranks every remaining pixel by its reduced-precision score; keeps the best few.
struct ReducedScreen<'a> {
    low: &'a Evaluator<'a>,
    input: &'a BackSelectInput<'a>,
    targets: Tensor,
    objective: Objective,
    rerank: usize,
    candidate_batch: usize,
}

impl Screen for ReducedScreen<'_> {
    fn candidates(
        &mut self,
        present: &Tensor,
        remaining: &[Vec<u32>],
    ) -> Result<Vec<Vec<u32>>, SisError> {
        let size = self.input.xs.size();
        let x_cur = self
            .input
            .xs
            .f_mul(&present.f_view([size[0], 1, size[2], size[3]])?)?;
        let (f, l) = score_candidates(
            self.low,
            &x_cur,
            &self.targets,
            remaining,
            self.objective,
            self.candidate_batch,
            self.input.images,
        )?;
        let mut offset = 0;
        let mut out = Vec::with_capacity(remaining.len());
        for rem in remaining {
            let n = rem.len();
            // Better first: smaller L (or larger f), then lower pixel index.
            let mut order: Vec<usize> = (0..n).collect();
            match self.objective {
                Objective::LogOdds => {
                    let l = &l[offset..offset + n];
                    order.sort_by(|&a, &b| l[a].total_cmp(&l[b]).then(a.cmp(&b)));
                }
                Objective::Confidence => {
                    let f = &f[offset..offset + n];
                    order.sort_by(|&a, &b| f[b].total_cmp(&f[a]).then(a.cmp(&b)));
                }
            }
            let mut picked: Vec<u32> = order
                .into_iter()
                .take(self.rerank)
                .map(|i| rem[i])
                .collect();
            picked.sort_unstable();
            out.push(picked);
            offset += n;
        }
        Ok(out)
    }
}
