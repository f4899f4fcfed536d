//! The simulated side of the audit: a stateful rule's drift with the parameters frozen at
//! the minimiser while its state runs to stationarity, and its fixed point as the iterate
//! average at two learning rates.

use crate::lab::audit::exact::probe_scale;
use crate::lab::audit::exact::row;
use crate::lab::audit::exact::unit_step;

use rand::RngExt;

use crate::lab::montecarlo::chain_rng;
use crate::lab::stats::BatchMeans;
use crate::model::Model;
use crate::optim::{Optimizer, OptimizerSpec, StepInfo};
use crate::{Error, Result};

/// Sample sizes and seed for the simulated measurements of stateful rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimulationOptions {
    /// Steps discarded while the state (and iterate) reach stationarity.
    pub burn_in: usize,
    /// Steps averaged (at half the learning rate, twice as many).
    pub steps: usize,
    /// Seed of the example order.
    pub seed: u64,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        Self {
            burn_in: 20_000,
            steps: 200_000,
            seed: 1,
        }
    }
}

/// The most simulated steps (burn-in and averaged together) an audit runs per optimizer: at
/// about a microsecond a step, minutes, not years. The measurement at half the learning rate
/// runs twice as many.
pub const MAX_SIMULATION_STEPS: usize = 100_000_000;

/// The fewest averaged steps: batch means need some of each of their batches.
pub const MIN_SIMULATION_STEPS: usize = 80;

impl SimulationOptions {
    /// Checks the sample sizes: at least [`MIN_SIMULATION_STEPS`] averaged steps, and burn-in
    /// plus steps at most [`MAX_SIMULATION_STEPS`] (no count wraps, no audit runs for ever).
    pub fn validate(&self) -> Result<()> {
        if self.steps < MIN_SIMULATION_STEPS {
            return Err(Error::invalid(
                "steps",
                self.steps,
                format!("need at least {MIN_SIMULATION_STEPS} for batch means"),
            ));
        }
        if self
            .burn_in
            .checked_add(self.steps)
            .is_none_or(|n| n > MAX_SIMULATION_STEPS)
        {
            return Err(Error::invalid(
                "steps",
                format!("{} (with a burn-in of {})", self.steps, self.burn_in),
                format!("burn-in and steps together may be at most {MAX_SIMULATION_STEPS}"),
            ));
        }
        Ok(())
    }
}

/// The drift of any rule (stateful or not) at `phi`: Φ is held at `phi` while the
/// optimizer state evolves under the gradients of uniformly drawn examples; after burn-in the
/// expected update per unit learning rate, given the state, is averaged (exactly over the
/// current example when there are at most 64 examples, else for one drawn example).
/// Returns the mean and its batch-means standard errors.
pub fn stationary_drift(
    model: &dyn Model<f64>,
    spec: &OptimizerSpec,
    phi: &[f64],
    options: &SimulationOptions,
) -> Result<(Vec<f64>, Vec<f64>)> {
    options.validate()?;
    let scale = probe_scale(spec)?;
    let n = model.examples();
    let d = phi.len();
    let mut opt = Optimizer::<f64>::new(spec.clone())?;
    let mut rng = chain_rng(options.seed, 0);
    let mut acc = BatchMeans::new(d, options.steps);
    let (mut step, mut mean) = (vec![0.0; d], vec![0.0; d]);
    let exact_inner = n <= 64;
    // The state advances with Φ frozen at a learning rate of 0; a rule with optimizer-wide
    // scalars (Prodigy) freezes its averages at lr 0, as its reference does for a group at
    // lr 0, so it advances at the smallest normal lr instead (its averages move as at any lr).
    let advance = if spec.rule.is_global() {
        f64::MIN_POSITIVE
    } else {
        0.0
    };
    for t in 0..options.burn_in + options.steps {
        if t >= options.burn_in {
            mean.iter_mut().for_each(|m| *m = 0.0);
            let examples: Vec<usize> = if exact_inner {
                (0..n).collect()
            } else {
                vec![rng.random_range(0..n)]
            };
            for &i in &examples {
                let mut probe = opt.clone();
                unit_step(model, &mut probe, phi, i, scale, &mut step)?;
                for (m, s) in mean.iter_mut().zip(&step) {
                    *m += s / examples.len() as f64;
                }
            }
            acc.push(&mean);
        }
        // Advance the state with Φ frozen.
        let i = rng.random_range(0..n);
        unit_step(model, &mut opt, phi, i, advance, &mut step)?;
    }
    Ok(acc.finish())
}

/// Runs the rule itself from `start` with learning rate `lr_scale`·η on uniformly drawn
/// examples and returns the average iterate after burn-in with batch-means standard errors.
pub fn simulated_fixed_point(
    model: &dyn Model<f64>,
    spec: &OptimizerSpec,
    start: &[f64],
    lr_scale: f64,
    options: &SimulationOptions,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut opt = Optimizer::<f64>::new(spec.clone())?;
    let mut step = |params: &mut [f64], g: &[f64], loss: f64, t: usize| -> Result<()> {
        let mut p = [row(params.to_vec())?];
        opt.step(
            &mut p,
            &[row(g.to_vec())?],
            &StepInfo {
                loss: Some(loss),
                lr_scale,
                ..StepInfo::default()
            },
        )
        .map_err(|e| Error::Unsupported(format!("simulating {spec} (step {t}): {e}")))?;
        params.copy_from_slice(p[0].data());
        Ok(())
    };
    average_iterate(model, start, options, &mut step)
}

/// One step of a simulation: `(params, gradient, loss, t)`, the parameters in place.
pub(crate) type IterateStep<'a> = dyn FnMut(&mut [f64], &[f64], f64, usize) -> Result<()> + 'a;

/// The average iterate after burn-in, with batch-means standard errors, of
/// `step(params, gradient, loss, t)` driven from `start` on examples drawn uniformly by
/// `chain_rng(seed, 1)`: the simulation of [`simulated_fixed_point`] for any stepper.
pub(crate) fn average_iterate(
    model: &dyn Model<f64>,
    start: &[f64],
    options: &SimulationOptions,
    step: &mut IterateStep<'_>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    options.validate()?;
    let d = start.len();
    let mut rng = chain_rng(options.seed, 1);
    let mut params = start.to_vec();
    let mut g = vec![0.0; d];
    let mut acc = BatchMeans::new(d, options.steps);
    for t in 0..options.burn_in + options.steps {
        let i = rng.random_range(0..model.examples());
        let loss = model.loss_grad(&params, i, &mut g);
        step(&mut params, &g, loss, t)?;
        if t >= options.burn_in {
            acc.push(&params);
        }
    }
    Ok(acc.finish())
}
