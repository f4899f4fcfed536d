//! Problem 7 (= 9): multiplicative and loss-proportional updates.
//!
//! 7a: Φᵢ ← Φᵢ − η max(ε, |Φᵢ|)gᵢ scales by a function of
//! Φ only, so its expected update vanishes at every stationary point of the loss.
//! 7b: Φ ← Φ − ηℒg has ℒ∇ℒ = ∇(ℒ²/2): its fixed points are the stationary points of E\[ℒ²\];
//! with two examples and ℒ₁ ≠ ℒ₂ the drift at the minimiser is
//! −(ℒ₁ − ℒ₂)g₁/2.

use super::sequences::nan_max;
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
    let (lr, eps) = (0.01, 0.001);
    let spec: OptimizerSpec = format!("multiplicative:lr={lr},eps={eps}").parse()?;
    let (drift, scale) = expected_update(model.model(), &spec, &star)?;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let drift_norm = norm(&drift);
    // Newton on the expected update from starts away from Φ*: the origin (every scale at its
    // floor ε), -1 in every coordinate, and Φ* mirrored. All must end at Φ*: a fixed point is
    // a stationary point *and* there are no others (ε > 0 keeps every scale positive). (From
    // +1 everywhere, Newton's backtracking stalls on the kink |Φ₃| = ε with residual 2.5e-4, a
    // failure of the search, not a root: the origin's start crosses that kink and converges.)
    let d = star.len();
    let starts = [
        vec![0.0; d],
        vec![-1.0; d],
        star.iter().map(|x| -x).collect::<Vec<_>>(),
    ];
    let mut distance = 0.0f64;
    for start in &starts {
        let fp = fixed_point(model.model(), &spec, start)?;
        let gap: Vec<f64> = fp.point.iter().zip(&star).map(|(a, b)| a - b).collect();
        distance = nan_max(distance, norm(&gap));
    }
    // At the origin the update must be -η·ε·∇L(0): the floor ε is what keeps Φ = 0 from being a
    // spurious fixed point (a rule with min(ε, |Φ|), or ε = 0, stands still there).
    let origin = vec![0.0; d];
    let (update, _) = expected_update(model.model(), &spec, &origin)?;
    let mut grad = vec![0.0; d];
    Model::<f64>::mean_loss_grad(model.model(), &origin, &mut grad);
    // Relative residual of the update against -ε·∇L(0) (direction and size; 1 if it stands still).
    let residual: Vec<f64> = update.iter().zip(&grad).map(|(u, g)| u + eps * g).collect();
    let floor_residual = norm(&residual) / (eps * norm(&grad));
    let params = [("eps", eps), ("examples", 6.0), ("parameters", 4.0)];
    Ok(vec![
        Claim::identity(
            "7a",
            "multiplicative update: drift at the loss minimiser is 0 (relative to the step size)",
            &params,
            0.0,
            drift_norm / scale,
            1e-12,
        )
        .optimizer(&spec),
        Claim::identity(
            "7a.fp",
            "its only fixed point is the loss minimiser (worst distance, Newton from 3 starts)",
            &[("starts", starts.len() as f64), ("eps", eps)],
            0.0,
            distance,
            1e-10,
        )
        .optimizer(&spec),
        Claim::identity(
            "7a.floor",
            "no spurious fixed point at Φ = 0: E update = -η·ε·∇L(0) (relative residual)",
            &params,
            0.0,
            floor_residual,
            1e-12,
        )
        .reject("1 (Φ = 0 a fixed point: scale min(ε,|Φ|) or ε = 0)", 1.0)
        .optimizer(&spec),
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
        .reject("0 (a fixed point)", 0.0)
        .optimizer(&spec),
        Claim::identity(
            "7b.fp",
            "its fixed point minimises E[L²] (found independently by bisection)",
            &params,
            argmin_sq,
            fp.point[0],
            1e-8,
        )
        .reject("the loss minimiser Φ*", star[0])
        .optimizer(&spec),
    ])
}
