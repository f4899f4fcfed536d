//! `sgdlab replay`: run an optimizer on a recorded gradient sequence.

use std::io::Write;
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
    /// Write {"params": [[...] after each step], "eval": [[...]]?} to FILE instead of stdout
    /// ("eval": the evaluation point, Schedule-Free's x, for rules that have one).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare with the case's "expected" (and "expected_eval") trajectories: print the worst
    /// relative error of each to stderr, and fail if one exceeds TOL.
    #[arg(long, value_name = "TOL")]
    compare: Option<f64>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let text = sgdlab::io::read_regular_file(&args.case, 1 << 30, "a case file")
        .with_context(|| format!("cannot read {}", args.case.display()))?;
    let case = Case::from_json(&text).with_context(|| format!("{}", args.case.display()))?;
    drop(text);
    let traj = match args.dtype {
        Dtype::F32 => case.run::<f32>(),
        Dtype::F64 => case.run::<f64>(),
    }
    .with_context(|| format!("{} (optimizer `{}`)", args.case.display(), case.optimizer))?;
    // Written straight from the vectors (no JSON value tree, no whole text in memory): the
    // memory of a replay is its gradients and its trajectory, a few times the case file.
    #[derive(serde::Serialize)]
    struct Output<'a> {
        params: &'a [Vec<f64>],
        #[serde(skip_serializing_if = "Option::is_none")]
        eval: Option<&'a [Vec<f64>]>,
    }
    let out = Output {
        params: &traj.params,
        eval: traj.eval.as_deref(),
    };
    match &args.json {
        Some(path) => sgdlab::io::write_atomic_with(path, |w| {
            serde_json::to_writer(&mut *w, &out).map_err(std::io::Error::from)
        })
        .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            serde_json::to_writer(&mut w, &out)?;
            writeln!(w)?;
            w.flush()?;
        }
    }
    if let Some(tol) = args.compare {
        if !(tol.is_finite() && tol >= 0.0) {
            anyhow::bail!("--compare {tol}: the tolerance must be a finite number >= 0");
        }
        let pairs = [
            ("params", Some(&traj.params), case.expected.as_ref()),
            ("eval", traj.eval.as_ref(), case.expected_eval.as_ref()),
        ];
        let mut compared = 0;
        let mut ok = true;
        for (what, got, want) in pairs {
            match (got, want) {
                (Some(got), Some(want)) => {
                    let err = sgdlab::replay::worst_relative_error(got, want);
                    let verdict = if err <= tol { "ok" } else { "FAIL" };
                    eprintln!(
                        "{what}: worst relative error {err:.3e} (tolerance {tol:e}) {verdict}"
                    );
                    ok &= err <= tol;
                    compared += 1;
                }
                (None, Some(_)) => anyhow::bail!(
                    "the case has expected_eval, but `{}` has no evaluation point other than \
                     its parameters",
                    case.optimizer
                ),
                _ => {}
            }
        }
        if compared == 0 {
            anyhow::bail!("--compare: the case has no \"expected\" trajectory");
        }
        if !ok {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
