//! `scripts/bench-vs-reference`: the SIS engine against `scripts/reference_sis.py` (plain
//! PyTorch, no code shared) on the same TorchScript ResNet20, the same real images
//! (Fashion-MNIST laid out as 32×32×3 in CIFAR-10's binary format) and the same thread
//! count. Both sides time only their work (the reference reports its own seconds after
//! loading and an untimed warm-up; the engine's module is warmed the same way). Rounds
//! alternate the two sides so the shared machine's load falls on both.
//!
//! Workloads: Batched Gradient BackSelect k = 1 on 32 images (1,024 steps); exact
//! BackSelect (candidates of a few images pooled, a few steps: steps per second); SIS
//! collections at τ = 0.3 and 0.9 (gradient method, larger k). The engine runs as
//! optimized (the default levers) and, as a peer for the agreement of removal orders, with
//! the levers off (the "unoptimised" engine: the module as saved, without batch-norm
//! folding; NCHW inputs, candidate batch 256, one lane).
//!
//! Usage (the script passes these): `bench_vs_reference DIR [--device cpu|cuda]
//! [--threads N] [--rounds N] [--grad-images N] [--exact-images N] [--exact-steps N]
//! [--coll-images N] [--screened-full N [--screened-full-only]] [--quick] [--json FILE]`, DIR made by
//! `scripts/bench_vs_reference_prep.py`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use overinterp::data::{self, ImageSource, Split};
use overinterp::models::{Classifier, TorchScriptModel};
use overinterp::sis::engine::BackSelectInput;
use overinterp::sis::exact::exact_backselect;
use overinterp::sis::gradient::gradient_backselect;
use overinterp::sis::lanes::in_lanes;
use overinterp::sis::screened::{agreement, screened_backselect};
use overinterp::sis::{
    run_sis, run_sis_with, BackSelectTrace, Evaluator, ImageSis, Lane, Lanes, Method, Objective,
    SisParams,
};
use serde_json::{json, Value};
use tch::{Device, Tensor};

/// Settings of one benchmark run.
struct Settings {
    dir: PathBuf,
    device: Device,
    threads: usize,
    rounds: usize,
    /// Images and steps of the exact workload.
    exact_images: usize,
    exact_steps: usize,
    /// Images and k of the collection workload.
    coll_images: usize,
    coll_k: u32,
    /// Images of the gradient k = 1 workload (32 by default: 1,024 steps).
    grad_images: usize,
    /// Images of the whole-run screened (M = 32) vs exact comparison (0: only the
    /// first exact steps are compared; a whole exact run is p(p+1)/2 forwards).
    screened_full: usize,
    /// Only the whole-run screened comparison (`--screened-full-only`): it needs no
    /// reference, and its Jaccard does not depend on the machine's load.
    screened_full_only: bool,
    json: PathBuf,
}

fn settings() -> anyhow::Result<Settings> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: bench_vs_reference DIR [options]")?,
    );
    let mut s = Settings {
        json: dir.join("bench-vs-reference.json"),
        dir,
        device: Device::Cpu,
        threads: tch::get_num_threads().max(1) as usize,
        rounds: 1,
        exact_images: 2,
        exact_steps: 8,
        coll_images: 8,
        coll_k: 32,
        grad_images: 32,
        screened_full: 0,
        screened_full_only: false,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => {
                s.device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => bail!("--device {other}: expected cpu or cuda"),
                }
            }
            "--threads" => s.threads = value()?.parse().context("--threads")?,
            "--rounds" => s.rounds = value()?.parse().context("--rounds")?,
            "--json" => s.json = PathBuf::from(value()?),
            "--grad-images" => s.grad_images = value()?.parse().context("--grad-images")?,
            "--exact-images" => s.exact_images = value()?.parse().context("--exact-images")?,
            "--exact-steps" => s.exact_steps = value()?.parse().context("--exact-steps")?,
            "--screened-full" => s.screened_full = value()?.parse().context("--screened-full")?,
            "--screened-full-only" => s.screened_full_only = true,
            "--coll-images" => s.coll_images = value()?.parse().context("--coll-images")?,
            "--quick" => {
                s.grad_images = 4;
                s.exact_images = 1;
                s.exact_steps = 2;
                s.coll_images = 2;
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(s)
}

/// The reference's JSON and its own seconds.
fn reference(
    s: &Settings,
    model: &Path,
    indices: &[u64],
    args: &[String],
) -> anyhow::Result<(f64, Value)> {
    let out = tempfile::NamedTempFile::new()?;
    let list: Vec<String> = indices.iter().map(u64::to_string).collect();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference_sis.py");
    let run = Command::new(&python)
        .arg(script)
        .arg("--model")
        .arg(model)
        .arg("--cifar10")
        .arg(s.dir.join("cifar-10-batches-bin"))
        .args([
            "--indices",
            &list.join(","),
            "--threads",
            &s.threads.to_string(),
        ])
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !run.status.success() {
        bail!(
            "reference_sis.py failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&std::fs::read(out.path())?)?;
    Ok((
        v["seconds"]
            .as_f64()
            .context("reference output lacks seconds")?,
        v,
    ))
}

/// Normalized images, their predicted classes and dataset indices.
struct Batch {
    xs: Tensor,
    predicted: Vec<i64>,
    indices: Vec<u64>,
}

fn batch(source: &dyn ImageSource, eval: &Evaluator, n: usize) -> anyhow::Result<Batch> {
    let positions: Vec<usize> = (0..n).collect();
    let indices: Vec<u64> = (0..n as u64).collect();
    let (xs, _) = data::batch(source, &positions, eval.device())?;
    let (predicted, _) = eval.predict(&xs, &indices)?;
    Ok(Batch {
        xs,
        predicted,
        indices,
    })
}

/// Times one BackSelect of the engine over every image of `b`, split across the
/// evaluator's CPU lanes where it has them.
fn ours_backselect(
    eval: &Evaluator,
    b: &Batch,
    method: Method,
    candidate_batch: usize,
    max_steps: Option<usize>,
) -> anyhow::Result<(f64, Vec<BackSelectTrace>)> {
    let p = (b.xs.size()[2] * b.xs.size()[3]) as usize;
    let present = vec![vec![true; p]; b.indices.len()];
    let input = BackSelectInput {
        xs: &b.xs,
        present: &present,
        targets: &b.predicted,
        noise_keys: &b.indices,
        images: &b.indices,
    };
    let start = Instant::now();
    let traces = in_lanes(eval, &input, |eval, input| match method {
        Method::Exact => {
            exact_backselect(eval, input, Objective::LogOdds, candidate_batch, max_steps)
        }
        Method::Gradient { k } => {
            gradient_backselect(eval, input, Objective::LogOdds, k, max_steps)
        }
        Method::Screened { screen } => screened_backselect(
            eval,
            eval,
            input,
            Objective::LogOdds,
            screen,
            candidate_batch,
            max_steps,
        ),
    })?;
    Ok((start.elapsed().as_secs_f64(), traces))
}

/// First step (pixel, for k = 1 and exact) where two removal orders differ; `None` if
/// they agree over the shorter one.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Agreement of the engine's orders with the reference's: per image, the first step
/// where they differ against the reference's first near-tie. Returns (images identical up
/// to the near-tie or throughout, lines to print).
fn agreement_with_reference(traces: &[BackSelectTrace], refr: &Value) -> (usize, Vec<String>) {
    let images = refr["images"].as_array().cloned().unwrap_or_default();
    let mut ok = 0;
    let mut lines = Vec::new();
    for (t, r) in traces.iter().zip(&images) {
        let theirs: Vec<u32> = serde_json::from_value(r["order"].clone()).unwrap_or_default();
        let tie = r["first_near_tie"].as_u64().map(|x| x as usize);
        let diff = first_difference(&t.order, &theirs);
        ok += usize::from(agree_up_to(diff, tie));
        lines.push(format!(
            "image {}: first differing step {}, reference's first near-tie {}",
            r["index"],
            diff.map_or("none".into(), |d| d.to_string()),
            tie.map_or("none".into(), |t| t.to_string())
        ));
    }
    (ok, lines)
}

/// Images whose two engine orders (first differences `diffs`) agree up to the
/// reference's first near-tie on that image: the near-tie the reference found in the
/// same arithmetic as the unoptimised engine decides where a reordered float sum may
/// flip a choice.
fn same_up_to_near_tie(diffs: &[Option<usize>], refr: &Value) -> usize {
    let images = refr["images"].as_array().cloned().unwrap_or_default();
    diffs
        .iter()
        .zip(&images)
        .filter(|(d, r)| agree_up_to(**d, r["first_near_tie"].as_u64().map(|t| t as usize)))
        .count()
}

/// Whether two orders whose first difference is `diff` agree up to the near-tie `tie`
/// (a difference at or after the near-tie is allowed; with no near-tie, none is).
fn agree_up_to(diff: Option<usize>, tie: Option<usize>) -> bool {
    match (diff, tie) {
        (None, _) => true,
        (Some(d), Some(t)) => d >= t,
        (Some(_), None) => false,
    }
}

/// Total seconds and the last round's orders of the three sides of [`Bench::alternate`].
struct Alternated {
    rounds: usize,
    ours: f64,
    /// The optimized engine without lanes.
    one_lane: f64,
    base: f64,
    reference: f64,
    tr_ours: Vec<BackSelectTrace>,
    tr_base: Vec<BackSelectTrace>,
    refr: Value,
}

/// How the engine's orders agree with the reference's and with the unoptimised engine's.
struct Agreements {
    /// Images identical to the reference up to its first near-tie.
    with_reference: usize,
    /// Images whose optimized and unoptimised orders are identical throughout.
    identical: usize,
    /// ... and up to the reference's first near-tie.
    up_to_near_tie: usize,
    /// Per image, the first step where the optimized and unoptimised orders differ.
    diffs: Vec<Option<usize>>,
}

/// Prints [`Agreements`] under `heading`, one line per image against the reference.
fn print_agreement(
    heading: &str,
    ours: &[BackSelectTrace],
    base: &[BackSelectTrace],
    refr: &Value,
) -> Agreements {
    let (with_reference, lines) = agreement_with_reference(ours, refr);
    let (identical, diffs) = agreement_between(ours, base);
    let up_to_near_tie = same_up_to_near_tie(&diffs, refr);
    println!("\n{heading}:");
    println!(
        "  with the reference: {with_reference} of {} images identical up to the reference's first near-tie",
        ours.len()
    );
    for l in &lines {
        println!("    {l}");
    }
    println!(
        "  optimized vs unoptimised engine: {identical} of {} orders identical throughout, {up_to_near_tie} up to the \
         reference's first near-tie; first differing steps {:?}",
        ours.len(),
        diffs.iter().filter_map(|d| *d).collect::<Vec<_>>()
    );
    Agreements {
        with_reference,
        identical,
        up_to_near_tie,
        diffs,
    }
}

/// (images whose orders are identical throughout, first differing steps).
fn agreement_between(a: &[BackSelectTrace], b: &[BackSelectTrace]) -> (usize, Vec<Option<usize>>) {
    let diffs: Vec<Option<usize>> = a
        .iter()
        .zip(b)
        .map(|(x, y)| first_difference(&x.order, &y.order))
        .collect();
    (diffs.iter().filter(|d| d.is_none()).count(), diffs)
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    overinterp::util::peak_rss_kib().map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}

/// Forwards per second of the model at each candidate batch size (no grad), to size
/// exact BackSelect's batches by measurement. Returns (size, images/s) pairs.
fn candidate_batch_rates(model: &dyn Classifier, x: &Tensor) -> anyhow::Result<Vec<(usize, f64)>> {
    let _guard = tch::no_grad_guard();
    let sizes = [64usize, 128, 256, 512];
    let mut rates = vec![(0.0f64, 0.0f64); sizes.len()];
    for round in 0..3 {
        for (i, &b) in sizes.iter().enumerate() {
            let xb = x
                .narrow(0, 0, 1)
                .expand([b as i64, -1, -1, -1], false)
                .contiguous();
            let reps = (1024 / b).max(1);
            let start = Instant::now();
            for _ in 0..reps {
                let _ = model.forward(&xb, false)?;
            }
            if round > 0 {
                rates[i].0 += (reps * b) as f64;
                rates[i].1 += start.elapsed().as_secs_f64();
            }
        }
    }
    Ok(sizes
        .iter()
        .zip(rates)
        .map(|(&b, (n, t))| (b, n / t))
        .collect())
}

/// Forward + backward-to-input batches per second at the gradient method's batch, with
/// the input in NCHW and in channels-last: what decided the gradient path's layout.
/// A model with channels-last on converts both to channels-last: only its second rate
/// is a layout's.
fn grad_layout_rates(model: &dyn Classifier, xs: &Tensor) -> anyhow::Result<(f64, f64)> {
    let mut t = [0.0f64; 2];
    let reps = 6;
    for round in 0..3 {
        for (i, cl) in [false, true].into_iter().enumerate() {
            let start = Instant::now();
            for _ in 0..reps {
                let x = if cl {
                    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
                } else {
                    xs.shallow_clone()
                };
                let x = x.detach().set_requires_grad(true);
                let out = model.forward(&x, false)?.sum(tch::Kind::Float);
                let _ = Tensor::run_backward(&[out], &[&x], false, false);
            }
            if round > 0 {
                t[i] += start.elapsed().as_secs_f64();
            }
        }
    }
    Ok((2.0 * reps as f64 / t[0], 2.0 * reps as f64 / t[1]))
}

/// A model that counts what it is asked: forwards whose input carries a gradient (the
/// gradient method's steps) and those that do not, with their images; to see where a
/// collection's time goes.
struct Counting {
    inner: TorchScriptModel,
    grad: [AtomicU64; 2],
    nograd: [AtomicU64; 2],
    nograd_secs: Mutex<f64>,
}

impl Counting {
    fn new(inner: TorchScriptModel) -> Self {
        Self {
            inner,
            grad: Default::default(),
            nograd: Default::default(),
            nograd_secs: Mutex::new(0.0),
        }
    }
    fn get(c: &[AtomicU64; 2]) -> (u64, u64) {
        (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed))
    }
}

impl Classifier for Counting {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, overinterp::models::ModelError> {
        let n = xs.size()[0] as u64;
        if xs.requires_grad() {
            self.grad[0].fetch_add(1, Ordering::Relaxed);
            self.grad[1].fetch_add(n, Ordering::Relaxed);
            return self.inner.forward(xs, train);
        }
        self.nograd[0].fetch_add(1, Ordering::Relaxed);
        self.nograd[1].fetch_add(n, Ordering::Relaxed);
        let start = Instant::now();
        let out = self.inner.forward(xs, train);
        *self.nograd_secs.lock().unwrap() += start.elapsed().as_secs_f64();
        out
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn input_shape(&self) -> [i64; 3] {
        self.inner.input_shape()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Whole runs of exact and screened (M = 32) BackSelect with SIS at τ = 0.9 on the
/// first `s.screened_full` images: speed, same-choice steps, 5 % Jaccard, images
/// whose SIS reached τ; and Batched Gradient k = 1's speed and 5 % Jaccard against
/// exact on the same images, for scale.
fn screened_full(
    s: &Settings,
    model: &dyn Classifier,
    source: &dyn ImageSource,
    candidate_batch: usize,
    figures: &mut serde_json::Map<String, Value>,
    report: &mut Vec<String>,
) -> anyhow::Result<()> {
    let indices: Vec<u64> = (0..s.screened_full as u64).collect();
    let run = |method| -> anyhow::Result<(f64, Vec<ImageSis>)> {
        let params = SisParams {
            method,
            thresholds: vec![0.9],
            candidate_batch,
            collection: false,
            ..SisParams::default()
        };
        let mut recs = Vec::new();
        let start = Instant::now();
        run_sis(
            model,
            source,
            &indices,
            &params,
            |r| {
                recs.push(r);
                Ok::<_, std::io::Error>(())
            },
            &AtomicBool::new(false),
        )?;
        Ok((start.elapsed().as_secs_f64(), recs))
    };
    // Batched Gradient k = 1 over the same images: how far the plain gradient ranking,
    // which screened refines, is from exact.
    let (t_grad, gradient) = run(Method::Gradient { k: 1 })?;
    let (t_exact, exact) = run(Method::Exact)?;
    let (t_sc, screened) = run(Method::Screened { screen: 32 })?;
    let mut jaccard_grad = 0.0;
    for (a, b) in exact.iter().zip(&gradient) {
        jaccard_grad += agreement(a, b)?.jaccard_5pct;
    }
    let mut jaccard = 0.0;
    let (mut same, mut total, mut identical) = (0, 0, 0);
    for (a, b) in exact.iter().zip(&screened) {
        let g = agreement(a, b)?;
        jaccard += g.jaccard_5pct;
        same += g.steps_same_choice;
        total += g.steps;
        identical += g.identical_collections;
    }
    let n = exact.len().max(1) as f64;
    // Images with a SIS at τ = 0.9 (f(x) ≥ τ, the SIS verified by the engine).
    let reached = |recs: &[ImageSis]| {
        recs.iter()
            .filter(|r| r.collections.iter().any(|c| !c.sis.is_empty()))
            .count()
    };
    report.push(row(
        &format!("screened M=32 vs exact, {} whole images", exact.len()),
        t_sc,
        t_exact,
        "s",
    ));
    println!(
        "\nscreened M=32 vs exact, whole runs on {} images: {:.2}× exact's speed; mean 5% Jaccard {:.3}; \
         {same} of {total} steps the same choice; {identical} of {} SISes at τ=0.9 identical; images reaching τ=0.9: \
         {} (exact) and {} (screened)",
        exact.len(), t_exact / t_sc, jaccard / n, exact.len(), reached(&exact), reached(&screened)
    );
    println!(
        "gradient k=1 vs exact on the same images: {:.2}× exact's speed; mean 5% Jaccard {:.3}; images reaching τ=0.9: {}",
        t_exact / t_grad,
        jaccard_grad / n,
        reached(&gradient)
    );
    figures.insert("screened_whole".into(), json!({
        "images": exact.len(), "exact_s": t_exact, "screened_s": t_sc, "speedup": t_exact / t_sc,
        "mean_jaccard_5pct": jaccard / n, "same_choice_steps": same, "steps": total,
        "identical_sis": identical, "reached_tau_exact": reached(&exact), "reached_tau_screened": reached(&screened),
        "gradient_k1_s": t_grad, "gradient_k1_mean_jaccard_5pct": jaccard_grad / n,
        "reached_tau_gradient_k1": reached(&gradient),
    }));
    Ok(())
}

fn row(what: &str, ours: f64, theirs: f64, unit: &str) -> String {
    format!(
        "{what:<46} {ours:>10.2} {theirs:>10.2} {unit:<9} {:>6.2}×",
        theirs_over(ours, theirs, unit)
    )
}

/// The engine's advantage: reference seconds / engine seconds, or engine rate /
/// reference rate.
fn theirs_over(ours: f64, theirs: f64, unit: &str) -> f64 {
    if unit == "s" {
        theirs / ours
    } else {
        ours / theirs
    }
}

fn main() -> anyhow::Result<()> {
    let s = settings()?;
    tch::set_num_threads(s.threads as i32);
    let model_path = s.dir.join("resnet20_fmnist32.pt");
    let spec: data::DatasetSpec = format!("cifar10:{}", s.dir.display()).parse()?;
    let source = data::open_dataset(&spec, Split::Test)?;
    let opt = TorchScriptModel::load(&model_path, s.device, SHAPE)?;
    anyhow::ensure!(
        opt.folded() && opt.batch_norms_left() == 0,
        "the optimized model's batch norms were not all folded (see the log above)"
    );
    // One lane per thread on CPU: copies of the optimized model for the extra lanes.
    let lane_count = if s.device == Device::Cpu {
        s.threads.max(1)
    } else {
        1
    };
    let lanes = Lanes::new(
        (1..lane_count)
            .map(|_| -> anyhow::Result<Lane> {
                Ok(Lane {
                    model: Box::new(TorchScriptModel::load(&model_path, s.device, SHAPE)?),
                    reduced: None,
                })
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let mut base = TorchScriptModel::load_with(&model_path, s.device, SHAPE, false)?;
    base.set_channels_last(false);
    let started_load = uptime();
    println!(
        "bench-vs-reference: TorchScript ResNet20 ({}), {} threads on both sides, device {:?}; load (1/5/15 min) at start {started_load}",
        model_path.display(),
        s.threads,
        s.device
    );
    let mut b = Bench {
        s: &s,
        model_path,
        source: source.as_ref(),
        opt: &opt,
        lanes: &lanes,
        eval: Evaluator::new(&opt).with_lanes(&lanes),
        eval_one_lane: Evaluator::new(&opt),
        eval_base: Evaluator::new(&base),
        best: 256,
        report: Vec::new(),
        figures: serde_json::Map::new(),
    };
    let g = batch(b.source, &b.eval, s.grad_images)?;
    b.levers(&g, &base)?;
    if !s.screened_full_only {
        let full_step_secs = b.gradient_k1(&g)?;
        b.exact_and_screened_first_steps()?;
        if s.screened_full > 0 {
            b.screened_full()?;
        }
        let params = b.collections()?;
        b.collection_profile(&params, full_step_secs)?;
    } else {
        b.screened_full()?;
    }
    finish(&s, &started_load, &b.report, b.figures)
}

/// The model's input shape: Fashion-MNIST laid out as 32×32×3.
const SHAPE: [i64; 3] = [3, 32, 32];

/// What every workload shares: the settings, the model (optimized and with the levers
/// off), the images, the measured candidate batch, and the figures gathered so far.
struct Bench<'a> {
    s: &'a Settings,
    model_path: PathBuf,
    source: &'a dyn ImageSource,
    opt: &'a TorchScriptModel,
    /// The optimized model's extra CPU lanes (one per thread beyond the first).
    lanes: &'a Lanes,
    /// Every lever: channels-last, the measured candidate batch, CPU lanes.
    eval: Evaluator<'a>,
    /// The same without lanes: one model on all the threads.
    eval_one_lane: Evaluator<'a>,
    /// No lever: batch norm unfolded, NCHW, candidate batch 256, one lane.
    eval_base: Evaluator<'a>,
    /// The candidate batch, measured by [`Bench::levers`].
    best: usize,
    report: Vec<String>,
    figures: serde_json::Map<String, Value>,
}

impl Bench<'_> {
    /// See the free function [`screened_full`].
    fn screened_full(&mut self) -> anyhow::Result<()> {
        screened_full(
            self.s,
            self.opt,
            self.source,
            self.best,
            &mut self.figures,
            &mut self.report,
        )
    }

    /// Measures the levers: the candidate batch (kept in `best`), the gradient step's
    /// input layout and batch-norm folding.
    fn levers(&mut self, g: &Batch, base: &TorchScriptModel) -> anyhow::Result<()> {
        let rates = candidate_batch_rates(self.opt, &g.xs)?;
        self.best = rates
            .iter()
            .copied()
            .fold((256, 0.0), |a, b| if b.1 > a.1 { b } else { a })
            .0;
        println!(
            "candidate batch (no-grad forwards, channels-last): {}; chosen {}",
            rates
                .iter()
                .map(|(b, r)| format!("{b}: {r:.0} img/s"))
                .collect::<Vec<_>>()
                .join(", "),
            self.best
        );
        let (nchw, nhwc) = grad_layout_rates(base, &g.xs)?;
        // The optimized model feeds channels-last whatever it is given: its second rate.
        let (_, folded) = grad_layout_rates(self.opt, &g.xs)?;
        println!("gradient step (fwd+bwd to input, batch {}, one lane): as saved NCHW {nchw:.2} it/s, channels-last {nhwc:.2} it/s; batch norm folded, channels-last {folded:.2} it/s", self.s.grad_images);
        self.figures
            .insert("candidate_batch_rates".into(), json!(rates));
        self.figures
            .insert("candidate_batch".into(), json!(self.best));
        self.figures.insert(
            "grad_layout_its".into(),
            json!({"nchw": nchw, "channels_last": nhwc, "folded_channels_last": folded}),
        );
        Ok(())
    }

    /// Gradient k = 1 against the reference and the unoptimised engine; returns the
    /// engine's seconds per full step in one lane (as the collection profile runs).
    fn gradient_k1(&mut self, g: &Batch) -> anyhow::Result<f64> {
        let steps = 1024;
        let args = ["--method", "gradient", "--k", "1"].map(String::from);
        let a = self.alternate(self.s.rounds, g, Method::Gradient { k: 1 }, None, &args)?;
        let n = a.rounds as f64;
        let what = format!("gradient k=1, {} images × {steps} steps", g.indices.len());
        let heading = "gradient k=1 agreement (near-tie = two deciding scores within 1e-5)";
        let agree = self.compare(&what, heading, &a, |t| t / n, "s");
        self.figures.insert("gradient_k1".into(), json!({
            "images": g.indices.len(), "steps": steps, "ours_s": a.ours / n, "unoptimised_s": a.base / n,
            "reference_s": a.reference / n, "ratio": a.reference / a.ours, "one_lane_s": a.one_lane / n, "agree_with_reference": agree.with_reference,
            "identical_to_unoptimised": agree.identical, "first_differences_vs_unoptimised": agree.diffs,
            "identical_to_unoptimised_up_to_near_tie": agree.up_to_near_tie,
        }));
        Ok(a.one_lane / n / steps as f64)
    }

    /// Exact BackSelect steps per second against the reference and the unoptimised
    /// engine, and screened (M = 32) over the same first steps.
    fn exact_and_screened_first_steps(&mut self) -> anyhow::Result<()> {
        let s = self.s;
        let e = batch(self.source, &self.eval, s.exact_images)?;
        let args = [
            "--method".into(),
            "exact".into(),
            "--max-steps".into(),
            s.exact_steps.to_string(),
            "--batch".into(),
            self.best.to_string(),
        ];
        let a = self.alternate(
            s.rounds.max(2),
            &e,
            Method::Exact,
            Some(s.exact_steps),
            &args,
        )?;
        let (rounds, t_ours, tr_ours) = (a.rounds, a.ours, &a.tr_ours);
        let steps_total = (s.exact_steps * e.indices.len() * rounds) as f64;
        let what = format!(
            "exact BackSelect, {} images × {} steps: steps/s",
            e.indices.len(),
            s.exact_steps
        );
        let heading = "exact agreement (near-tie = two best candidates' L within 1e-6)";
        let agree = self.compare(&what, heading, &a, |t| steps_total / t, "steps/s");
        self.figures.insert("exact".into(), json!({
            "images": e.indices.len(), "steps": s.exact_steps, "ours_steps_per_s": steps_total / a.ours,
            "unoptimised_steps_per_s": steps_total / a.base, "one_lane_steps_per_s": steps_total / a.one_lane, "reference_steps_per_s": steps_total / a.reference,
            "ratio": a.reference / a.ours, "agree_with_reference": agree.with_reference,
            "identical_to_unoptimised": agree.identical, "identical_to_unoptimised_up_to_near_tie": agree.up_to_near_tie,
        }));

        let m = 32u32;
        let mut t_sc = 0.0;
        let mut tr_sc = Vec::new();
        for _ in 0..rounds {
            let (secs, tr) = ours_backselect(
                &self.eval,
                &e,
                Method::Screened { screen: m },
                self.best,
                Some(s.exact_steps),
            )?;
            t_sc += secs;
            tr_sc = tr;
        }
        let (same_sc, diffs_sc) = agreement_between(&tr_sc, tr_ours);
        let p = (e.xs.size()[2] * e.xs.size()[3]) as f64;
        let measured = t_ours / t_sc;
        // Exact's step t tries p − t candidates: the measured steps are its dearest; a whole
        // run averages (p + 1) / 2 candidates per step.
        let mean_measured = p - (s.exact_steps as f64 - 1.0) / 2.0;
        let projected = measured * ((p + 1.0) / 2.0) / mean_measured;
        self.report.push(row(
            &format!(
                "screened M={m} vs exact, first {} steps: steps/s",
                s.exact_steps
            ),
            steps_total / t_sc,
            steps_total / t_ours,
            "steps/s",
        ));
        println!(
            "\nscreened M={m} vs exact over the same first {} steps of {} images: {measured:.2}× exact's speed (projected over a whole \
             run, where exact averages (p+1)/2 candidates per step: {projected:.2}×); {same_sc} of {} orders identical to exact's; \
             first differing steps {:?}",
            s.exact_steps, e.indices.len(), tr_sc.len(), diffs_sc.iter().filter_map(|d| *d).collect::<Vec<_>>()
        );
        self.figures.insert(
            "screened_first_steps".into(),
            json!({
                "m": m, "steps": s.exact_steps, "images": e.indices.len(), "speedup_measured": measured,
                "speedup_projected_whole_run": projected, "identical_to_exact": same_sc,
            }),
        );
        Ok(())
    }

    /// Runs `method` on `b` `rounds` times with the optimized engine, the reference
    /// (`ref_args`) and the unoptimised engine. The reference runs before the optimized
    /// engine in odd rounds and after it in even ones, so the shared machine's load
    /// falls on both sides.
    fn alternate(
        &self,
        rounds: usize,
        b: &Batch,
        method: Method,
        max_steps: Option<usize>,
        ref_args: &[String],
    ) -> anyhow::Result<Alternated> {
        let mut a = Alternated {
            rounds,
            ours: 0.0,
            one_lane: 0.0,
            base: 0.0,
            reference: 0.0,
            tr_ours: Vec::new(),
            tr_base: Vec::new(),
            refr: Value::Null,
        };
        let run_ref = |a: &mut Alternated| -> anyhow::Result<()> {
            let (secs, v) = reference(self.s, &self.model_path, &b.indices, ref_args)?;
            a.reference += secs;
            a.refr = v;
            Ok(())
        };
        for round in 0..rounds {
            if round % 2 == 1 {
                run_ref(&mut a)?;
            }
            let (secs, tr) = ours_backselect(&self.eval, b, method, self.best, max_steps)?;
            a.ours += secs;
            a.tr_ours = tr;
            if round % 2 == 0 {
                run_ref(&mut a)?;
            }
            let (secs, tr) = ours_backselect(&self.eval_base, b, method, 256, max_steps)?;
            a.base += secs;
            a.tr_base = tr;
            let (secs, _) = ours_backselect(&self.eval_one_lane, b, method, self.best, max_steps)?;
            a.one_lane += secs;
        }
        Ok(a)
    }

    /// The table rows of `a` (the engine and the unoptimised engine against the
    /// reference, each side's total seconds shown as `value(seconds)` in `unit`) and
    /// its agreements, printed under `heading`.
    fn compare(
        &mut self,
        what: &str,
        heading: &str,
        a: &Alternated,
        value: impl Fn(f64) -> f64,
        unit: &str,
    ) -> Agreements {
        self.report
            .push(row(what, value(a.ours), value(a.reference), unit));
        self.report.push(row(
            "  the same in one lane (one model, all threads)",
            value(a.one_lane),
            value(a.reference),
            unit,
        ));
        self.report.push(row(
            "  unoptimised engine (levers off) vs reference",
            value(a.base),
            value(a.reference),
            unit,
        ));
        print_agreement(heading, &a.tr_ours, &a.tr_base, &a.refr)
    }

    /// SIS collections at τ = 0.3 and 0.9 against the reference; returns their
    /// parameters for [`Bench::collection_profile`].
    fn collections(&mut self) -> anyhow::Result<SisParams> {
        let s = self.s;
        let taus = [0.3f32, 0.9];
        let c_indices: Vec<u64> = (0..s.coll_images as u64).collect();
        let params = SisParams {
            method: Method::Gradient { k: s.coll_k },
            thresholds: taus.to_vec(),
            batch_size: 32,
            candidate_batch: self.best,
            collection: true,
            lanes: self.lanes.count() as u32,
            ..SisParams::default()
        };
        for &tau in &taus {
            let p = SisParams {
                thresholds: vec![tau],
                ..params.clone()
            };
            let (mut t_ours, mut t_ref) = (0.0, 0.0);
            let mut recs: Vec<ImageSis> = Vec::new();
            let mut refr = Value::Null;
            for round in 0..s.rounds {
                let run_ref = |refr: &mut Value| -> anyhow::Result<f64> {
                    let (secs, v) = reference(
                        s,
                        &self.model_path,
                        &c_indices,
                        &[
                            "--method".into(),
                            "gradient".into(),
                            "--k".into(),
                            s.coll_k.to_string(),
                            "--thresholds".into(),
                            tau.to_string(),
                            "--batch".into(),
                            self.best.to_string(),
                        ],
                    )?;
                    *refr = v;
                    Ok(secs)
                };
                if round % 2 == 1 {
                    t_ref += run_ref(&mut refr)?;
                }
                recs.clear();
                let start = Instant::now();
                run_sis_with(
                    self.opt,
                    None,
                    self.lanes,
                    self.source,
                    &c_indices,
                    &p,
                    |r| {
                        recs.push(r);
                        Ok::<_, std::io::Error>(())
                    },
                    &AtomicBool::new(false),
                )?;
                t_ours += start.elapsed().as_secs_f64();
                if round % 2 == 0 {
                    t_ref += run_ref(&mut refr)?;
                }
            }
            let images = refr["images"].as_array().cloned().unwrap_or_default();
            let (mut compared, mut identical, mut n_ours, mut n_ref) = (0, 0, 0usize, 0usize);
            for (rec, r) in recs.iter().zip(&images) {
                let c = &r["collections"][format!("{tau}")];
                let theirs: Vec<Vec<u32>> =
                    serde_json::from_value(c["sis"].clone()).unwrap_or_default();
                let mine = &rec.collections[0].sis;
                n_ours += mine.len();
                n_ref += theirs.len();
                if c["near_tie"] == Value::Bool(false) {
                    compared += 1;
                    identical += usize::from(*mine == theirs);
                }
            }
            let per_img = |t: f64| s.coll_images as f64 * s.rounds as f64 / t;
            self.report.push(row(
                &format!(
                    "collection τ={tau}, gradient k={}, {} images: img/s",
                    s.coll_k, s.coll_images
                ),
                per_img(t_ours),
                per_img(t_ref),
                "img/s",
            ));
            println!("\ncollection τ={tau}: {n_ours} SISes (engine) vs {n_ref} (reference) over {} images; \
                      {compared} collections free of near-ties on the reference's side, {identical} of them identical",
                     s.coll_images);
            self.figures.insert(format!("collection_tau_{tau}"), json!({
                "images": s.coll_images, "k": s.coll_k, "ours_images_per_s": per_img(t_ours),
                "reference_images_per_s": per_img(t_ref), "sis_ours": n_ours, "sis_reference": n_ref,
                "compared": compared, "identical": identical,
            }));
        }
        Ok(params)
    }

    /// Where a collection's time goes at τ = 0.3: gradient steps, their batch sizes and
    /// the no-grad forwards, against the cost of full steps.
    fn collection_profile(
        &mut self,
        params: &SisParams,
        full_step_secs: f64,
    ) -> anyhow::Result<()> {
        let s = self.s;
        let c_indices: Vec<u64> = (0..s.coll_images as u64).collect();
        // One lane: the counting wrapper is a single model.
        let p03 = SisParams {
            thresholds: vec![0.3],
            lanes: 1,
            ..params.clone()
        };
        let counting = Counting::new(TorchScriptModel::load(&self.model_path, s.device, SHAPE)?);
        // (seconds, gradient passes and their images, no-grad forwards and their images,
        // seconds in the no-grad forwards)
        #[allow(clippy::type_complexity)]
        let profile = |p: &SisParams| -> anyhow::Result<(f64, (u64, u64), (u64, u64), f64)> {
            let (g, n, ns) = (
                Counting::get(&counting.grad),
                Counting::get(&counting.nograd),
                *counting.nograd_secs.lock().unwrap(),
            );
            let start = Instant::now();
            run_sis(
                &counting,
                self.source,
                &c_indices,
                p,
                |_| Ok::<_, std::io::Error>(()),
                &AtomicBool::new(false),
            )?;
            let secs = start.elapsed().as_secs_f64();
            let (g2, n2) = (
                Counting::get(&counting.grad),
                Counting::get(&counting.nograd),
            );
            let ns2 = *counting.nograd_secs.lock().unwrap();
            Ok((
                secs,
                (g2.0 - g.0, g2.1 - g.1),
                (n2.0 - n.0, n2.1 - n.1),
                ns2 - ns,
            ))
        };
        profile(&SisParams {
            collection: false,
            ..p03.clone()
        })?; // warm-up
        let (t_first, (g0, _), _, _) = profile(&SisParams {
            collection: false,
            ..p03.clone()
        })?;
        let (t_all, (gc, gi), (nc, ni), ns) = profile(&p03)?;
        let full = gi as f64 / s.grad_images as f64 * full_step_secs;
        println!(
            "\ncollection τ=0.3, where the time goes ({} images, k={}): the first BackSelect with FindSIS and checks \
             {t_first:.1} s ({g0} gradient steps); the whole collection {t_all:.1} s: {gc} gradient steps over {gi} images \
             (mean batch {:.1}), {nc} no-grad forwards of {ni} images taking {ns:.1} s; at the cost of a full \
             {}-image step ({full_step_secs:.3} s) those steps' images would take {full:.1} s",
            s.coll_images, s.coll_k, gi as f64 / gc.max(1) as f64, s.grad_images
        );
        self.figures.insert("collection_profile_tau_0.3".into(), json!({
            "first_s": t_first, "whole_s": t_all, "grad_steps": gc, "grad_images": gi,
            "nograd_forwards": nc, "nograd_images": ni, "nograd_s": ns, "full_batch_equivalent_s": full,
        }));
        Ok(())
    }
}

/// Prints the table of `report` and the load, and writes `figures` as JSON.
fn finish(
    s: &Settings,
    started_load: &str,
    report: &[String],
    mut figures: serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    println!(
        "\n{:<46} {:>10} {:>10} {:<9} {:>7}",
        "what", "engine", "reference", "unit", "ratio"
    );
    for l in report {
        println!("{l}");
    }
    let end_load = uptime();
    println!("(ratio = engine's advantage; {} round(s) alternating engine and reference; load at start {started_load}, at end {end_load}; engine peak RSS {:.0} MiB)",
        s.rounds, peak_rss_mib());
    figures.insert("threads".into(), json!(s.threads));
    figures.insert("load_start".into(), json!(started_load));
    figures.insert("load_end".into(), json!(end_load));
    figures.insert("rounds".into(), json!(s.rounds));
    std::fs::write(
        &s.json,
        serde_json::to_string_pretty(&Value::Object(figures))?,
    )
    .with_context(|| format!("writing {}", s.json.display()))?;
    println!("figures written to {}", s.json.display());
    Ok(())
}
