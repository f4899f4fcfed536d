//! `sgdlab bench`: optimizer step throughput against the measured memory bandwidth.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use sgdlab::bench::BenchPlan;
use sgdlab::optim::kernel::SimdLevel;

use crate::table::{Table, num};

/// Arguments of `sgdlab bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Parameters in all (f32).
    #[arg(long, default_value_t = 10_000_000)]
    params: usize,
    /// Number of equal tensors the parameters are split into (repeatable: each layout is
    /// measured, e.g. `--tensors 1 --tensors 100`).
    #[arg(long, default_values_t = [1])]
    tensors: Vec<usize>,
    /// Optimizer spec (repeatable). Default: adam, adamw, sgd with momentum, rmsprop, lion.
    #[arg(long = "opt", value_name = "SPEC")]
    opts: Vec<String>,
    /// Timed rounds per optimizer and layout, each one reference pass and one step (medians
    /// are reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Force an instruction-set level (baseline, avx2, avx512) instead of the widest the CPU
    /// has; a level the CPU lacks is an error.
    #[arg(long, value_name = "LEVEL")]
    simd: Option<String>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Step on demand instead: print `ready`, then for each line `K` read from stdin run one
    /// step of the K-th `--opt` (from 0, each on its own copy of the first `--tensors`
    /// layout) and print its seconds. Lets another process interleave its own steps with
    /// these one by one (`bench/compare_torch.py`).
    #[arg(long, conflicts_with = "json")]
    serve: bool,
}

/// The `--serve` loop: one step per request line, until end of input.
fn serve(args: &BenchArgs, specs: &[sgdlab::optim::OptimizerSpec]) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, Write};
    let tensors = args.tensors.first().copied().unwrap_or(1);
    let mut work = sgdlab::bench::Workload::new(args.params, tensors, specs)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read stdin")?;
        let k: usize = line.trim().parse().with_context(|| {
            format!(
                "invalid request {line:?}: expected an optimizer index below {}",
                work.len()
            )
        })?;
        writeln!(out, "{:e}", work.step(k)?)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = if args.opts.is_empty() {
        ["adam", "adamw", "sgd:momentum=0.9", "rmsprop", "lion"]
            .map(String::from)
            .to_vec()
    } else {
        args.opts.clone()
    };
    let specs = crate::parse_specs(&opts)?;
    if let Some(name) = &args.simd {
        let available = SimdLevel::available();
        let Some(level) = available.iter().find(|l| l.name() == name) else {
            let names: Vec<_> = available.iter().map(|l| l.name()).collect();
            bail!(
                "invalid --simd {name}: this CPU offers {}",
                names.join(", ")
            );
        };
        SimdLevel::force(Some(*level));
    }
    let plan = BenchPlan {
        params: args.params,
        tensors: args.tensors.clone(),
        specs,
        reps: args.reps,
    };
    plan.validate()?;
    if args.serve {
        return serve(&args, &plan.specs);
    }
    println!(
        "{} f32 parameters, {} threads, {}. Each step is timed alternately with the \
         read-modify-write loop b += s·c over the same working set (\"ref\"); \
         \"of ref\" is the median per-round ratio.",
        args.params,
        rayon::current_num_threads(),
        SimdLevel::current().name(),
    );
    let mut table = Table::new(&[
        "optimizer",
        "tensors",
        "ms/step",
        "B/param",
        "GB/s",
        "ref GB/s",
        "of ref",
    ]);
    let report = sgdlab::bench::run(&plan, |r| {
        table.row(vec![
            r.optimizer.clone(),
            r.tensors.to_string(),
            num(r.ms_per_step),
            r.bytes_per_param.to_string(),
            num(r.gbps),
            num(r.bandwidth_gbps),
            format!("{:.2}×", r.fraction_of_bandwidth),
        ]);
    })?;
    print!("{}", table.render());
    if plan.specs.iter().any(|s| s.check_finite) {
        println!(
            "B/param counts the fused pass. By default a step first checks the gradient for \
             NaN/Inf (one more read of g, 4 B/param, in the time); check_finite=false skips \
             that, as PyTorch does."
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
