//! Exact per-example models for the lab: loss ℒ(Φ, xᵢ, yᵢ) and its gradient.
//!
//! | model | per-example loss | parameters Φ |
//! |---|---|---|
//! | [`Points`] | ½‖Φ − xᵢ‖² | d |
//! | [`LinReg`] | ½(w·xᵢ + b − yᵢ)² | w, then b (optional) |
//! | [`LogReg`] | log(1 + eᶻ) − yᵢz, z = w·xᵢ + b, yᵢ ∈ {0, 1} | w, then b |
//! | [`Classifier`] | log Σₖe^zₖ − z\_yᵢ after ReLU hidden layers (none: softmax regression) | per layer W (out×in), b |
//!
//! Cross-entropy losses can be measured in nats or bits ([`LossUnit`]): bits divide loss and
//! gradient by ln 2 (problem 5a). Everything is generic over [`Real`] (`f32`, `f64`).

mod linear;
mod network;

pub use linear::{LinReg, LogReg, Points};
pub use network::{Classifier, Network, Workspace};

use crate::{Error, Real, Result};

/// The unit a loss is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossUnit {
    /// Natural logarithms.
    #[default]
    Nats,
    /// Base-2 logarithms: log₂z = ln z/ln 2.
    Bits,
}

impl LossUnit {
    /// The factor applied to a loss in nats: 1 or 1/ln 2.
    pub fn scale(self) -> f64 {
        match self {
            LossUnit::Nats => 1.0,
            LossUnit::Bits => std::f64::consts::LOG2_E,
        }
    }
}

impl std::fmt::Display for LossUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossUnit::Nats => "nats",
            LossUnit::Bits => "bits",
        })
    }
}

impl std::str::FromStr for LossUnit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nats" => Ok(LossUnit::Nats),
            "bits" => Ok(LossUnit::Bits),
            _ => Err(Error::invalid("loss unit", s, "must be nats or bits")),
        }
    }
}

/// A model with a finite set of examples and an exact per-example gradient.
pub trait Model<T: Real>: Sync {
    /// Number of parameters.
    fn dim(&self) -> usize;

    /// Number of examples.
    fn examples(&self) -> usize;

    /// The loss of example `i` at `phi`; writes its gradient into `grad` (length
    /// [`Model::dim`]).
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T;

    /// The loss of example `i` at `phi`.
    fn loss(&self, phi: &[T], i: usize) -> T {
        let mut grad = vec![T::zero(); self.dim()];
        self.loss_grad(phi, i, &mut grad)
    }

    /// The mean loss over all examples; writes the mean gradient into `grad`.
    fn mean_loss_grad(&self, phi: &[T], grad: &mut [T]) -> T {
        let n = self.examples();
        let mut g = vec![T::zero(); self.dim()];
        grad.iter_mut().for_each(|x| *x = T::zero());
        let mut loss = T::zero();
        for i in 0..n {
            loss = loss + self.loss_grad(phi, i, &mut g);
            for (a, b) in grad.iter_mut().zip(&g) {
                *a = *a + *b;
            }
        }
        let inv = T::from_f64(1.0 / n as f64);
        grad.iter_mut().for_each(|x| *x = *x * inv);
        loss * inv
    }

    /// Names of the parameters, for tables (`w0`, `w1`, ..., `b`).
    fn parameter_names(&self) -> Vec<String>;
}

/// Integer class labels in `[0, classes)` from float targets, or an error naming the first
/// bad one.
pub fn class_labels(targets: Option<&[f64]>, classes: usize) -> Result<Vec<usize>> {
    let targets =
        targets.ok_or_else(|| Error::Data("the model needs a target column".to_string()))?;
    targets
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y == y.round() && y >= 0.0 && (y as usize) < classes {
                Ok(y as usize)
            } else {
                Err(Error::Data(format!(
                    "example {i}: label {y} is not a class in 0..{classes}"
                )))
            }
        })
        .collect()
}

/// log(1 + eᶻ) without overflow.
pub(crate) fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// Softmax probabilities of `z` in place; returns log Σₖe^zₖ.
pub(crate) fn softmax_in_place<T: Real>(z: &mut [T]) -> T {
    let max = z.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let mut sum = T::zero();
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum = sum + *v;
    }
    for v in z.iter_mut() {
        *v = *v / sum;
    }
    max + sum.ln()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Central finite differences of the loss against the exact gradient, in f64.
    pub fn check_gradient(model: &dyn Model<f64>, phi: &[f64], tol: f64) {
        let mut grad = vec![0.0; model.dim()];
        for i in 0..model.examples() {
            model.loss_grad(phi, i, &mut grad);
            for j in 0..model.dim() {
                let h = 1e-6 * phi[j].abs().max(1.0);
                let mut plus = phi.to_vec();
                plus[j] += h;
                let mut minus = phi.to_vec();
                minus[j] -= h;
                let fd = (model.loss(&plus, i) - model.loss(&minus, i)) / (2.0 * h);
                assert!(
                    (fd - grad[j]).abs() <= tol * (1.0 + grad[j].abs()),
                    "example {i}, parameter {j}: exact {} vs finite difference {fd}",
                    grad[j]
                );
            }
        }
    }

    #[test]
    fn loss_units_parse_by_name_and_refuse_others() {
        assert_eq!("nats".parse::<LossUnit>().ok(), Some(LossUnit::Nats));
        assert_eq!("bits".parse::<LossUnit>().ok(), Some(LossUnit::Bits));
        for bad in ["", "Bits", "nat", "decibels"] {
            let err = bad.parse::<LossUnit>().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("nats or bits")),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn class_labels_are_integers_in_zero_to_classes() {
        assert_eq!(
            class_labels(Some(&[0.0, 2.0, 1.0]), 3).ok(),
            Some(vec![0, 2, 1])
        );
        // The first bad label is named: one past the last class, negative, fractional, NaN.
        for (targets, bad) in [
            (vec![0.0, 1.0, 3.0], "example 2: label 3 "),
            (vec![-1.0], "example 0: label -1 "),
            (vec![1.0, 0.5], "example 1: label 0.5 "),
            (vec![f64::NAN], "example 0: label NaN "),
        ] {
            let err = class_labels(Some(&targets), 3).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(bad)),
                "{targets:?}: {err:?}"
            );
        }
        assert!(class_labels(None, 3).is_err());
    }

    #[test]
    fn softplus_is_stable() {
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0 && softplus(-1000.0) < 1e-300);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-15);
    }
}
