//! The training loop: minibatch SGD of a [`Network`] on a [`Split`] with any optimizer,
//! learning-rate schedules, an EMA of the weights, metrics, and checkpoint/resume.
//!
//! Runs are deterministic: the initial weights come from the seed (the same for every
//! optimizer of a comparison), the example order of epoch $e$ from `(seed, e)`, and the
//! network and optimizer kernels give the same bits for any thread count. A checkpoint holds
//! the weights, their EMA, the optimizer state and the metrics so far, so a resumed run ends
//! bit for bit where the uninterrupted run would.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use rand::seq::SliceRandom;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::average::Ema;
use crate::data::Split;
use crate::lab::montecarlo::chain_rng;
use crate::model::{Network, Workspace};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Result};

/// A learning-rate schedule: the factor $s_t$ applied to the optimizer's `lr` at step $t$.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// $s_t = 1$.
    Constant,
    /// $s = \gamma^{\lfloor e/E \rfloor}$ in epoch $e$ (counting from 0): `step:E,γ`.
    Step {
        /// Epochs between decays, $E \ge 1$.
        every: usize,
        /// Decay factor $\gamma \in (0, 1]$.
        gamma: f64,
    },
    /// $s_t = \tfrac12(1 + \cos(\pi t/T))$ over the $T$ steps of the run: `cosine`.
    Cosine,
    /// $s_t = \min(1, (t+1)/S)$, linear warm-up over $S$ steps: `warmup:S`.
    Warmup {
        /// Warm-up steps $S \ge 1$.
        steps: u64,
    },
}

impl Schedule {
    /// The factor at global step `t` (from 0) in epoch `epoch` (from 0) of a run of `total`
    /// steps.
    pub fn factor(&self, t: u64, epoch: usize, total: u64) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => gamma.powi((epoch / every) as i32),
            Schedule::Cosine => {
                0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos())
            }
            Schedule::Warmup { steps } => ((t + 1) as f64 / steps as f64).min(1.0),
        }
    }
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("schedule", s, why);
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        match name {
            "constant" if args.is_empty() => Ok(Schedule::Constant),
            "cosine" if args.is_empty() => Ok(Schedule::Cosine),
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
                Ok(Schedule::Step { every, gamma })
            }
            "warmup" => {
                let steps: u64 = args
                    .trim()
                    .parse()
                    .map_err(|_| bad("warmup needs warmup:S with S an integer"))?;
                if steps == 0 {
                    return Err(bad("warm-up steps must be at least 1"));
                }
                Ok(Schedule::Warmup { steps })
            }
            _ => Err(bad("must be constant, step:E,GAMMA, cosine or warmup:S")),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step { every, gamma } => write!(f, "step:{every},{gamma}"),
            Schedule::Cosine => write!(f, "cosine"),
            Schedule::Warmup { steps } => write!(f, "warmup:{steps}"),
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
    pub schedule: Schedule,
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Mean minibatch loss over the epoch.
    pub train_loss: f64,
    /// Mean loss on the test set.
    pub test_loss: f64,
    /// Accuracy on the test set.
    pub test_accuracy: f64,
    /// Test loss of the EMA of the weights, if kept.
    pub ema_test_loss: Option<f64>,
    /// Test accuracy of the EMA of the weights, if kept.
    pub ema_test_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Seconds spent in this epoch's training steps.
    pub seconds: f64,
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
    x_train: Vec<f32>,
    y_train: Vec<usize>,
    x_test: Vec<f32>,
    y_test: Vec<usize>,
}

fn labels(set: &crate::data::Dataset, classes: usize) -> Result<Vec<usize>> {
    crate::model::class_labels(set.targets(), classes)
}

impl<'a> Trainer<'a> {
    /// A trainer of `net` on `split`.
    pub fn new(net: &'a Network, split: &Split, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        if net.widths()[0] != split.train.dim() {
            return Err(Error::ShapeMismatch {
                what: "network inputs vs data features".to_string(),
                expected: net.widths()[0],
                got: split.train.dim(),
            });
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        Ok(Self {
            net,
            x_train: f32s(split.train.features()),
            y_train: labels(&split.train, net.classes())?,
            x_test: f32s(split.test.features()),
            y_test: labels(&split.test, net.classes())?,
            config,
        })
    }

    /// Number of training examples.
    pub fn train_examples(&self) -> usize {
        self.y_train.len()
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.y_train.len().div_ceil(self.config.batch) as u64
    }

    /// A fresh run of `spec` from the seeded initial weights.
    pub fn start(&self, spec: &OptimizerSpec) -> Result<Run> {
        let params = self.net.init::<f32>(self.config.seed);
        Ok(Run {
            ema: self.config.ema_weights.map(|_| params.clone()),
            params,
            optimizer: Optimizer::new(spec.clone())?,
            epoch: 0,
            step: 0,
            metrics: Vec::new(),
            diverged: None,
        })
    }

    /// Trains `run` until it has `config.epochs` epochs or diverges, calling
    /// `progress(steps done in this epoch, steps per epoch, epoch)` after every step.
    pub fn train(&self, run: &mut Run, progress: &(dyn Fn(u64, u64, usize) + Sync)) -> Result<()> {
        while run.epoch < self.config.epochs && run.diverged.is_none() {
            self.epoch(run, progress)?;
        }
        Ok(())
    }

    fn epoch(&self, run: &mut Run, progress: &(dyn Fn(u64, u64, usize) + Sync)) -> Result<()> {
        let d = self.net.widths()[0];
        let n = self.y_train.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut chain_rng(self.config.seed, 1 + run.epoch as u64));
        let steps = self.steps_per_epoch();
        let total = steps * self.config.epochs as u64;
        let ema = self.config.ema_weights.map(Ema::new).transpose()?;
        let mut grads: Vec<Tensor<f32>> = run.params.iter().map(Tensor::zeros_like).collect();
        let mut xb = vec![0.0f32; self.config.batch * d];
        let mut yb = vec![0usize; self.config.batch];
        let mut ws = Workspace::default();
        let (mut loss_sum, mut lr_scale) = (0.0f64, 1.0);
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
                run.diverged = Some(format!(
                    "loss {loss} at epoch {}, step {}",
                    run.epoch + 1,
                    run.step + 1
                ));
                return Ok(());
            }
            lr_scale = self.config.schedule.factor(run.step, run.epoch, total);
            let info = StepInfo {
                loss: Some(loss),
                lr_scale,
            };
            match run.optimizer.step(&mut run.params, &grads, &info) {
                Ok(_) => {}
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
        let (test_loss, test_accuracy) = self.evaluate(&run.params, &mut ws);
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
            lr: run.optimizer.spec().rule.lr() * lr_scale,
            seconds,
        });
        Ok(())
    }

    /// Mean loss and accuracy of `params` on the test set.
    pub fn evaluate(&self, params: &[Tensor<f32>], ws: &mut Workspace<f32>) -> (f64, f64) {
        let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
        self.net.evaluate(&p, &self.x_test, &self.y_test, ws)
    }
}

/// What a checkpoint must agree on with the command that resumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The optimizer spec.
    pub optimizer: String,
    /// Network layer widths.
    pub widths: Vec<usize>,
    /// Seed.
    pub seed: u64,
    /// Batch size.
    pub batch: usize,
    /// Schedule (Display form).
    pub schedule: String,
    /// Epochs the run was configured for (the cosine schedule depends on it).
    pub epochs: usize,
    /// EMA decay of the weights.
    pub ema_weights: Option<f64>,
    /// Data set description.
    pub data: String,
}

/// Saves `run` into `dir` (created if needed): `weights.safetensors` (weights, their EMA
/// under `ema/`, metadata and metrics) and `optimizer.safetensors`, both written atomically.
pub fn save_checkpoint(dir: &Path, run: &Run, meta: &CheckpointMeta) -> Result<()> {
    let fail = |e: String| Error::Checkpoint {
        path: dir.display().to_string(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |t: &Tensor<f32>| t.data().iter().flat_map(|x| x.to_le_bytes()).collect();
    for t in &run.params {
        entries.push((t.name().to_string(), t.shape().to_vec(), bytes(t)));
    }
    for t in run.ema.iter().flatten() {
        entries.push((format!("ema/{}", t.name()), t.shape().to_vec(), bytes(t)));
    }
    let json = |v: serde_json::Result<String>| v.map_err(|e| fail(e.to_string()));
    let metadata = HashMap::from([
        ("format".to_string(), "sgdlab-train-checkpoint".to_string()),
        ("version".to_string(), "1".to_string()),
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
    let views = entries
        .iter()
        .map(|(name, shape, raw)| {
            TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| fail(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let blob = safetensors::serialize(views, Some(metadata))
        .map_err(|e| e.to_string())
        .and_then(crate::io::canonical_safetensors)
        .map_err(fail)?;
    run.optimizer.save(&dir.join("optimizer.safetensors"))?;
    crate::io::write_atomic(&dir.join("weights.safetensors"), &blob)
        .map_err(|e| fail(format!("cannot write weights: {e}")))
}

/// Loads a run saved by [`save_checkpoint`], checking that it was made with `meta`.
pub fn load_checkpoint(dir: &Path, meta: &CheckpointMeta, net: &Network) -> Result<Run> {
    let path = dir.join("weights.safetensors");
    let fail = |e: String| Error::Checkpoint {
        path: path.display().to_string(),
        reason: e,
    };
    let blob = std::fs::read(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&blob)
        .map_err(|e| fail(format!("not a valid safetensors file ({e})")))?;
    let (_, header) =
        SafeTensors::read_metadata(&blob).map_err(|e| fail(format!("corrupt header ({e})")))?;
    let md = header
        .metadata()
        .as_ref()
        .ok_or_else(|| fail("no metadata".to_string()))?;
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| fail(format!("metadata lacks `{k}`")))
    };
    if get("format")? != "sgdlab-train-checkpoint" || get("version")? != "1" {
        return Err(fail(
            "not an sgdlab training checkpoint (version 1)".to_string(),
        ));
    }
    let saved: CheckpointMeta =
        serde_json::from_str(get("meta")?).map_err(|e| fail(format!("bad meta: {e}")))?;
    let same_length_matters = meta.schedule == Schedule::Cosine.to_string();
    let mut wanted = meta.clone();
    if !same_length_matters {
        wanted.epochs = saved.epochs;
    }
    if saved != wanted {
        return Err(fail(format!(
            "was made with {saved:?}, but this run asks for {meta:?} (a cosine schedule \
             also fixes --epochs)"
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
        Tensor::new(name.trim_start_matches("ema/"), shape.to_vec(), data)
    };
    let shapes = net.shapes();
    let params = shapes
        .iter()
        .map(|(n, s)| read(n, s))
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
    let count = |k: &str| -> Result<u64> {
        get(k)?
            .parse()
            .map_err(|_| fail(format!("`{k}` is not a number")))
    };
    let spec: OptimizerSpec = meta.optimizer.parse()?;
    Ok(Run {
        params,
        ema,
        optimizer: Optimizer::load_for(&dir.join("optimizer.safetensors"), &spec)?,
        epoch: count("epoch")? as usize,
        step: count("step")?,
        metrics: serde_json::from_str(get("metrics")?)
            .map_err(|e| fail(format!("bad metrics: {e}")))?,
        diverged: serde_json::from_str(get("diverged")?)
            .map_err(|e| fail(format!("bad diverged flag: {e}")))?,
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
            schedule: Schedule::Constant,
            ema_weights: Some(0.9),
            seed: 3,
        }
    }

    #[test]
    fn schedules_parse_and_scale() {
        assert_eq!("constant".parse::<Schedule>().unwrap(), Schedule::Constant);
        let s: Schedule = "step:2,0.5".parse().unwrap();
        assert_eq!(s.factor(0, 3, 100), 0.5);
        let c: Schedule = "cosine".parse().unwrap();
        assert!((c.factor(50, 0, 100) - 0.5).abs() < 1e-15);
        let w: Schedule = "warmup:4".parse().unwrap();
        assert_eq!((w.factor(0, 0, 9), w.factor(10, 0, 9)), (0.25, 1.0));
        for bad in ["step:0,0.5", "step:2", "warmup:x", "linear", "step:1,2"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
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
            optimizer: spec.to_string(),
            widths: net.widths().to_vec(),
            seed: 3,
            batch: 32,
            schedule: "constant".into(),
            epochs: 1,
            ema_weights: Some(0.9),
            data: "digits".into(),
        };
        let first = Trainer::new(&net, &split, config(1)).unwrap();
        let mut run = first.start(&spec).unwrap();
        first.train(&mut run, &|_, _, _| {}).unwrap();
        save_checkpoint(&dir, &run, &meta).unwrap();
        let mut resumed = load_checkpoint(&dir, &meta, &net).unwrap();
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

    #[test]
    fn divergence_is_reported_not_fatal() {
        let (net, split) = setup();
        let trainer = Trainer::new(&net, &split, config(2)).unwrap();
        let mut run = trainer.start(&"sgd:lr=1e30".parse().unwrap()).unwrap();
        trainer.train(&mut run, &|_, _, _| {}).unwrap();
        assert!(run.diverged.is_some());
    }
}
