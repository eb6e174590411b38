//! Command-line interface. Raw flags (clap structs) are turned into validated
//! settings before anything runs (ripgrep's low/high-level argument split); each
//! subcommand lives in its own file.

mod cluster;
mod common;
mod eval;
mod human;
mod pipeline;
mod sis;
mod store;
mod subsets;
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
    /// Seconds between progress lines in logs when stderr is not a terminal (on a
    /// terminal, bars). Also OVERINTERP_PROGRESS_INTERVAL; default 30.
    #[arg(long, global = true, value_parser = crate::util::progress::parse_interval)]
    pub progress_interval: Option<std::time::Duration>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (the paper's CIFAR-10 defaults) and checkpoint every epoch.
    Train(train::TrainArgs),
    /// Evaluate a model: top-1/top-5 accuracy and per-image predictions.
    Eval(eval::EvalArgs),
    /// Compute BackSelect orders and SIS for a dataset split into a result store.
    Sis(sis::SisArgs),
    /// Build a pixel-subset dataset (backselect top-q or SIS) from a result store.
    Subsets(subsets::SubsetsArgs),
    /// Export pixel-subset images as npz, CIFAR-10 binary or a PNG gallery.
    Export(subsets::ExportArgs),
    /// Run a SIS job with a leader and N workers in this process (embedded cluster).
    Run(cluster::RunArgs),
    /// Lead a SIS job on a cluster.
    Leader(cluster::LeaderArgs),
    /// Work for a SIS job's leader.
    Worker(cluster::WorkerArgs),
    /// Show a running job's progress.
    Status(cluster::StatusArgs),
    /// Run the paper's whole experiment and write a report.
    Pipeline(pipeline::PipelineArgs),
    /// Inspect result stores (`store info STORE`).
    Store(store::StoreArgs),
    /// The human classification benchmark: build, serve and report a study.
    Human(human::HumanArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Sis(args) => sis::run(args),
        Command::Subsets(args) => subsets::run_subsets(args),
        Command::Export(args) => subsets::run_export(args),
        Command::Run(args) => cluster::run_local(args),
        Command::Leader(args) => cluster::run_leader(args),
        Command::Worker(args) => cluster::run_worker(args),
        Command::Status(args) => cluster::run_status(args),
        Command::Pipeline(args) => pipeline::run(args),
        Command::Store(args) => store::run(args),
        Command::Human(args) => human::run(args),
    }
}

/// SIGTERM or SIGINT sets `stop`: long commands finish their current mini-batch,
/// make it durable and exit. A second SIGINT exits at once.
pub fn stop_on_signals(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, stop.clone())?;
    signal_hook::flag::register(SIGINT, stop.clone())?;
    signal_hook::flag::register(SIGTERM, stop)?;
    Ok(())
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`. Colours only when stderr is a
/// terminal and `NO_COLOR` is unset or empty (<https://no-color.org>), so log files
/// hold no escape codes.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour())
        .with_target(false)
        .try_init();
}

/// Whether log lines may carry ANSI colours: stderr is a terminal and `NO_COLOR`
/// is unset or empty.
pub fn use_colour() -> bool {
    crate::util::progress::stderr_is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
