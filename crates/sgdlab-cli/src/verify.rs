//! `sgdlab verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sgdlab::lab::claims::{Claim, PROBLEMS, Report, VerifyOptions, canonical_problem, verify};
use sgdlab::lab::figures::problem_figures;

use crate::report::{Section, esc, write_page};

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
    /// Also write a self-contained HTML report with plots to DIR/index.html.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
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
    if let Some(dir) = &args.report {
        write_report(dir, &args, &options, &report)?;
        eprintln!("wrote {}", dir.join("index.html").display());
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

const TITLES: [&str; 7] = [
    "Two running averages",
    "Variance of an exponential moving average",
    "Momentum as an exponential moving average",
    "Bias correction with rate 1/min(t, N)",
    "Learning rate against the scale of the loss",
    "Per-example adaptive SGD",
    "Multiplicative and loss-proportional updates",
];

fn write_report(
    dir: &std::path::Path,
    args: &VerifyArgs,
    options: &VerifyOptions,
    report: &Report,
) -> anyhow::Result<()> {
    let mut problems = args
        .problems
        .iter()
        .map(|&p| canonical_problem(p))
        .collect::<Result<Vec<_>, _>>()?;
    if problems.is_empty() {
        problems = PROBLEMS.to_vec();
    }
    problems.sort_unstable();
    problems.dedup();
    let mut sections = Vec::new();
    for p in problems {
        let mut rows = Vec::new();
        for c in report.claims.iter().filter(|c| c.problem == p) {
            let verdict = if c.passed {
                "<span class=\"pass\">PASS</span>"
            } else {
                "<span class=\"fail\">FAIL</span>"
            };
            rows.push(vec![
                esc(&c.id),
                esc(&c.title),
                esc(&num(c.expected)),
                esc(&measured(c)),
                esc(&score(c)),
                verdict.to_string(),
            ]);
            for r in &c.rejects {
                rows.push(vec![
                    String::new(),
                    format!("rejects {}", esc(&r.label)),
                    esc(&num(r.value)),
                    String::new(),
                    esc(&format!("z={:+.3e}", r.z)),
                    if r.rejected {
                        "rejected"
                    } else {
                        "<span class=\"fail\">NOT REJECTED</span>"
                    }
                    .to_string(),
                ]);
            }
        }
        let body = crate::report::table(
            &[
                "id",
                "claim",
                "expected",
                "measured ± SE",
                "check",
                "verdict",
            ],
            &rows,
        );
        sections.push(Section {
            heading: format!("Problem {p}: {}", TITLES[usize::from(p) - 1]),
            body,
            figures: problem_figures(p, options)?,
        });
    }
    write_page(
        dir,
        "sgdlab verify: the claims of the SGD problem set, measured",
        &format!(
            "{} passed, {} failed · seed {} · {} · every expected value is checked against an \
             independent measurement (Monte Carlo: |z| < 4; identities: within tolerance), and \
             plausible wrong answers must be at least 10 standard errors away.",
            report.passed,
            report.failed,
            options.seed,
            if options.quick {
                "quick"
            } else {
                "full sample sizes"
            }
        ),
        &sections,
    )
}
