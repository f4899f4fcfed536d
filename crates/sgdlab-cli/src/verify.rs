//! `sgdlab verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sgdlab::lab::claims::{Claim, Report, VerifyOptions, verify};

use crate::table::{Table, num};

/// Arguments of `sgdlab verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Check only this problem (repeatable; 8 and 9 repeat 5 and 7). Default: all.
    #[arg(long = "problem", value_name = "N")]
    problems: Vec<u8>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Fewer samples (wider confidence intervals), for CI.
    #[arg(long)]
    quick: bool,
    /// Seed of every random draw.
    #[arg(long, default_value_t = VerifyOptions::default().seed)]
    seed: u64,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let options = VerifyOptions {
        seed: args.seed,
        quick: args.quick,
    };
    let report = verify(&args.problems, &options)?;
    print!("{}", render(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn measured(claim: &Claim) -> String {
    match claim.stderr {
        Some(se) => format!("{} ± {}", num(claim.measured), num(se)),
        None => num(claim.measured),
    }
}

fn score(claim: &Claim) -> String {
    match claim.z {
        Some(z) => format!("z={z:+.2}"),
        None => format!("tol {}", num(claim.tolerance)),
    }
}

fn render(report: &Report) -> String {
    let mut table = Table::new(&["id", "claim", "expected", "measured", "check", "verdict"]);
    for claim in &report.claims {
        table.row(vec![
            claim.id.clone(),
            claim.title.clone(),
            num(claim.expected),
            measured(claim),
            score(claim),
            if claim.passed { "PASS" } else { "FAIL" }.to_string(),
        ]);
        for r in &claim.rejects {
            table.row(vec![
                String::new(),
                format!("  rejects {}", r.label),
                num(r.value),
                String::new(),
                if r.z.abs() < 1e4 {
                    format!("z={:+.1}", r.z)
                } else {
                    format!("z={:+.1e}", r.z)
                },
                if r.rejected {
                    "rejected"
                } else {
                    "NOT REJECTED"
                }
                .to_string(),
            ]);
        }
    }
    format!(
        "{}\n{} passed, {} failed\n",
        table.render(),
        report.passed,
        report.failed
    )
}
