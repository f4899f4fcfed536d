//! Audits of optimizers the library does not implement: a [`Stepper`] is one step of any
//! optimizer (a `torch.optim.Optimizer` from Python, a researcher's own rule), driven as a
//! black box that saves and restores its state.
//!
//! * **Drift.** As [`stationary_drift`](super::stationary_drift) measures the library's rules:
//!   Φ is held at Φ\* while the state advances under the gradients of drawn examples (a step
//!   at learning rate 0), and after burn-in, from each state, the step on every example (at
//!   most 64; else on one drawn example) is probed from the saved state and restored, its
//!   ΔΦ/η averaged.
//! * **Fixed point.** The optimizer itself runs from Φ\* on drawn examples at η and at η/2
//!   (fresh optimizers), with the same example streams, batch means and extrapolation as
//!   the library's rules; the fixed point of one of the library's rules driven as a stepper
//!   is the same number.

use rand::RngExt;

use super::simulate::average_iterate;
use super::{OptimizerAudit, SimulationOptions, from_simulation, half_lr};
use crate::lab::audit::exact::{positive_lr, row};
use crate::lab::montecarlo::chain_rng;
use crate::lab::stats::BatchMeans;
use crate::model::Model;
use crate::optim::{Optimizer, StepInfo};
use crate::{Error, Result};

/// One step of an optimizer on one parameter vector, as the audit drives it.
pub trait Stepper {
    /// The learning rate η of its steps at `lr_scale` = 1 (a step's displacement per unit
    /// learning rate is ΔΦ/η).
    fn lr(&self) -> f64;

    /// One step: `params` in place, from the gradient `grad` of an example whose loss is
    /// `loss`, at the learning rate η·`lr_scale` (0 advances the state alone).
    fn step(&mut self, params: &mut [f64], grad: &[f64], loss: f64, lr_scale: f64) -> Result<()>;

    /// Remembers the current state.
    fn save(&mut self) -> Result<()>;

    /// Returns to the state last saved.
    fn restore(&mut self) -> Result<()>;
}

/// One of the library's optimizers as a [`Stepper`] (what a foreign optimizer is audited
/// against).
#[derive(Clone, Debug)]
pub struct OptimizerStepper {
    optimizer: Optimizer<f64>,
    saved: Option<Optimizer<f64>>,
}

impl OptimizerStepper {
    /// `optimizer` as a stepper.
    pub fn new(optimizer: Optimizer<f64>) -> Self {
        Self {
            optimizer,
            saved: None,
        }
    }
}

impl Stepper for OptimizerStepper {
    fn lr(&self) -> f64 {
        self.optimizer.spec().rule.lr()
    }

    fn step(&mut self, params: &mut [f64], grad: &[f64], loss: f64, lr_scale: f64) -> Result<()> {
        let mut p = [row(params.to_vec())?];
        let info = StepInfo {
            loss: Some(loss),
            lr_scale,
            ..StepInfo::default()
        };
        self.optimizer.step(&mut p, &[row(grad.to_vec())?], &info)?;
        params.copy_from_slice(p[0].data());
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        self.saved = Some(self.optimizer.clone());
        Ok(())
    }

    fn restore(&mut self) -> Result<()> {
        self.optimizer = self
            .saved
            .clone()
            .ok_or_else(|| Error::Unsupported("restore before any save".into()))?;
        Ok(())
    }
}

/// Makes a fresh stepper (a new optimizer, with no state) for each simulation.
pub type MakeStepper<'a> = dyn FnMut() -> Result<Box<dyn Stepper + 'a>> + 'a;

/// The drift of `stepper` at `phi`, as [`stationary_drift`](super::stationary_drift)
/// measures it (the same example streams): Φ held at `phi` while the state advances by
/// steps at learning rate 0, and after `burn_in` such steps, the mean of ΔΦ/η over every
/// example (at most 64, else one drawn) probed from the saved state, with batch-means
/// standard errors.
pub fn stepper_drift(
    model: &dyn Model<f64>,
    stepper: &mut dyn Stepper,
    phi: &[f64],
    options: &SimulationOptions,
) -> Result<(Vec<f64>, Vec<f64>)> {
    options.validate()?;
    let lr = checked_lr(stepper)?;
    let (n, d) = (model.examples(), phi.len());
    let mut rng = chain_rng(options.seed, 0);
    let mut acc = BatchMeans::new(d, options.steps);
    let (mut g, mut params, mut mean) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
    let exact_inner = n <= 64;
    for t in 0..options.burn_in + options.steps {
        if t >= options.burn_in {
            stepper.save()?;
            mean.iter_mut().for_each(|m| *m = 0.0);
            let examples: Vec<usize> = if exact_inner {
                (0..n).collect()
            } else {
                vec![rng.random_range(0..n)]
            };
            for &i in &examples {
                let loss = model.loss_grad(phi, i, &mut g);
                params.copy_from_slice(phi);
                stepper.step(&mut params, &g, loss, 1.0)?;
                stepper.restore()?;
                for ((m, p), x) in mean.iter_mut().zip(&params).zip(phi) {
                    *m += (p - x) / lr / examples.len() as f64;
                }
            }
            if mean.iter().any(|s| !s.is_finite()) {
                return Err(Error::Unsupported(format!(
                    "the optimizer's step {t} at the minimiser is not finite: {mean:?}"
                )));
            }
            acc.push(&mean);
        }
        let i = rng.random_range(0..n);
        let loss = model.loss_grad(phi, i, &mut g);
        params.copy_from_slice(phi);
        stepper.step(&mut params, &g, loss, 0.0)?;
    }
    Ok(acc.finish())
}

fn checked_lr(stepper: &dyn Stepper) -> Result<f64> {
    positive_lr(stepper.lr())
}

/// Audits the optimizer that `make` builds, named `name`, at the minimiser `star`: the drift
/// of [`stepper_drift`] and the simulated fixed point at η and η/2 (each from a fresh
/// optimizer) with its extrapolation, as
/// [`audit_optimizer`](super::audit_optimizer) reports a stateful rule.
pub fn audit_stepper(
    model: &dyn Model<f64>,
    name: &str,
    make: &mut MakeStepper<'_>,
    star: &[f64],
    options: &SimulationOptions,
) -> Result<OptimizerAudit> {
    let fail = |what: &str, e: Error| Error::Unsupported(format!("auditing {name} ({what}): {e}"));
    let (drift, drift_se) =
        stepper_drift(model, make()?.as_mut(), star, options).map_err(|e| fail("drift", e))?;
    let mut at = |lr_scale: f64, options: &SimulationOptions| {
        let mut stepper = make()?;
        checked_lr(stepper.as_ref())?;
        average_iterate(model, star, options, &mut |p, g, loss, _| {
            stepper.step(p, g, loss, lr_scale)
        })
        .map_err(|e| fail("fixed point", e))
    };
    let (fp, se) = at(1.0, options)?;
    let (fp_half, _) = at(0.5, &half_lr(options))?;
    Ok(from_simulation(
        name.to_string(),
        model,
        star,
        (drift, drift_se),
        (fp, se),
        fp_half,
    ))
}
