//! Recorded gradient sequences ("cases"): run an optimizer on them and return the
//! parameters after every step — how sgdlab is checked against reference trajectories
//! (`sgdlab replay`, the conformance tests).
//!
//! A case is JSON: `{"optimizer": SPEC, "init": [...], "grads": [[...], ...], "losses":
//! [...]?, "shape": [...]?, "expected": [[...], ...]?, "expected_eval": [[...], ...]?}`:
//! `expected` is the reference's parameters after every step and `expected_eval` its
//! evaluation point (Schedule-Free's x); any other key is ignored.

use serde::Deserialize;

use crate::{Error, Real, Result};
use crate::{Optimizer, StepInfo, Tensor};

/// A recorded gradient sequence.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Case {
    /// The optimizer spec.
    pub optimizer: String,
    /// The initial parameters.
    pub init: Vec<f64>,
    /// One gradient per step, each as long as `init`.
    pub grads: Vec<Vec<f64>>,
    /// The loss of every step (for rules that use it), if recorded.
    #[serde(default)]
    pub losses: Option<Vec<f64>>,
    /// The parameters' shape (row-major), e.g. `[rows, cols]` for matrix rules; a vector of
    /// `init.len()` elements when absent.
    #[serde(default)]
    pub shape: Option<Vec<usize>>,
    /// The reference's parameters after every step, if recorded.
    #[serde(default)]
    pub expected: Option<Vec<Vec<f64>>>,
    /// The reference's evaluation point after every step (Schedule-Free's x), if recorded.
    #[serde(default)]
    pub expected_eval: Option<Vec<Vec<f64>>>,
}

/// What a replay computes: the parameters after every step and, for rules that evaluate
/// elsewhere (Schedule-Free), the evaluation point after every step.
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectory {
    /// The parameters after every step.
    pub params: Vec<Vec<f64>>,
    /// The evaluation point after every step ([`Optimizer::eval_point`]), for rules that
    /// have one.
    pub eval: Option<Vec<Vec<f64>>>,
}

/// The worst error of `got` relative to each coordinate's magnitude over the `expected`
/// trajectory (a coordinate passing through zero is judged against its own scale); NaN
/// counts as infinitely wrong, and trajectories of different lengths or widths too.
pub fn worst_relative_error(got: &[Vec<f64>], expected: &[Vec<f64>]) -> f64 {
    if got.len() != expected.len() || got.iter().zip(expected).any(|(a, e)| a.len() != e.len()) {
        return f64::INFINITY;
    }
    let dims = expected.first().map_or(0, Vec::len);
    let scale: Vec<f64> = (0..dims)
        .map(|i| {
            expected
                .iter()
                .map(|e| e[i].abs())
                .fold(f64::MIN_POSITIVE, f64::max)
        })
        .collect();
    got.iter()
        .zip(expected)
        .flat_map(|(a, e)| a.iter().zip(e).zip(&scale))
        .map(|((a, e), s)| {
            let err = (a - e).abs() / s;
            if err.is_nan() { f64::INFINITY } else { err }
        })
        .fold(0.0, f64::max)
}

impl Case {
    /// Parses and checks a case: valid JSON with the fields above, every gradient as long as
    /// `init`, one loss per step when losses are given. (Non-finite numbers cannot occur:
    /// JSON has none, and overflowing literals such as `1e999` are refused by the parser.)
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let case: Case = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("not a valid case file ({e})")))?;
        for (t, g) in case.grads.iter().enumerate() {
            if g.len() != case.init.len() {
                return Err(Error::Data(format!(
                    "grads[{t}] has {} values, but init has {}",
                    g.len(),
                    case.init.len()
                )));
            }
        }
        if let Some(shape) = &case.shape {
            let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if numel != Some(case.init.len()) {
                return Err(Error::Data(format!(
                    "shape {shape:?} does not hold the {} values of init",
                    case.init.len()
                )));
            }
        }
        for (what, traj) in [
            ("expected", &case.expected),
            ("expected_eval", &case.expected_eval),
        ] {
            if let Some(traj) = traj
                && (traj.len() != case.grads.len()
                    || traj.iter().any(|row| row.len() != case.init.len()))
            {
                return Err(Error::Data(format!(
                    "{what} must hold {} rows of {} values, one per step",
                    case.grads.len(),
                    case.init.len()
                )));
            }
        }
        if let Some(losses) = &case.losses
            && losses.len() != case.grads.len()
        {
            return Err(Error::Data(format!(
                "{} losses for {} gradient steps",
                losses.len(),
                case.grads.len()
            )));
        }
        Ok(case)
    }

    /// Runs the case in precision `T`: the parameters after every step, as `f64`.
    ///
    /// Errors on a bad spec, a step the optimizer refuses (e.g. a non-finite gradient), or
    /// parameters that stop being finite (the optimizer diverged, or the values overflow `T`):
    /// such a trajectory has no meaningful continuation and is not returned.
    pub fn replay<T: Real>(&self) -> Result<Vec<Vec<f64>>> {
        self.run::<T>().map(|t| t.params)
    }

    /// [`Case::replay`] with the evaluation point of every step too (Schedule-Free's x).
    pub fn run<T: Real>(&self) -> Result<Trajectory> {
        let mut opt = Optimizer::<T>::from_spec(&self.optimizer)?;
        let convert = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let init = convert(&self.init);
        crate::error::check_finite(&format!("init (as {})", T::NAME), &init)?;
        let shape = self.shape.clone().unwrap_or_else(|| vec![init.len()]);
        let mut params = vec![Tensor::new("params", shape.clone(), init)?];
        let mut out = Vec::with_capacity(self.grads.len());
        let mut eval = Vec::new();
        for (t, g) in self.grads.iter().enumerate() {
            let info = StepInfo {
                loss: self.losses.as_ref().map(|l| l[t]),
                ..StepInfo::default()
            };
            let step_err = |e: Error| Error::Data(format!("step {}: {e}", t + 1));
            let grad = Tensor::new("params", shape.clone(), convert(g))?;
            opt.step(&mut params, &[grad], &info).map_err(step_err)?;
            crate::error::check_finite(
                &format!("the parameters (as {}) after step {}", T::NAME, t + 1),
                params[0].data(),
            )?;
            out.push(params[0].data().iter().map(|x| x.as_f64()).collect());
            if let Some(x) = opt.eval_point(0) {
                eval.push(x.iter().map(|x| x.as_f64()).collect());
            }
        }
        let eval = (!eval.is_empty()).then_some(eval);
        Ok(Trajectory { params: out, eval })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_refuses_divergence() {
        let case =
            Case::from_json(br#"{"optimizer": "sgd:lr=0.5", "init": [1], "grads": [[1], [2]]}"#)
                .unwrap();
        assert_eq!(case.replay::<f64>().unwrap(), vec![vec![0.5], vec![-0.5]]);
        let big =
            Case::from_json(br#"{"optimizer": "sgd:lr=1e30", "init": [1], "grads": [[1e30]]}"#)
                .unwrap();
        assert!(big.replay::<f64>().is_ok());
        let err = big.replay::<f32>().unwrap_err().to_string();
        assert!(
            err.contains("after step 1") && err.contains("non-finite"),
            "{err}"
        );
        let err = Case::from_json(br#"{"optimizer": "sgd", "init": [1e300], "grads": [[1]]}"#)
            .unwrap()
            .replay::<f32>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("init (as f32)"), "{err}");
        let shaped = Case::from_json(br#"{"optimizer": "sgd", "init": [1, 2, 3, 4, 5, 6], "grads": [[1, 1, 1, 1, 1, 1]], "shape": [2, 3]}"#).unwrap();
        assert_eq!(shaped.replay::<f64>().unwrap()[0].len(), 6);
        let bad = Case::from_json(
            br#"{"optimizer": "sgd", "init": [1, 2, 3], "grads": [], "shape": [2, 2]}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("shape [2, 2]"));
    }
}
