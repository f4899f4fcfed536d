//! Problem 1: the two parameterisations of a running average.
//!
//! yₜ₊₁ = βyₜ + (1 − β)xₜ and zₜ₊₁ = βzₜ + γxₜ from zero.
//! Claims: lim Eyₜ = x̄, lim Ezₜ = γx̄/(1 − β),
//! Eyₜ = (1 − βᵗ)x̄, and zₜ = (γ/(1 − β))yₜ exactly.

use rand_distr::{Distribution, Exp};

use super::sequences::{adversarial, nan_max, worst_relative_residual};
use super::{Claim, VerifyOptions};
use crate::average::{Ema, ScaledEma};
use crate::optim::math::powi;
use crate::{Error, Result};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = limits(options)?;
    claims.extend(identity(options)?);
    Ok(claims)
}

/// 1a: the limiting and finite-t expectations, by Monte Carlo on skewed (exponential) inputs.
fn limits(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (beta, gamma, xbar) = (0.9, 0.5, 2.0);
    let (t_short, t_long) = (5usize, 400usize);
    let y_rule = Ema::new(beta)?;
    let z_rule = ScaledEma::new(beta, gamma)?;
    let input = Exp::new(1.0 / xbar).map_err(|e| Error::invalid("xbar", xbar, e.to_string()))?;
    let mc = options.monte_carlo("p1.limits", 400_000)?;
    let [y_short, y_long, z_long] = mc.estimate(|rng, _| {
        let (mut y, mut z, mut y_at_short) = (0.0f64, 0.0f64, 0.0f64);
        for t in 1..=t_long {
            // Independent inputs for y and z, so that 1a.z is its own measurement (with
            // shared draws its z-score equals 1a's to 2e-10: z is γ/(1−β)·y exactly, 1b).
            let x: f64 = input.sample(rng);
            let x_z: f64 = input.sample(rng);
            y = y_rule.update(y, x);
            z = z_rule.update(z, x_z);
            if t == t_short {
                y_at_short = y;
            }
        }
        [y_at_short, y, z]
    });
    let chains = mc.chains() as f64;
    let params = |t: usize| {
        [
            ("beta", beta),
            ("gamma", gamma),
            ("xbar", xbar),
            ("t", t as f64),
            ("chains", chains),
        ]
    };
    Ok(vec![
        Claim::monte_carlo(
            "1a",
            "lim E y_t = x̄ (x_t ~ Exp, mean x̄)",
            &params(t_long),
            xbar,
            y_long.mean(),
        )
        .reject("(1-β)·x̄", (1.0 - beta) * xbar),
        Claim::monte_carlo(
            "1a.z",
            "lim E z_t = γ·x̄/(1-β)",
            &params(t_long),
            gamma * xbar / (1.0 - beta),
            z_long.mean(),
        )
        .reject("γ·x̄", gamma * xbar)
        .reject("x̄", xbar),
        Claim::monte_carlo(
            "1a.t",
            "E y_t = (1-β^t)·x̄ at finite t",
            &params(t_short),
            (1.0 - powi(beta, t_short as i32)) * xbar,
            y_short.mean(),
        )
        .reject("x̄ (no start-up bias)", xbar),
    ])
}

/// 1b: zₜ = γ/(1 − β) yₜ on adversarial sequences, and the residual
/// βᵗ(z₀ − γy₀/(1 − β)) from non-zero starts.
fn identity(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let len = 2_000;
    let sequences = adversarial(options.derive_seed("p1.identity"), len);
    let mut worst = 0.0f64;
    for (beta, gamma) in [(0.9, 0.5), (0.999, 3.0), (0.0, 1.0), (0.5, 1e-3)] {
        let y_rule = Ema::new(beta)?;
        let z_rule = ScaledEma::new(beta, gamma)?;
        let abs_rule = Ema::new(beta)?;
        let k = gamma / (1.0 - beta);
        for (_, xs) in &sequences {
            let (mut y, mut z, mut a) = (0.0f64, 0.0f64, 0.0f64);
            let (mut scaled_y, mut zs, mut scale) = (vec![], vec![], vec![]);
            for &x in xs {
                y = y_rule.update(y, x);
                z = z_rule.update(z, x);
                a = abs_rule.update(a, x.abs());
                scaled_y.push(k * y);
                zs.push(z);
                scale.push(k * a);
            }
            worst = nan_max(worst, worst_relative_residual(&zs, &scaled_y, &scale));
        }
    }

    // Non-zero starts: the residual r_t = z_t - k y_t must decay exactly like β^t r_0.
    let (beta, gamma, y0, z0) = (0.9, 0.5, 3.0, -7.0);
    let y_rule = Ema::new(beta)?;
    let z_rule = ScaledEma::new(beta, gamma)?;
    let k = gamma / (1.0 - beta);
    let (mut y, mut z) = (y0, z0);
    let mut worst_start = 0.0f64;
    for (t, &x) in sequences[5].1.iter().take(60).enumerate() {
        y = y_rule.update(y, x);
        z = z_rule.update(z, x);
        let predicted = powi(beta, t as i32 + 1) * (z0 - k * y0);
        worst_start = nan_max(
            worst_start,
            ((z - k * y) - predicted).abs() / predicted.abs(),
        );
    }
    Ok(vec![
        Claim::identity(
            "1b",
            "z_t = γ/(1-β)·y_t for every t (worst relative residual, adversarial inputs)",
            &[("sequences", sequences.len() as f64), ("t", len as f64)],
            0.0,
            worst,
            1e-12,
        ),
        Claim::identity(
            "1b.start",
            "non-zero starts: z_t - γ/(1-β)·y_t = β^t·(z_0 - γ·y_0/(1-β)) (worst relative error)",
            &[
                ("beta", beta),
                ("gamma", gamma),
                ("y0", y0),
                ("z0", z0),
                ("t", 60.0),
            ],
            0.0,
            worst_start,
            1e-9,
        ),
    ])
}
