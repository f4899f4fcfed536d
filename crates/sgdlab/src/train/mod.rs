//! The training loop: minibatch SGD of a [`Network`] on a [`Split`] with any optimizer,
//! learning-rate schedules, an EMA of the weights, metrics, and checkpoint/resume.
//!
//! Runs are deterministic: the initial weights come from the seed (the same for every
//! optimizer of a comparison), the example order of epoch e from `(seed, e)`, and the
//! network and optimizer kernels give the same bits for any thread count. A checkpoint is one
//! file holding the weights, their EMA, the optimizer state, the metrics so far and what
//! identifies the run ([`CheckpointMeta`]), with a SHA-256 of its contents; it is written
//! atomically (a crash leaves the previous checkpoint or the new one), and loading refuses a
//! file that is corrupt, inconsistent or made with other settings. A resumed run ends bit for
//! bit where the uninterrupted run would, metrics included.
//!
//! A run's schedule is the library's [`ScheduleSpec`]: its open lengths (`cosine`, `*`,
//! `3ep`) resolve against the run's length and epochs.
//!
//! [`Experiment`] is a whole `sgdlab train` command: several optimizers side by side, with
//! an output directory ([`OutMode`]), checkpoints and tables.
//!
//! The rooms: `experiment.rs` ([`Experiment`]), `outdir.rs` (the output directory),
//! `metrics.rs` ([`EpochMetrics`]), `checkpoint.rs` (a run's one-file checkpoint, [`save_checkpoint`]),
//! `scan.rs` (the critical batch size measured by training, [`scan_batches`]), and this module
//! (the loop).

mod checkpoint;
mod experiment;
mod metrics;
mod outdir;
mod scan;
#[cfg(test)]
mod tests;

pub use crate::optim::schedule::ScheduleSpec;
pub use checkpoint::{
    CHECKPOINT_FILE, CheckpointMeta, checkpoint_bytes, checkpoint_from_bytes, has_checkpoint,
    load_checkpoint, read_checkpoint, save_checkpoint, split_sha256,
};
pub use experiment::{DataSource, Experiment, ModelSpec, Observer, Outcome, Plan, Silent};
pub use metrics::EpochMetrics;
pub use outdir::{OUTPUTS, OutMode};
pub use scan::{ScanConfig, ScanPoint, ScanReport, TradeOff, fit_tradeoff, scan_batches};

use std::time::Instant;

use rand::seq::SliceRandom;

use crate::average::Ema;
use crate::data::Split;
use crate::lab::noise::{gradient_noise, sample_examples};
use crate::model::{Classifier, Network, Workspace};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::rng::chain_rng;
use crate::{Error, Result};

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Epochs to train (in all, counting those of a resumed checkpoint).
    pub epochs: usize,
    /// Examples per step (1 = per-example SGD).
    pub batch: usize,
    /// Learning-rate schedule.
    pub schedule: ScheduleSpec,
    /// Decay β of an EMA of the weights, evaluated alongside the raw weights.
    pub ema_weights: Option<f64>,
    /// Seed of the initial weights and of the example order.
    pub seed: u64,
    /// Measure the gradient noise scale ([`crate::lab::noise`]) after every epoch on a sample
    /// of this many training examples (drawn once with the seed); it changes no weight.
    pub noise_examples: Option<usize>,
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::invalid("batch", 0, "must be at least 1"));
        }
        if let Some(n) = self.noise_examples
            && n < 2
        {
            return Err(Error::invalid(
                "noise-scale",
                n,
                "the noise scale needs at least 2 examples",
            ));
        }
        if let Some(beta) = self.ema_weights {
            Ema::new(beta)
                .map_err(|_| Error::invalid("ema-weights", beta, "must lie in [0, 1)"))?;
        }
        Ok(())
    }
}

/// One optimizer's run: weights, optimizer, progress.
#[derive(Clone, Debug)]
pub struct Run {
    /// The current weights.
    pub params: Vec<Tensor<f32>>,
    /// The EMA of the weights, if kept.
    pub ema: Option<Vec<Tensor<f32>>>,
    /// The optimizer and its state.
    pub optimizer: Optimizer<f32>,
    /// Completed epochs.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// Metrics of every completed epoch.
    pub metrics: Vec<EpochMetrics>,
    /// Set when the loss became NaN or infinite; the run stops.
    pub diverged: Option<String>,
}

impl Run {
    /// Examples per second over all completed epochs.
    pub fn examples_per_second(&self, train_examples: usize) -> f64 {
        let secs: f64 = self.metrics.iter().map(|m| m.seconds).sum();
        (self.metrics.len() * train_examples) as f64 / secs.max(1e-12)
    }
}

/// A training set-up shared by the runs of a comparison.
pub struct Trainer<'a> {
    net: &'a Network,
    config: TrainConfig,
    /// The largest |feature| of the training set (named when the first loss overflows).
    largest_feature: f64,
    x_train: Vec<f32>,
    y_train: Vec<usize>,
    x_test: Vec<f32>,
    y_test: Vec<usize>,
    /// The noise scale's sample of the training set, as a model, when it is measured.
    noise: Option<Classifier>,
}

fn labels(set: &crate::data::Dataset, classes: usize) -> Result<Vec<usize>> {
    crate::model::class_labels(set.targets(), classes)
}

impl<'a> Trainer<'a> {
    /// A trainer of `net` on `split`. A batch larger than the training set is the whole
    /// training set (full-batch gradient descent): `config.batch` is clamped to it.
    ///
    /// Errors when the data do not fit the network, or when the network's parameters,
    /// gradients and per-batch activations would not fit in the memory available.
    pub fn new(net: &'a Network, split: &Split, mut config: TrainConfig) -> Result<Self> {
        config.validate()?;
        config.batch = config.batch.min(split.train.len().max(1));
        if net.widths()[0] != split.train.dim() {
            return Err(Error::ShapeMismatch {
                what: "network inputs vs data features".to_string(),
                expected: net.widths()[0],
                got: split.train.dim(),
            });
        }
        crate::resources::check_memory(
            "training this network (weights, gradients and activations of a batch)",
            Self::bytes_per_run(net, &config, 2)?,
        )?;
        let steps_per_epoch = split.train.len().div_ceil(config.batch) as u64;
        if steps_per_epoch
            .checked_mul(config.epochs as u64)
            .is_none_or(|n| n > crate::optim::MAX_STEPS)
        {
            return Err(Error::invalid(
                "epochs",
                config.epochs,
                format!(
                    "{} epochs of {steps_per_epoch} steps exceed the {} steps an optimizer \
                     takes",
                    config.epochs,
                    crate::optim::MAX_STEPS
                ),
            ));
        }
        config
            .schedule
            .for_run(steps_per_epoch, config.epochs as u64)?;
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let noise = match config.noise_examples {
            Some(k) => {
                // The sample as the network trains on it (features rounded to f32).
                let mut sample =
                    split
                        .train
                        .subset(&sample_examples(split.train.len(), k, config.seed));
                sample.round_features_to_f32();
                let w = net.widths();
                Some(Classifier::new(
                    sample,
                    &w[1..w.len() - 1],
                    net.classes(),
                    net.unit(),
                )?)
            }
            None => None,
        };
        Ok(Self {
            noise,
            largest_feature: split
                .train
                .features()
                .iter()
                .fold(0.0f64, |m, x| m.max(x.abs())),
            net,
            x_train: f32s(split.train.features()),
            y_train: labels(&split.train, net.classes())?,
            x_test: f32s(split.test.features()),
            y_test: labels(&split.test, net.classes())?,
            config,
        })
    }

    /// Bytes one run needs: `copies` f32 copies of the parameters (weights, gradients, EMA,
    /// optimizer slots) and the batch's activations (pre-activations, activations and
    /// back-propagated errors of every layer).
    fn bytes_per_run(net: &Network, config: &TrainConfig, copies: usize) -> Result<u64> {
        let what = "the network";
        let params =
            crate::resources::bytes_for(what, net.num_params() as u128, 4, copies as u128)?;
        let units: u128 = net.widths().iter().map(|&w| w as u128).sum();
        let acts = crate::resources::bytes_for(what, units * config.batch as u128, 4, 4)?;
        params.checked_add(acts).ok_or_else(|| {
            Error::Unsupported(
                "the network is too large: it would need more than 2^64 bytes".into(),
            )
        })
    }

    /// Errors unless the runs of `specs`, trained side by side, fit in the memory available:
    /// per run the weights, gradients, EMA of the weights, every optimizer slot and a batch's
    /// activations. The message says how much they need.
    pub fn check_memory(&self, specs: &[OptimizerSpec]) -> Result<()> {
        let mut total: u64 = 0;
        for spec in specs {
            let slots = Optimizer::<f32>::new(spec.clone())?.slot_names().len();
            let copies = 2 + usize::from(self.config.ema_weights.is_some()) + slots;
            total = total.saturating_add(Self::bytes_per_run(self.net, &self.config, copies)?);
        }
        crate::resources::check_memory(
            &format!(
                "training {} run(s) of this network side by side",
                specs.len()
            ),
            total,
        )
    }

    /// The configuration in use (`batch` clamped to the training set).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of training examples.
    pub fn train_examples(&self) -> usize {
        self.y_train.len()
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.y_train.len().div_ceil(self.config.batch) as u64
    }

    /// The library schedule of this run (see [`ScheduleSpec::for_run`]).
    pub fn schedule(&self) -> Result<crate::optim::Schedule> {
        self.config
            .schedule
            .for_run(self.steps_per_epoch(), self.config.epochs as u64)
    }

    /// A fresh run of `spec` from the seeded initial weights, with the schedule attached.
    pub fn start(&self, spec: &OptimizerSpec) -> Result<Run> {
        self.start_grouped(spec, &[])
    }

    /// [`Trainer::start`] with parameter groups (over the network's tensor names,
    /// `layer{l}.weight` and `layer{l}.bias`).
    pub fn start_grouped(
        &self,
        spec: &OptimizerSpec,
        groups: &[crate::optim::GroupSpec],
    ) -> Result<Run> {
        let params = self.net.init::<f32>(self.config.seed);
        let mut optimizer = Optimizer::with_groups(spec.clone(), groups.to_vec())?;
        optimizer.set_schedule(self.schedule()?)?;
        Ok(Run {
            ema: self.config.ema_weights.map(|_| params.clone()),
            params,
            optimizer,
            epoch: 0,
            step: 0,
            metrics: Vec::new(),
            diverged: None,
        })
    }

    /// Trains `run` until it has `config.epochs` epochs or diverges, calling
    /// `progress(steps done in this epoch, steps per epoch, epoch)` after every step.
    pub fn train(&self, run: &mut Run, progress: &(dyn Fn(u64, u64, usize) + Sync)) -> Result<()> {
        self.train_with(run, progress, &mut |_| Ok(()))
    }

    /// [`Trainer::train`], calling `after_epoch(run)` after every epoch (e.g. to checkpoint
    /// it); an error from it stops training and is returned.
    pub fn train_with(
        &self,
        run: &mut Run,
        progress: &(dyn Fn(u64, u64, usize) + Sync),
        after_epoch: &mut dyn FnMut(&Run) -> Result<()>,
    ) -> Result<()> {
        // A resumed run continues its schedule at its step count; attaching it again also
        // covers a checkpoint whose run was configured for fewer epochs.
        run.optimizer.set_schedule(self.schedule()?)?;
        while run.epoch < self.config.epochs && run.diverged.is_none() {
            self.epoch(run, progress)?;
            after_epoch(run)?;
        }
        Ok(())
    }

    fn epoch(&self, run: &mut Run, progress: &(dyn Fn(u64, u64, usize) + Sync)) -> Result<()> {
        let d = self.net.widths()[0];
        let n = self.y_train.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut chain_rng(self.config.seed, 1 + run.epoch as u64));
        let steps = self.steps_per_epoch();
        let ema = self.config.ema_weights.map(Ema::new).transpose()?;
        let mut batch_buf = BatchBuffers::new(run, self.config.batch, d);
        let mut ws = Workspace::default();
        let (mut loss_sum, mut last_lr) = (0.0f64, run.optimizer.current_lr());
        let start = Instant::now();
        for (k, batch) in order.chunks(self.config.batch).enumerate() {
            let b = batch.len();
            let Some((loss, lr)) = self.step_on(run, batch, &mut batch_buf, &mut ws)? else {
                return Ok(());
            };
            last_lr = lr;
            if let (Some(ema), Some(avg)) = (ema, run.ema.as_mut()) {
                for (a, p) in avg.iter_mut().zip(&run.params) {
                    for (a, &p) in a.data_mut().iter_mut().zip(p.data()) {
                        *a = ema.update(*a, p);
                    }
                }
            }
            run.step += 1;
            loss_sum += loss * b as f64;
            progress(k as u64 + 1, steps, run.epoch + 1);
        }
        let seconds = start.elapsed().as_secs_f64();
        // Schedule-Free rules train at y and are evaluated at their average x.
        let at_eval_point: Vec<&[f32]> = run
            .params
            .iter()
            .enumerate()
            .map(|(k, t)| run.optimizer.eval_point(k).unwrap_or(t.data()))
            .collect();
        let (test_loss, test_accuracy) =
            self.net
                .evaluate(&at_eval_point, &self.x_test, &self.y_test, &mut ws);
        let ema_eval = run.ema.as_ref().map(|e| self.evaluate(e, &mut ws));
        if run
            .params
            .iter()
            .any(|t| t.data().iter().any(|x| !x.is_finite()))
        {
            run.diverged = Some(format!(
                "weights became non-finite in epoch {}",
                run.epoch + 1
            ));
        }
        let noise = match (&self.noise, &run.diverged) {
            (Some(model), None) => {
                let phi: Vec<f64> = at_eval_point
                    .iter()
                    .flat_map(|t| t.iter().map(|&x| f64::from(x)))
                    .collect();
                Some(gradient_noise(model, &phi, &[], None)?.total)
            }
            _ => None,
        };
        run.epoch += 1;
        run.metrics.push(EpochMetrics {
            epoch: run.epoch,
            step: run.step,
            train_loss: loss_sum / n as f64,
            test_loss,
            test_accuracy,
            ema_test_loss: ema_eval.map(|e| e.0),
            ema_test_accuracy: ema_eval.map(|e| e.1),
            lr: last_lr,
            seconds,
            noise_trace: noise.as_ref().map(|s| s.trace),
            noise_grad_sq: noise.as_ref().map(|s| s.grad_sq),
            noise_b_simple: noise.and_then(|s| s.b_simple),
        });
        Ok(())
    }

    /// One optimizer step of `run` on the training examples `rows`: the batch's mean loss and
    /// the step's learning rate, or none when the run diverged (`run.diverged` says how). Errors
    /// when the first loss is not finite (the data overflow f32) or the optimizer fails.
    fn step_on(
        &self,
        run: &mut Run,
        rows: &[usize],
        buf: &mut BatchBuffers,
        ws: &mut Workspace<f32>,
    ) -> Result<Option<(f64, f64)>> {
        let d = self.net.widths()[0];
        let b = rows.len();
        for (j, &i) in rows.iter().enumerate() {
            buf.x[j * d..(j + 1) * d].copy_from_slice(&self.x_train[i * d..(i + 1) * d]);
            buf.y[j] = self.y_train[i];
        }
        let params: Vec<&[f32]> = run.params.iter().map(|t| t.data()).collect();
        let mut g: Vec<&mut [f32]> = buf.grads.iter_mut().map(|t| t.data_mut()).collect();
        let loss = self
            .net
            .loss_grad(&params, &buf.x[..b * d], &buf.y[..b], &mut g, ws);
        if !loss.is_finite() {
            if run.step == 0 {
                // Nothing has been stepped: the initial weights are finite and small, so
                // the forward pass itself overflowed f32. That is the data, not divergence.
                return Err(Error::Data(format!(
                    "the loss is {loss} at the initial weights, before any step: the forward \
                     pass overflows f32 (the largest |feature| is {:e}); rescale the data",
                    self.largest_feature
                )));
            }
            run.diverged = Some(format!(
                "loss became {loss} at epoch {}, step {}: the run diverged ({})",
                run.epoch + 1,
                run.step + 1,
                describe_weights(&run.params)
            ));
            return Ok(None);
        }
        let info = StepInfo::with_loss(loss);
        match run.optimizer.step(&mut run.params, &buf.grads, &info) {
            Ok(report) => Ok(Some((loss, report.lr))),
            Err(Error::NonFinite { what, value, .. }) => {
                run.diverged = Some(format!(
                    "{what} became {value} at epoch {}, step {}",
                    run.epoch + 1,
                    run.step + 1
                ));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Mean loss and accuracy of `params` on the test set (`train` evaluates each epoch at
    /// the optimizer's evaluation point, [`Optimizer::eval_point`], where it has one).
    pub fn evaluate(&self, params: &[Tensor<f32>], ws: &mut Workspace<f32>) -> (f64, f64) {
        let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
        self.net.evaluate(&p, &self.x_test, &self.y_test, ws)
    }
}

/// A minibatch's features, labels and gradients, reused across steps.
struct BatchBuffers {
    x: Vec<f32>,
    y: Vec<usize>,
    grads: Vec<Tensor<f32>>,
}

impl BatchBuffers {
    fn new(run: &Run, batch: usize, dim: usize) -> Self {
        Self {
            x: vec![0.0; batch * dim],
            y: vec![0; batch],
            grads: run.params.iter().map(Tensor::zeros_like).collect(),
        }
    }
}

/// The weights of a diverged run in words: how many are NaN or infinite (the first named),
/// or the largest magnitude when all are finite.
fn describe_weights(params: &[Tensor<f32>]) -> String {
    let (mut nan, mut inf, mut largest) = (0usize, 0usize, 0.0f32);
    let mut first = None;
    for t in params {
        for (i, x) in t.data().iter().enumerate() {
            if x.is_finite() {
                largest = largest.max(x.abs());
            } else {
                if x.is_nan() {
                    nan += 1;
                } else {
                    inf += 1;
                }
                first.get_or_insert_with(|| format!("{}[{i}]", t.name()));
            }
        }
    }
    match first {
        None => format!("largest |weight| {largest:e}"),
        Some(first) => format!("{nan} NaN and {inf} infinite weights, the first {first}"),
    }
}
