//! Screened exact BackSelect (`--method screened --screen M`) on a small CNN trained on
//! real Fashion-MNIST (14×14, p = 196, `scripts/make-reference-fixture`) and real test
//! images:
//! - with `M ≥ p` the records equal exact BackSelect's bit for bit (orders, histories,
//!   collections);
//! - with `M = 32`, every step is replayed outside the engine with the TorchScript
//!   module called directly: the test's own mask gradient ranks the pixels, and the
//!   removed pixel must be among its best `M` and have the smallest `L` of those
//!   surely among them. The replay also measures how often the screened choice is
//!   the one exact BackSelect makes from the same state, and [`agreement`] against
//!   the exact run is printed (steps with the same choice, identical SIS, 5 % Jaccard).

mod common;

use std::sync::OnceLock;

use common::fmnist14::{self, module, removal_log_odds};
use overinterp::sis::screened::agreement;
use overinterp::sis::{ImageSis, Method, SisParams};
use tch::{CModule, Device, Kind, Tensor};

const TAU: f32 = 0.9;
/// Images of the fixture every test uses.
const IMAGES: [u64; 4] = [0, 1, 2, 3];

fn run(method: Method, indices: &[u64]) -> Vec<ImageSis> {
    let params = SisParams {
        method,
        thresholds: vec![TAU],
        ..SisParams::default()
    };
    fmnist14::run(&params, indices)
}

/// The exact run over [`IMAGES`], shared by the tests of this binary.
fn exact() -> &'static [ImageSis] {
    static EXACT: OnceLock<Vec<ImageSis>> = OnceLock::new();
    EXACT.get_or_init(|| {
        tch::set_num_threads(1);
        run(Method::Exact, &IMAGES)
    })
}

#[test]
fn screened_with_m_at_least_p_equals_exact_bit_for_bit() {
    tch::set_num_threads(1);
    // The same images in the same call as exact: candidates of a call's images are
    // pooled into batches, and a batch's make-up can change the last bits of `f`.
    let exact = run(Method::Exact, &IMAGES[..2]);
    // p = 196: M = 196 screens nothing out at the first step, M = 1000 never does.
    for screen in [196u32, 1000] {
        let screened = run(Method::Screened { screen }, &IMAGES[..2]);
        assert_eq!(screened, exact, "M = {screen}");
    }
    assert!(exact.iter().any(|r| !r.collections[0].sis.is_empty()));
}

/// Replays one screened record: per step, (pick surely valid, pick = exact's choice).
struct Replay {
    steps: usize,
    exact_choice: usize,
    violations: Vec<String>,
}

fn replay(module: &CModule, x: &Tensor, rec: &ImageSis, screen: usize) -> Replay {
    let _guard = tch::no_grad_guard();
    let (h, w) = (rec.height as i64, rec.width as i64);
    let p = (h * w) as usize;
    let c = rec.predicted;
    let order = rec.removal_order();
    let mut present = vec![true; p];
    let mut out = Replay {
        steps: order.len(),
        exact_choice: 0,
        violations: Vec::new(),
    };
    for (s, &pick) in order.iter().enumerate() {
        let remaining: Vec<usize> = (0..p).filter(|&q| present[q]).collect();
        let keep_host: Vec<f32> = present.iter().map(|&on| f32::from(u8::from(on))).collect();
        let keep = Tensor::from_slice(&keep_host).view([1, 1, h, w]);
        // The test's own mask gradient of L (in fp32, like the engine's screen).
        let m = (keep.ones_like() - &keep).set_requires_grad(true);
        let grad: Tensor = tch::with_grad(|| {
            let z = module.forward_ts(&[x * (m.ones_like() - &m)]).unwrap();
            let zc = z.narrow(1, c, 1);
            let own = Tensor::zeros([1, z.size()[1]], (Kind::Bool, Device::Cpu)).index_fill(
                1,
                &Tensor::from_slice(&[c]),
                1,
            );
            let l = (z - zc)
                .masked_fill(&own, f64::NEG_INFINITY)
                .logsumexp([1i64], false)
                .sum(Kind::Float);
            Tensor::run_backward(&[l], &[&m], false, false).remove(0)
        });
        let score = Vec::<f32>::try_from(grad.view([-1]).neg()).unwrap();
        let mut ranked = remaining.clone();
        ranked.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        let mth = score[ranked[(screen.min(ranked.len())) - 1]];
        let scale = score
            .iter()
            .map(|v| v.abs())
            .fold(0f32, f32::max)
            .max(1e-30);
        let eps = 1e-4 * scale;
        // Every remaining pixel's L, evaluated in one forward batch.
        let l = removal_log_odds(module, x, &present, c, Kind::Float);
        let at = |q: usize| remaining.binary_search(&q).unwrap();
        let l_pick = l[at(pick as usize)];
        let best = (0..l.len()).fold(0, |b, i| if l[i] < l[b] { i } else { b });
        out.exact_choice += usize::from(remaining[best] == pick as usize);
        if score[pick as usize] < mth - eps {
            out.violations.push(format!(
                "step {s}: pixel {pick} is not among the test's best {screen} by the gradient"
            ));
        }
        let surely_in = remaining.iter().filter(|&&q| score[q] > mth + eps);
        if let Some(q) = surely_in.copied().find(|&q| l[at(q)] < l_pick) {
            out.violations.push(format!(
                "step {s}: screened pixel {q} has L {} below the pick {pick}'s {l_pick}",
                l[at(q)]
            ));
        }
        present[pick as usize] = false;
    }
    out
}

#[test]
fn screened_m32_picks_the_best_screened_pixel_and_its_agreement_is_measured() {
    tch::set_num_threads(1);
    let screen = 32usize;
    let screened = run(
        Method::Screened {
            screen: screen as u32,
        },
        &IMAGES,
    );
    let exact = exact();
    let xs = fmnist14::images(&IMAGES);
    let module = module(Kind::Float);
    let (mut steps, mut exact_choice) = (0, 0);
    let mut jaccards = Vec::new();
    for (i, (rec, ex)) in screened.iter().zip(exact).enumerate() {
        // The agreement of a record with itself is total.
        let same = agreement(ex, ex).unwrap();
        assert_eq!(same.steps_same_choice, same.steps);
        assert_eq!(same.jaccard_5pct, 1.0);
        let r = replay(&module, &xs.get(i as i64).unsqueeze(0), rec, screen);
        assert!(
            r.violations.is_empty(),
            "image {}: {:?}",
            rec.index,
            r.violations
        );
        steps += r.steps;
        exact_choice += r.exact_choice;
        let a = agreement(ex, rec).unwrap();
        eprintln!(
            "image {}: screened chose exact's pixel from its own state at {} of {} steps; \
             vs the exact run: same pixel at {} steps, identical before step {}, \
             {} of {} collections identical, 5% Jaccard {:.3}",
            rec.index,
            r.exact_choice,
            r.steps,
            a.steps_same_choice,
            a.steps_before_divergence,
            a.identical_collections,
            a.thresholds,
            a.jaccard_5pct
        );
        jaccards.push(a.jaccard_5pct);
        // The first BackSelect covers every pixel.
        assert_eq!(a.steps, 196);
    }
    eprintln!(
        "screened M={screen}: exact's choice at {exact_choice} of {steps} steps; mean 5% Jaccard \
         vs exact {:.3} over {} images",
        jaccards.iter().sum::<f64>() / jaccards.len() as f64,
        jaccards.len()
    );
}
