//! `sgdlab verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sgdlab::lab::claims::{
    Claim, Method, PROBLEMS, Report, VerifyOptions, canonical_problem, verify_with_progress,
};
use sgdlab::lab::figures::problem_figures;

use crate::report::{Section, esc, write_page};

use crate::table::{Table, num};

/// Arguments of `sgdlab verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Check only this problem (repeatable; 8 and 9 repeat 5 and 7; 10 to 13 are sections beyond the problem set: the newer optimizers; bfloat16 state; batch-size scaling rules; 8-bit state). Default: all.
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
    /// Calibrate the error bars instead: run every Monte Carlo claim under K seeds (SEED,
    /// SEED+1, ...) and check that its z-scores are N(0, 1): mean, sd and a
    /// Kolmogorov–Smirnov test, per claim; exit 1 if one is off by more than K allows.
    #[arg(long, value_name = "K", conflicts_with = "report")]
    calibrate: Option<usize>,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let options = VerifyOptions {
        seed: args.seed,
        quick: args.quick,
    };
    if let Some(k) = args.calibrate {
        return calibrate(&args, &options, k);
    }
    if let Some(dir) = &args.report {
        crate::report::prepare_dir(dir)?;
    }
    // A progress line on stderr while the claims run (drawn only on a terminal).
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} verify: {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = verify_with_progress(&args.problems, &options, |done, total, problem| {
        if done < total {
            bar.set_message(format!("problem {problem} ({} of {total})", done + 1));
        }
    });
    bar.finish_and_clear();
    let report = report?;
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

/// `verify --calibrate K`.
fn calibrate(args: &VerifyArgs, options: &VerifyOptions, k: usize) -> anyhow::Result<ExitCode> {
    let cal = sgdlab::lab::calibrate::calibrate(&args.problems, options, k, |i| {
        eprint!("\rseed {i}/{k}");
    })?;
    eprintln!();
    let mut table = Table::new(&[
        "claim", "K", "mean z", "sd z", "max |z|", "KS D", "KS p", "verdict",
    ]);
    for c in &cal.claims {
        table.row(vec![
            c.id.clone(),
            c.k.to_string(),
            format!("{:+.3}", c.mean_z),
            format!("{:.3}", c.sd_z),
            format!("{:.2}", c.max_abs_z),
            format!("{:.3}", c.ks_d),
            format!("{:.3}", c.ks_p),
            if c.passed { "PASS" } else { "FAIL" }.to_string(),
        ]);
    }
    print!("{}", table.render());
    let failed = cal.claims.iter().filter(|c| !c.passed).count();
    println!(
        "\nseeds {}..{}: z-scores of {} Monte Carlo claims; a claim passes with |mean z| <= \
         4/sqrt(K), |sd z - 1| <= 4/sqrt(2(K-1)) and KS p >= 1e-4. {} calibrated, {} not; \
         {} claim runs failed their own check across all seeds{}.",
        cal.first_seed,
        cal.first_seed.wrapping_add(k as u64 - 1),
        cal.claims.len(),
        cal.claims.len() - failed,
        failed,
        cal.failed_runs.len(),
        if cal.failed_runs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = cal
                .failed_runs
                .iter()
                .map(|(seed, id)| format!("{id} at seed {seed}"))
                .collect();
            format!(" ({})", list.join(", "))
        }
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&cal)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if cal.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn measured(claim: &Claim) -> String {
    match claim.stderr {
        Some(se) => format!("{} ± {}", num(claim.measured), short(se)),
        None => num(claim.measured),
    }
}

/// A standard error to three significant digits.
fn short(x: f64) -> String {
    if x != 0.0 && x.is_finite() && (1e-3..1e4).contains(&x.abs()) {
        let digits = (2 - x.abs().log10().floor() as i32).clamp(0, 9) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.2e}")
    }
}

/// The widest a claim's text runs before it wraps onto the next line (the table then fits
/// 100 columns).
const CLAIM_WIDTH: usize = 29;

/// `text` in lines of at most `width` characters, broken at spaces where possible.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if !line.is_empty() && needed > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > width {
            let head: String = line.chars().take(width).collect();
            let tail: String = line.chars().skip(width).collect();
            lines.push(head);
            line = tail;
        }
    }
    lines.push(line);
    lines
}

/// What the table's symbols mean.
const LEGEND: &str = "\
Symbols: y_t, z_t the two running averages of problem 1 (z = γ·sum form, γ its scale); \
β the decay and N = 1/(1-β) the horizon; σ² the variance of the inputs; μ̂_t an EMA's \
estimate; η the learning rate; Φ the parameters and Φ* the loss minimiser.
Columns: expected = the theory's value; measured = Monte Carlo mean ± standard error (or an \
exact computation); check = z = (measured - expected)/stderr, PASS at |z| < 4, or the \
tolerance of an exact identity, or a bound (<= or >= expected); a \"rejects\" row is a plausible wrong answer, which the \
measurement must be at least 10 standard errors from.
";

fn score(claim: &Claim) -> String {
    match (claim.z, claim.method) {
        (Some(z), _) => format!("z={z:+.2}"),
        (None, Method::AtMost) => "<= expected".to_string(),
        (None, Method::AtLeast) => ">= expected".to_string(),
        (None, _) => format!("tol {:.0e}", claim.tolerance),
    }
}

fn render(report: &Report) -> String {
    let mut table = Table::new(&["id", "claim", "expected", "measured", "check", "verdict"]);
    let continued = |table: &mut Table, lines: &[String]| {
        for line in lines {
            table.row(vec![String::new(), line.clone()]);
        }
    };
    for claim in &report.claims {
        let lines = wrap(&claim.title, CLAIM_WIDTH);
        table.row(vec![
            claim.id.clone(),
            lines[0].clone(),
            num(claim.expected),
            measured(claim),
            score(claim),
            if claim.passed { "PASS" } else { "FAIL" }.to_string(),
        ]);
        continued(&mut table, &lines[1..]);
        for r in &claim.rejects {
            let lines = wrap(&format!("rejects {}", r.label), CLAIM_WIDTH - 2);
            let lines: Vec<String> = lines.iter().map(|l| format!("  {l}")).collect();
            table.row(vec![
                String::new(),
                lines[0].clone(),
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
            continued(&mut table, &lines[1..]);
        }
    }
    let legend: String = LEGEND
        .lines()
        .map(|p| wrap(p, 99).join("\n") + "\n")
        .collect();
    format!(
        "{}\n{legend}\n{} passed, {} failed\n",
        table.render(),
        report.passed,
        report.failed
    )
}

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
            let title = if c.optimizer.is_empty() {
                esc(&c.title)
            } else {
                let specs: Vec<String> = c
                    .optimizer
                    .iter()
                    .map(|s| format!("<code>{}</code>", esc(s)))
                    .collect();
                format!(
                    "{}<br><small>runs {}</small>",
                    esc(&c.title),
                    specs.join(", ")
                )
            };
            rows.push(vec![
                esc(&c.id),
                title,
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
            heading: format!("Problem {p}: {}", sgdlab::lab::claims::title(p)),
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
