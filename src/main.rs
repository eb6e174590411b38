//! The `overinterp` command: parse flags, set up logging, run, print errors with
//! their context chain and exit non-zero on failure.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = overinterp::cli::Cli::parse();
    overinterp::cli::init_tracing(cli.verbose);
    if let Some(every) = cli.progress_interval {
        overinterp::util::progress::set_interval(every);
    }
    match overinterp::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
