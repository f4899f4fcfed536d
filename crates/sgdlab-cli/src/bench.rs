//! `sgdlab bench`: optimizer step throughput against the measured memory bandwidth.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use sgdlab::bench::{bench_optimizer, rmw_bandwidth_gbps};
use sgdlab::optim::kernel::SimdLevel;

use crate::table::{Table, num};

/// Arguments of `sgdlab bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Parameters in all (f32).
    #[arg(long, default_value_t = 10_000_000)]
    params: usize,
    /// Number of equal tensors the parameters are split into.
    #[arg(long, default_value_t = 1)]
    tensors: usize,
    /// Optimizer spec (repeatable). Default: adam, adamw, sgd with momentum, rmsprop, lion.
    #[arg(long = "opt", value_name = "SPEC")]
    opts: Vec<String>,
    /// Timed steps per optimizer (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Force an instruction-set level (baseline, avx2, avx512) instead of the widest the CPU
    /// has; a level the CPU lacks is an error.
    #[arg(long, value_name = "LEVEL")]
    simd: Option<String>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.reps < 1 {
        bail!("invalid --reps 0: must be at least 1");
    }
    if args.params < 1 {
        bail!("invalid --params 0: must be at least 1");
    }
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
    // The same working set as the largest optimizer state here (Adam: 28 bytes/parameter).
    let footprint = 28 * args.params;
    let bandwidth = rmw_bandwidth_gbps(footprint, args.reps)?;
    println!(
        "read-modify-write bandwidth (b += s·c, f32, {} MB working set, {} threads, {}): {} GB/s",
        footprint / 1_000_000,
        rayon::current_num_threads(),
        SimdLevel::current().name(),
        num(bandwidth)
    );
    let mut results = Vec::new();
    let mut table = Table::new(&[
        "optimizer",
        "params",
        "tensors",
        "ms/step",
        "B/param",
        "GB/s",
        "of bandwidth",
    ]);
    for spec in &specs {
        let r = bench_optimizer(spec, args.params, args.tensors, args.reps, bandwidth)?;
        table.row(vec![
            r.optimizer.clone(),
            r.params.to_string(),
            r.tensors.to_string(),
            num(r.ms_per_step),
            r.bytes_per_param.to_string(),
            num(r.gbps),
            format!("{:.2}×", r.fraction_of_bandwidth),
        ]);
        results.push(r);
    }
    print!("{}", table.render());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "bandwidth_gbps": bandwidth,
            "threads": rayon::current_num_threads(),
            "simd": SimdLevel::current().name(),
            "results": results,
        }))?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
