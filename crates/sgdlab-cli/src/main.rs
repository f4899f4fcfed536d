//! `sgdlab`: the command-line front end of the sgdlab library.
//!
//! Thin by design: every number it prints comes from the library. Exit status: 0 success,
//! 1 a claim failed, 2 bad usage or an error (reported on stderr).

mod audit;
mod bench;
mod critical_batch;
mod noise;
mod plot;
mod replay;
mod report;
mod table;
mod train;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stochastic gradient descent built from running averages, and a lab that measures what
/// optimizer theory claims.
#[derive(Parser, Debug)]
#[command(name = "sgdlab", version, about, long_about = None)]
struct Cli {
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, global = true, value_name = "K")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the claims of the problem set by measurement (exit 1 if any fails).
    Verify(verify::VerifyArgs),
    /// Measure optimizers' drift at the loss minimiser and find their true fixed points.
    Audit(audit::AuditArgs),
    /// The gradient noise scale tr Σ/|G|² of a model on a data set, from exact per-example
    /// gradients, in all and per layer.
    Noise(noise::NoiseArgs),
    /// The critical batch size measured by training: steps and examples to a target loss
    /// against the batch size, the fit (S/S_min − 1)(E/E_min − 1) = 1, and B_simple beside it.
    CriticalBatch(critical_batch::CriticalBatchArgs),
    /// Train a model on real data with several optimizers side by side.
    Train(train::TrainArgs),
    /// Optimizer step throughput against the machine's measured memory bandwidth.
    Bench(bench::BenchArgs),
    /// Run an optimizer on a recorded gradient sequence and print the parameters after
    /// every step as JSON.
    Replay(replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses every `--opt` spec, naming the one that is wrong.
fn parse_specs(texts: &[String]) -> anyhow::Result<Vec<sgdlab::optim::OptimizerSpec>> {
    use anyhow::Context;
    texts
        .iter()
        .map(|s| s.parse().with_context(|| format!("bad --opt `{s}`")))
        .collect()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(threads) = cli.threads {
        let max = sgdlab::resources::max_threads();
        if threads == 0 || threads > max {
            anyhow::bail!(
                "invalid --threads {threads}: must lie in 1..={max} (four per core of this \
                 machine; results do not depend on the count)"
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    match cli.command {
        Command::Verify(args) => verify::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Noise(args) => noise::run(args),
        Command::CriticalBatch(args) => critical_batch::run(args),
    }
}
