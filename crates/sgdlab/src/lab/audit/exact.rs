//! The exact side of the audit: the loss minimiser (damped Newton), the expected update of a
//! stateless rule as a finite sum over the examples, and its fixed point.

use serde::Serialize;

use crate::linalg::solve;
use crate::model::Model;
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Result};

/// Minimises the mean loss by damped (Levenberg–Marquardt) Newton with a finite-difference
/// Hessian of the exact gradient, to ‖∇‖₂ ≤ 10⁻¹².
///
/// Errors if the iterates run off to infinity (e.g. separable data for logistic regression,
/// which has no finite minimiser) or the gradient does not reach the tolerance.
pub fn minimize(model: &dyn Model<f64>, start: &[f64]) -> Result<Vec<f64>> {
    let d = model.dim();
    let mut phi = start.to_vec();
    let mut grad = vec![0.0; d];
    let mut loss = model.mean_loss_grad(&phi, &mut grad);
    let mut mu = 1e-6;
    for _ in 0..500 {
        let mut h = jacobian(&phi, |p, out| {
            model.mean_loss_grad(p, out);
        });
        symmetrize(&mut h, d);
        if norm(&grad) <= 1e-12 {
            // A true minimiser also has curvature: the Newton step from here must be tiny.
            // (On separable logistic data the gradient vanishes only as the weights run off
            // to infinity, and the Hessian vanishes with it.)
            let mut a = h.clone();
            let mut step = grad.clone();
            if solve(&mut a, &mut step, d).is_some() && norm(&step) <= 1e-6 * (1.0 + norm(&phi)) {
                return Ok(phi);
            }
        }
        loop {
            let mut a = h.clone();
            for j in 0..d {
                a[j * d + j] += mu;
            }
            let mut step: Vec<f64> = grad.iter().map(|g| -g).collect();
            let trial = solve(&mut a, &mut step, d).map(|()| {
                phi.iter()
                    .zip(&step)
                    .map(|(p, s)| p + s)
                    .collect::<Vec<_>>()
            });
            if let Some(trial) = trial {
                let mut g = vec![0.0; d];
                let l = model.mean_loss_grad(&trial, &mut g);
                if l.is_finite() && (l < loss || (l <= loss && norm(&g) < norm(&grad))) {
                    phi = trial;
                    grad = g;
                    loss = l;
                    mu = (mu / 10.0).max(1e-15);
                    break;
                }
            }
            mu *= 10.0;
            if mu > 1e12 {
                return Err(Error::Unsupported(format!(
                    "minimisation stalled at gradient norm {:.3e}: the loss may have no \
                     finite minimiser (separable data?)",
                    norm(&grad)
                )));
            }
        }
        if norm(&phi) > 1e8 {
            return Err(Error::Unsupported(
                "the loss has no finite minimiser (separable data?)".to_string(),
            ));
        }
    }
    if norm(&grad) <= 1e-12 {
        return Err(Error::Unsupported(format!(
            "the loss has no finite minimiser: its gradient vanishes only as the parameters \
             grow (|Φ| = {:.3e} after 500 Newton steps; separable data?)",
            norm(&phi)
        )));
    }
    Err(Error::Unsupported(format!(
        "minimisation did not reach gradient norm 1e-12 (at {:.3e})",
        norm(&grad)
    )))
}

pub(crate) fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

pub(crate) fn symmetrize(a: &mut [f64], d: usize) {
    for i in 0..d {
        for j in 0..i {
            let m = 0.5 * (a[i * d + j] + a[j * d + i]);
            a[i * d + j] = m;
            a[j * d + i] = m;
        }
    }
}

/// Central-difference Jacobian of `f` at `x` (row `i` = output `i`), `d × d` row-major.
pub(crate) fn jacobian(x: &[f64], mut f: impl FnMut(&[f64], &mut [f64])) -> Vec<f64> {
    let d = x.len();
    let mut jac = vec![0.0; d * d];
    let (mut plus, mut minus) = (vec![0.0; d], vec![0.0; d]);
    let mut probe = x.to_vec();
    for j in 0..d {
        let h = 1e-6 * x[j].abs().max(1.0);
        probe[j] = x[j] + h;
        f(&probe, &mut plus);
        probe[j] = x[j] - h;
        f(&probe, &mut minus);
        probe[j] = x[j];
        for i in 0..d {
            jac[i * d + j] = (plus[i] - minus[i]) / (2.0 * h);
        }
    }
    jac
}

/// The parameters as the tensor `phi`, a 1×d row matrix: elementwise rules do not
/// see the shape, and matrix rules (Muon) then orthogonalise a row, i.e. normalise it.
pub(crate) fn row(data: Vec<f64>) -> Result<Tensor<f64>> {
    Tensor::new("phi", vec![1, data.len()], data)
}

/// Per-unit-learning-rate update of one optimizer step from `phi` on example `i`.
///
/// The step runs with learning rate 1 (via `lr_scale`) so that no precision is lost dividing a
/// tiny step by a tiny rate.
pub(crate) fn unit_step(
    model: &dyn Model<f64>,
    opt: &mut Optimizer<f64>,
    phi: &[f64],
    i: usize,
    lr_scale: f64,
    out: &mut [f64],
) -> Result<()> {
    let mut g = vec![0.0; phi.len()];
    let loss = model.loss_grad(phi, i, &mut g);
    let mut params = [row(phi.to_vec())?];
    let grads = [row(g)?];
    let info = StepInfo {
        loss: Some(loss),
        lr_scale,
        ..StepInfo::default()
    };
    opt.step(&mut params, &grads, &info)?;
    // The step's learning rate; 0 when the call only advances the state.
    let effective = unit_lr(opt.spec())? * lr_scale;
    for ((o, new), old) in out.iter_mut().zip(params[0].data()).zip(phi) {
        *o = if effective > 0.0 {
            (new - old) / effective
        } else {
            0.0
        };
    }
    Ok(())
}

pub(crate) fn unit_lr(spec: &OptimizerSpec) -> Result<f64> {
    positive_lr(spec.rule.lr())
}

/// `lr` when it is a positive number (the audit divides steps by it), else an error saying so.
pub(crate) fn positive_lr(lr: f64) -> Result<f64> {
    if lr > 0.0 && lr.is_finite() {
        Ok(lr)
    } else {
        Err(Error::invalid(
            "lr",
            lr,
            "the audit measures the step per unit learning rate, so lr must be > 0",
        ))
    }
}

/// The learning-rate scale of a step that measures the drift E\[ΔΦ\]/η: 1/η for a rule
/// linear in η (the step at η = 1 is exact at any η, where one at a tiny η would round or
/// underflow), 1 for any other (its step at its own η is the step a user takes).
pub(crate) fn probe_scale(spec: &OptimizerSpec) -> Result<f64> {
    let lr = unit_lr(spec)?;
    Ok(if spec.rule.linear_in_lr() {
        1.0 / lr
    } else {
        1.0
    })
}

/// The exact expected update per unit learning rate of a stateless rule at `phi`:
/// F(Φ) = (1/n)ΣᵢΔΦᵢ/η. Also returns the mean per-example step length
/// (1/n)Σᵢ‖ΔΦᵢ‖/η (the scale for tolerances).
pub fn expected_update(
    model: &dyn Model<f64>,
    spec: &OptimizerSpec,
    phi: &[f64],
) -> Result<(Vec<f64>, f64)> {
    let template = Optimizer::<f64>::new(spec.clone())?;
    if !template.is_stateless() {
        return Err(Error::Unsupported(format!(
            "{spec} keeps state between steps: its expected update is not a function of Φ alone"
        )));
    }
    let probe = probe_scale(spec)?;
    let n = model.examples();
    let mut mean = vec![0.0; phi.len()];
    let mut step = vec![0.0; phi.len()];
    let mut scale = 0.0;
    for i in 0..n {
        let mut opt = template.clone();
        unit_step(model, &mut opt, phi, i, probe, &mut step)?;
        scale += norm(&step);
        for (m, s) in mean.iter_mut().zip(&step) {
            *m += s;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    Ok((mean, scale / n as f64))
}

/// A root of the expected update found by Newton's method.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FixedPoint {
    /// The root.
    pub point: Vec<f64>,
    /// ‖F(point)‖\_∞.
    pub residual: f64,
    /// Whether the residual reached the tolerance.
    pub converged: bool,
}

/// Newton's method with backtracking on F = [`expected_update`], from `start`, to
/// ‖F‖\_∞ ≤ 10⁻¹²·max(1, s) with s the mean step length at `start`.
pub fn fixed_point(
    model: &dyn Model<f64>,
    spec: &OptimizerSpec,
    start: &[f64],
) -> Result<FixedPoint> {
    let d = start.len();
    let (mut f, scale) = expected_update(model, spec, start)?;
    let tol = 1e-12 * scale.max(1.0);
    let mut phi = start.to_vec();
    let inf = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for _ in 0..100 {
        if inf(&f) <= tol {
            break;
        }
        let mut jac = Vec::new();
        let mut failure = None;
        let j = jacobian(&phi, |p, out| match expected_update(model, spec, p) {
            Ok((v, _)) => out.copy_from_slice(&v),
            Err(e) => failure = Some(e),
        });
        if let Some(e) = failure {
            return Err(e);
        }
        jac.extend(j);
        let mut step: Vec<f64> = f.iter().map(|v| -v).collect();
        if solve(&mut jac, &mut step, d).is_none() {
            break;
        }
        let mut t = 1.0;
        let mut improved = false;
        while t > 1e-8 {
            let trial: Vec<f64> = phi.iter().zip(&step).map(|(p, s)| p + t * s).collect();
            let (ft, _) = expected_update(model, spec, &trial)?;
            if inf(&ft) < inf(&f) {
                phi = trial;
                f = ft;
                improved = true;
                break;
            }
            t *= 0.5;
        }
        if !improved {
            break;
        }
    }
    let residual = inf(&f);
    Ok(FixedPoint {
        point: phi,
        residual,
        converged: residual <= tol,
    })
}
