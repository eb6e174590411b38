//! `scripts/bench-sis`: SIS engine throughput for ResNet20 (random weights) at
//! batch 32 on CPU, each figure next to the rate libtorch itself reaches on the same
//! model, batch size and thread count in the same run (the attainable limit):
//!
//! - exact BackSelect: masked candidates evaluated per second, against plain
//!   no-grad inference images per second;
//! - Batched Gradient BackSelect, k = 1: steps per second against plain
//!   forward + backward-to-input batches per second, and images per second of a
//!   whole `run_sis` (32 images, 1024 steps each plus FindSIS) against that limit
//!   divided by the 1024 steps an image needs;
//! - the forward + backward to the input with batch norm folded (as the engine runs a
//!   frozen model) against the same model evaluated as trained (folding switched off).
//!
//! The machine is shared, so the engine and its reference are timed in alternating
//! rounds and each ratio uses totals over all rounds.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use overinterp::data::{DataError, ImageSource, Normalization};
use overinterp::models::{self, Arch, Classifier, ModelConfig};
use overinterp::sis::engine::BackSelectInput;
use overinterp::sis::exact::exact_backselect;
use overinterp::sis::gradient::gradient_backselect;
use overinterp::sis::{run_sis, Evaluator, Method, Objective, SisParams};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 32;
const ROUNDS: usize = 3;

/// Random CIFAR-shaped images in memory.
struct RandomImages {
    pixels: Vec<u8>,
    n: usize,
}

impl ImageSource for RandomImages {
    fn name(&self) -> String {
        "random/cifar-shaped".into()
    }
    fn len(&self) -> usize {
        self.n
    }
    fn shape(&self) -> [usize; 3] {
        [3, 32, 32]
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn normalization(&self) -> Normalization {
        Normalization::cifar10()
    }
    fn label(&self, _index: usize) -> Result<i64, DataError> {
        Ok(0)
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let len = 3 * 32 * 32;
        for (k, &i) in indices.iter().enumerate() {
            if i >= self.n {
                return Err(DataError::OutOfRange {
                    index: i,
                    len: self.n,
                });
            }
            out[k * len..(k + 1) * len].copy_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        "random".into()
    }
}

/// Accumulated (work, seconds) of one measured thing.
#[derive(Default)]
struct Tally {
    work: f64,
    secs: f64,
}

impl Tally {
    fn time<T>(&mut self, work: f64, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.secs += start.elapsed().as_secs_f64();
        self.work += work;
        out
    }
    fn rate(&self) -> f64 {
        self.work / self.secs
    }
}

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let threads = tch::get_num_threads();
    tch::manual_seed(0);
    let mut model = models::build(&ModelConfig::new(Arch::ResNet20, 10, [3, 32, 32]), device)?;
    model.freeze();
    let model: &dyn Classifier = model.as_ref();
    let eval = Evaluator::new(model);

    let n_images = BATCH as usize;
    let mut state = 0x1234_5678u64;
    let pixels: Vec<u8> = (0..n_images * 3 * 32 * 32)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let source = RandomImages {
        pixels,
        n: n_images,
    };
    let indices: Vec<u64> = (0..n_images as u64).collect();
    let positions: Vec<usize> = (0..n_images).collect();
    let (xs, _) = overinterp::data::batch(&source, &positions, device)?;
    let (predicted, _) = eval.predict(&xs, &indices)?;

    // Warm up both paths once.
    let warm = |steps| -> anyhow::Result<()> {
        let present = vec![vec![true; 1024]];
        let x1 = xs.narrow(0, 0, 1);
        let input = BackSelectInput {
            xs: &x1,
            present: &present,
            targets: &predicted[..1],
            noise_keys: &[0],
            images: &indices[..1],
        };
        exact_backselect(
            &eval,
            &input,
            Objective::LogOdds,
            BATCH as usize,
            Some(steps),
        )?;
        Ok(())
    };
    warm(1)?;

    // --- exact BackSelect vs. plain inference -------------------------------
    let exact_steps = 8usize;
    let mut infer = Tally::default();
    let mut exact = Tally::default();
    for _ in 0..ROUNDS {
        let batches = 60;
        infer.time((batches * BATCH) as f64, || -> anyhow::Result<()> {
            let _guard = tch::no_grad_guard();
            for _ in 0..batches {
                let _ = model.forward(&xs, false)?;
            }
            Ok(())
        })?;
        // One image: step t tries its 1024 - t remaining pixels.
        let candidates: usize = (0..exact_steps).map(|t| 1024 - t).sum();
        let present = vec![vec![true; 1024]];
        let x1 = xs.narrow(0, 0, 1);
        let input = BackSelectInput {
            xs: &x1,
            present: &present,
            targets: &predicted[..1],
            noise_keys: &[0],
            images: &indices[..1],
        };
        exact.time(candidates as f64, || {
            exact_backselect(
                &eval,
                &input,
                Objective::LogOdds,
                BATCH as usize,
                Some(exact_steps),
            )
        })?;
    }

    // --- gradient BackSelect (k = 1) vs. forward + backward to the input ----
    let grad_steps = 40usize;
    let mut fwd_bwd = Tally::default();
    let mut grad = Tally::default();
    let targets = Tensor::from_slice(&predicted);
    let present = vec![vec![true; 1024]; n_images];
    let keys: Vec<u64> = indices.clone();
    // As trained: the same frozen model with batch norm evaluated, not folded.
    let mut as_trained = Tally::default();
    let fwd_bwd_steps = || -> anyhow::Result<()> {
        for _ in 0..grad_steps {
            let x = xs.detach().set_requires_grad(true);
            let logits = model.forward(&x, false)?;
            let f = logits
                .softmax(-1, Kind::Float)
                .gather(1, &targets.unsqueeze(1), false)
                .sum(Kind::Float);
            let _ = Tensor::run_backward(&[f], &[&x], false, false);
        }
        Ok(())
    };
    for round in 0..ROUNDS {
        // Folded and as trained alternate which goes first.
        for folded in [round % 2 == 0, round % 2 == 1] {
            models::set_batch_norm_folding(folded);
            let tally = if folded {
                &mut fwd_bwd
            } else {
                &mut as_trained
            };
            tally.time(grad_steps as f64, fwd_bwd_steps)?;
        }
        models::set_batch_norm_folding(true);
        let input = BackSelectInput {
            xs: &xs,
            present: &present,
            targets: &predicted,
            noise_keys: &keys,
            images: &indices,
        };
        // grad_steps steps plus the final no-grad forward the run always ends with.
        grad.time(grad_steps as f64, || {
            gradient_backselect(&eval, &input, Objective::LogOdds, 1, Some(grad_steps))
        })?;
    }

    println!(
        "bench-sis: ResNet20 (random weights), batch {BATCH}, CPU, {threads} libtorch threads"
    );
    println!(
        "{:<52} {:>16} {:>16} {:>7}",
        "what", "engine", "limit", "ratio"
    );
    let row = |what: &str, unit: &str, engine: f64, limit: f64| {
        println!(
            "{:<52} {:>10.3} {:<5} {:>10.3} {:<5} {:>7.2}",
            what,
            engine,
            unit,
            limit,
            unit,
            engine / limit
        );
    };
    row(
        "exact BackSelect: candidate forwards vs inference",
        "img/s",
        exact.rate(),
        infer.rate(),
    );
    row(
        "gradient BackSelect k=1: steps vs fwd+bwd-to-input",
        "it/s",
        grad.rate(),
        fwd_bwd.rate(),
    );
    row(
        "fwd+bwd-to-input: batch norm folded vs as trained",
        "it/s",
        fwd_bwd.rate(),
        as_trained.rate(),
    );
    // A whole run_sis: 32 images, k = 1 (1024 steps each), FindSIS + verification.
    // About 1024 gradient steps: skipped with BENCH_SIS_QUICK=1.
    if std::env::var_os("BENCH_SIS_QUICK").is_some() {
        return Ok(());
    }
    let params = SisParams {
        method: Method::Gradient { k: 1 },
        thresholds: vec![0.5],
        batch_size: n_images,
        collection: false,
        ..SisParams::default()
    };
    let mut full = Tally::default();
    full.time(n_images as f64, || {
        run_sis(
            model,
            &source,
            &indices,
            &params,
            |_| Ok::<(), std::io::Error>(()),
            &AtomicBool::new(false),
        )
    })?;
    let full_limit = fwd_bwd.rate() * BATCH as f64 / 1024.0;

    row(
        "gradient SIS k=1, whole run_sis: images",
        "img/s",
        full.rate(),
        full_limit,
    );
    println!(
        "(limit for images/s = fwd+bwd batches/s × {BATCH} images / 1024 steps; exact timed over \
         {exact_steps} steps of one image, gradient over {grad_steps} steps of {BATCH} images, \
         {ROUNDS} alternating rounds)"
    );
    Ok(())
}
