//! Problem 2: the variance of an EMA with rate 1/N.
//!
//! μ̂ₜ = (1 − 1/N)μ̂ₜ₋₁ + xₜ/N from zero, xₜ IID with variance σ².
//! Claims: Var μ̂ₜ = σ²(1 − β²ᵗ)/(2N − 1) → σ²/(2N − 1);
//! a block mean of N samples has variance σ²/N, so the EMA is worth a block of
//! 2N − 1 samples, whose mean lag N − 1 it shares.
//!
//! Block means are computed by the library's [`HorizonAverage`] (problem 4's rate
//! 1/min(t, M), which for t ≤ M is the running mean of x₁..xₜ), so that 2b and the
//! block's lag measure that code, not the random number generator or integer arithmetic.

use rand_distr::{Distribution, Normal};

use super::{Claim, VerifyOptions};
use crate::average::{Ema, HorizonAverage};
use crate::optim::math::powi;
use crate::{Error, Result};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = variance(options)?;
    claims.extend(lag()?);
    claims.extend(super::real::problem2(options)?);
    Ok(claims)
}

fn variance(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (n, mean, sigma) = (4.0f64, 1.0f64, 2.0f64);
    let sigma2 = sigma * sigma;
    let block = n as usize;
    let (t_short, t_long) = (2usize, 80usize);
    let rule = Ema::from_horizon(n)?;
    let beta = rule.beta();
    let blocker = HorizonAverage::new(n)?;
    let block_rates = (1..=block as u64)
        .map(|t| blocker.rate(t))
        .collect::<Result<Vec<_>>>()?;
    let input =
        Normal::new(mean, sigma).map_err(|e| Error::invalid("sigma", sigma, e.to_string()))?;
    let mc = options.monte_carlo("p2.variance", 800_000)?;
    // Each chain: the EMA to t_long (recording t_short), one fresh draw (to measure σ² itself)
    // and a block mean of N fresh draws (the horizon average at t = N).
    let [mu_short, mu_long, fresh, block_mean] = mc.estimate(|rng, _| {
        let (mut mu, mut mu_short) = (0.0f64, 0.0f64);
        for t in 1..=t_long {
            mu = rule.update(mu, input.sample(rng));
            if t == t_short {
                mu_short = mu;
            }
        }
        let fresh = input.sample(rng);
        let block_mean = block_rates.iter().fold(0.0f64, |y, &r| {
            HorizonAverage::update(r, y, input.sample(rng))
        });
        [mu_short, mu, fresh, block_mean]
    });
    let chains = mc.chains() as f64;
    let params = |t: usize| {
        [
            ("N", n),
            ("sigma2", sigma2),
            ("mean", mean),
            ("t", t as f64),
            ("chains", chains),
        ]
    };
    let limit = sigma2 / (2.0 * n - 1.0);
    let ema_var = mu_long.variance();
    let block_var = block_mean.variance();
    Ok(vec![
        Claim::monte_carlo(
            "2a",
            "lim Var μ̂_t = σ²/(2N-1)",
            &params(t_long),
            limit,
            ema_var,
        )
        .reject("σ²/N", sigma2 / n)
        .reject("σ²/(2N)", sigma2 / (2.0 * n)),
        Claim::monte_carlo(
            "2a.t",
            "Var μ̂_t = σ²(1-β^{2t})/(2N-1) at finite t",
            &params(t_short),
            sigma2 * (1.0 - powi(beta, 2 * t_short as i32)) / (2.0 * n - 1.0),
            mu_short.variance(),
        )
        .reject("the limit σ²/(2N-1)", limit),
        Claim::monte_carlo(
            "2b",
            "a block mean of N samples (HorizonAverage at t = N) has variance σ²/N",
            &params(block),
            sigma2 / n,
            block_var,
        )
        .reject("σ²/(2N-1)", limit)
        .reject("σ²/(N-1) (rate 1/(t+1) or 1/(t-1))", sigma2 / (n - 1.0)),
        Claim::monte_carlo(
            "2b.ratio",
            "Var(EMA) / Var(block mean of N) = N/(2N-1)",
            &params(t_long),
            n / (2.0 * n - 1.0),
            ema_var.ratio(block_var),
        )
        .reject("1 (as good as the block)", 1.0)
        .reject("1/2", 0.5),
        Claim::monte_carlo(
            "2b.size",
            "the EMA is worth a block of 2N-1 samples: σ²(measured) / Var(EMA) = 2N-1",
            &params(t_long),
            2.0 * n - 1.0,
            fresh.variance().ratio(ema_var),
        )
        .reject("N", n)
        .reject("2N", 2.0 * n),
    ])
}

/// The mean lag, measured on a ramp xₜ = t: after the transient the EMA trails the input by
/// a constant, which must equal N − 1, the lag of a block mean of 2N − 1 samples (the
/// library's horizon average with M = 2N − 1 run over the ramp's last M values).
fn lag() -> Result<Vec<Claim>> {
    let n = 4.0f64;
    let len = 400usize;
    let rule = Ema::from_horizon(n)?;
    let mut mu = 0.0f64;
    for t in 1..=len {
        mu = rule.update(mu, t as f64);
    }
    let ema_lag = len as f64 - mu;
    let width = 2 * n as usize - 1;
    let blocker = HorizonAverage::new(width as f64)?;
    let mut block_mean = 0.0f64;
    for (step, x) in ((len - width + 1)..=len).enumerate() {
        block_mean = HorizonAverage::update(blocker.rate(step as u64 + 1)?, block_mean, x as f64);
    }
    let block_lag = len as f64 - block_mean;
    let params = [("N", n), ("t", len as f64)];
    Ok(vec![
        Claim::identity(
            "2b.lag",
            "mean lag of the EMA (measured on a ramp) = N-1",
            &params,
            n - 1.0,
            ema_lag,
            1e-9,
        )
        .reject("N", n),
        Claim::identity(
            "2b.blocklag",
            "mean lag of a block mean of 2N-1 samples (HorizonAverage on the ramp) = N-1",
            &params,
            n - 1.0,
            block_lag,
            1e-9,
        )
        .reject("N (the block of 2N+1 samples)", n),
    ])
}
