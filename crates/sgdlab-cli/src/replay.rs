//! `sgdlab replay`: run an optimizer on a recorded gradient sequence.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use sgdlab::Real;
use sgdlab::optim::{Optimizer, StepInfo, Tensor};

/// Element type of the replay.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    /// 32-bit floats.
    F32,
    /// 64-bit floats.
    F64,
}

/// Arguments of `sgdlab replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A case file: {"optimizer": SPEC, "init": [...], "grads": [[...], ...], "losses": [...]?}
    /// (the format of PyTorch reference trajectories; any "expected" key is ignored).
    #[arg(long, value_name = "FILE")]
    case: PathBuf,
    /// Element type to compute in.
    #[arg(long, value_enum, default_value = "f64")]
    dtype: Dtype,
    /// Write {"params": [[...] after each step]} to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Case {
    optimizer: String,
    init: Vec<f64>,
    grads: Vec<Vec<f64>>,
    losses: Option<Vec<f64>>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read(&args.case)
        .with_context(|| format!("cannot read {}", args.case.display()))?;
    let case: Case = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid case file", args.case.display()))?;
    for (t, g) in case.grads.iter().enumerate() {
        if g.len() != case.init.len() {
            bail!(
                "{}: grads[{t}] has {} values, but init has {}",
                args.case.display(),
                g.len(),
                case.init.len()
            );
        }
    }
    if let Some(losses) = &case.losses
        && losses.len() != case.grads.len()
    {
        bail!(
            "{}: {} losses for {} gradient steps",
            args.case.display(),
            losses.len(),
            case.grads.len()
        );
    }
    let params = match args.dtype {
        Dtype::F32 => replay::<f32>(&case)?,
        Dtype::F64 => replay::<f64>(&case)?,
    };
    let json = serde_json::to_string(&serde_json::json!({ "params": params }))?;
    match &args.json {
        Some(path) => sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn replay<T: Real>(case: &Case) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut opt = Optimizer::<T>::from_spec(&case.optimizer)
        .with_context(|| format!("bad optimizer `{}`", case.optimizer))?;
    let convert = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let mut params = vec![Tensor::vector("params", convert(&case.init))];
    let mut out = Vec::with_capacity(case.grads.len());
    for (t, g) in case.grads.iter().enumerate() {
        let info = StepInfo {
            loss: case.losses.as_ref().map(|l| l[t]),
            ..StepInfo::default()
        };
        opt.step(&mut params, &[Tensor::vector("params", convert(g))], &info)
            .with_context(|| format!("step {}", t + 1))?;
        out.push(params[0].data().iter().map(|x| x.as_f64()).collect());
    }
    Ok(out)
}
