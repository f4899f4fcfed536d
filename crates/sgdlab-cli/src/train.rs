//! `sgdlab train`: train a model with several optimizers side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sgdlab::optim::OptimizerSpec;
use sgdlab::train::{Experiment, Observer, OutMode, Plan, Run, TrainConfig};

use crate::table::{Table, num};

/// Arguments of `sgdlab train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `digits` (bundled), `fashion-mnist` (Debian's dataset-fashion-mnist), a directory of
    /// MNIST-format IDX files, or a CSV file with the label in the last column.
    #[arg(long, default_value = "digits")]
    data: String,
    /// `softmax` (regression) or `mlp:H1[,H2...]` (ReLU hidden layers).
    #[arg(long, default_value = "softmax")]
    model: String,
    /// Optimizer spec (repeatable): every optimizer trains the same model from the same
    /// initial weights on the same example order.
    #[arg(long = "opt", value_name = "SPEC", required = true)]
    opts: Vec<String>,
    /// A parameter group for every --opt (repeatable; the first matching group wins):
    /// PATTERNS:KEY=VALUE,... with glob patterns over the tensor names layer{l}.weight and
    /// layer{l}.bias, e.g. '*.bias:weight_decay=0', or 'layer0.*:rule=lion,lr=1e-4' for
    /// another rule.
    #[arg(long = "group", value_name = "PATTERNS:KEY=VALUE,...")]
    groups: Vec<String>,
    /// Epochs (in all, when resuming).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Examples per step (1 = per-example SGD).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Learning-rate schedule: constant, warmup:S, linear:A,B,T, cosine[:T[,M]],
    /// warmup-cosine:W[,T[,M]], decay:E,GAMMA, exp:GAMMA, wsd:W,S,D[,M], seq[A;B;...]@T1,...,
    /// prod[A;B;...]. A length is whole steps, Nep (N epochs) or * (the rest of the run or of
    /// a seq part; an omitted T means it too): cosine decays over the run, wsd:100,*,500
    /// decays over the last 500 steps, decay:3ep,0.1 every 3 epochs.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Keep an EMA of the weights with this decay and evaluate it too.
    #[arg(long, value_name = "BETA")]
    ema_weights: Option<f64>,
    /// Record the gradient noise scale B_simple = tr Σ/|G|² (as `sgdlab noise`) after every
    /// epoch, from exact per-example gradients on a seeded sample of N training examples:
    /// columns noise_trace, noise_grad_sq, noise_b_simple of metrics.csv, and noise.svg.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1000")]
    noise_scale: Option<usize>,
    /// Loss unit: nats or bits (problem 5a).
    #[arg(long, default_value = "nats", value_parser = ["nats", "bits"])]
    loss_unit: String,
    /// Seed of the initial weights, the example order and the train/test split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction held out for testing (digits and CSV data; IDX data has its own test set).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Output directory (default runs/YYYYMMDD-HHMMSS, in UTC).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the runs checkpointed in --out up to --epochs (a run with no checkpoint yet
    /// starts from the beginning).
    #[arg(long)]
    resume: bool,
    /// Checkpoint every N epochs (and always after the last epoch or a divergence); a run
    /// killed in between loses at most N epochs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    checkpoint_every: usize,
    /// Write into an --out directory that already holds a run, replacing it: its run
    /// directories and outputs are removed first.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The experiment the arguments describe.
fn experiment(args: &TrainArgs) -> anyhow::Result<Experiment> {
    let groups = args
        .groups
        .iter()
        .map(|g| g.parse())
        .collect::<Result<Vec<_>, _>>()
        .context("bad --group")?;
    let out = match (&args.out, args.resume) {
        (Some(dir), _) => dir.clone(),
        (None, true) => bail!("--resume needs --out DIR, the directory of the runs to continue"),
        (None, false) => PathBuf::from("runs").join(timestamp()),
    };
    Ok(Experiment {
        data: args.data.parse()?,
        test_fraction: args.test_fraction,
        model: args.model.parse()?,
        loss_unit: args.loss_unit.parse()?,
        optimizers: crate::parse_specs(&args.opts)?,
        groups,
        config: TrainConfig {
            epochs: args.epochs,
            batch: args.batch,
            schedule: args.schedule.parse()?,
            ema_weights: args.ema_weights,
            seed: args.seed,
            noise_examples: args.noise_scale,
        },
        out,
        mode: match (args.resume, args.force) {
            (true, _) => OutMode::Resume,
            (false, true) => OutMode::Force,
            (false, false) => OutMode::New,
        },
        checkpoint_every: args.checkpoint_every,
    })
}

/// Progress bars on stderr, one per run, and the experiment's notices.
struct Bars<'a> {
    experiment: &'a Experiment,
    multi: MultiProgress,
    style: ProgressStyle,
    bars: Mutex<Vec<Option<(ProgressBar, usize)>>>,
}

impl Bars<'_> {
    fn bar(&self, k: usize) -> Option<(ProgressBar, usize)> {
        self.bars.lock().ok()?.get(k).cloned().flatten()
    }
}

impl Observer for Bars<'_> {
    fn note(&self, message: &str) {
        self.multi.suspend(|| eprintln!("{message}"));
    }

    fn started(&self, plan: &Plan) {
        let e = self.experiment;
        eprintln!(
            "training {} on {} ({} train / {} test examples, {} classes, {} parameters), \
             {} epochs of {} steps, batch {}",
            e.model,
            e.data,
            plan.train_examples,
            plan.test_examples,
            plan.classes,
            plan.parameters,
            e.config.epochs,
            plan.steps_per_epoch,
            e.config.batch
        );
        for g in &e.groups {
            eprintln!("parameter group: {g}");
        }
    }

    fn run_started(&self, k: usize, spec: &OptimizerSpec, first: usize, steps: u64) {
        let bar = self.multi.add(ProgressBar::new(steps));
        bar.set_style(self.style.clone());
        bar.set_prefix(spec.to_string());
        if let Ok(mut bars) = self.bars.lock() {
            if bars.len() <= k {
                bars.resize(k + 1, None);
            }
            bars[k] = Some((bar, first));
        }
    }

    fn progress(&self, k: usize, done: u64, per_epoch: u64, epoch: usize) {
        if (done.is_multiple_of(64) || done == per_epoch)
            && let Some((bar, first)) = self.bar(k)
        {
            bar.set_position((epoch - 1 - first) as u64 * per_epoch + done);
            bar.set_message(format!("{epoch}/{}", self.experiment.config.epochs));
        }
    }

    fn run_finished(&self, k: usize, run: &Run) {
        if let Some((bar, _)) = self.bar(k) {
            match &run.diverged {
                Some(why) => bar.abandon_with_message(format!("diverged: {why}")),
                None => bar.finish(),
            }
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let experiment = experiment(&args)?;
    let bars = Bars {
        experiment: &experiment,
        multi: MultiProgress::new(),
        style: ProgressStyle::with_template(
            "{prefix:<28} [{bar:30}] epoch {msg} {percent:>3}% {per_sec:>14} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
        bars: Mutex::new(Vec::new()),
    };
    let outcome = experiment.run(&bars)?;
    let specs = &experiment.optimizers;
    let (header, rows) = final_rows(
        specs,
        &outcome.runs,
        outcome.train_examples,
        args.ema_weights,
    );
    let out = &experiment.out;
    let figures = experiment.figures(&outcome);
    for (stem, figure) in &figures {
        crate::plot::write(figure, &out.join(stem))?;
    }
    let escaped: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| crate::report::esc(c)).collect())
        .collect();
    crate::report::write_page(
        out,
        &format!("sgdlab train: {} on {}", experiment.model, experiment.data),
        &format!(
            "{} epochs, batch {}, schedule {}, seed {}, loss in {}",
            args.epochs, args.batch, experiment.config.schedule, args.seed, args.loss_unit
        ),
        &[crate::report::Section {
            heading: "Results".into(),
            body: crate::report::table(&header, &escaped),
            figures: figures.into_iter().map(|(_, f)| f).collect(),
        }],
    )?;
    let mut table = Table::new(&header);
    for row in rows {
        table.row(row);
    }
    print!("{}", table.render());
    println!("\nwrote {}", out.display());
    drop(outcome);
    Ok(ExitCode::SUCCESS)
}

/// The final results: header and one row per run.
fn final_rows(
    specs: &[OptimizerSpec],
    runs: &[Run],
    examples: usize,
    ema: Option<f64>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec![
        "optimizer",
        "epochs",
        "train loss",
        "test loss",
        "test accuracy",
    ];
    if ema.is_some() {
        header.push("EMA test accuracy");
    }
    header.extend(["examples/s", "status"]);
    let rows = specs
        .iter()
        .zip(runs)
        .map(|(spec, run)| {
            let last = run.metrics.last();
            let cell =
                |f: fn(&sgdlab::train::EpochMetrics) -> f64| last.map_or("-".into(), |m| num(f(m)));
            let mut row = vec![
                spec.to_string(),
                run.epoch.to_string(),
                cell(|m| m.train_loss),
                cell(|m| m.test_loss),
                last.map_or("-".into(), |m| format!("{:.2}%", 100.0 * m.test_accuracy)),
            ];
            if ema.is_some() {
                row.push(
                    last.and_then(|m| m.ema_test_accuracy)
                        .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
                );
            }
            row.push(format!("{:.0}", run.examples_per_second(examples)));
            row.push(match &run.diverged {
                Some(why) => format!("diverged: {why}"),
                None => "ok".into(),
            });
            row
        })
        .collect();
    (header, rows)
}
