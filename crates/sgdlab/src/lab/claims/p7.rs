//! Problem 7 (= 9): multiplicative and loss-proportional updates.
//!
//! 7a: $\Phi_i \leftarrow \Phi_i - \eta\max(\epsilon,|\Phi_i|)g_i$ scales by a function of
//! $\Phi$ only, so its expected update vanishes at every stationary point of the loss.
//! 7b: $\Phi \leftarrow \Phi - \eta\mathcal L g$ has $\mathcal L\nabla\mathcal L =
//! \nabla(\mathcal L^2/2)$: its fixed points are the stationary points of $E[\mathcal L^2]$;
//! with two examples and $\mathcal L_1 \ne \mathcal L_2$ the drift at the minimiser is
//! $-(\mathcal L_1 - \mathcal L_2) g_1/2$.

use super::{Claim, VerifyOptions};
use crate::Result;
use crate::data::parse_csv;
use crate::lab::audit::{AuditModel, expected_update, fixed_point};
use crate::model::{LinReg, Model};
use crate::optim::OptimizerSpec;

pub(crate) fn claims(_options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = multiplicative()?;
    claims.extend(loss_proportional()?);
    Ok(claims)
}

/// A small linear-regression set with a non-zero residual at the minimiser.
fn regression() -> Result<AuditModel> {
    let text = "0.5,1.0,-0.3,1.2\n1.5,-0.2,0.8,0.1\n-1.0,0.4,0.9,-0.7\n\
                0.3,-1.1,0.2,0.9\n2.0,0.7,-0.5,1.8\n-0.4,0.1,1.3,-0.2\n";
    Ok(AuditModel::LinReg(LinReg::new(
        parse_csv(text, true)?,
        true,
    )?))
}

fn multiplicative() -> Result<Vec<Claim>> {
    let model = regression()?;
    let star = model.minimizer()?;
    let spec: OptimizerSpec = "multiplicative:lr=0.01,eps=0.001".parse()?;
    let (drift, scale) = expected_update(model.model(), &spec, &star)?;
    let drift_norm = drift.iter().map(|x| x * x).sum::<f64>().sqrt();
    let fp = fixed_point(model.model(), &spec, &star)?;
    let distance = fp
        .point
        .iter()
        .zip(&star)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let params = [("eps", 0.001), ("examples", 6.0), ("parameters", 4.0)];
    Ok(vec![
        Claim::identity(
            "7a",
            "multiplicative update: drift at the loss minimiser is 0 (relative to the step size)",
            &params,
            0.0,
            drift_norm / scale,
            1e-12,
        ),
        Claim::identity(
            "7a.fp",
            "its fixed point is the loss minimiser (distance)",
            &params,
            0.0,
            distance,
            1e-10,
        ),
    ])
}

fn loss_proportional() -> Result<Vec<Claim>> {
    // Two examples, linear regression without bias: (x=1, y=1), (x=2, y=0). Φ* = 0.2.
    let model = LinReg::new(parse_csv("1,1\n2,0\n", true)?, false)?;
    let star = model.least_squares()?;
    let spec: OptimizerSpec = "lossprop:lr=0.01".parse()?;
    let (drift, _) = expected_update(&model, &spec, &star)?;
    let per_example = |i: usize| {
        let mut g = [0.0];
        let l = Model::<f64>::loss_grad(&model, &star, i, &mut g);
        (l, g[0])
    };
    let ((l1, g1), (l2, _)) = (per_example(0), per_example(1));
    let predicted = -(l1 - l2) * g1 / 2.0;

    // The minimiser of E[L²], found from function values only: bisection on a central
    // difference of E[L²] (no gradients, no optimizer).
    let mean_sq = |w: f64| {
        (0..2)
            .map(|i| Model::<f64>::loss(&model, &[w], i).powi(2))
            .sum::<f64>()
            / 2.0
    };
    let slope = |w: f64| (mean_sq(w + 1e-6) - mean_sq(w - 1e-6)) / 2e-6;
    let (mut lo, mut hi) = (-1.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if slope(mid) > 0.0 { hi = mid } else { lo = mid }
    }
    let argmin_sq = 0.5 * (lo + hi);
    let fp = fixed_point(&model, &spec, &star)?;
    let params = [("L1", l1), ("L2", l2), ("g1", g1), ("w_star", star[0])];
    Ok(vec![
        Claim::identity(
            "7b",
            "loss-proportional update: drift at Φ* = -(L1-L2)·g1/2 ≠ 0 (two examples)",
            &params,
            predicted,
            drift[0],
            1e-12,
        )
        .reject("0 (a fixed point)", 0.0),
        Claim::identity(
            "7b.fp",
            "its fixed point minimises E[L²] (found independently by bisection)",
            &params,
            argmin_sq,
            fp.point[0],
            1e-8,
        )
        .reject("the loss minimiser Φ*", star[0]),
    ])
}
