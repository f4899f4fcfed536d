//! Problem 6: per-example normalised SGD, A = 1/√(‖∇ℒ‖²/d + ε).
//!
//! 6a: the update is stationary where E\[∇ℒ/√(‖∇ℒ‖²/d + ε)\] = 0.
//! 6b: that is not the loss's stationary point in general: the drift there is
//! −Cov(A, ∇ℒ); as ε → 0 the fixed point moves to the
//! geometric median, as ε → ∞ to the mean; with two equally weighted examples
//! it *is* the loss's stationary point. 6c: RMSProp escapes only as far as its adaptation is
//! independent of the current example: its drift at the minimiser vanishes like
//! ½(1 − α) E\[g³\]/E\[g²\]^(3/2) as α → 1.

use rand::RngExt;

use super::{Claim, VerifyOptions};
use crate::data::parse_csv;
use crate::lab::audit::{SimulationOptions, expected_update, fixed_point, stationary_drift};
use crate::lab::montecarlo::{Estimate, chain_rng};
use crate::model::{Model, Points};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Result};

fn points(text: &str) -> Result<Points> {
    Ok(Points::new(parse_csv(text, false)?))
}

/// The written stationarity condition of 6a: Aᵢgᵢ for example `i` (1-D or any d).
fn adapted_gradient(model: &Points, phi: &[f64], i: usize, eps: f64) -> Vec<f64> {
    let mut g = vec![0.0; phi.len()];
    Model::<f64>::loss_grad(model, phi, i, &mut g);
    let s = g.iter().map(|x| x * x).sum::<f64>() / g.len() as f64;
    g.iter().map(|x| x / (s + eps).sqrt()).collect()
}

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = one_dimensional(options)?;
    claims.extend(limits_in_two_dimensions()?);
    claims.extend(rmsprop_escape(options)?);
    Ok(claims)
}

/// Points {0, 0, 3}: Φ* = 1; normsgd with ε = 1.
fn one_dimensional(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let model = points("0\n0\n3\n")?;
    let eps = 1.0;
    let spec: OptimizerSpec = format!("normsgd:lr=0.01,eps={eps}").parse()?;
    let star = [1.0];
    let draws = if options.quick { 50_000 } else { 400_000 };

    // 6b: drift at Φ* by Monte Carlo through the optimizer (one step per drawn example) ...
    let template = Optimizer::<f64>::new(spec.clone())?;
    let mut rng = chain_rng(options.derive_seed("p6.drift"), 0);
    let mut samples = Vec::with_capacity(draws);
    for _ in 0..draws {
        let i = rng.random_range(0..3);
        let mut opt = template.clone();
        let mut g = vec![0.0];
        Model::<f64>::loss_grad(&model, &star, i, &mut g);
        let mut p = [Tensor::vector("phi", star.to_vec())];
        opt.step(&mut p, &[Tensor::vector("phi", g)], &StepInfo::default())?;
        samples.push((p[0].data()[0] - star[0]) / 0.01);
    }
    let drift = Estimate::from_samples(&samples).mean();
    // ... against −Cov(A, g) from the per-example formula (E g = 0 at Φ*).
    let cov: f64 = (0..3)
        .map(|i| adapted_gradient(&model, &star, i, eps)[0])
        .sum::<f64>()
        / 3.0;

    // 6a: at the fixed point found by root-finding on the optimizer's expected update, the
    // written condition E[A g] = 0 holds (Monte Carlo over examples).
    let fp = fixed_point(&model, &spec, &star)?;
    let mut rng = chain_rng(options.derive_seed("p6.condition"), 0);
    let condition: Vec<f64> = (0..draws)
        .map(|_| adapted_gradient(&model, &fp.point, rng.random_range(0..3), eps)[0])
        .collect();
    let condition = Estimate::from_samples(&condition).mean();

    // 6b.fp: the same fixed point by bisection on the written condition (no optimizer).
    let f = |phi: f64| -> f64 {
        (0..3)
            .map(|i| adapted_gradient(&model, &[phi], i, eps)[0])
            .sum()
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > 0.0 { hi = mid } else { lo = mid }
    }
    let bisected = 0.5 * (lo + hi);

    // 6b.two: the negative control, two points.
    let two = points("0\n3\n")?;
    let (two_drift, two_scale) = expected_update(&two, &spec, &[1.5])?;

    let params = [("eps", eps), ("draws", draws as f64), ("points", 3.0)];
    Ok(vec![
        Claim::monte_carlo(
            "6a",
            "at the update's fixed point E[∇L/sqrt(‖∇L‖²/d+ε)] = 0 (points 0,0,3)",
            &params,
            0.0,
            condition,
        )
        .reject("its value at the loss minimiser", cov)
        .optimizer(&spec),
        Claim::monte_carlo(
            "6b",
            "drift of normsgd at the loss minimiser = -Cov(A, ∇L) ≠ 0 (points 0,0,3)",
            &params,
            -cov,
            drift,
        )
        .reject("0 (a stationary point of the loss)", 0.0)
        .optimizer(&spec),
        Claim::identity(
            "6b.fp",
            "normsgd's fixed point (root of the optimizer's expected update) solves 6a's condition",
            &[("eps", eps), ("residual", fp.residual)],
            bisected,
            fp.point[0],
            1e-9,
        )
        .reject("the loss minimiser Φ* = 1", 1.0)
        .optimizer(&spec),
        Claim::identity(
            "6b.two",
            "negative control, two points (0, 3): drift at Φ* is exactly 0",
            &[("eps", eps)],
            0.0,
            two_drift[0].abs() / two_scale,
            1e-14,
        )
        .optimizer(&spec),
    ])
}

/// Weiszfeld's algorithm for the geometric median (independent of the optimizer).
pub(crate) fn geometric_median(rows: &[[f64; 2]]) -> [f64; 2] {
    let n = rows.len() as f64;
    let mut m = [
        rows.iter().map(|r| r[0]).sum::<f64>() / n,
        rows.iter().map(|r| r[1]).sum::<f64>() / n,
    ];
    for _ in 0..10_000 {
        let (mut num, mut den) = ([0.0, 0.0], 0.0);
        for r in rows {
            let dist = ((r[0] - m[0]).powi(2) + (r[1] - m[1]).powi(2))
                .sqrt()
                .max(1e-300);
            num[0] += r[0] / dist;
            num[1] += r[1] / dist;
            den += 1.0 / dist;
        }
        m = [num[0] / den, num[1] / den];
    }
    m
}

/// The root of 6a's written condition ΣᵢAᵢgᵢ = 0 with
/// Aᵢ = (‖gᵢ‖²/d + ε)^(−1/2) (without the 1/d when `per_coordinate` is
/// false), for squared-distance losses (gᵢ = Φ − xᵢ): the fixed point of
/// Φ ← ΣᵢAᵢxᵢ/ΣᵢAᵢ (iteratively reweighted least squares,
/// Weiszfeld's scheme with ε), from `start`.
fn reweighted_root(model: &Points, eps: f64, per_coordinate: bool, start: &[f64]) -> Vec<f64> {
    let d = start.len();
    let n = Model::<f64>::examples(model);
    let mut phi = start.to_vec();
    let mut g = vec![0.0; d];
    for _ in 0..5_000 {
        let (mut num, mut den) = (vec![0.0; d], 0.0);
        for i in 0..n {
            Model::<f64>::loss_grad(model, &phi, i, &mut g);
            let mut s = g.iter().map(|x| x * x).sum::<f64>();
            if per_coordinate {
                s /= d as f64;
            }
            let a = 1.0 / (s + eps).sqrt();
            for ((acc, p), gi) in num.iter_mut().zip(&phi).zip(&g) {
                *acc += a * (p - gi);
            }
            den += a;
        }
        phi = num.iter().map(|x| x / den).collect();
    }
    phi
}

/// Five points in the plane: the fixed point tends to the geometric median as ε → 0 and to
/// the mean as ε → ∞.
fn limits_in_two_dimensions() -> Result<Vec<Claim>> {
    let rows = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 3.0], [-1.0, 5.0]];
    let text: String = rows
        .iter()
        .map(|r| format!("{},{}\n", r[0], r[1]))
        .collect();
    let model = points(&text)?;
    let mean = model.mean();
    let median = geometric_median(&rows);
    let dist = |a: &[f64], b: &[f64]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // Each search starts at the other limit's answer, so that neither can pass by staying
    // where it started.
    let spec = |eps: f64| format!("normsgd:lr=0.01,eps={eps:e}");
    let fixed = |eps: f64, start: &[f64]| -> Result<Vec<f64>> {
        let spec: OptimizerSpec = spec(eps).parse()?;
        let fp = fixed_point(&model, &spec, start)?;
        if !fp.converged {
            return Err(Error::Unsupported(format!(
                "normsgd fixed point for eps={eps} did not converge (residual {:e})",
                fp.residual
            )));
        }
        Ok(fp.point)
    };
    let small = fixed(1e-12, &mean)?;
    let large = fixed(1e12, &median)?;
    let spread = dist(&mean, &median);
    // At a finite ε, where d matters: the optimizer's root against the written condition
    // solved by reweighting (no optimizer, no Newton), and against the same condition without
    // the 1/d (what a rule that forgot it would solve).
    let eps = 1.0;
    let middle = fixed(eps, &mean)?;
    let (written, no_d) = (
        reweighted_root(&model, eps, true, &mean),
        reweighted_root(&model, eps, false, &mean),
    );
    Ok(vec![
        Claim::identity(
            "6b.median",
            "ε → 0: the fixed point is the geometric median (Weiszfeld), 5 points in 2-D",
            &[("eps", 1e-12), ("mean_to_median", spread)],
            0.0,
            dist(&small, &median) / spread,
            1e-6,
        )
        .reject("the mean", 1.0)
        .optimizer(spec(1e-12)),
        Claim::identity(
            "6b.mean",
            "ε → ∞: the fixed point is the mean, the loss minimiser",
            &[("eps", 1e12), ("mean_to_median", spread)],
            0.0,
            dist(&large, &mean) / spread,
            1e-6,
        )
        .reject("the geometric median", 1.0)
        .optimizer(spec(1e12)),
        Claim::identity(
            "6b.fp2",
            "ε = 1, 5 points in 2-D: the fixed point solves E[∇L/sqrt(‖∇L‖²/d+ε)] = 0 (reweighting)",
            &[("eps", eps), ("d", 2.0), ("mean_to_median", spread)],
            0.0,
            dist(&middle, &written) / spread,
            1e-9,
        )
        .reject(
            "the root without the 1/d (its distance from the written one)",
            dist(&no_d, &written) / spread,
        )
        .optimizer(spec(eps)),
    ])
}

/// 6c: RMSProp's drift at Φ* with the state at stationarity (Φ frozen), for α → 1.
fn rmsprop_escape(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let model = points("0\n0\n3\n")?;
    let star = [1.0];
    // g = Φ* − x over the three points: E g³ and E g².
    let g: Vec<f64> = [0.0, 0.0, 3.0].iter().map(|x| star[0] - x).collect();
    let m2 = g.iter().map(|v| v * v).sum::<f64>() / 3.0;
    let m3 = g.iter().map(|v| v * v * v).sum::<f64>() / 3.0;
    let skew = m3 / m2.powf(1.5);
    // About 500 autocorrelation times (τ ≈ (1+α)/(1−α) ≈ 4000 steps at α = 0.9995): with
    // fewer, the standard error is itself too noisy and |z| has heavy tails (240,000 steps
    // gave sd(z) = 1.21 over 340 seeds).
    let steps = if options.quick { 500_000 } else { 2_000_000 };
    let spec = |alpha: f64| format!("rmsprop:lr=0.01,alpha={alpha}");
    let drift = |alpha: f64, tag: &str| -> Result<crate::lab::montecarlo::Measurement> {
        let spec: OptimizerSpec = spec(alpha).parse()?;
        let sim = SimulationOptions {
            burn_in: (20.0 / (1.0 - alpha)) as usize,
            steps,
            seed: options.derive_seed(tag),
        };
        let (mean, se) = stationary_drift(&model, &spec, &star, &sim)?;
        Ok(crate::lab::montecarlo::Measurement::new(mean[0], se[0]))
    };
    let d999 = drift(0.9995, "p6.rms.9995")?;
    let d99 = drift(0.995, "p6.rms.995")?;
    let predicted = |alpha: f64| 0.5 * (1.0 - alpha) * skew;
    let params = [
        ("alpha", 0.9995),
        ("skewness", skew),
        ("steps", steps as f64),
    ];
    Ok(vec![
        Claim::monte_carlo(
            "6c",
            "RMSProp's drift at Φ* (state stationary) ≈ ½(1-α)·E[g³]/E[g²]^{3/2} as α → 1",
            &params,
            predicted(0.9995),
            d999,
        )
        .reject("0 (no bias at all)", 0.0)
        .optimizer(spec(0.9995)),
        Claim::monte_carlo(
            "6c.shrink",
            "the drift shrinks in proportion to 1-α: drift(α=0.995)/drift(α=0.9995) = 10",
            &[
                ("alpha_a", 0.995),
                ("alpha_b", 0.9995),
                ("steps", steps as f64),
            ],
            10.0,
            d99.ratio(d999),
        )
        .reject("1 (no shrinkage)", 1.0)
        .optimizer(spec(0.995))
        .optimizer(spec(0.9995)),
    ])
}
