//! `sgdlab audit`: the drift and fixed point of optimizers at the loss minimiser.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sgdlab::data::read_csv;
use sgdlab::lab::audit::{AuditModel, OptimizerAudit, SimulationOptions, audit};
use sgdlab::model::LossUnit;

use crate::table::{Table, num};

/// The model to audit.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModelKind {
    /// ½‖Φ − xᵢ‖² (every column is a coordinate).
    Points,
    /// ½(w·x + b − y)² (last column: y).
    Linreg,
    /// Binary cross-entropy (last column: label 0/1).
    Logreg,
    /// Multiclass cross-entropy (last column: label 0..K-1).
    Softmax,
}

/// Arguments of `sgdlab audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The data: numeric CSV (optionally .gz); last column is the target except for points.
    #[arg(long, value_name = "FILE.csv")]
    data: PathBuf,
    /// The model whose per-example losses define the updates.
    #[arg(long, value_enum)]
    model: ModelKind,
    /// Optimizer spec to audit (repeatable), e.g. normsgd:eps=1 or adam:lr=1e-3. Any
    /// torch.optim optimizer of your own is audited from Python: sgdlab.audit(data,
    /// opts=[MyOptimizer]).
    #[arg(long = "opt", value_name = "SPEC", required = true)]
    opts: Vec<String>,
    /// Drop the bias term b (linreg, logreg).
    #[arg(long)]
    no_bias: bool,
    /// Loss unit of cross-entropy models.
    #[arg(long, default_value = "nats", value_parser = ["nats", "bits"])]
    loss_unit: String,
    /// Steps averaged by the simulations of stateful optimizers.
    #[arg(long, default_value_t = SimulationOptions::default().steps)]
    steps: usize,
    /// Burn-in steps of those simulations.
    #[arg(long, default_value_t = SimulationOptions::default().burn_in)]
    burn_in: usize,
    /// Seed of the simulations.
    #[arg(long, default_value_t = SimulationOptions::default().seed)]
    seed: u64,
    /// Also write the audit as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write a self-contained HTML report with the expected-update field to
    /// DIR/index.html.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

fn build_model(args: &AuditArgs) -> anyhow::Result<AuditModel> {
    let unit: LossUnit = args.loss_unit.parse()?;
    let has_target = !matches!(args.model, ModelKind::Points);
    let data = read_csv(&args.data, has_target)?;
    let kind = args
        .model
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    Ok(AuditModel::build(&kind, data, !args.no_bias, unit)?)
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let options = SimulationOptions {
        burn_in: args.burn_in,
        steps: args.steps,
        seed: args.seed,
    };
    // Checked before the data are read: a wrong count fails at once.
    options.validate()?;
    let specs = crate::parse_specs(&args.opts)?;
    if let Some(dir) = &args.report {
        crate::report::prepare_dir(dir)?;
    }
    let model = build_model(&args)?;
    let report = audit(&model, &specs, &options)?;
    println!("loss minimiser Φ* = {}", vector(&report.minimizer));
    println!();
    let mut table = Table::new(&[
        "optimizer",
        "method",
        "drift E[ΔΦ]/lr at Φ*",
        "|drift|",
        "fixed point",
        "|fixed point - Φ*|",
        "consistent",
    ]);
    for o in &report.optimizers {
        table.row(row(o));
    }
    print!("{}", table.render());
    println!(
        "\ndrift: expected step per unit learning rate at Φ* (exact for stateless rules; for \
         stateful ones measured with Φ held at Φ* and the state stationary, ± standard error).\n\
         fixed point: root of the expected update (exact), or the average iterate at the \
         given lr (simulation; --json also has lr/2 and the extrapolation to lr → 0)."
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        let rows: Vec<Vec<String>> = report
            .optimizers
            .iter()
            .map(|o| row(o).iter().map(|c| crate::report::esc(c)).collect())
            .collect();
        let body = format!(
            "<p>Loss minimiser Φ* = {}</p>{}",
            crate::report::esc(&vector(&report.minimizer)),
            crate::report::table(
                &[
                    "optimizer",
                    "method",
                    "drift E[ΔΦ]/lr at Φ*",
                    "|drift|",
                    "fixed point",
                    "|fixed point − Φ*|",
                    "consistent",
                ],
                &rows
            )
        );
        let section = crate::report::Section {
            heading: format!("{:?} model on {}", args.model, args.data.display()),
            body,
            figures: vec![sgdlab::lab::figures::audit_figure(&model, &report)?],
        };
        crate::report::write_page(
            dir,
            "sgdlab audit: drift and fixed points at the loss minimiser",
            "Drift: expected step per unit learning rate at the loss minimiser (exact for \
             stateless rules; simulated with Φ held at Φ* for stateful ones). A rule is \
             consistent when its drift vanishes there.",
            &[section],
        )?;
        eprintln!("wrote {}", dir.join("index.html").display());
    }
    Ok(ExitCode::SUCCESS)
}

fn vector(v: &[f64]) -> String {
    let shown: Vec<String> = v.iter().take(6).map(|x| num(*x)).collect();
    let more = if v.len() > 6 {
        format!(", … ({} values)", v.len())
    } else {
        String::new()
    };
    format!("[{}{more}]", shown.join(", "))
}

fn row(o: &OptimizerAudit) -> Vec<String> {
    let drift = match &o.drift_stderr {
        Some(se) => {
            let shown: Vec<String> = o
                .drift
                .iter()
                .zip(se)
                .take(4)
                .map(|(d, s)| format!("{} ± {}", num(*d), num(*s)))
                .collect();
            let more = if o.drift.len() > 4 {
                format!(", … ({} values)", o.drift.len())
            } else {
                String::new()
            };
            format!("[{}{more}]", shown.join(", "))
        }
        None => vector(&o.drift),
    };
    vec![
        o.optimizer.clone(),
        o.method.to_string(),
        drift,
        num(o.drift_norm),
        vector(&o.fixed_point),
        num(o.fixed_point_distance),
        if o.consistent { "yes" } else { "NO" }.to_string(),
    ]
}
