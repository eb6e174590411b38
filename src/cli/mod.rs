//! Command-line interface. Raw flags (clap structs) are turned into validated
//! settings before anything runs (ripgrep's low/high-level argument split); each
//! subcommand lives in its own file.

mod common;
mod eval;
mod train;

use clap::{Parser, Subcommand};

pub use common::{DataArgs, DeviceArgs};

/// Find where image classifiers overinterpret their input (Carter et al., NeurIPS 2021).
#[derive(Parser, Debug)]
#[command(name = "overinterp", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (the paper's CIFAR-10 defaults) and checkpoint every epoch.
    Train(train::TrainArgs),
    /// Evaluate a model: top-1/top-5 accuracy and per-image predictions.
    Eval(eval::EvalArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
