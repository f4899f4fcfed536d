//! A training experiment: several optimizers trained side by side on one data set and model,
//! with checkpoints and outputs in one directory ([`Experiment`]).

use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use super::outdir::{self, OutMode};
use super::{
    CheckpointMeta, EpochMetrics, Run, TrainConfig, Trainer, has_checkpoint, load_checkpoint,
    save_checkpoint, split_sha256,
};
use crate::data::{FASHION_MNIST_DIR, Split, digits, load_idx_dir, read_csv, stratified_split};
use crate::io::{DirLock, write_atomic};
use crate::lab::figures::{Figure, Line};
use crate::model::{LossUnit, Network};
use crate::optim::{GroupSpec, Optimizer, OptimizerSpec};
use crate::{Error, Result};

/// Where an experiment's examples come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The bundled 8×8 digits (`digits`), split by [`stratified_split`].
    Digits,
    /// Fashion-MNIST from Debian's `dataset-fashion-mnist` (`fashion-mnist`), with its own
    /// test set.
    FashionMnist,
    /// A directory of MNIST-format IDX files (its own test set), or a CSV file with the label
    /// in the last column (split by [`stratified_split`]).
    Path(PathBuf),
}

impl FromStr for DataSource {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Ok(match text {
            "digits" => DataSource::Digits,
            "fashion-mnist" => DataSource::FashionMnist,
            path => DataSource::Path(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Digits => f.write_str("digits"),
            DataSource::FashionMnist => f.write_str("fashion-mnist"),
            DataSource::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl DataSource {
    /// The train/test split: a held-out `test_fraction` drawn with `seed` where the data have
    /// no test set of their own.
    pub fn load(&self, test_fraction: f64, seed: u64) -> Result<Split> {
        match self {
            DataSource::Digits => stratified_split(&digits()?, test_fraction, seed),
            DataSource::FashionMnist => load_idx_dir(Path::new(FASHION_MNIST_DIR)),
            DataSource::Path(p) if p.is_dir() => load_idx_dir(p),
            DataSource::Path(p) if p.is_file() => {
                stratified_split(&read_csv(p, true)?, test_fraction, seed)
            }
            DataSource::Path(p) => Err(Error::Data(format!(
                "--data {}: not digits, fashion-mnist, a directory of IDX files or a CSV file",
                p.display()
            ))),
        }
    }
}

/// A model: `softmax` (regression, no hidden layer) or `mlp:H1[,H2...]` (ReLU hidden layers
/// of those widths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSpec {
    /// The hidden layers' widths (none for softmax regression).
    pub hidden: Vec<usize>,
}

impl FromStr for ModelSpec {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        if text == "softmax" {
            return Ok(ModelSpec::default());
        }
        let bad = |why: String| Error::invalid("--model", text, why);
        let widths = text
            .strip_prefix("mlp:")
            .ok_or_else(|| bad("must be softmax or mlp:H1[,H2...], e.g. mlp:256".into()))?;
        let hidden = widths
            .split(',')
            .map(|w| match w.trim().parse::<usize>() {
                Ok(h) if h > 0 => Ok(h),
                _ => Err(bad(format!("`{w}` is not a positive layer width"))),
            })
            .collect::<Result<_>>()?;
        Ok(ModelSpec { hidden })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hidden.is_empty() {
            return f.write_str("softmax");
        }
        let widths: Vec<String> = self.hidden.iter().map(usize::to_string).collect();
        write!(f, "mlp:{}", widths.join(","))
    }
}

/// A training experiment: several optimizers trained side by side on one data set and model,
/// with checkpoints and outputs in one directory — everything `sgdlab train` does but draw.
///
/// [`Experiment::run`] validates the whole configuration before it loads anything, prepares
/// the output directory ([`OutMode`]), starts or resumes every run, trains them in parallel
/// (reporting to an [`Observer`]), checkpoints them, writes `metrics.csv` and `summary.json`,
/// and returns the [`Outcome`], from which a front end renders tables and figures
/// ([`Experiment::figures`]).
#[derive(Clone, Debug)]
pub struct Experiment {
    /// The examples.
    pub data: DataSource,
    /// Fraction held out for testing where the data have no test set.
    pub test_fraction: f64,
    /// The model.
    pub model: ModelSpec,
    /// The loss's unit (problem 5a).
    pub loss_unit: LossUnit,
    /// The optimizers, one run each, in this order (`runK` is the K-th).
    pub optimizers: Vec<OptimizerSpec>,
    /// Parameter groups for every optimizer, over the tensor names `layer{l}.weight` and
    /// `layer{l}.bias`.
    pub groups: Vec<GroupSpec>,
    /// Epochs, batch, schedule, weight EMA and seed.
    pub config: TrainConfig,
    /// The output directory.
    pub out: PathBuf,
    /// What to do if `out` already holds a run.
    pub mode: OutMode,
    /// Checkpoint every this many epochs (and after the last epoch or a divergence).
    pub checkpoint_every: usize,
}

/// What an experiment reports while it runs; every method does nothing unless overridden.
/// Runs train in parallel, so the methods are called from several threads.
pub trait Observer: Sync {
    /// A notice for the user (a run with no checkpoint to resume, a clipped batch, files
    /// removed or kept).
    fn note(&self, _message: &str) {}
    /// The data are loaded and the runs set up: what will be trained.
    fn started(&self, _plan: &Plan) {}
    /// Run `k` starts training at epoch `first` (0 unless resumed), with `steps` to go.
    fn run_started(&self, _k: usize, _spec: &OptimizerSpec, _first: usize, _steps: u64) {}
    /// Run `k` has taken `done` of the `per_epoch` steps of epoch `epoch` (from 1).
    fn progress(&self, _k: usize, _done: u64, _per_epoch: u64, _epoch: usize) {}
    /// Run `k` has stopped: at its last epoch, or diverged.
    fn run_finished(&self, _k: usize, _run: &Run) {}
}

/// An [`Observer`] that reports nothing.
pub struct Silent;
impl Observer for Silent {}

/// What an experiment is about to train, for [`Observer::started`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// Training examples.
    pub train_examples: usize,
    /// Test examples.
    pub test_examples: usize,
    /// Classes.
    pub classes: usize,
    /// Parameters of the model.
    pub parameters: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Examples per step (the requested batch, or the whole training set if smaller).
    pub batch: usize,
}

/// A finished experiment: its runs, in the order of [`Experiment::optimizers`].
pub struct Outcome {
    /// The runs.
    pub runs: Vec<Run>,
    /// Training examples (for throughput).
    pub train_examples: usize,
    /// The output directory's lock, held until the outcome is dropped, so that a front end
    /// writes its figures before another process may take the directory.
    pub lock: DirLock,
}

impl Experiment {
    /// Runs the experiment (see [`Experiment`]).
    pub fn run(&self, observer: &dyn Observer) -> Result<Outcome> {
        for spec in &self.optimizers {
            Optimizer::<f32>::with_groups(spec.clone(), self.groups.clone())
                .map_err(|e| Error::Unsupported(format!("--group with --opt `{spec}`: {e}")))?;
        }
        self.config.validate()?;
        if self.checkpoint_every == 0 {
            return Err(Error::invalid("checkpoint_every", 0, "must be at least 1"));
        }
        outdir::check_out(&self.out, self.mode)?;
        let split = self.data.load(self.test_fraction, self.config.seed)?;
        let net = Network::new(
            split.train.dim(),
            &self.model.hidden,
            split.classes,
            self.loss_unit,
        )?;
        let trainer = Trainer::new(&net, &split, self.config.clone())?;
        trainer.check_memory(&self.optimizers)?;
        let batch = trainer.config().batch;
        if batch < self.config.batch {
            observer.note(&format!(
                "--batch {} is more than the {batch} training examples: each step uses all of them",
                self.config.batch
            ));
        }
        let note = |m: &str| observer.note(m);
        let lock = outdir::prepare(&self.out, self.mode, self.optimizers.len(), &note)?;
        let data_sha256 = split_sha256(&split);
        let meta = |spec: &OptimizerSpec| CheckpointMeta {
            optimizer: spec.to_string(),
            groups: self.groups.iter().map(ToString::to_string).collect(),
            widths: net.widths().to_vec(),
            loss_unit: self.loss_unit.to_string(),
            seed: self.config.seed,
            batch,
            schedule: self.config.schedule.to_string(),
            epochs: self.config.epochs,
            ema_weights: self.config.ema_weights,
            data: format!("{} (test fraction {})", self.data, self.test_fraction),
            data_sha256: data_sha256.clone(),
        };
        let run_dir = |k: usize| self.out.join(format!("run{k}"));
        let resume = self.mode == OutMode::Resume;
        let mut runs = self
            .optimizers
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                if resume && has_checkpoint(&run_dir(k)) {
                    load_checkpoint(&run_dir(k), &meta(spec), &net).map_err(|e| match e {
                        Error::Checkpoint { path, reason } => Error::Checkpoint {
                            path,
                            reason: format!("cannot resume run{k} ({spec}): {reason}"),
                        },
                        e => e,
                    })
                } else {
                    if resume {
                        observer.note(&format!(
                            "run{k} ({spec}) has no checkpoint yet: it starts from the beginning"
                        ));
                    }
                    trainer.start_grouped(spec, &self.groups)
                }
            })
            .collect::<Result<Vec<Run>>>()?;
        observer.started(&Plan {
            train_examples: split.train.len(),
            test_examples: split.test.len(),
            classes: split.classes,
            parameters: net.num_params(),
            steps_per_epoch: trainer.steps_per_epoch(),
            batch,
        });
        let epochs = self.config.epochs;
        let per_epoch = trainer.steps_per_epoch();
        runs.par_iter_mut()
            .zip(&self.optimizers)
            .enumerate()
            .try_for_each(|(k, (run, spec))| -> Result<()> {
                let first = run.epoch;
                observer.run_started(
                    k,
                    spec,
                    first,
                    epochs.saturating_sub(first) as u64 * per_epoch,
                );
                let (dir, run_meta) = (run_dir(k), meta(spec));
                trainer.train_with(
                    run,
                    &|done, per_epoch, epoch| observer.progress(k, done, per_epoch, epoch),
                    &mut |run| {
                        let due = run.epoch.is_multiple_of(self.checkpoint_every)
                            || run.epoch >= epochs
                            || run.diverged.is_some();
                        if due {
                            save_checkpoint(&dir, run, &run_meta)?;
                        }
                        Ok(())
                    },
                )?;
                observer.run_finished(k, run);
                Ok(())
            })?;
        for (k, (run, spec)) in runs.iter().zip(&self.optimizers).enumerate() {
            // A run resumed when already finished was not stepped: its checkpoint stands; one
            // that started from nothing and ended at once (--epochs already reached) has none.
            if !has_checkpoint(&run_dir(k)) {
                save_checkpoint(&run_dir(k), run, &meta(spec))?;
            }
        }
        let outcome = Outcome {
            runs,
            train_examples: trainer.train_examples(),
            lock,
        };
        self.write_tables(&outcome)?;
        Ok(outcome)
    }

    /// Writes `metrics.csv` (one row per run and epoch) and `summary.json`.
    fn write_tables(&self, outcome: &Outcome) -> Result<()> {
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
        let mut csv = String::from(
            "optimizer,epoch,step,train_loss,test_loss,test_accuracy,ema_test_loss,\
             ema_test_accuracy,lr,seconds,noise_trace,noise_grad_sq,noise_b_simple\n",
        );
        for (spec, run) in self.optimizers.iter().zip(&outcome.runs) {
            for m in &run.metrics {
                // Specs contain commas: quote them.
                let _ = writeln!(
                    csv,
                    "\"{spec}\",{},{},{},{},{},{},{},{},{},{},{},{}",
                    m.epoch,
                    m.step,
                    m.train_loss,
                    m.test_loss,
                    m.test_accuracy,
                    opt(m.ema_test_loss),
                    opt(m.ema_test_accuracy),
                    m.lr,
                    m.seconds,
                    opt(m.noise_trace),
                    opt(m.noise_grad_sq),
                    opt(m.noise_b_simple)
                );
            }
        }
        let write = |name: &str, bytes: &[u8]| {
            let path = self.out.join(name);
            write_atomic(&path, bytes)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), &e))
        };
        write("metrics.csv", csv.as_bytes())?;
        let runs = self
            .optimizers
            .iter()
            .zip(&outcome.runs)
            .enumerate()
            .map(|(k, (spec, run))| {
                Ok(serde_json::json!({
                    "optimizer": spec.to_string(),
                    "epochs": run.epoch,
                    "final": run.metrics.last().map(serde_json::to_value).transpose()?,
                    "diverged": run.diverged,
                    "examples_per_second": run.examples_per_second(outcome.train_examples),
                    "checkpoint": format!("run{k}"),
                }))
            })
            .collect::<serde_json::Result<Vec<_>>>()
            .map_err(|e| Error::Data(format!("summary.json: {e}")))?;
        let summary = serde_json::json!({
            "data": self.data.to_string(),
            "model": self.model.to_string(),
            "epochs": self.config.epochs,
            "batch": self.config.batch,
            "schedule": self.config.schedule.to_string(),
            "seed": self.config.seed,
            "loss_unit": self.loss_unit.to_string(),
            "runs": runs,
        });
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::Data(format!("summary.json: {e}")))?;
        write("summary.json", text.as_bytes())
    }

    /// The loss and accuracy curves of the outcome's runs, as library figures, with the file
    /// stem each is written under.
    pub fn figures(&self, outcome: &Outcome) -> Vec<(&'static str, Figure)> {
        let series = |f: &dyn Fn(&EpochMetrics) -> f64, suffix: &str, dashed: bool| {
            self.optimizers
                .iter()
                .zip(&outcome.runs)
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
        let mut figures = vec![
            (
                "loss",
                Figure {
                    title: format!("Loss, {} on {}", self.model, self.data),
                    caption: "Mean cross-entropy on the test set (solid) and over each epoch's \
                              training minibatches (dashed)."
                        .into(),
                    x_label: "epoch".into(),
                    y_label: format!("cross-entropy ({})", self.loss_unit),
                    lines: loss,
                    ..Figure::default()
                },
            ),
            (
                "accuracy",
                Figure {
                    title: format!("Test accuracy, {} on {}", self.model, self.data),
                    caption: "Fraction of test examples classified correctly after each epoch."
                        .into(),
                    x_label: "epoch".into(),
                    y_label: "test accuracy (fraction correct)".into(),
                    lines: series(&|m| m.test_accuracy, "", false),
                    ..Figure::default()
                },
            ),
        ];
        if self.config.noise_examples.is_some() {
            let lines = self
                .optimizers
                .iter()
                .zip(&outcome.runs)
                .enumerate()
                .map(|(k, (spec, run))| Line {
                    label: spec.to_string(),
                    points: run
                        .metrics
                        .iter()
                        .filter_map(|m| m.noise_b_simple.map(|b| (m.epoch as f64, b)))
                        .collect(),
                    dashed: false,
                    group: k,
                })
                .collect();
            figures.push((
                "noise",
                Figure {
                    title: format!("Gradient noise scale, {} on {}", self.model, self.data),
                    caption: format!(
                        "B_simple = tr Σ/|G|² after each epoch, from exact per-example \
                         gradients on {} training examples: the batch size past which a larger \
                         batch stops saving steps.",
                        self.config.noise_examples.unwrap_or_default()
                    ),
                    x_label: "epoch".into(),
                    y_label: "B_simple (examples)".into(),
                    lines,
                    ..Figure::default()
                },
            ));
        }
        figures
    }
}
