//! `sgdlab critical-batch`: the critical batch size measured by training, beside the gradient
//! noise scale.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sgdlab::lab::figures::{Figure, Line};
use sgdlab::model::{LossUnit, Network};
use sgdlab::optim::OptimizerSpec;
use sgdlab::train::{DataSource, ModelSpec, ScanConfig, ScanReport, scan_batches};

use crate::table::{Table, num};

/// Arguments of `sgdlab critical-batch`.
#[derive(Args, Debug)]
pub struct CriticalBatchArgs {
    /// The data, as `sgdlab train --data` takes them (digits, fashion-mnist, a directory of
    /// IDX files, a CSV with the label last); the training set is used.
    #[arg(long, default_value = "digits")]
    data: String,
    /// softmax or mlp:H1[,H2...] (as `sgdlab train --model`).
    #[arg(long, default_value = "mlp:64")]
    model: String,
    /// The optimizer (a spec as `sgdlab train --opt`; its lr is replaced by each of --lrs).
    #[arg(long, default_value = "sgd")]
    opt: String,
    /// The training loss (mean over the evaluation sample) every run must reach.
    #[arg(long, default_value_t = 0.1)]
    target_loss: f64,
    /// Batch sizes, comma-separated. Default: 8, 16, 32, … up to the training set's size.
    #[arg(long, value_delimiter = ',', value_name = "B,B,...")]
    batches: Vec<usize>,
    /// Learning rates tried at every batch size, comma-separated. Default: the spec's lr
    /// times 2^(k/2), k = −6 … 6 (thirteen rates from lr/8 to 8 lr).
    #[arg(long, value_delimiter = ',', value_name = "LR,LR,...")]
    lrs: Vec<f64>,
    /// The most steps a run takes before it counts as not reaching the target.
    #[arg(long, default_value_t = 20_000)]
    max_steps: u64,
    /// How often a run checks its loss, in checks per epoch (S's resolution is an epoch over
    /// this, at least one step).
    #[arg(long, default_value_t = 16)]
    checks_per_epoch: usize,
    /// The training examples on which the loss is checked (a seeded sample).
    #[arg(long, default_value_t = 4096)]
    eval_examples: usize,
    /// The training examples on which B_simple is measured (a seeded sample).
    #[arg(long, default_value_t = 1000)]
    noise_examples: usize,
    /// Loss unit of the cross-entropy.
    #[arg(long, default_value = "nats", value_parser = ["nats", "bits"])]
    loss_unit: String,
    /// Seed of the initial weights, the train/test split, the example order and the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction held out for testing (digits and CSV data; as `sgdlab train`).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Also write the result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also plot examples against steps (the measured points and the fitted trade-off) to
    /// STEM.svg and STEM.png.
    #[arg(long, value_name = "STEM")]
    plot: Option<PathBuf>,
}

/// The trade-off figure: log₂ E against log₂ S for the points and the fit.
fn figure(args: &CriticalBatchArgs, report: &ScanReport) -> Figure {
    // The measurement and its fit in two colours.
    let line = |label: String, points: Vec<(f64, f64)>, dashed: bool| Line {
        label,
        points,
        dashed,
        group: usize::from(dashed),
    };
    let mut lines = vec![line(
        "measured (one point a batch size)".into(),
        report
            .points
            .iter()
            .map(|p| ((p.steps as f64).log2(), (p.examples as f64).log2()))
            .collect(),
        false,
    )];
    let mut caption = format!(
        "{} with {} on {}: the steps S and examples E = BS to a training loss of {} at each \
         batch size's best learning rate.",
        args.model, args.opt, args.data, args.target_loss
    );
    if let (Some(fit), Some(first), Some(last)) =
        (report.fit, report.points.first(), report.points.last())
    {
        let (lo, hi) = (
            (first.batch.min(last.batch) as f64 / 2.0).log2(),
            (first.batch.max(last.batch) as f64 * 2.0).log2(),
        );
        let curve = (0..=64)
            .map(|k| {
                let b = (lo + (hi - lo) * f64::from(k) / 64.0).exp2();
                let s = fit.s_min + fit.e_min / b;
                (s.log2(), (b * s).log2())
            })
            .collect();
        lines.push(line(
            format!(
                "fit (S/S_min − 1)(E/E_min − 1) = 1, B_crit = {}",
                num(fit.b_crit)
            ),
            curve,
            true,
        ));
        caption.push_str(&format!(
            " The fit: S_min = {}, E_min = {}, B_crit = E_min/S_min = {}.",
            num(fit.s_min),
            num(fit.e_min),
            num(fit.b_crit)
        ));
    }
    Figure {
        title: "Steps against examples to a target loss".into(),
        caption,
        x_label: "log₂ steps S".into(),
        y_label: "log₂ examples E".into(),
        lines,
        ..Figure::default()
    }
}

#[derive(Serialize)]
struct Output<'a> {
    data: &'a str,
    model: &'a str,
    opt: &'a str,
    target_loss: f64,
    seed: u64,
    #[serde(flatten)]
    report: &'a ScanReport,
    /// The median of the points' B_simple.
    median_b_simple: Option<f64>,
}

/// The median of `values` (none when empty).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[m]
    } else {
        0.5 * (values[m - 1] + values[m])
    })
}

pub fn run(args: CriticalBatchArgs) -> anyhow::Result<ExitCode> {
    let unit: LossUnit = args.loss_unit.parse()?;
    let spec: OptimizerSpec = args
        .opt
        .parse()
        .with_context(|| format!("bad --opt `{}`", args.opt))?;
    let model: ModelSpec = args.model.parse()?;
    let source: DataSource = args.data.parse()?;
    let split = source.load(args.test_fraction, args.seed)?;
    let n = split.train.len();
    let net = Network::new(split.train.dim(), &model.hidden, split.classes, unit)?;
    let batches = if args.batches.is_empty() {
        let mut b = Vec::new();
        let mut k = 8usize;
        while k <= n {
            b.push(k);
            k *= 2;
        }
        if b.is_empty() {
            bail!(
                "the training set has {n} examples: fewer than the smallest default batch 8; pass --batches"
            );
        }
        b
    } else {
        args.batches.clone()
    };
    let lrs = if args.lrs.is_empty() {
        let base = spec.rule.lr();
        if base.is_nan() || base <= 0.0 {
            bail!(
                "--opt `{}` has lr {base}: pass a positive lr or --lrs",
                args.opt
            );
        }
        (-6..=6)
            .map(|k| base * 2f64.powf(f64::from(k) / 2.0))
            .collect()
    } else {
        args.lrs.clone()
    };
    let config = ScanConfig {
        batches,
        lrs,
        target_loss: args.target_loss,
        max_steps: args.max_steps,
        checks_per_epoch: args.checks_per_epoch,
        eval_examples: args.eval_examples,
        noise_examples: args.noise_examples,
        seed: args.seed,
    };
    let bar = ProgressBar::new(config.batches.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} batch sizes, {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} on {}", args.opt, args.data));
    let report = scan_batches(&net, &split, &spec, &config, &|_| bar.inc(1))?;
    bar.finish_and_clear();

    println!(
        "{} with {} on {} ({n} training examples): steps to a training loss of {} \
         (checked on {} examples), at the best of {} learning rates",
        args.model,
        args.opt,
        args.data,
        args.target_loss,
        config.eval_examples.min(n),
        config.lrs.len()
    );
    println!();
    let mut table = Table::new(&["B", "lr", "steps S", "examples E", "B_simple"]);
    for p in &report.points {
        table.row(vec![
            p.batch.to_string(),
            format!("{}{}", num(p.lr), if p.lr_at_edge { " *" } else { "" }),
            format!("{} (±{})", p.steps, p.check_every),
            p.examples.to_string(),
            p.b_simple.map_or("-".to_string(), num),
        ]);
    }
    print!("{}", table.render());
    if report.points.iter().any(|p| p.lr_at_edge) {
        println!(
            "* the best lr is at the edge of the grid: the optimum may lie beyond it (widen \
             --lrs)"
        );
    }
    if !report.unreached.is_empty() {
        println!(
            "not reached within {} steps at B = {:?}",
            config.max_steps, report.unreached
        );
    }
    let median_b_simple = median(report.points.iter().filter_map(|p| p.b_simple).collect());
    println!();
    match report.fit {
        Some(fit) => {
            println!(
                "fit S = S_min + E_min/B, i.e. (S/S_min − 1)(E/E_min − 1) = 1: S_min = {}, \
                 E_min = {}, critical batch B_crit = E_min/S_min = {} (rms relative residual \
                 {})",
                num(fit.s_min),
                num(fit.e_min),
                num(fit.b_crit),
                num(fit.rms_relative_residual)
            );
            if let Some(b) = median_b_simple {
                println!(
                    "B_simple where the runs reached the target: median {} (B_crit/B_simple = \
                     {})",
                    num(b),
                    num(fit.b_crit / b)
                );
            }
        }
        None => println!(
            "no fit: fewer than two batch sizes reached the target, or their steps do not fall \
             as S_min + E_min/B"
        ),
    }
    println!(
        "\nMcCandlish et al. (2018): S_min is the fewest steps (infinite batch), E_min the \
         fewest examples (B → 0), and B_crit = E_min/S_min the batch at which a run needs twice \
         both; B_simple = tr Σ/|G|² predicts it where the Hessian is near a multiple of the \
         identity."
    );
    if let Some(path) = &args.json {
        let out = Output {
            data: &args.data,
            model: &args.model,
            opt: &args.opt,
            target_loss: args.target_loss,
            seed: args.seed,
            report: &report,
            median_b_simple,
        };
        let json = serde_json::to_string_pretty(&out)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(stem) = &args.plot {
        crate::plot::write(&figure(&args, &report), stem)?;
    }
    Ok(ExitCode::SUCCESS)
}
