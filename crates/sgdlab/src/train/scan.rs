//! The critical batch size measured by training (McCandlish, Kaplan, Amodei et al., "An
//! empirical model of large-batch training", 2018).
//!
//! For every batch size B of a list, fresh runs of one optimizer at each learning rate of a
//! grid train with minibatches of B until their loss on a fixed sample of the training set
//! falls to a target; the fewest steps S over the grid, and the examples E = BS they took, are
//! the batch's point. The paper's model of the trade-off,
//!
//! (S/S\_min − 1)(E/E\_min − 1) = 1, equivalently S(B) = S\_min + E\_min/B,
//!
//! is linear in 1/B, so S\_min (the steps at an infinite batch) and E\_min (the examples at
//! B → 0) are a least-squares line through (1/B, S), each point weighted by 1/S² (relative
//! errors). The critical batch B\_crit = E\_min/S\_min is where both are twice their minimum.
//! Beside each point the gradient noise scale B\_simple ([`crate::lab::noise`]) is measured at
//! the weights where its run reached the target, to set against B\_crit.
//!
//! Every run follows `train`'s conventions (the seeded initial weights, epoch e's example order
//! from `(seed, e)`), except that an epoch is ⌊n/B⌋ full batches (no short last batch, so
//! that every step sees B examples), and it is deterministic, whatever the thread count.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{BatchBuffers, TrainConfig, Trainer};
use crate::data::Split;
use crate::lab::noise::{gradient_noise, sample_examples};
use crate::model::{Network, Workspace};
use crate::optim::{OptimizerSpec, Schedule};
use crate::rng::chain_rng;
use crate::{Error, Result};
use rand::seq::SliceRandom;

/// What a batch-size scan runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanConfig {
    /// The batch sizes B (each at most the training set's size).
    pub batches: Vec<usize>,
    /// The learning rates tried at each batch size (each overrides the spec's `lr`).
    pub lrs: Vec<f64>,
    /// The loss (mean over the evaluation sample) a run must reach.
    pub target_loss: f64,
    /// The most steps a run takes before it counts as not reaching the target.
    pub max_steps: u64,
    /// How often a run checks its loss: this many times an epoch (at least every step).
    pub checks_per_epoch: usize,
    /// The training examples on which the loss is checked (a seeded sample; all when at
    /// least the training set's size).
    pub eval_examples: usize,
    /// The training examples on which B\_simple is measured (a seeded sample).
    pub noise_examples: usize,
    /// Seed of the initial weights, the example order and the samples.
    pub seed: u64,
}

impl ScanConfig {
    /// Checks the values against a training set of `n` examples.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.batches.is_empty() {
            return Err(Error::invalid(
                "batches",
                "none",
                "name at least one batch size",
            ));
        }
        if let Some(&b) = self.batches.iter().find(|&&b| b == 0 || b > n) {
            return Err(Error::invalid(
                "batches",
                b,
                format!("a batch size must lie in [1, {n}], the training set's size"),
            ));
        }
        if self.lrs.is_empty() {
            return Err(Error::invalid(
                "lrs",
                "none",
                "name at least one learning rate",
            ));
        }
        if let Some(&lr) = self.lrs.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
            return Err(Error::invalid(
                "lrs",
                lr,
                "a learning rate must be positive",
            ));
        }
        if !(self.target_loss.is_finite() && self.target_loss > 0.0) {
            return Err(Error::invalid(
                "target-loss",
                self.target_loss,
                "must be positive and finite",
            ));
        }
        if self.max_steps == 0 || self.max_steps > crate::optim::MAX_STEPS {
            return Err(Error::invalid(
                "max-steps",
                self.max_steps,
                format!("must lie in [1, {}]", crate::optim::MAX_STEPS),
            ));
        }
        if self.checks_per_epoch == 0 {
            return Err(Error::invalid("checks-per-epoch", 0, "must be at least 1"));
        }
        if self.eval_examples == 0 {
            return Err(Error::invalid("eval-examples", 0, "must be at least 1"));
        }
        if self.noise_examples < 2 {
            return Err(Error::invalid(
                "noise-examples",
                self.noise_examples,
                "the noise scale needs at least 2 examples",
            ));
        }
        Ok(())
    }
}

/// One batch size's result: its fastest run over the learning rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanPoint {
    /// The batch size B.
    pub batch: usize,
    /// The learning rate of the fastest run.
    pub lr: f64,
    /// Whether that learning rate is the grid's smallest or largest (the optimum may lie
    /// beyond it, so S is an upper bound).
    pub lr_at_edge: bool,
    /// Steps S to the target (a multiple of `check_every`).
    pub steps: u64,
    /// Examples E = BS.
    pub examples: u64,
    /// The steps between two checks of the loss (S's resolution).
    pub check_every: u64,
    /// B\_simple = tr Σ/|G|² at the weights where the run reached the target (none where
    /// |G|²̂ ≤ 0).
    pub b_simple: Option<f64>,
}

/// The fitted trade-off S(B) = S\_min + E\_min/B.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TradeOff {
    /// The steps at an infinite batch.
    pub s_min: f64,
    /// The examples as B → 0.
    pub e_min: f64,
    /// The critical batch B\_crit = E\_min/S\_min.
    pub b_crit: f64,
    /// The root-mean-square relative residual of the points, √(mean((S − Ŝ)/S)²).
    pub rms_relative_residual: f64,
}

/// A batch-size scan's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    /// The batch sizes whose runs reached the target, in the order given.
    pub points: Vec<ScanPoint>,
    /// The batch sizes no run of which reached the target within `max_steps`.
    pub unreached: Vec<usize>,
    /// The fit through the points; none with fewer than two points or a fit without positive
    /// S\_min and E\_min (the points do not follow the model).
    pub fit: Option<TradeOff>,
}

/// Fits S(B) = S\_min + E\_min/B to `(B, S)` points by least squares weighted by 1/S²: none
/// with fewer than two distinct batch sizes, or when S\_min or E\_min comes out ≤ 0.
pub fn fit_tradeoff(points: &[(f64, f64)]) -> Option<TradeOff> {
    // Minimise Σ wᵢ(Sᵢ − a − b xᵢ)², xᵢ = 1/Bᵢ, wᵢ = 1/Sᵢ².
    let (mut sw, mut swx, mut swxx, mut swy, mut swxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(b, s) in points {
        let (x, w) = (1.0 / b, 1.0 / (s * s));
        sw += w;
        swx += w * x;
        swxx += w * x * x;
        swy += w * s;
        swxy += w * x * s;
    }
    let det = sw * swxx - swx * swx;
    if points.len() < 2 || det <= 1e-12 * sw * swxx {
        return None;
    }
    let s_min = (swxx * swy - swx * swxy) / det;
    let e_min = (sw * swxy - swx * swy) / det;
    if !(s_min > 0.0 && e_min > 0.0) {
        return None;
    }
    let rms = (points
        .iter()
        .map(|&(b, s)| ((s - s_min - e_min / b) / s).powi(2))
        .sum::<f64>()
        / points.len() as f64)
        .sqrt();
    Some(TradeOff {
        s_min,
        e_min,
        b_crit: e_min / s_min,
        rms_relative_residual: rms,
    })
}

/// Scans `config.batches` with `spec` on `net` and `split`: for each batch size the fastest
/// run to the target over `config.lrs`, B\_simple where it got there, and the fit.
/// `progress(batch)` is called as each batch size finishes (from worker threads).
///
/// Errors on an invalid configuration, data that do not fit the network, or a spec that
/// does not take the learning rates.
pub fn scan_batches(
    net: &Network,
    split: &Split,
    spec: &OptimizerSpec,
    config: &ScanConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<ScanReport> {
    let n = split.train.len();
    config.validate(n)?;
    let specs = config
        .lrs
        .iter()
        .map(|&lr| spec.clone().with("lr", lr))
        .collect::<Result<Vec<_>>>()?;
    let eval_rows = sample_examples(n, config.eval_examples, config.seed ^ 0x5ca9);
    let results = config
        .batches
        .par_iter()
        .map(|&batch| {
            let point = scan_one(net, split, &specs, &eval_rows, config, batch);
            progress(batch);
            point
        })
        .collect::<Vec<_>>();
    let (mut points, mut unreached) = (Vec::new(), Vec::new());
    for (&batch, result) in config.batches.iter().zip(results) {
        match result? {
            Some(point) => points.push(point),
            None => unreached.push(batch),
        }
    }
    let fit = fit_tradeoff(
        &points
            .iter()
            .map(|p| (p.batch as f64, p.steps as f64))
            .collect::<Vec<_>>(),
    );
    Ok(ScanReport {
        points,
        unreached,
        fit,
    })
}

/// The fastest run at `batch` over `specs` (the grid's learning rates), if one reaches the
/// target. Each later run stops once it has taken as many steps as the fastest so far, so
/// the minimum is the same as without pruning and the first learning rate to attain it is
/// reported.
fn scan_one(
    net: &Network,
    split: &Split,
    specs: &[OptimizerSpec],
    eval_rows: &[usize],
    config: &ScanConfig,
    batch: usize,
) -> Result<Option<ScanPoint>> {
    let trainer = Trainer::new(
        net,
        split,
        TrainConfig {
            epochs: config
                .max_steps
                .div_ceil((split.train.len() / batch) as u64) as usize,
            batch,
            schedule: Schedule::Constant.into(),
            ema_weights: None,
            seed: config.seed,
            noise_examples: Some(config.noise_examples),
        },
    )?;
    let steps_per_epoch = (split.train.len() / batch) as u64;
    let check_every = steps_per_epoch
        .div_ceil(config.checks_per_epoch as u64)
        .max(1);
    let mut cap = config.max_steps;
    let mut best: Option<(usize, u64, Vec<f64>)> = None;
    for (k, spec) in specs.iter().enumerate() {
        if let Some((steps, phi)) =
            trainer.steps_to_loss(spec, eval_rows, config.target_loss, check_every, cap)?
            && best.as_ref().is_none_or(|b| steps < b.1)
        {
            cap = steps;
            best = Some((k, steps, phi));
        }
    }
    let Some((k, steps, phi)) = best else {
        return Ok(None);
    };
    let noise = trainer
        .noise
        .as_ref()
        .map(|model| gradient_noise(model, &phi, &[], None))
        .transpose()?;
    Ok(Some(ScanPoint {
        batch,
        lr: config.lrs[k],
        lr_at_edge: config.lrs.len() > 1 && (k == 0 || k + 1 == config.lrs.len()),
        steps,
        examples: steps * batch as u64,
        check_every,
        b_simple: noise.and_then(|n| n.total.b_simple),
    }))
}

impl Trainer<'_> {
    /// Trains a fresh run of `spec` with full minibatches until its mean loss on the training
    /// examples `eval_rows`, checked every `check_every` steps at the optimizer's evaluation
    /// point, is at most `target`: the steps taken and the weights there (as f64), or none
    /// when it has not within `cap` steps or diverged.
    fn steps_to_loss(
        &self,
        spec: &OptimizerSpec,
        eval_rows: &[usize],
        target: f64,
        check_every: u64,
        cap: u64,
    ) -> Result<Option<(u64, Vec<f64>)>> {
        let d = self.net.widths()[0];
        let batch = self.config.batch;
        let mut x_eval = Vec::with_capacity(eval_rows.len() * d);
        for &i in eval_rows {
            x_eval.extend_from_slice(&self.x_train[i * d..(i + 1) * d]);
        }
        let y_eval: Vec<usize> = eval_rows.iter().map(|&i| self.y_train[i]).collect();
        let mut run = self.start(spec)?;
        let mut buf = BatchBuffers::new(&run, batch, d);
        let mut ws = Workspace::default();
        let mut order: Vec<usize> = (0..self.y_train.len()).collect();
        let mut epoch = 0u64;
        while run.step < cap {
            order.sort_unstable();
            order.shuffle(&mut chain_rng(self.config.seed, 1 + epoch));
            for rows in order.chunks_exact(batch) {
                if self.step_on(&mut run, rows, &mut buf, &mut ws)?.is_none() {
                    return Ok(None);
                }
                run.step += 1;
                if run.step % check_every == 0 || run.step == cap {
                    let at: Vec<&[f32]> = run
                        .params
                        .iter()
                        .enumerate()
                        .map(|(k, t)| run.optimizer.eval_point(k).unwrap_or(t.data()))
                        .collect();
                    let (loss, _) = self.net.evaluate(&at, &x_eval, &y_eval, &mut ws);
                    if loss <= target {
                        let phi = at
                            .iter()
                            .flat_map(|t| t.iter().map(|&x| f64::from(x)))
                            .collect();
                        return Ok(Some((run.step, phi)));
                    }
                    if !loss.is_finite() {
                        return Ok(None);
                    }
                }
                if run.step >= cap {
                    return Ok(None);
                }
            }
            epoch += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{digits, stratified_split};
    use crate::model::LossUnit;

    fn setup() -> (Network, Split, ScanConfig) {
        let split = stratified_split(&digits().unwrap(), 0.2, 0).unwrap();
        let net = Network::new(64, &[], 10, LossUnit::Nats).unwrap();
        let config = ScanConfig {
            batches: vec![16, 128],
            lrs: vec![0.05, 0.2, 0.8],
            target_loss: 0.5,
            max_steps: 2_000,
            checks_per_epoch: 4,
            eval_examples: 500,
            noise_examples: 200,
            seed: 5,
        };
        (net, split, config)
    }

    #[test]
    fn a_scan_finds_the_fewest_steps_over_the_grid_whatever_the_threads() {
        let (net, split, config) = setup();
        let spec: OptimizerSpec = "sgd".parse().unwrap();
        let scan = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| scan_batches(&net, &split, &spec, &config, &|_| ()).unwrap())
        };
        let report = scan(1);
        assert_eq!(report, scan(3));
        assert_eq!(report.points.len(), 2, "{report:?}");
        let eval = sample_examples(
            split.train.len(),
            config.eval_examples,
            config.seed ^ 0x5ca9,
        );
        for p in &report.points {
            assert_eq!(p.examples, p.steps * p.batch as u64);
            assert_eq!(p.steps % p.check_every, 0);
            let per_epoch = (split.train.len() / p.batch) as u64;
            assert_eq!(
                p.check_every,
                per_epoch.div_ceil(config.checks_per_epoch as u64)
            );
            // Without pruning: every learning rate's own steps, the minimum the first found.
            let trainer = Trainer::new(
                &net,
                &split,
                TrainConfig {
                    epochs: 1_000,
                    batch: p.batch,
                    schedule: Schedule::Constant.into(),
                    ema_weights: None,
                    seed: config.seed,
                    noise_examples: None,
                },
            )
            .unwrap();
            let steps: Vec<Option<u64>> = config
                .lrs
                .iter()
                .map(|&lr| {
                    let spec = spec.clone().with("lr", lr).unwrap();
                    trainer
                        .steps_to_loss(&spec, &eval, config.target_loss, p.check_every, 2_000)
                        .unwrap()
                        .map(|r| r.0)
                })
                .collect();
            let best = steps.iter().flatten().min().copied().unwrap();
            assert_eq!(p.steps, best, "{steps:?}");
            let first = steps.iter().position(|s| *s == Some(best)).unwrap();
            assert_eq!(p.lr, config.lrs[first]);
            assert_eq!(p.lr_at_edge, first == 0 || first == 2);
            assert!(p.b_simple.is_some_and(|b| b > 0.0), "{p:?}");
        }
        // Larger batches take fewer steps and more examples.
        let [small, large] = [&report.points[0], &report.points[1]];
        assert!(large.steps < small.steps && large.examples > small.examples);
    }

    #[test]
    fn a_scan_run_is_the_train_run_of_the_same_seed() {
        // Where the batch divides the training set, steps_to_loss walks the minibatches
        // `train` walks, epoch after epoch: stopped at the cap after three epochs, its
        // weights are train's after three epochs, bit for bit.
        let (net, split, config) = setup();
        let n = split.train.len();
        let batch = (8..n).find(|b| n % b == 0).unwrap();
        let trainer = Trainer::new(
            &net,
            &split,
            TrainConfig {
                epochs: 3,
                batch,
                schedule: Schedule::Constant.into(),
                ema_weights: None,
                seed: config.seed,
                noise_examples: None,
            },
        )
        .unwrap();
        let spec: OptimizerSpec = "sgd:lr=0.1,momentum=0.9".parse().unwrap();
        let cap = 3 * trainer.steps_per_epoch();
        let (steps, phi) = trainer
            .steps_to_loss(&spec, &[0, 1, 2], f64::MAX, u64::MAX, cap)
            .unwrap()
            .unwrap();
        assert_eq!(steps, cap);
        let mut run = trainer.start(&spec).unwrap();
        trainer.train(&mut run, &|_, _, _| ()).unwrap();
        let trained: Vec<f64> = run
            .params
            .iter()
            .flat_map(|t| t.data().iter().map(|&x| f64::from(x)))
            .collect();
        assert_eq!(phi, trained);
    }

    #[test]
    fn a_target_out_of_reach_and_bad_settings_are_reported() {
        let (net, split, mut config) = setup();
        let spec: OptimizerSpec = "sgd".parse().unwrap();
        config.target_loss = 1e-6;
        config.max_steps = 20;
        let report = scan_batches(&net, &split, &spec, &config, &|_| ()).unwrap();
        assert!(report.points.is_empty());
        assert_eq!(report.unreached, vec![16, 128]);
        assert_eq!(report.fit, None);
        let bad = |edit: &dyn Fn(&mut ScanConfig), key: &str| {
            let mut c = setup().2;
            edit(&mut c);
            let e = scan_batches(&net, &split, &spec, &c, &|_| ()).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        };
        bad(&|c| c.batches = vec![2_000], "batches");
        bad(&|c| c.batches.clear(), "batches");
        bad(&|c| c.lrs = vec![0.1, -1.0], "lrs");
        bad(&|c| c.target_loss = f64::NAN, "target-loss");
        bad(&|c| c.max_steps = 0, "max-steps");
        bad(&|c| c.checks_per_epoch = 0, "checks-per-epoch");
        bad(&|c| c.eval_examples = 0, "eval-examples");
        bad(&|c| c.noise_examples = 1, "noise-examples");
    }

    #[test]
    fn the_fit_recovers_an_exact_trade_off_and_refuses_a_flat_one() {
        let (s_min, e_min) = (50.0, 6400.0);
        let points: Vec<(f64, f64)> = [8.0, 32.0, 128.0, 512.0]
            .iter()
            .map(|&b| (b, s_min + e_min / b))
            .collect();
        let fit = fit_tradeoff(&points).unwrap();
        assert!((fit.s_min - s_min).abs() < 1e-9 * s_min, "{fit:?}");
        assert!((fit.e_min - e_min).abs() < 1e-9 * e_min, "{fit:?}");
        assert!((fit.b_crit - 128.0).abs() < 1e-9, "{fit:?}");
        assert!(fit.rms_relative_residual < 1e-12);
        // The paper's form: (S/S_min − 1)(E/E_min − 1) = 1 at every point.
        for &(b, s) in &points {
            let product = (s / fit.s_min - 1.0) * (b * s / fit.e_min - 1.0);
            assert!((product - 1.0).abs() < 1e-9, "{product}");
        }
        // Steps that grow with B give no positive E_min; one point gives no line.
        assert_eq!(fit_tradeoff(&[(8.0, 100.0), (64.0, 120.0)]), None);
        assert_eq!(fit_tradeoff(&[(8.0, 100.0)]), None);
        assert_eq!(fit_tradeoff(&[(8.0, 100.0), (8.0, 90.0)]), None);
    }

    #[test]
    fn the_fit_minimises_the_relative_squared_error() {
        // Points off the model: the fit is the minimum of Σ((S − S_min − E_min/B)/S)², so
        // any nudge of either parameter raises it.
        let points = [(8.0, 420.0), (32.0, 160.0), (128.0, 95.0), (512.0, 70.0)];
        let fit = fit_tradeoff(&points).unwrap();
        let objective = |a: f64, b: f64| -> f64 {
            points
                .iter()
                .map(|&(batch, s)| ((s - a - b / batch) / s).powi(2))
                .sum()
        };
        let best = objective(fit.s_min, fit.e_min);
        assert!(((best / 4.0).sqrt() - fit.rms_relative_residual).abs() < 1e-12);
        for (da, db) in [(1e-3, 0.0), (-1e-3, 0.0), (0.0, 1e-3), (0.0, -1e-3)] {
            let (a, b) = (fit.s_min * (1.0 + da), fit.e_min * (1.0 + db));
            assert!(objective(a, b) > best, "{da} {db}: {fit:?}");
        }
    }

    #[test]
    fn the_limits_of_the_settings_are_inclusive() {
        let (_, _, base) = setup();
        let n = 1_000;
        let ok = |edit: &dyn Fn(&mut ScanConfig)| {
            let mut c = base.clone();
            edit(&mut c);
            c.validate(n)
        };
        assert!(ok(&|c| c.batches = vec![1, n]).is_ok());
        assert!(ok(&|c| c.batches = vec![n + 1]).is_err());
        assert!(ok(&|c| c.lrs = vec![0.0]).is_err());
        assert!(ok(&|c| c.lrs = vec![f64::INFINITY]).is_err());
        assert!(ok(&|c| c.target_loss = 0.0).is_err());
        assert!(ok(&|c| c.target_loss = f64::INFINITY).is_err());
        assert!(ok(&|c| c.max_steps = 1).is_ok());
        assert!(ok(&|c| c.max_steps = crate::optim::MAX_STEPS).is_ok());
        assert!(ok(&|c| c.max_steps = crate::optim::MAX_STEPS + 1).is_err());
        assert!(ok(&|c| c.noise_examples = 2).is_ok());
        assert!(ok(&|c| c.checks_per_epoch = 1).is_ok());
        assert!(ok(&|c| c.eval_examples = 1).is_ok());
    }

    #[test]
    fn the_weights_make_the_fit_relative() {
        // One point 10% off: the residual is about 10%/√n whichever end it sits at.
        let exact = |b: f64| 40.0 + 4000.0 / b;
        let batches = [4.0, 16.0, 64.0, 256.0, 1024.0];
        for off in [0, 4] {
            let points: Vec<(f64, f64)> = batches
                .iter()
                .enumerate()
                .map(|(i, &b)| (b, exact(b) * if i == off { 1.1 } else { 1.0 }))
                .collect();
            let fit = fit_tradeoff(&points).unwrap();
            assert!(
                fit.rms_relative_residual > 0.01 && fit.rms_relative_residual < 0.05,
                "{off}: {fit:?}"
            );
        }
    }
}
