//! `sgdlab replay`: run an optimizer on a recorded gradient sequence.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sgdlab::replay::Case;

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

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let text = sgdlab::io::read_regular_file(&args.case, 1 << 30, "a case file")
        .with_context(|| format!("cannot read {}", args.case.display()))?;
    let case = Case::from_json(&text).with_context(|| format!("{}", args.case.display()))?;
    let params = match args.dtype {
        Dtype::F32 => case.replay::<f32>(),
        Dtype::F64 => case.replay::<f64>(),
    }
    .with_context(|| format!("{} (optimizer `{}`)", args.case.display(), case.optimizer))?;
    let json = serde_json::to_string(&serde_json::json!({ "params": params }))?;
    match &args.json {
        Some(path) => sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}
