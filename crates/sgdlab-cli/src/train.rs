//! `sgdlab train`: train a model with several optimizers side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sgdlab::data::{FASHION_MNIST_DIR, Split, digits, load_idx_dir, read_csv, stratified_split};
use sgdlab::lab::figures::{Figure, Line};
use sgdlab::model::{LossUnit, Network};
use sgdlab::optim::OptimizerSpec;
use sgdlab::train::{
    CheckpointMeta, Run, ScheduleSpec, TrainConfig, Trainer, has_checkpoint, load_checkpoint,
    save_checkpoint, split_sha256,
};

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
    /// Learning-rate schedule: constant, step:E,GAMMA (every E epochs), cosine (over the run),
    /// warmup-cosine:S, wsd:W,D (S, W, D in steps), or any schedule in steps: warmup:S,
    /// linear:A,B,T, cosine:T[,M], decay:E,GAMMA, exp:GAMMA, wsd:W,S,D[,M],
    /// seq[A;B;...]@T1,..., prod[A;B;...].
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Keep an EMA of the weights with this decay and evaluate it too.
    #[arg(long, value_name = "BETA")]
    ema_weights: Option<f64>,
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

/// The files `train` writes at the top of its output directory (besides `runN/`).
const OUTPUTS: [&str; 7] = [
    "metrics.csv",
    "summary.json",
    "loss.svg",
    "loss.png",
    "accuracy.svg",
    "accuracy.png",
    "index.html",
];

/// The run directories `runN` in `dir`, with their N: directories (not links to them) whose
/// name is exactly `run` and N in decimal, as `train` names them (`run007` and `run+1` are
/// someone else's).
fn run_dirs(dir: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let k = name
            .to_str()
            .and_then(|n| n.strip_prefix("run"))
            .and_then(|k| k.parse::<usize>().ok().filter(|n| n.to_string() == k));
        // DirEntry::file_type does not follow symbolic links.
        if let Some(k) = k
            && entry.file_type()?.is_dir()
        {
            out.push((k, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses a path `train` would write that is a symbolic link (written through, it would
/// change a file elsewhere) or not what it should be (a run directory that is a file).
fn refuse_links(out: &Path, runs: usize) -> anyhow::Result<()> {
    let link =
        |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let refuse = |path: &Path| {
        anyhow::anyhow!(
            "{} is a symbolic link: sgdlab writes a run's files only as regular files inside \
             --out, never through a link (remove it, or choose another --out)",
            path.display()
        )
    };
    for name in OUTPUTS {
        let path = out.join(name);
        if link(&path) {
            return Err(refuse(&path));
        }
    }
    for k in 0..runs {
        let dir = out.join(format!("run{k}"));
        if link(&dir) {
            return Err(refuse(&dir));
        }
        if dir.exists() && !dir.is_dir() {
            bail!(
                "{} is not a directory: it is where run {k}'s checkpoint goes (remove it, or \
                 choose another --out)",
                dir.display()
            );
        }
        let file = dir.join(sgdlab::train::CHECKPOINT_FILE);
        if link(&file) {
            return Err(refuse(&file));
        }
    }
    Ok(())
}

/// `--force`: removes what `train` wrote in a run directory (its checkpoint and temporary
/// files), then the directory if nothing else is left in it. Files sgdlab did not write are
/// kept, and so is the directory that holds them.
fn remove_run_dir(dir: &Path) -> anyhow::Result<()> {
    let ours =
        |name: &str| name == sgdlab::train::CHECKPOINT_FILE || sgdlab::io::is_temp_name(name);
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if ours(&entry.file_name().to_string_lossy()) && !entry.file_type()?.is_dir() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("--force: cannot remove {}", entry.path().display()))?;
        }
    }
    let empty = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .next()
        .is_none();
    if empty {
        std::fs::remove_dir(dir)
            .with_context(|| format!("--force: cannot remove {}", dir.display()))?;
    } else {
        eprintln!(
            "--force: kept {}: it holds files sgdlab did not write",
            dir.display()
        );
    }
    Ok(())
}

/// Prepares `out` for writing: refuses a directory that already holds something unless
/// resuming or `--force` (which removes earlier runs' checkpoints and the outputs `train`
/// writes, and nothing else), refuses symbolic links where `train` writes, locks it against
/// other processes, and removes temporary files that a killed writer left behind.
///
/// `run` has already refused an `--out` that is a file, or missing when resuming.
fn prepare_out(out: &Path, args: &TrainArgs, runs: usize) -> anyhow::Result<sgdlab::io::DirLock> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let lock = sgdlab::io::DirLock::acquire(out)?;
    let lock_name = sgdlab::io::DirLock::FILE;
    let mut existing = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name != lock_name && !sgdlab::io::is_temp_name(&name) {
            existing.push(name.into_owned());
        }
    }
    refuse_links(out, runs)?;
    let dirs = run_dirs(out)?;
    if args.force {
        for (_, dir) in &dirs {
            remove_run_dir(dir)?;
        }
        for name in OUTPUTS {
            let path = out.join(name);
            if path.is_file() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("--force: cannot remove {}", path.display()))?;
            }
        }
    } else if !args.resume && !existing.is_empty() {
        existing.sort();
        bail!(
            "--out {} already holds {} (e.g. {}): continue it with --resume, or replace it with \
             --force",
            out.display(),
            if dirs.is_empty() { "files" } else { "a run" },
            existing
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.resume
        && let Some((k, _)) = dirs.iter().find(|(k, _)| *k >= runs)
    {
        bail!(
            "--resume: {} holds run{k}, but this command has {runs} --opt; pass every --opt \
             of the original command, in order (or start over with --force)",
            out.display()
        );
    }
    let mut removed = sgdlab::io::remove_stale_temps(out)?;
    for (_, dir) in run_dirs(out)? {
        removed += sgdlab::io::remove_stale_temps(&dir)?;
    }
    if removed > 0 {
        eprintln!("removed {removed} temporary file(s) left by an interrupted run");
    }
    Ok(lock)
}

fn load_data(args: &TrainArgs) -> anyhow::Result<Split> {
    Ok(match args.data.as_str() {
        "digits" => stratified_split(&digits()?, args.test_fraction, args.seed)?,
        "fashion-mnist" => load_idx_dir(Path::new(FASHION_MNIST_DIR))?,
        path => {
            let p = Path::new(path);
            if p.is_dir() {
                load_idx_dir(p)?
            } else if p.is_file() {
                stratified_split(&read_csv(p, true)?, args.test_fraction, args.seed)?
            } else {
                bail!(
                    "--data {path}: not digits, fashion-mnist, a directory of IDX files or a \
                     CSV file"
                );
            }
        }
    })
}

fn parse_model(model: &str) -> anyhow::Result<Vec<usize>> {
    if model == "softmax" {
        return Ok(Vec::new());
    }
    let Some(widths) = model.strip_prefix("mlp:") else {
        bail!("invalid --model {model}: must be softmax or mlp:H1[,H2...], e.g. mlp:256");
    };
    widths
        .split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(h) if h > 0 => Ok(h),
            _ => bail!("invalid --model {model}: `{w}` is not a positive layer width"),
        })
        .collect()
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

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let specs = crate::parse_specs(&args.opts)?;
    let groups = args
        .groups
        .iter()
        .map(|g| g.parse::<sgdlab::optim::GroupSpec>())
        .collect::<Result<Vec<_>, _>>()
        .context("bad --group")?;
    for spec in &specs {
        sgdlab::optim::Optimizer::<f32>::with_groups(spec.clone(), groups.clone())
            .with_context(|| format!("--group with --opt `{spec}`"))?;
    }
    let hidden = parse_model(&args.model)?;
    let schedule: ScheduleSpec = args.schedule.parse()?;
    let unit: LossUnit = args.loss_unit.parse()?;
    let config = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        schedule: schedule.clone(),
        ema_weights: args.ema_weights,
        seed: args.seed,
    };
    config.validate()?;
    if args.checkpoint_every == 0 {
        bail!("invalid --checkpoint-every 0: must be at least 1");
    }
    let out = match (&args.out, args.resume) {
        (Some(dir), _) => dir.clone(),
        (None, true) => bail!("--resume needs --out DIR, the directory of the runs to continue"),
        (None, false) => PathBuf::from("runs").join(timestamp()),
    };
    // Checked before the data are loaded, so that a wrong --out fails at once.
    if out.exists() && !out.is_dir() {
        bail!("--out {}: is a file, not a run directory", out.display());
    }
    if args.resume && !out.exists() {
        bail!("--resume: {} does not exist", out.display());
    }
    let split = load_data(&args)?;
    let net = Network::new(split.train.dim(), &hidden, split.classes, unit)?;
    let trainer = Trainer::new(&net, &split, config)?;
    trainer.check_memory(&specs)?;
    let batch = trainer.config().batch;
    if batch < args.batch {
        eprintln!(
            "--batch {} is more than the {} training examples: each step uses all of them",
            args.batch, batch
        );
    }
    let _lock = prepare_out(&out, &args, specs.len())?;

    let data_sha256 = split_sha256(&split);
    let meta = |spec: &OptimizerSpec| CheckpointMeta {
        optimizer: spec.to_string(),
        groups: groups.iter().map(ToString::to_string).collect(),
        widths: net.widths().to_vec(),
        loss_unit: args.loss_unit.clone(),
        seed: args.seed,
        batch,
        schedule: schedule.to_string(),
        epochs: args.epochs,
        ema_weights: args.ema_weights,
        data: format!("{} (test fraction {})", args.data, args.test_fraction),
        data_sha256: data_sha256.clone(),
    };
    let run_dir = |k: usize| out.join(format!("run{k}"));
    let mut runs = specs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            if args.resume && has_checkpoint(&run_dir(k)) {
                load_checkpoint(&run_dir(k), &meta(spec), &net)
                    .with_context(|| format!("cannot resume run{k} ({spec})"))
            } else {
                if args.resume {
                    eprintln!(
                        "run{k} ({spec}) has no checkpoint yet: it starts from the beginning"
                    );
                }
                Ok(trainer.start_grouped(spec, &groups)?)
            }
        })
        .collect::<anyhow::Result<Vec<Run>>>()?;

    eprintln!(
        "training {} on {} ({} train / {} test examples, {} classes, {} parameters), \
         {} epochs of {} steps, batch {}",
        args.model,
        args.data,
        split.train.len(),
        split.test.len(),
        split.classes,
        net.num_params(),
        args.epochs,
        trainer.steps_per_epoch(),
        args.batch
    );
    for g in &groups {
        eprintln!("parameter group: {g}");
    }
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:<28} [{bar:30}] epoch {msg} {percent:>3}% {per_sec:>14} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let steps = trainer.steps_per_epoch();
    runs.par_iter_mut().zip(&specs).enumerate().try_for_each(
        |(k, (run, spec))| -> anyhow::Result<()> {
            let remaining = (args.epochs.saturating_sub(run.epoch)) as u64 * steps;
            let bar = bars.add(ProgressBar::new(remaining));
            bar.set_style(style.clone());
            bar.set_prefix(spec.to_string());
            let first = run.epoch;
            let dir = run_dir(k);
            let run_meta = meta(spec);
            trainer.train_with(
                run,
                &|done, per_epoch, epoch| {
                    if done % 64 == 0 || done == per_epoch {
                        bar.set_position((epoch - 1 - first) as u64 * per_epoch + done);
                        bar.set_message(format!("{epoch}/{}", args.epochs));
                    }
                },
                &mut |run| {
                    let due = run.epoch.is_multiple_of(args.checkpoint_every)
                        || run.epoch >= args.epochs
                        || run.diverged.is_some();
                    if due {
                        save_checkpoint(&dir, run, &run_meta)?;
                    }
                    Ok(())
                },
            )?;
            match &run.diverged {
                Some(why) => bar.abandon_with_message(format!("diverged: {why}")),
                None => bar.finish(),
            }
            Ok(())
        },
    )?;

    for (k, (run, spec)) in runs.iter().zip(&specs).enumerate() {
        // Runs resumed when already finished were not stepped: their checkpoint stands, but a
        // run that started from nothing and ended at once (e.g. --epochs already reached) has
        // none yet.
        if !has_checkpoint(&run_dir(k)) {
            save_checkpoint(&run_dir(k), run, &meta(spec))?;
        }
    }
    write_outputs(&out, &args, &specs, &runs, trainer.train_examples())?;
    print!(
        "{}",
        final_table(&specs, &runs, trainer.train_examples(), args.ema_weights)
    );
    println!("\nwrote {}", out.display());
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

fn final_table(specs: &[OptimizerSpec], runs: &[Run], examples: usize, ema: Option<f64>) -> String {
    let (header, rows) = final_rows(specs, runs, examples, ema);
    let mut table = Table::new(&header);
    for row in rows {
        table.row(row);
    }
    table.render()
}

fn write_outputs(
    out: &Path,
    args: &TrainArgs,
    specs: &[OptimizerSpec],
    runs: &[Run],
    examples: usize,
) -> anyhow::Result<()> {
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
    let mut csv = String::from(
        "optimizer,epoch,step,train_loss,test_loss,test_accuracy,ema_test_loss,\
         ema_test_accuracy,lr,seconds\n",
    );
    for (spec, run) in specs.iter().zip(runs) {
        for m in &run.metrics {
            // Specs contain commas: quote them.
            let _ = writeln!(
                csv,
                "\"{spec}\",{},{},{},{},{},{},{},{},{}",
                m.epoch,
                m.step,
                m.train_loss,
                m.test_loss,
                m.test_accuracy,
                opt(m.ema_test_loss),
                opt(m.ema_test_accuracy),
                m.lr,
                m.seconds
            );
        }
    }
    sgdlab::io::write_atomic(&out.join("metrics.csv"), csv.as_bytes())
        .context("cannot write metrics.csv")?;

    let summary = serde_json::json!({
        "data": args.data,
        "model": args.model,
        "epochs": args.epochs,
        "batch": args.batch,
        "schedule": args.schedule,
        "seed": args.seed,
        "loss_unit": args.loss_unit,
        "runs": specs.iter().zip(runs).enumerate().map(|(k, (spec, run))| {
            let last = run.metrics.last();
            Ok(serde_json::json!({
                "optimizer": spec.to_string(),
                "epochs": run.epoch,
                "final": last.map(serde_json::to_value).transpose()?,
                "diverged": run.diverged,
                "examples_per_second": run.examples_per_second(examples),
                "checkpoint": format!("run{k}"),
            }))
        }).collect::<serde_json::Result<Vec<_>>>()?,
    });
    sgdlab::io::write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )
    .context("cannot write summary.json")?;

    let figures = figures(args, specs, runs);
    for (stem, figure) in &figures {
        crate::plot::write(figure, &out.join(stem))?;
    }
    let (header, rows) = final_rows(specs, runs, examples, args.ema_weights);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| crate::report::esc(c)).collect())
        .collect();
    crate::report::write_page(
        out,
        &format!("sgdlab train: {} on {}", args.model, args.data),
        &format!(
            "{} epochs, batch {}, schedule {}, seed {}, loss in {}",
            args.epochs, args.batch, args.schedule, args.seed, args.loss_unit
        ),
        &[crate::report::Section {
            heading: "Results".into(),
            body: crate::report::table(&header, &rows),
            figures: figures.into_iter().map(|(_, f)| f).collect(),
        }],
    )?;
    Ok(())
}

/// The loss and accuracy curves of every run, as library figures.
pub fn figures(
    args: &TrainArgs,
    specs: &[OptimizerSpec],
    runs: &[Run],
) -> Vec<(&'static str, Figure)> {
    let series = |f: &dyn Fn(&sgdlab::train::EpochMetrics) -> f64, suffix: &str, dashed: bool| {
        specs
            .iter()
            .zip(runs)
            .enumerate()
            .map(|(k, (spec, run))| Line {
                label: format!("{spec}{suffix}"),
                points: run.metrics.iter().map(|m| (m.epoch as f64, f(m))).collect(),
                dashed,
                group: k,
            })
            .collect::<Vec<_>>()
    };
    let mut loss = series(&|m| m.test_loss, " (test)", false);
    loss.extend(series(&|m| m.train_loss, " (train, dashed)", true));
    vec![
        (
            "loss",
            Figure {
                title: format!("Loss, {} on {}", args.model, args.data),
                caption: "Mean cross-entropy on the test set (solid) and over each epoch's \
                          training minibatches (dashed)."
                    .into(),
                x_label: "epoch".into(),
                y_label: format!("cross-entropy ({})", args.loss_unit),
                lines: loss,
                ..Figure::default()
            },
        ),
        (
            "accuracy",
            Figure {
                title: format!("Test accuracy, {} on {}", args.model, args.data),
                caption: "Fraction of test examples classified correctly after each epoch.".into(),
                x_label: "epoch".into(),
                y_label: "test accuracy (fraction correct)".into(),
                lines: series(&|m| m.test_accuracy, "", false),
                ..Figure::default()
            },
        ),
    ]
}
