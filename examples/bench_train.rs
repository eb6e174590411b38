//! `scripts/bench-train`: ResNet20 training and inference throughput at batch 128,
//! each as a fraction of the FLOP rate libtorch reaches on a 2048³ matrix product
//! measured in the same run (the machine's attainable dense rate).
//!
//! FLOPs per image are counted analytically (2 per multiply-add of every conv and
//! linear layer of ResNet20 on 32×32, see `resnet20_forward_macs`); a training step
//! is counted as 3× the forward pass (forward, input gradients, weight gradients).

use std::time::Instant;

use overinterp::models::{self, Arch, ModelConfig};
use overinterp::train::sgd::Sgd;
use tch::{Device, Kind, Tensor};

/// Multiply-adds of ResNet20's forward pass on one 3×32×32 image:
/// stem 3→16 at 32², 3 stages of 3 basic blocks (16@32², 32@16², 64@8²), fc 64→10.
fn resnet20_forward_macs() -> f64 {
    let conv = |hw: f64, cin: f64, cout: f64| hw * hw * cout * cin * 9.0;
    let mut macs = conv(32.0, 3.0, 16.0);
    for (hw, cin, cout) in [(32.0, 16.0, 16.0), (16.0, 16.0, 32.0), (8.0, 32.0, 64.0)] {
        macs += conv(hw, cin, cout) + 5.0 * conv(hw, cout, cout);
    }
    macs + 64.0 * 10.0
}

/// Seconds per call of `f`, after `warmup` calls, over at least `min_secs`.
fn time_it(warmup: usize, min_secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let (start, mut n) = (Instant::now(), 0);
    while n < 3 || start.elapsed().as_secs_f64() < min_secs {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let threads = tch::get_num_threads();
    let n = 2048i64;
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let mm_secs = time_it(2, 3.0, || {
        let _ = a.matmul(&b);
    });
    let peak = 2.0 * (n as f64).powi(3) / mm_secs;

    let batch = 128i64;
    let config = ModelConfig::new(Arch::ResNet20, 10, [3, 32, 32]);
    tch::manual_seed(0);
    let mut model = models::build(&config, device)?;
    let xs = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
    let ys = Tensor::randint(10, [batch], (Kind::Int64, device));
    let infer_secs = time_it(2, 5.0, || {
        let _ = tch::no_grad(|| model.forward(&xs, false)).expect("forward");
    });
    let mut sgd = Sgd::new(model.var_store().expect("native model"), 0.9, true, 5e-4);
    let train_secs = time_it(2, 8.0, || {
        let logits = model.forward(&xs, true).expect("forward");
        let loss = logits.log_softmax(-1, Kind::Float).nll_loss(&ys);
        sgd.zero_grad();
        loss.backward();
        sgd.step(0.01);
    });
    let _ = model.var_store_mut();

    let fwd = 2.0 * resnet20_forward_macs();
    let infer_rate = batch as f64 / infer_secs;
    let train_rate = batch as f64 / train_secs;
    println!("bench-train: ResNet20, batch {batch}, CPU, {threads} libtorch threads");
    println!(
        "{:<44} {:>14} {:>12} {:>10}",
        "what", "rate", "GFLOP/s", "of matmul"
    );
    println!(
        "{:<44} {:>14} {:>12.1} {:>10}",
        "fp32 matmul 2048³ (reference)",
        "-",
        peak / 1e9,
        "1.00"
    );
    for (what, rate, flop) in [
        ("inference (eval, no grad)", infer_rate, fwd),
        ("training step (fwd+bwd+SGD)", train_rate, 3.0 * fwd),
    ] {
        let achieved = rate * flop;
        println!(
            "{:<44} {:>10.0} img/s {:>12.1} {:>10.2}",
            what,
            rate,
            achieved / 1e9,
            achieved / peak
        );
    }
    println!(
        "(ResNet20 forward = {:.1} MFLOP/image, counted analytically)",
        fwd / 1e6
    );
    Ok(())
}
