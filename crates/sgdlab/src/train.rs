//! The training loop: minibatch SGD of a [`Network`] on a [`Split`] with any optimizer,
//! learning-rate schedules, an EMA of the weights, metrics, and checkpoint/resume.
//!
//! Runs are deterministic: the initial weights come from the seed (the same for every
//! optimizer of a comparison), the example order of epoch $e$ from `(seed, e)`, and the
//! network and optimizer kernels give the same bits for any thread count. A checkpoint is one
//! file holding the weights, their EMA, the optimizer state, the metrics so far and what
//! identifies the run ([`CheckpointMeta`]), with a SHA-256 of its contents; it is written
//! atomically (a crash leaves the previous checkpoint or the new one), and loading refuses a
//! file that is corrupt, inconsistent or made with other settings. A resumed run ends bit for
//! bit where the uninterrupted run would, metrics included.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use rand::seq::SliceRandom;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::average::Ema;
use crate::data::Split;
use crate::model::{Network, Workspace};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::rng::chain_rng;
use crate::{Error, Result};

/// A training run's learning-rate schedule, as `train --schedule` writes it: the forms that
/// depend on the run's length or count in epochs, and any library [`optim::Schedule`]
/// (counted in steps). It becomes an [`optim::Schedule`] attached to each run's optimizer
/// ([`ScheduleSpec::for_run`]).
///
/// | form | meaning |
/// |---|---|
/// | `constant` | $s_t = 1$ |
/// | `step:E,γ` | $\gamma^{\lfloor e/E\rfloor}$ in epoch $e$ (from 0) |
/// | `cosine` | cosine decay to 0 over the whole run |
/// | `warmup-cosine:S` | linear warm-up over $S$ steps, then cosine decay to 0 over the rest |
/// | `wsd:W,D` | warm-up over $W$ steps, constant, linear decay to 0 over the last $D$ steps |
/// | anything else | an [`optim::Schedule`] spec in steps, e.g. `warmup:500`, `exp:0.999`, `seq[warmup:100;cosine:900]@100` |
///
/// [`optim::Schedule`]: crate::optim::Schedule
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleSpec {
    /// `step:E,γ`: decay by $\gamma$ every $E$ epochs.
    StepEpochs {
        /// Epochs between decays, $E \ge 1$.
        every: usize,
        /// Decay factor $\gamma \in (0, 1]$.
        gamma: f64,
    },
    /// `cosine`: over all the run's steps.
    Cosine,
    /// `warmup-cosine:S`: warm-up, then cosine over the rest of the run.
    WarmupCosine {
        /// Warm-up steps.
        warmup: u64,
    },
    /// `wsd:W,D`: warm-up, stable, decay over the last $D$ steps of the run.
    Wsd {
        /// Warm-up steps.
        warmup: u64,
        /// Decay steps.
        decay: u64,
    },
    /// A library schedule, in steps.
    Steps(crate::optim::Schedule),
}

impl ScheduleSpec {
    /// Whether the schedule depends on the run's total length (so that `--epochs` may not
    /// change on resume).
    pub fn depends_on_length(&self) -> bool {
        matches!(
            self,
            ScheduleSpec::Cosine | ScheduleSpec::WarmupCosine { .. } | ScheduleSpec::Wsd { .. }
        )
    }

    /// The library schedule of a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn for_run(&self, steps_per_epoch: u64, epochs: usize) -> Result<crate::optim::Schedule> {
        use crate::optim::Schedule as S;
        let total = steps_per_epoch.saturating_mul(epochs as u64).max(1);
        let schedule = match self {
            ScheduleSpec::StepEpochs { every, gamma } => S::StepDecay {
                every: steps_per_epoch.saturating_mul(*every as u64).max(1),
                gamma: *gamma,
            },
            ScheduleSpec::Cosine => S::Cosine {
                steps: total,
                min: 0.0,
            },
            ScheduleSpec::WarmupCosine { warmup } => {
                if *warmup >= total {
                    return Err(Error::invalid(
                        "schedule",
                        self,
                        format!("the warm-up must be shorter than the run ({total} steps)"),
                    ));
                }
                S::warmup_cosine(*warmup, total - warmup, 0.0)
            }
            ScheduleSpec::Wsd { warmup, decay } => {
                if warmup.checked_add(*decay).is_none_or(|n| n > total) {
                    return Err(Error::invalid(
                        "schedule",
                        self,
                        format!("warm-up and decay exceed the run ({total} steps)"),
                    ));
                }
                S::Wsd {
                    warmup: *warmup,
                    stable: total - warmup - decay,
                    decay: (*decay).max(1),
                    min: 0.0,
                }
            }
            ScheduleSpec::Steps(s) => s.clone(),
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

impl FromStr for ScheduleSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("schedule", s, why);
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        let int = |t: &str, what: &str| t.trim().parse::<u64>().map_err(|_| bad(what));
        match name {
            "cosine" if args.is_empty() => Ok(ScheduleSpec::Cosine),
            "step" => {
                let (e, g) = args
                    .split_once(',')
                    .ok_or_else(|| bad("step needs step:E,GAMMA, e.g. step:10,0.1"))?;
                let every: usize = e.trim().parse().map_err(|_| bad("E must be an integer"))?;
                let gamma: f64 = g
                    .trim()
                    .parse()
                    .map_err(|_| bad("GAMMA must be a number"))?;
                if every == 0 || !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(bad("needs E >= 1 and 0 < GAMMA <= 1"));
                }
                Ok(ScheduleSpec::StepEpochs { every, gamma })
            }
            "warmup-cosine" => {
                let warmup = int(
                    args,
                    "warmup-cosine needs warmup-cosine:S with S whole steps",
                )?;
                if warmup == 0 {
                    return Err(bad(
                        "the warm-up needs at least 1 step (for none, use cosine)",
                    ));
                }
                Ok(ScheduleSpec::WarmupCosine { warmup })
            }
            "wsd" if args.split(',').count() == 2 => {
                let (w, d) = args.split_once(',').unwrap_or_default();
                let decay = int(d, "wsd needs wsd:W,D with whole steps")?;
                if decay == 0 {
                    return Err(bad("the decay needs at least 1 step"));
                }
                Ok(ScheduleSpec::Wsd {
                    warmup: int(w, "wsd needs wsd:W,D with whole steps")?,
                    decay,
                })
            }
            // A form of the library's grammar: its own error says what is wrong with it.
            _ if is_library_form(s) => s.parse().map(ScheduleSpec::Steps),
            _ => s.parse().map(ScheduleSpec::Steps).map_err(|_| {
                bad(
                    "must be constant, step:E,GAMMA (epochs), cosine, warmup-cosine:S, wsd:W,D, \
                     or a schedule in steps: warmup:S, linear:A,B,T, cosine:T[,M], decay:E,GAMMA, \
                     exp:GAMMA, wsd:W,S,D[,M], seq[A;B;...]@T1,..., prod[A;B;...]",
                )
            }),
        }
    }
}

/// Whether `text` starts like one of the library schedule's forms (`exp:`, `seq[`, ...), so
/// that a parse error is the library's own (which names the problem) rather than the list of
/// every form.
fn is_library_form(text: &str) -> bool {
    let text = text.trim();
    let name = text.split([':', '[']).next().unwrap_or(text);
    let bracketed = text[name.len()..].starts_with('[');
    match name {
        "seq" | "prod" => bracketed,
        "constant" | "warmup" | "linear" | "cosine" | "decay" | "exp" | "wsd" | "custom" => {
            !bracketed
        }
        _ => false,
    }
}

impl std::fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleSpec::StepEpochs { every, gamma } => write!(f, "step:{every},{gamma}"),
            ScheduleSpec::Cosine => write!(f, "cosine"),
            ScheduleSpec::WarmupCosine { warmup } => write!(f, "warmup-cosine:{warmup}"),
            ScheduleSpec::Wsd { warmup, decay } => write!(f, "wsd:{warmup},{decay}"),
            ScheduleSpec::Steps(s) => write!(f, "{s}"),
        }
    }
}

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Epochs to train (in all, counting those of a resumed checkpoint).
    pub epochs: usize,
    /// Examples per step (1 = per-example SGD).
    pub batch: usize,
    /// Learning-rate schedule.
    pub schedule: ScheduleSpec,
    /// Decay $\beta$ of an EMA of the weights, evaluated alongside the raw weights.
    pub ema_weights: Option<f64>,
    /// Seed of the initial weights and of the example order.
    pub seed: u64,
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
        if let Some(beta) = self.ema_weights {
            Ema::new(beta)
                .map_err(|_| Error::invalid("ema-weights", beta, "must lie in [0, 1)"))?;
        }
        Ok(())
    }
}

/// Metrics at the end of one epoch.
///
/// In JSON, finite numbers are written exactly (they read back to the same bits) and
/// non-finite ones as the strings `"NaN"`, `"inf"` and `"-inf"`, so that an overflowing test
/// loss is recorded as what it is and still reads back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Mean minibatch loss over the epoch.
    #[serde(with = "real_json")]
    pub train_loss: f64,
    /// Mean loss on the test set.
    #[serde(with = "real_json")]
    pub test_loss: f64,
    /// Accuracy on the test set.
    #[serde(with = "real_json")]
    pub test_accuracy: f64,
    /// Test loss of the EMA of the weights, if kept.
    #[serde(with = "real_json::option")]
    pub ema_test_loss: Option<f64>,
    /// Test accuracy of the EMA of the weights, if kept.
    #[serde(with = "real_json::option")]
    pub ema_test_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    #[serde(with = "real_json")]
    pub lr: f64,
    /// Seconds spent in this epoch's training steps.
    #[serde(with = "real_json")]
    pub seconds: f64,
}

/// Serde for `f64` that keeps non-finite values: finite numbers as JSON numbers, NaN and the
/// infinities as the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no such numbers, and
/// `serde_json` would write `null`, which does not read back as a number).
pub mod real_json {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    fn decode<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!(
                    "`{t}` is not a number, NaN, inf or -inf"
                ))),
            },
        }
    }

    /// Writes `x` (see the module docs).
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        decode(Repr::deserialize(d)?)
    }

    /// The same for `Option<f64>` (`None` is `null`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `x`: `null` for `None`.
        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads what [`serialize`] writes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<super::Repr>::deserialize(d)?
                .map(super::decode)
                .transpose()
        }
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
        config.schedule.for_run(steps_per_epoch, config.epochs)?;
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        Ok(Self {
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
            .for_run(self.steps_per_epoch(), self.config.epochs)
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
        let mut grads: Vec<Tensor<f32>> = run.params.iter().map(Tensor::zeros_like).collect();
        let mut xb = vec![0.0f32; self.config.batch * d];
        let mut yb = vec![0usize; self.config.batch];
        let mut ws = Workspace::default();
        let (mut loss_sum, mut last_lr) = (0.0f64, run.optimizer.current_lr());
        let start = Instant::now();
        for (k, batch) in order.chunks(self.config.batch).enumerate() {
            let b = batch.len();
            for (j, &i) in batch.iter().enumerate() {
                xb[j * d..(j + 1) * d].copy_from_slice(&self.x_train[i * d..(i + 1) * d]);
                yb[j] = self.y_train[i];
            }
            let params: Vec<&[f32]> = run.params.iter().map(|t| t.data()).collect();
            let mut g: Vec<&mut [f32]> = grads.iter_mut().map(|t| t.data_mut()).collect();
            let loss = self
                .net
                .loss_grad(&params, &xb[..b * d], &yb[..b], &mut g, &mut ws);
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
                return Ok(());
            }
            let info = StepInfo::with_loss(loss);
            match run.optimizer.step(&mut run.params, &grads, &info) {
                Ok(report) => last_lr = report.lr,
                Err(Error::NonFinite { what, value, .. }) => {
                    run.diverged = Some(format!(
                        "{what} became {value} at epoch {}, step {}",
                        run.epoch + 1,
                        run.step + 1
                    ));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
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
        });
        Ok(())
    }

    /// Mean loss and accuracy of `params` on the test set (`train` evaluates each epoch at
    /// the optimizer's evaluation point, [`Optimizer::eval_point`], where it has one).
    pub fn evaluate(&self, params: &[Tensor<f32>], ws: &mut Workspace<f32>) -> (f64, f64) {
        let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
        self.net.evaluate(&p, &self.x_test, &self.y_test, ws)
    }
}

/// What identifies a run: every setting that changes its numbers. A checkpoint records it,
/// and resuming with anything different is refused, naming the differences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The optimizer spec.
    pub optimizer: String,
    /// Its parameter groups ([`GroupSpec`](crate::optim::GroupSpec) Display form).
    pub groups: Vec<String>,
    /// Network layer widths.
    pub widths: Vec<usize>,
    /// Loss unit (`nats` or `bits`).
    pub loss_unit: String,
    /// Seed.
    pub seed: u64,
    /// Batch size (after clamping to the training set).
    pub batch: usize,
    /// Schedule (Display form).
    pub schedule: String,
    /// Epochs the run is configured for (only the cosine schedule depends on it; more epochs
    /// may be asked for on resume otherwise).
    pub epochs: usize,
    /// EMA decay of the weights.
    pub ema_weights: Option<f64>,
    /// Data set description, for messages (not compared: the content hash is).
    pub data: String,
    /// SHA-256 of the training and test sets as trained on ([`split_sha256`]).
    pub data_sha256: String,
}

/// SHA-256 of a split's contents: the number of classes, then for the training and the test
/// set their shape, features and labels as little-endian `f64`. Two paths to the same data
/// give the same hash; a changed file gives another.
pub fn split_sha256(split: &Split) -> String {
    let mut h = crate::io::Sha256::new();
    h.update((split.classes as u64).to_le_bytes());
    for set in [&split.train, &split.test] {
        h.update((set.len() as u64).to_le_bytes());
        h.update((set.dim() as u64).to_le_bytes());
        for x in set.features() {
            h.update(x.to_le_bytes());
        }
        for y in set.targets().unwrap_or(&[]) {
            h.update(y.to_le_bytes());
        }
    }
    h.hex()
}

impl CheckpointMeta {
    /// The settings in which `self` (a checkpoint's) and `asked` (a resuming command's)
    /// differ, in words; empty when the run may be resumed with `asked`.
    pub fn differences(&self, asked: &CheckpointMeta) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |what: &str, saved: String, now: String| {
            if saved != now {
                out.push(format!(
                    "{what}: the checkpoint has {saved}, this command asks for {now}"
                ));
            }
        };
        diff(
            "optimizer",
            format!("`{}`", self.optimizer),
            format!("`{}`", asked.optimizer),
        );
        let groups = |g: &[String]| match g {
            [] => "no parameter groups".to_string(),
            g => g
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        diff(
            "parameter groups",
            groups(&self.groups),
            groups(&asked.groups),
        );
        diff(
            "layer widths",
            format!("{:?}", self.widths),
            format!("{:?}", asked.widths),
        );
        diff("loss unit", self.loss_unit.clone(), asked.loss_unit.clone());
        diff("seed", self.seed.to_string(), asked.seed.to_string());
        diff(
            "batch size",
            self.batch.to_string(),
            asked.batch.to_string(),
        );
        diff("schedule", self.schedule.clone(), asked.schedule.clone());
        let ema = |e: Option<f64>| e.map_or("none".to_string(), |b| b.to_string());
        diff(
            "EMA of the weights",
            ema(self.ema_weights),
            ema(asked.ema_weights),
        );
        if self.data_sha256 != asked.data_sha256 {
            out.push(format!(
                "data: the checkpoint was trained on {} (SHA-256 {}), this command's data {} \
                 have other contents (SHA-256 {})",
                self.data,
                &self.data_sha256[..self.data_sha256.len().min(12)],
                asked.data,
                &asked.data_sha256[..asked.data_sha256.len().min(12)]
            ));
        }
        let length_matters = self
            .schedule
            .parse::<ScheduleSpec>()
            .map_or(true, |s| s.depends_on_length());
        if length_matters && self.epochs != asked.epochs {
            out.push(format!(
                "epochs: the {} schedule of the checkpoint spans {} epochs, this command asks \
                 for {} (the learning rate of every step would change)",
                self.schedule, self.epochs, asked.epochs
            ));
        }
        out
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

/// The name of a run's checkpoint file in its directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const CHECKPOINT_FORMAT: &str = "sgdlab-train-checkpoint";
const CHECKPOINT_VERSION: &str = "2";

/// Serialises `run` as one checkpoint: tensors `weights/{name}`, `ema/{name}` and the
/// optimizer's `optimizer/{slot}/{name}`; metadata with the format, [`CheckpointMeta`], epoch,
/// step, metrics, divergence, the optimizer's own metadata (`optimizer.*`) and a SHA-256 of
/// all of it.
pub fn checkpoint_bytes(run: &Run, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    let fail = |e: String| Error::Unsupported(format!("cannot encode the checkpoint: {e}"));
    let json = |v: serde_json::Result<String>| v.map_err(|e| fail(e.to_string()));
    let (opt_meta, opt_entries) = run.optimizer.to_parts("optimizer.")?;
    let mut metadata: HashMap<String, String> = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("version".to_string(), CHECKPOINT_VERSION.to_string()),
        ("meta".to_string(), json(serde_json::to_string(meta))?),
        ("epoch".to_string(), run.epoch.to_string()),
        ("step".to_string(), run.step.to_string()),
        (
            "metrics".to_string(),
            json(serde_json::to_string(&run.metrics))?,
        ),
        (
            "diverged".to_string(),
            json(serde_json::to_string(&run.diverged))?,
        ),
    ]);
    metadata.extend(opt_meta);
    let le =
        |t: &Tensor<f32>| -> Vec<u8> { t.data().iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in &run.params {
        owned.push((format!("weights/{}", t.name()), t.shape().to_vec(), le(t)));
    }
    for t in run.ema.iter().flatten() {
        owned.push((format!("ema/{}", t.name()), t.shape().to_vec(), le(t)));
    }
    let encode = |metadata: HashMap<String, String>| {
        crate::optim::checkpoint::encode_with(
            metadata,
            owned
                .iter()
                .map(|(n, s, r)| (n.as_str(), s.as_slice(), r.as_slice(), Dtype::F32))
                .chain(
                    opt_entries
                        .iter()
                        .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d)),
                ),
        )
        .map_err(fail)
    };
    // The data section does not depend on the metadata: encode once to hash it, then again
    // with the hash in the header.
    let first = encode(metadata.clone())?;
    let data = crate::optim::checkpoint::data_section(&first)
        .ok_or_else(|| fail("no data section".into()))?;
    metadata.insert(
        "sha256".to_string(),
        crate::optim::checkpoint::content_hash(&metadata, data),
    );
    encode(metadata)
}

/// Saves `run` to `dir/checkpoint.safetensors` (the directory is created if needed) in one
/// atomic write: after a crash the directory holds the previous checkpoint or this one.
pub fn save_checkpoint(dir: &Path, run: &Run, meta: &CheckpointMeta) -> Result<()> {
    let fail = |e: String| Error::Checkpoint {
        path: dir.display().to_string(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
    let blob = checkpoint_bytes(run, meta)?;
    crate::io::write_atomic(&dir.join(CHECKPOINT_FILE), &blob)
        .map_err(|e| fail(format!("cannot write {CHECKPOINT_FILE}: {e}")))
}

/// Whether `dir` holds a checkpoint file (valid or not).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(CHECKPOINT_FILE).is_file()
}

/// Loads a run saved by [`save_checkpoint`] to continue it with the settings `meta` up to
/// `meta.epochs` epochs.
///
/// Refuses, naming the problem: a file that is not a checkpoint, is truncated or corrupt (its
/// SHA-256 does not match), has another format version, is internally inconsistent (the
/// optimizer's step count or layout against the weights', metrics against the epoch), has
/// tensors of the wrong shape for `net`, was made with other settings (each difference listed
/// in words), or has more epochs done than `meta.epochs` asks for.
pub fn load_checkpoint(dir: &Path, meta: &CheckpointMeta, net: &Network) -> Result<Run> {
    let path = dir.join(CHECKPOINT_FILE);
    // What the network's checkpoint can hold: weights and their EMA in f32, and at most
    // eight f64 optimizer buffers per parameter (state slots and a master copy) — a bound
    // checked against the file's header before its data are read.
    let max_data = (net.num_params() as u64).saturating_mul(2 * 4 + 8 * 8);
    let blob = crate::io::read_safetensors_file(&path, max_data, "a checkpoint").map_err(|e| {
        Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        }
    })?;
    checkpoint_from_bytes(&blob, meta, net).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// [`load_checkpoint`] from the file's bytes (errors name the path `(bytes)`).
pub fn checkpoint_from_bytes(blob: &[u8], meta: &CheckpointMeta, net: &Network) -> Result<Run> {
    let fail = |e: String| Error::Checkpoint {
        path: "(bytes)".to_string(),
        reason: e,
    };
    let st = SafeTensors::deserialize(blob)
        .map_err(|e| fail(format!("not a valid safetensors file ({e})")))?;
    let (_, header) =
        SafeTensors::read_metadata(blob).map_err(|e| fail(format!("corrupt header ({e})")))?;
    let md = header
        .metadata()
        .as_ref()
        .ok_or_else(|| fail("no metadata: not an sgdlab training checkpoint".to_string()))?;
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| fail(format!("metadata lacks `{k}`")))
    };
    if get("format")? != CHECKPOINT_FORMAT {
        return Err(fail("not an sgdlab training checkpoint".to_string()));
    }
    if get("version")? != CHECKPOINT_VERSION {
        return Err(fail(format!(
            "format version {} is not supported (this build reads version {CHECKPOINT_VERSION})",
            get("version")?
        )));
    }
    let data = crate::optim::checkpoint::data_section(blob)
        .ok_or_else(|| fail("no data section".to_string()))?;
    if crate::optim::checkpoint::content_hash(md, data) != *get("sha256")? {
        return Err(fail(
            "its SHA-256 does not match its contents: the file is corrupt; delete it to restart \
             this run, or restore it from a copy"
                .to_string(),
        ));
    }
    let saved: CheckpointMeta =
        serde_json::from_str(get("meta")?).map_err(|e| fail(format!("bad meta: {e}")))?;
    let differences = saved.differences(meta);
    if !differences.is_empty() {
        return Err(fail(format!(
            "was made with other settings, so it cannot be resumed by this command:\n  - {}",
            differences.join("\n  - ")
        )));
    }
    let count = |k: &str| -> Result<u64> {
        get(k)?
            .parse()
            .map_err(|_| fail(format!("`{k}` is not a number")))
    };
    let epoch = usize::try_from(count("epoch")?).map_err(|_| fail("bad epoch".to_string()))?;
    let step = count("step")?;
    if epoch > meta.epochs {
        return Err(fail(format!(
            "has {epoch} epochs done, more than the {} this command asks for; resuming would \
             discard them: ask for --epochs {epoch} or more",
            meta.epochs
        )));
    }
    let read = |name: &str, shape: &[usize]| -> Result<Tensor<f32>> {
        let view = st
            .tensor(name)
            .map_err(|_| fail(format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(fail(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let plain = name.split_once('/').map_or(name, |(_, n)| n);
        Tensor::new(plain, shape.to_vec(), data)
    };
    let shapes = net.shapes();
    let params = shapes
        .iter()
        .map(|(n, s)| read(&format!("weights/{n}"), s))
        .collect::<Result<Vec<_>>>()?;
    let ema = match meta.ema_weights {
        Some(_) => Some(
            shapes
                .iter()
                .map(|(n, s)| read(&format!("ema/{n}"), s))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let expected_tensors = shapes.len() * (1 + usize::from(meta.ema_weights.is_some()));
    let own_tensors = st
        .names()
        .iter()
        .filter(|n| !n.starts_with("optimizer."))
        .count();
    if own_tensors != expected_tensors {
        return Err(fail(format!(
            "holds {own_tensors} weight tensors, expected {expected_tensors}"
        )));
    }
    let optimizer = Optimizer::<f32>::from_parts(md, &st, "optimizer.").map_err(|e| match e {
        Error::Checkpoint { reason, .. } => fail(format!("optimizer state: {reason}")),
        other => fail(format!("optimizer state: {other}")),
    })?;
    let spec: OptimizerSpec = meta.optimizer.parse()?;
    let groups: Vec<String> = optimizer.groups().iter().map(ToString::to_string).collect();
    if *optimizer.spec() != spec || groups != meta.groups {
        return Err(fail(format!(
            "holds the optimizer state of `{}`, not of `{spec}` with groups {:?}",
            optimizer.describe(),
            meta.groups
        )));
    }
    if optimizer.steps().checked_add(optimizer.skipped()) != Some(step) {
        return Err(fail(format!(
            "the optimizer has taken {} steps, the weights {step}: the parts belong to different \
             moments",
            optimizer.steps() + optimizer.skipped()
        )));
    }
    if optimizer.layout().is_some_and(|l| l != shapes.as_slice()) {
        return Err(fail(
            "the optimizer's tensors are not the network's".to_string(),
        ));
    }
    let metrics: Vec<EpochMetrics> =
        serde_json::from_str(get("metrics")?).map_err(|e| fail(format!("bad metrics: {e}")))?;
    let diverged: Option<String> = serde_json::from_str(get("diverged")?)
        .map_err(|e| fail(format!("bad diverged flag: {e}")))?;
    // A run that diverged stopped inside an epoch, after its last metrics.
    let steps_agree = metrics.last().is_none_or(|m| match diverged {
        Some(_) => m.step <= step,
        None => m.step == step,
    });
    if metrics.len() != epoch || !steps_agree {
        return Err(fail(format!(
            "holds metrics of {} epochs for {epoch} epochs and {step} steps done",
            metrics.len()
        )));
    }
    Ok(Run {
        params,
        ema,
        optimizer,
        epoch,
        step,
        metrics,
        diverged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{digits, stratified_split};
    use crate::model::LossUnit;

    fn setup() -> (Network, Split) {
        let split = stratified_split(&digits().unwrap(), 0.2, 0).unwrap();
        let net = Network::new(64, &[16], 10, LossUnit::Nats).unwrap();
        (net, split)
    }

    fn config(epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch: 32,
            schedule: ScheduleSpec::Steps(crate::optim::Schedule::Constant),
            ema_weights: Some(0.9),
            seed: 3,
        }
    }

    #[test]
    fn schedules_parse_and_scale() {
        let spec = |t: &str| t.parse::<ScheduleSpec>().unwrap();
        assert_eq!(spec("constant").to_string(), "constant");
        // step:E,γ counts epochs: with 10 steps per epoch, decay every 20 steps.
        let s = spec("step:2,0.5").for_run(10, 6).unwrap();
        assert_eq!((s.factor(19), s.factor(20), s.factor(45)), (1.0, 0.5, 0.25));
        let c = spec("cosine").for_run(10, 10).unwrap();
        assert!((c.factor(50) - 0.5).abs() < 1e-15);
        assert_eq!(spec("warmup:4").for_run(10, 1).unwrap().factor(0), 0.25);
        let wc = spec("warmup-cosine:10").for_run(10, 11).unwrap();
        assert_eq!((wc.factor(9), wc.factor(10)), (1.0, 1.0));
        assert!((wc.factor(60) - 0.5).abs() < 1e-15);
        let wsd = spec("wsd:10,20").for_run(10, 10).unwrap();
        assert_eq!(
            (wsd.factor(0), wsd.factor(50), wsd.factor(90)),
            (0.1, 1.0, 0.5)
        );
        assert!(spec("cosine").depends_on_length() && !spec("step:1,0.5").depends_on_length());
        assert!(spec("warmup-cosine:200").for_run(10, 10).is_err());
        for bad in [
            "step:0,0.5",
            "step:2",
            "warmup:x",
            "linear",
            "step:1,2",
            "wsd:1,0",
        ] {
            assert!(bad.parse::<ScheduleSpec>().is_err(), "{bad}");
        }
        for text in [
            "step:2,0.5",
            "cosine",
            "warmup-cosine:5",
            "wsd:1,2",
            "seq[warmup:3;exp:0.9]@3",
        ] {
            assert_eq!(
                spec(text).to_string().parse::<ScheduleSpec>().unwrap(),
                spec(text)
            );
        }
    }

    #[test]
    fn training_learns_and_resume_is_bit_identical() {
        let (net, split) = setup();
        let spec: OptimizerSpec = "adam:lr=0.01".parse().unwrap();
        let trainer = Trainer::new(&net, &split, config(3)).unwrap();
        let mut straight = trainer.start(&spec).unwrap();
        trainer.train(&mut straight, &|_, _, _| {}).unwrap();
        assert!(
            straight.metrics[2].test_accuracy > 0.85,
            "{:?}",
            straight.metrics
        );

        let dir = std::env::temp_dir().join(format!("sgdlab-train-{}", std::process::id()));
        let meta = CheckpointMeta {
            epochs: 1,
            ..meta_for(&spec, &net, &split)
        };
        let first = Trainer::new(&net, &split, config(1)).unwrap();
        let mut run = first.start(&spec).unwrap();
        first.train(&mut run, &|_, _, _| {}).unwrap();
        save_checkpoint(&dir, &run, &meta).unwrap();
        let mut resumed = load_checkpoint(
            &dir,
            &CheckpointMeta {
                epochs: 3,
                ..meta.clone()
            },
            &net,
        )
        .unwrap();
        trainer.train(&mut resumed, &|_, _, _| {}).unwrap();
        assert_eq!(resumed.params, straight.params);
        assert_eq!(resumed.ema, straight.ema);
        let strip = |m: &[EpochMetrics]| -> Vec<EpochMetrics> {
            m.iter()
                .map(|e| EpochMetrics {
                    seconds: 0.0,
                    ..e.clone()
                })
                .collect()
        };
        assert_eq!(strip(&resumed.metrics), strip(&straight.metrics));

        let other = CheckpointMeta {
            seed: 4,
            ..meta.clone()
        };
        assert!(load_checkpoint(&dir, &other, &net).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn meta_for(spec: &OptimizerSpec, net: &Network, split: &Split) -> CheckpointMeta {
        CheckpointMeta {
            optimizer: spec.to_string(),
            groups: Vec::new(),
            widths: net.widths().to_vec(),
            loss_unit: "nats".into(),
            seed: 3,
            batch: 32,
            schedule: "constant".into(),
            epochs: 2,
            ema_weights: Some(0.9),
            data: "digits".into(),
            data_sha256: split_sha256(split),
        }
    }

    fn trained(epochs: usize) -> (Network, Split, Run, CheckpointMeta) {
        let (net, split) = setup();
        let spec: OptimizerSpec = "adam:lr=0.01".parse().unwrap();
        let trainer = Trainer::new(&net, &split, config(epochs)).unwrap();
        let mut run = trainer.start(&spec).unwrap();
        trainer.train(&mut run, &|_, _, _| {}).unwrap();
        let meta = CheckpointMeta {
            epochs,
            ..meta_for(&spec, &net, &split)
        };
        (net, split, run, meta)
    }

    #[test]
    fn a_checkpoint_is_one_file_and_round_trips_metrics_exactly() {
        let (net, _, mut run, meta) = trained(1);
        // Values whose shortest decimal form needs the last digit, and non-finite ones.
        run.metrics[0].train_loss = 0.10008464337058459;
        run.metrics[0].test_loss = f64::INFINITY;
        run.metrics[0].ema_test_loss = Some(f64::NAN);
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &run, &meta).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CHECKPOINT_FILE], "one file, no temporary left");
        let back = load_checkpoint(dir.path(), &meta, &net).unwrap();
        let m = &back.metrics[0];
        assert_eq!(m.train_loss.to_bits(), 0.10008464337058459f64.to_bits());
        assert_eq!(m.test_loss, f64::INFINITY);
        assert!(m.ema_test_loss.unwrap().is_nan());
        assert_eq!(back.params, run.params);
        assert_eq!(back.optimizer, run.optimizer);
        // Saving what was loaded gives the same bytes.
        assert_eq!(
            checkpoint_bytes(&back, &meta).unwrap(),
            std::fs::read(dir.path().join(CHECKPOINT_FILE)).unwrap()
        );
    }

    #[test]
    fn a_corrupt_or_inconsistent_checkpoint_is_refused() {
        let (net, _, run, meta) = trained(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let good = checkpoint_bytes(&run, &meta).unwrap();
        // A flipped bit anywhere in the data.
        for at in [good.len() - 1, good.len() / 2, good.len() - 4000] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = load_checkpoint(dir.path(), &meta, &net)
                .unwrap_err()
                .to_string();
            assert!(err.contains("SHA-256 does not match"), "{err}");
        }
        // Truncated.
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(load_checkpoint(dir.path(), &meta, &net).is_err());
        // Weights of one moment beside optimizer state of another (re-hashed, so only the
        // consistency check can tell).
        let mut later = run.clone();
        later.optimizer = {
            let mut o = run.optimizer.clone();
            let mut p = run.params.clone();
            let g: Vec<_> = p.iter().map(Tensor::zeros_like).collect();
            o.step(&mut p, &g, &StepInfo::default()).unwrap();
            o
        };
        std::fs::write(&path, checkpoint_bytes(&later, &meta).unwrap()).unwrap();
        let err = load_checkpoint(dir.path(), &meta, &net)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different moments"), "{err}");
        // A step count at the top of u64, re-hashed: refused by the optimizer's bound, not
        // wrapped into a sum that matches the weights' step.
        let forged = resealed(&good, |md| {
            md.insert("optimizer.step".into(), u64::MAX.to_string());
            md.insert("step".into(), (u64::MAX - 1).to_string());
            md.insert("optimizer.skipped".into(), 0.to_string());
        });
        std::fs::write(&path, &forged).unwrap();
        let err = load_checkpoint(dir.path(), &meta, &net)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceed the limit"), "{err}");
        // Sparse bytes past the declared end: refused before they are read.
        std::fs::write(&path, &good).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let err = load_checkpoint(dir.path(), &meta, &net)
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than its contents"), "{err}");
    }

    /// `bytes` (a checkpoint) with its metadata edited and its SHA-256 recomputed, as a
    /// deliberate forger would.
    fn resealed(bytes: &[u8], edit: impl FnOnce(&mut HashMap<String, String>)) -> Vec<u8> {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let mut md = header.metadata().clone().unwrap();
        edit(&mut md);
        md.remove("sha256");
        let tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype()))
            .collect();
        let encode = |md: HashMap<String, String>| {
            crate::optim::checkpoint::encode_with(
                md,
                tensors
                    .iter()
                    .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d)),
            )
            .unwrap()
        };
        let first = encode(md.clone());
        let data = crate::optim::checkpoint::data_section(&first).unwrap();
        md.insert(
            "sha256".into(),
            crate::optim::checkpoint::content_hash(&md, data),
        );
        encode(md)
    }

    #[test]
    fn a_run_longer_than_an_optimizer_can_step_is_refused() {
        let (net, split) = setup();
        let err = Trainer::new(&net, &split, config(usize::MAX))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exceed the 9007199254740992 steps"), "{err}");
    }

    #[test]
    fn diverged_weights_are_described_by_what_they_hold() {
        let finite = Tensor::vector("w", vec![1.0f32, -3.0]);
        assert_eq!(
            describe_weights(std::slice::from_ref(&finite)),
            "largest |weight| 3e0"
        );
        let broken = Tensor::vector("v", vec![0.0f32, f32::NAN, f32::INFINITY, f32::NAN]);
        assert_eq!(
            describe_weights(&[finite, broken]),
            "2 NaN and 1 infinite weights, the first v[1]"
        );
    }

    #[test]
    fn other_settings_are_listed_in_words() {
        let (net, split, run, meta) = trained(2);
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &run, &meta).unwrap();
        let other = CheckpointMeta {
            seed: 4,
            loss_unit: "bits".into(),
            data_sha256: "0".repeat(64),
            ..meta.clone()
        };
        let err = load_checkpoint(dir.path(), &other, &net)
            .unwrap_err()
            .to_string();
        for needle in [
            "seed: the checkpoint has 3, this command asks for 4",
            "loss unit: the checkpoint has nats, this command asks for bits",
            "data: ",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(!err.contains("CheckpointMeta"), "{err}");
        // The same data reached by another path hash the same.
        assert_eq!(split_sha256(&split), meta.data_sha256);
        // Fewer epochs than done would discard some.
        let fewer = CheckpointMeta {
            epochs: 1,
            ..meta.clone()
        };
        let err = load_checkpoint(dir.path(), &fewer, &net)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 epochs done") && err.contains("--epochs 2"),
            "{err}"
        );
        // More epochs are fine for a constant schedule, not for a cosine one.
        assert!(
            load_checkpoint(
                dir.path(),
                &CheckpointMeta {
                    epochs: 5,
                    ..meta.clone()
                },
                &net
            )
            .is_ok()
        );
        let cosine = CheckpointMeta {
            schedule: "cosine".into(),
            ..meta.clone()
        };
        save_checkpoint(dir.path(), &run, &cosine).unwrap();
        let err = load_checkpoint(
            dir.path(),
            &CheckpointMeta {
                epochs: 5,
                ..cosine
            },
            &net,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cosine schedule of the checkpoint spans 2 epochs"),
            "{err}"
        );
    }

    #[test]
    fn every_epoch_can_be_checkpointed_and_a_big_batch_is_the_whole_set() {
        let (net, split) = setup();
        let mut cfg = config(3);
        cfg.batch = usize::MAX;
        let trainer = Trainer::new(&net, &split, cfg).unwrap();
        assert_eq!(trainer.config().batch, split.train.len());
        assert_eq!(trainer.steps_per_epoch(), 1);
        let mut run = trainer.start(&"sgd:lr=0.1".parse().unwrap()).unwrap();
        let mut seen = Vec::new();
        trainer
            .train_with(&mut run, &|_, _, _| {}, &mut |r| {
                seen.push((r.epoch, r.step));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn memory_is_checked_before_allocation() {
        let (_, split) = setup();
        let huge = Network::new(64, &[100_000, 100_000], 10, LossUnit::Nats).unwrap();
        match Trainer::new(&huge, &split, config(1)) {
            Err(e) => assert!(e.to_string().contains("of memory"), "{e}"),
            Ok(_) => assert!(crate::resources::available_memory().is_none()),
        }
    }

    #[test]
    fn an_overflowing_first_loss_blames_the_data() {
        let text: String = (0..40).map(|i| format!("3e38,3e38,{}\n", i % 2)).collect();
        let split =
            stratified_split(&crate::data::parse_csv(&text, true).unwrap(), 0.25, 0).unwrap();
        let net = Network::new(2, &[16], 2, LossUnit::Nats).unwrap();
        let trainer = Trainer::new(&net, &split, config(1)).unwrap();
        let mut run = trainer.start(&"sgd".parse().unwrap()).unwrap();
        let err = trainer
            .train(&mut run, &|_, _, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("initial weights") && err.contains("overflows f32"),
            "{err}"
        );
    }

    #[test]
    fn divergence_is_reported_not_fatal() {
        let (net, split) = setup();
        let trainer = Trainer::new(&net, &split, config(2)).unwrap();
        let mut run = trainer.start(&"sgd:lr=1e30".parse().unwrap()).unwrap();
        trainer.train(&mut run, &|_, _, _| {}).unwrap();
        assert!(run.diverged.is_some());
    }
}
