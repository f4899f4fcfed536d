//! The audit: is an update rule's fixed point a stationary point of the loss?
//!
//! For a finite data set with examples drawn uniformly (batch size 1), the expected update
//! of a *stateless* rule is a deterministic function of Φ:
//! F(Φ) = (1/n)ΣᵢΔΦᵢ/η, computed exactly by stepping the
//! optimizer once from Φ on each example. The audit reports
//!
//! * the loss minimiser Φ\* (closed form for points and linear regression, damped Newton
//!   to a gradient norm of 10⁻¹² otherwise);
//! * the **drift** F(Φ\*), the expected step per unit learning rate at Φ\*;
//! * the **fixed point** of the expected update (Newton on F from Φ\*, to a residual of
//!   10⁻¹² relative to the typical step) and its distance from Φ\*.
//!
//! A *stateful* rule (momentum, Adam, RMSProp, Madam, ...) has no such function of Φ
//! alone; its drift is measured with Φ frozen at Φ\* while the state runs to
//! stationarity (the expected update over the current example computed exactly for small data
//! sets), and its fixed point by simulation: the iterate average after burn-in at the
//! configured learning rate and at half of it, with batch-means standard errors and the
//! Richardson extrapolation 2Φ̄\_(η/2) − Φ̄\_η that removes the O(η) part.
//!
//! Optimizers are driven only through their public API ([`Optimizer::step`]), so the audit
//! measures what users get.
//!
//! The rooms: `exact.rs` (the minimiser by damped Newton, the exact expected update of a
//! stateless rule and its fixed point), `simulate.rs` (a stateful rule's stationary drift
//! and simulated fixed point), the batch-means statistics in [`crate::lab::stats`], and this
//! module (the models and the report).

use crate::lab::audit::exact::norm;

mod exact;
mod foreign;
mod simulate;
#[cfg(test)]
mod tests;

pub use crate::lab::stats::integrated_autocorrelation_time;
pub use exact::{FixedPoint, expected_update, fixed_point, minimize};
pub use foreign::{MakeStepper, OptimizerStepper, Stepper, audit_stepper, stepper_drift};
pub use simulate::{
    MAX_SIMULATION_STEPS, MIN_SIMULATION_STEPS, SimulationOptions, simulated_fixed_point,
    stationary_drift,
};

use serde::Serialize;

use crate::model::{Classifier, LinReg, LogReg, Model, Points};
use crate::optim::{Optimizer, OptimizerSpec};
use crate::{Error, Result};

/// A model the audit knows how to minimise.
#[derive(Clone, Debug)]
pub enum AuditModel {
    /// ½‖Φ − xᵢ‖²: minimiser = mean.
    Points(Points),
    /// Least squares: minimiser from the normal equations.
    LinReg(LinReg),
    /// Logistic regression: damped Newton.
    LogReg(LogReg),
    /// Softmax regression: damped Newton.
    Softmax(Classifier),
}

impl AuditModel {
    /// The names [`AuditModel::build`] accepts, in the order the CLI lists them.
    pub const KINDS: [&'static str; 4] = ["points", "linreg", "logreg", "softmax"];

    /// The model `kind` ([`AuditModel::KINDS`]) on `data`: `points` uses every column as a
    /// coordinate; the others read the last column as the target (`y`, a 0/1 label, or a
    /// class `0..K-1`). `bias` adds the intercept b (linreg, logreg); `unit` is the loss
    /// unit of the cross-entropy models.
    pub fn build(
        kind: &str,
        data: crate::data::Dataset,
        bias: bool,
        unit: crate::model::LossUnit,
    ) -> Result<Self> {
        let needs_target = kind != "points";
        if needs_target && data.targets().is_none() {
            return Err(Error::Data(format!(
                "the {kind} model needs a target column (the last)"
            )));
        }
        Ok(match kind {
            "points" => AuditModel::Points(Points::new(data)),
            "linreg" => AuditModel::LinReg(LinReg::new(data, bias)?),
            "logreg" => AuditModel::LogReg(LogReg::new(data, bias, unit)?),
            "softmax" => {
                let labels = data.targets().unwrap_or_default();
                let classes = crate::resources::class_count(labels)?;
                AuditModel::Softmax(Classifier::softmax(data, classes, unit)?)
            }
            other => {
                return Err(Error::invalid(
                    "audit model",
                    other,
                    format!("must be one of {}", Self::KINDS.join(", ")),
                ));
            }
        })
    }

    /// The model as a trait object.
    pub fn model(&self) -> &dyn Model<f64> {
        match self {
            AuditModel::Points(m) => m,
            AuditModel::LinReg(m) => m,
            AuditModel::LogReg(m) => m,
            AuditModel::Softmax(m) => m,
        }
    }

    /// The minimiser of the mean loss.
    pub fn minimizer(&self) -> Result<Vec<f64>> {
        match self {
            AuditModel::Points(m) => Ok(m.mean()),
            AuditModel::LinReg(m) => m.least_squares(),
            _ => minimize(self.model(), &vec![0.0; self.model().dim()]),
        }
    }
}

/// The audit of one optimizer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OptimizerAudit {
    /// The optimizer spec.
    pub optimizer: String,
    /// `"exact"` (stateless rule: finite sums and root-finding) or `"simulation"`.
    pub method: &'static str,
    /// Expected step per unit learning rate at the loss minimiser.
    pub drift: Vec<f64>,
    /// Its Euclidean norm.
    pub drift_norm: f64,
    /// Standard errors of `drift` (simulation only).
    pub drift_stderr: Option<Vec<f64>>,
    /// The fixed point: the root of the expected update (exact), or the average iterate at the
    /// configured learning rate (simulation).
    pub fixed_point: Vec<f64>,
    /// ‖`fixed_point`−Φ\*‖.
    pub fixed_point_distance: f64,
    /// Standard errors of `fixed_point` (simulation only).
    pub stderr: Option<Vec<f64>>,
    /// Average iterate at half the learning rate (simulation only).
    pub fixed_point_half_lr: Option<Vec<f64>>,
    /// 2Φ̄\_(η/2) − Φ̄\_η, the η → 0 extrapolation (simulation only).
    pub extrapolated: Option<Vec<f64>>,
    /// Root-finding residual ‖F‖\_∞ (exact only).
    pub residual: Option<f64>,
    /// Whether the drift vanishes at the loss minimiser: below 10⁻⁹ of the typical step
    /// (exact), or within 4 standard errors in every coordinate (simulation).
    pub consistent: bool,
}

/// The audit of several optimizers on one model and data set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Audit {
    /// Names of the parameters.
    pub parameters: Vec<String>,
    /// The loss minimiser Φ\*.
    pub minimizer: Vec<f64>,
    /// One entry per optimizer, in the order given.
    pub optimizers: Vec<OptimizerAudit>,
}

pub(crate) fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// The rounding floor of a simulated drift at `phi`: 10⁻¹² maxᵢ‚ⱼ|(∇ℒᵢ)ⱼ|, the largest per-example gradient component over at most 1,000
/// examples (at least the smallest positive double when every gradient is 0).
pub(crate) fn rounding_floor(model: &dyn Model<f64>, phi: &[f64]) -> f64 {
    let mut g = vec![0.0; phi.len()];
    let largest = (0..model.examples().min(1000))
        .map(|i| {
            model.loss_grad(phi, i, &mut g);
            g.iter().fold(0.0f64, |m, v| m.max(v.abs()))
        })
        .fold(f64::MIN_POSITIVE, f64::max);
    1e-12 * largest
}

/// Audits one optimizer at the minimiser `star`.
pub fn audit_optimizer(
    model: &dyn Model<f64>,
    spec: &OptimizerSpec,
    star: &[f64],
    options: &SimulationOptions,
) -> Result<OptimizerAudit> {
    let stateless = Optimizer::<f64>::new(spec.clone())?.is_stateless();
    if stateless {
        let (drift, scale) = expected_update(model, spec, star)?;
        let fp = fixed_point(model, spec, star)?;
        let drift_norm = norm(&drift);
        return Ok(OptimizerAudit {
            optimizer: spec.to_string(),
            method: "exact",
            consistent: drift_norm <= 1e-9 * scale.max(f64::MIN_POSITIVE),
            drift,
            drift_norm,
            drift_stderr: None,
            fixed_point_distance: distance(&fp.point, star),
            fixed_point: fp.point,
            stderr: None,
            fixed_point_half_lr: None,
            extrapolated: None,
            residual: Some(fp.residual),
        });
    }
    let (drift, drift_se) = stationary_drift(model, spec, star, options)?;
    let (fp, se) = simulated_fixed_point(model, spec, star, 1.0, options)?;
    let (fp_half, _) = simulated_fixed_point(model, spec, star, 0.5, &half_lr(options))?;
    Ok(from_simulation(
        spec.to_string(),
        model,
        star,
        (drift, drift_se),
        (fp, se),
        fp_half,
    ))
}

/// The simulation at half the learning rate: twice the steps and burn-in, the next seed.
pub(crate) fn half_lr(options: &SimulationOptions) -> SimulationOptions {
    SimulationOptions {
        steps: options.steps * 2,
        burn_in: options.burn_in * 2,
        seed: options.seed.wrapping_add(1),
    }
}

/// The report of a simulated audit: the drift and its standard errors, the average iterate
/// at η (with standard errors) and at η/2, and their extrapolation 2Φ̄\_(η/2) − Φ̄\_η.
pub(crate) fn from_simulation(
    optimizer: String,
    model: &dyn Model<f64>,
    star: &[f64],
    (drift, drift_se): (Vec<f64>, Vec<f64>),
    (fp, se): (Vec<f64>, Vec<f64>),
    fp_half: Vec<f64>,
) -> OptimizerAudit {
    let extrapolated: Vec<f64> = fp_half.iter().zip(&fp).map(|(h, f)| 2.0 * h - f).collect();
    // Within 4 standard errors, or within rounding of the per-example gradients' size (a
    // rule whose simulated drift is exactly zero up to rounding has a standard error of 0).
    let floor = rounding_floor(model, star);
    let consistent = drift
        .iter()
        .zip(&drift_se)
        .all(|(m, s)| m.abs() <= 4.0 * s + floor);
    OptimizerAudit {
        optimizer,
        method: "simulation",
        drift_norm: norm(&drift),
        drift,
        drift_stderr: Some(drift_se),
        fixed_point_distance: distance(star, &fp),
        fixed_point: fp,
        stderr: Some(se),
        fixed_point_half_lr: Some(fp_half),
        extrapolated: Some(extrapolated),
        residual: None,
        consistent,
    }
}

/// The most parameters an audit accepts. The audit is exact: its Newton steps hold a
/// d×d Jacobian (8 MB at this limit) and evaluate d gradients over the whole data
/// set per iteration, so its cost grows as d³ and nd².
pub const MAX_AUDIT_PARAMS: usize = 1024;

/// What an audit audits: one of the library's optimizers by its spec, or any optimizer as
/// a [`Stepper`] that `make` builds afresh for each simulation.
pub enum Subject<'a> {
    /// A spec of the library's optimizers.
    Spec(OptimizerSpec),
    /// A foreign optimizer, named `name` in the report.
    Stepper {
        /// The name the report gives it.
        name: String,
        /// Builds a fresh optimizer.
        make: Box<MakeStepper<'a>>,
    },
}

/// Audits every optimizer of `specs` on `model`.
///
/// Errors when the model has more than [`MAX_AUDIT_PARAMS`] parameters (before anything of
/// that size is allocated), when the loss has no finite minimiser, or when an optimizer fails.
pub fn audit(
    model: &AuditModel,
    specs: &[OptimizerSpec],
    options: &SimulationOptions,
) -> Result<Audit> {
    let subjects = specs.iter().cloned().map(Subject::Spec).collect();
    audit_subjects(model, subjects, options)
}

/// [`audit`] of library optimizers and foreign ones ([`Subject`]), in the order given.
pub fn audit_subjects(
    model: &AuditModel,
    subjects: Vec<Subject<'_>>,
    options: &SimulationOptions,
) -> Result<Audit> {
    options.validate()?;
    let d = model.model().dim();
    if d > MAX_AUDIT_PARAMS {
        return Err(Error::Unsupported(format!(
            "the model has {d} parameters; the audit is exact (Newton steps with a d×d \
             Jacobian, {} for this model) and accepts at most {MAX_AUDIT_PARAMS}",
            crate::resources::human_bytes((d as u64).saturating_mul(d as u64).saturating_mul(8))
        )));
    }
    let star = model.minimizer()?;
    let optimizers = subjects
        .into_iter()
        .map(|subject| match subject {
            Subject::Spec(spec) => audit_optimizer(model.model(), &spec, &star, options),
            Subject::Stepper { name, mut make } => {
                audit_stepper(model.model(), &name, make.as_mut(), &star, options)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Audit {
        parameters: model.model().parameter_names(),
        minimizer: star,
        optimizers,
    })
}
