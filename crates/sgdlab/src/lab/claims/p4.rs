//! Problem 4: bias correction with rate 1/min(t, N), compared with Adam's 1/(1 − βᵗ).
//!
//! yₜ = (1 − 1/min(t, N))yₜ₋₁ + xₜ/min(t, N). Claims: constant input gives yₜ = c
//! for every t ≥ 1 whatever y₀; Eyₜ = x̄ for every t;
//! Var yₜ = σ²/t for t ≤ N, then → σ²/(2N − 1); Adam's
//! correction is also exact on constants, with variance
//! σ²(1 − β)(1 + βᵗ)/((1 + β)(1 − βᵗ)), larger early on.

use rand_distr::{Distribution, Normal};

use super::sequences::nan_max;
use super::{Claim, VerifyOptions};
use crate::average::{Ema, HorizonAverage, PowerDebias};
use crate::optim::math::powi;
use crate::{Error, Result};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = constant_input()?;
    claims.extend(moments(options)?);
    claims.extend(super::real::problem4(options)?);
    Ok(claims)
}

/// Both corrections on constant inputs of extreme size, from extreme starting values.
fn constant_input() -> Result<Vec<Claim>> {
    let horizons = [1.0, 3.0, 10.0, 1000.0];
    let constants = [1e150, -1e-150, 3.7, -2.0e-3];
    let (mut worst_horizon, mut worst_adam) = (0.0f64, 0.0f64);
    for n in horizons {
        let horizon = HorizonAverage::new(n)?;
        let ema = Ema::from_horizon(n)?;
        let debias = PowerDebias::new(ema.beta())?;
        for c in constants {
            for y0 in [0.0, 1e300, -42.0] {
                let (mut y, mut m) = (y0, 0.0f64);
                for t in 1..=3 * n as u64 + 5 {
                    y = HorizonAverage::update(horizon.rate(t)?, y, c);
                    m = ema.update(m, c);
                    let adam = m * debias.factor(t)?;
                    worst_horizon = nan_max(worst_horizon, ((y - c) / c).abs());
                    worst_adam = nan_max(worst_adam, ((adam - c) / c).abs());
                }
            }
        }
    }
    let params = [("horizons", horizons.len() as f64), ("t", 3005.0)];
    Ok(vec![
        Claim::identity(
            "4",
            "constant input c: y_t = c for every t ≥ 1, whatever y_0 (worst relative error)",
            &params,
            0.0,
            worst_horizon,
            1e-12,
        ),
        Claim::identity(
            "4.adam.const",
            "Adam's m_t/(1-β^t) is also exact on constant input (worst relative error)",
            &params,
            0.0,
            worst_adam,
            1e-12,
        ),
    ])
}

/// Mean and variance of both corrections, by Monte Carlo, with the same draws.
fn moments(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (n, mean, sigma) = (10.0f64, 1.0f64, 2.0f64);
    let sigma2 = sigma * sigma;
    let (t_early, t_horizon, t_late) = (3u64, 10u64, 150u64);
    let horizon = HorizonAverage::new(n)?;
    let ema = Ema::from_horizon(n)?;
    let beta = ema.beta();
    let debias = PowerDebias::new(beta)?;
    let rates: Vec<f64> = (1..=t_late)
        .map(|t| horizon.rate(t))
        .collect::<Result<_>>()?;
    let factors: Vec<f64> = (1..=t_late)
        .map(|t| debias.factor(t))
        .collect::<Result<_>>()?;
    let input =
        Normal::new(mean, sigma).map_err(|e| Error::invalid("sigma", sigma, e.to_string()))?;
    let mc = options.monte_carlo("p4.moments", 800_000)?;
    let [y_early, y_horizon, y_late, adam_horizon] = mc.estimate(|rng, _| {
        let (mut y, mut m) = (0.0f64, 0.0f64);
        let mut out = [0.0; 4];
        for t in 1..=t_late {
            let x = input.sample(rng);
            y = HorizonAverage::update(rates[t as usize - 1], y, x);
            m = ema.update(m, x);
            if t == t_early {
                out[0] = y;
            }
            if t == t_horizon {
                out[1] = y;
                out[3] = m * factors[t as usize - 1];
            }
        }
        out[2] = y;
        out
    });
    let chains = mc.chains() as f64;
    let params = |t: u64| {
        [
            ("N", n),
            ("mean", mean),
            ("sigma2", sigma2),
            ("t", t as f64),
            ("chains", chains),
        ]
    };
    let late_steps = (t_late - t_horizon) as i32;
    let transient = powi(beta, 2 * late_steps);
    let late_variance = transient * sigma2 / n + (1.0 - transient) * sigma2 / (2.0 * n - 1.0);
    let bt = powi(beta, t_horizon as i32);
    let adam_variance = sigma2 * (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt));
    Ok(vec![
        Claim::monte_carlo(
            "4.mean",
            "unbiased from the first step: E y_t = x̄",
            &params(t_early),
            mean,
            y_early.mean(),
        )
        .reject(
            "(1-β^t)·x̄ (uncorrected EMA)",
            (1.0 - powi(beta, t_early as i32)) * mean,
        ),
        Claim::monte_carlo(
            "4.var",
            "Var y_t = σ²/t for t ≤ N (the exact running mean)",
            &params(t_early),
            sigma2 / t_early as f64,
            y_early.variance(),
        )
        .reject("σ²/(2N-1)", sigma2 / (2.0 * n - 1.0)),
        Claim::monte_carlo(
            "4.var.N",
            "Var y_N = σ²/N",
            &params(t_horizon),
            sigma2 / n,
            y_horizon.variance(),
        )
        .reject("σ²/(2N-1)", sigma2 / (2.0 * n - 1.0)),
        Claim::monte_carlo(
            "4.var.limit",
            "after N the EMA takes over: Var y_t → σ²/(2N-1) \
             (β^{2(t-N)}σ²/N + (1-β^{2(t-N)})σ²/(2N-1))",
            &params(t_late),
            late_variance,
            y_late.variance(),
        )
        .reject("σ²/N (a running mean would keep shrinking)", sigma2 / n),
        Claim::monte_carlo(
            "4.adam",
            "Adam's m_t/(1-β^t): Var = σ²(1-β)(1+β^t)/((1+β)(1-β^t)), larger than σ²/t",
            &params(t_horizon),
            adam_variance,
            adam_horizon.variance(),
        )
        .reject(
            "σ²/t (the horizon rule's variance)",
            sigma2 / t_horizon as f64,
        ),
    ])
}
