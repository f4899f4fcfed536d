//! Problems 2–4's claims measured on the optimizers users run (Adam, SGD with momentum and
//! Nesterov, `ema-momentum` with both debias modes), not only on `average`'s recurrences:
//! a bias correction with the wrong power, a dropped Nesterov term or an ε under the square
//! root fails these, where the recurrences of `average` would not notice.

use rand_distr::{Distribution, StandardNormal};

use super::{Claim, VerifyOptions, drive};
use crate::lab::montecarlo::{Estimate, chain_rng};
use crate::optim::Optimizer;
use crate::optim::math::powi;
use crate::{Error, Result};

fn slot(opt: &Optimizer<f64>, name: &str) -> Result<Vec<f64>> {
    opt.state(name, 0)
        .map(<[f64]>::to_vec)
        .ok_or_else(|| Error::Unsupported(format!("no state buffer {name}")))
}

/// Problem 2 on Adam's first moment `exp_avg`: stationary variance σ²/(2N − 1) on white
/// noise (one chain per element), lag N − 1 behind a ramp.
pub(crate) fn problem2(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (beta1, sigma) = (0.9f64, 2.0f64);
    let n = 1.0 / (1.0 - beta1);
    let spec = format!("adam:lr=1e-3,beta1={beta1}");
    let chains = if options.quick { 10_000 } else { 40_000 };
    let t_var = 200;
    let mut rng = chain_rng(options.derive_seed("p2.adam"), 0);
    let mut var = None;
    drive(
        &spec,
        vec![0.0; chains],
        t_var,
        |_, _, out| {
            for o in out.iter_mut() {
                let xi: f64 = StandardNormal.sample(&mut rng);
                *o = sigma * xi;
            }
        },
        |t, opt, _| {
            if t == t_var {
                var = Some(Estimate::from_samples(&slot(opt, "exp_avg")?).variance());
            }
            Ok(())
        },
    )?;
    let var = var.ok_or_else(|| Error::Unsupported("no variance measured".into()))?;
    let t_lag = 1000;
    let mut lag = f64::NAN;
    drive(
        &spec,
        vec![0.0; 1],
        t_lag,
        |t, _, out| out[0] = t as f64,
        |t, opt, _| {
            if t == t_lag {
                lag = t as f64 - slot(opt, "exp_avg")?[0];
            }
            Ok(())
        },
    )?;
    let s2 = sigma * sigma;
    Ok(vec![
        Claim::monte_carlo(
            "2.adam",
            "the library's Adam: its exp_avg on white noise has variance σ²/(2N−1), N = 1/(1−β₁)",
            &[
                ("beta1", beta1),
                ("sigma", sigma),
                ("t", t_var as f64),
                ("chains", chains as f64),
            ],
            s2 / (2.0 * n - 1.0) * (1.0 - powi(beta1, 2 * t_var as i32)),
            var,
        )
        .reject("σ²/N", s2 / n)
        .optimizer(&spec),
        Claim::identity(
            "2.adam.lag",
            "… and lags a ramp by N − 1",
            &[("beta1", beta1), ("t", t_lag as f64)],
            n - 1.0,
            lag,
            1e-9,
        )
        .optimizer(&spec),
    ])
}

/// Problem 3 on the library's SGD: on a constant gradient c the step s is
/// c(1 − βˢ)/(1 − β) with momentum (the buffer, sum form, → Nc) and
/// c(1 − βˢ⁺¹)/(1 − β) with Nesterov; worst relative error over the steps.
pub(crate) fn problem3() -> Result<Vec<Claim>> {
    let (beta, lr, c, steps) = (0.9f64, 0.01f64, 3.0f64, 100usize);
    let spec = |nesterov: bool| format!("sgd:lr={lr},momentum={beta},nesterov={nesterov}");
    let worst = |nesterov: bool| -> Result<f64> {
        let spec = spec(nesterov);
        let mut before = 0.0;
        let mut worst = 0.0f64;
        drive(
            &spec,
            vec![0.0; 1],
            steps,
            |_, _, out| out[0] = c,
            |t, _, p| {
                let step = (before - p[0]) / lr;
                before = p[0];
                let power = if nesterov { t + 1 } else { t };
                let want = c * (1.0 - powi(beta, power as i32)) / (1.0 - beta);
                worst = super::sequences::nan_max(worst, ((step - want) / want).abs());
                Ok(())
            },
        )?;
        Ok(worst)
    };
    let params = [("beta", beta), ("c", c), ("steps", steps as f64)];
    Ok(vec![
        Claim::identity(
            "3.sgd",
            "the library's SGD with momentum steps by c(1−β^t)/(1−β) → Nc on a constant \
             gradient (worst relative error)",
            &params,
            0.0,
            worst(false)?,
            1e-12,
        )
        .optimizer(spec(false)),
        Claim::identity(
            "3.sgd.nesterov",
            "with Nesterov, by c(1−β^{t+1})/(1−β): g + β·buffer (worst relative error)",
            &params,
            0.0,
            worst(true)?,
            1e-12,
        )
        .optimizer(spec(true)),
    ])
}

/// Problem 4 on the library's optimizers: `ema-momentum` with `debias=horizon` steps by the
/// running mean of the gradients (Var = σ²/t for t ≤ N) and with
/// `debias=power` by Adam's corrected mean; Adam with either correction steps by exactly
/// ηc/(c + ε) on a constant gradient (β₂ = 0, so v̂ = c²).
pub(crate) fn problem4(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (beta, sigma, lr) = (0.9f64, 2.0f64, 0.5f64);
    let n = 1.0 / (1.0 - beta);
    // At t = N the two corrections' variances differ by 9%: 80,000 chains (quick) put them
    // 16 standard errors apart.
    let chains = if options.quick { 80_000 } else { 160_000 };
    let t = 10usize;
    let ema_spec = |debias: &str| format!("ema-momentum:lr={lr},beta={beta},debias={debias}");
    let step_variance = |debias: &str, tag: &str| -> Result<crate::lab::montecarlo::Measurement> {
        let spec = ema_spec(debias);
        let mut rng = chain_rng(options.derive_seed(tag), 0);
        let mut before = vec![0.0; chains];
        let mut var = None;
        drive(
            &spec,
            vec![0.0; chains],
            t,
            |_, _, out| {
                for o in out.iter_mut() {
                    let xi: f64 = StandardNormal.sample(&mut rng);
                    *o = 1.0 + sigma * xi;
                }
            },
            |s, _, p| {
                let steps: Vec<f64> = before.iter().zip(p).map(|(b, p)| (b - p) / lr).collect();
                before.copy_from_slice(p);
                if s == t {
                    var = Some(Estimate::from_samples(&steps).variance());
                }
                Ok(())
            },
        )?;
        var.ok_or_else(|| Error::Unsupported("no variance measured".into()))
    };
    let s2 = sigma * sigma;
    let adam_var = s2 * (1.0 - beta) * (1.0 + powi(beta, t as i32))
        / ((1.0 + beta) * (1.0 - powi(beta, t as i32)));
    // Adam on a constant gradient: each step exactly lr·c/(c+ε), for both corrections.
    let (c, eps, steps) = (3e-4f64, 1e-8f64, 60usize);
    let mut worst = 0.0f64;
    let adam_spec =
        |debias: &str| format!("adam:lr={lr},beta1={beta},beta2=0,eps={eps:e},debias={debias}");
    for debias in ["power", "horizon"] {
        let spec = adam_spec(debias);
        let mut before = 0.0;
        drive(
            &spec,
            vec![0.0; 1],
            steps,
            |_, _, out| out[0] = c,
            |_, _, p| {
                let step = (before - p[0]) / lr;
                before = p[0];
                let want = c / (c + eps);
                worst = super::sequences::nan_max(worst, ((step - want) / want).abs());
                Ok(())
            },
        )?;
    }
    let params = [
        ("beta", beta),
        ("sigma", sigma),
        ("t", t as f64),
        ("chains", chains as f64),
    ];
    Ok(vec![
        Claim::monte_carlo(
            "4.lib.horizon",
            "the library's ema-momentum (debias=horizon) steps by the running mean: Var of \
             the step = σ²/t for t ≤ N",
            &params,
            s2 / t as f64,
            step_variance("horizon", "p4.lib.horizon")?,
        )
        .reject("Adam's correction", adam_var)
        .reject("the raw EMA's", s2 * (1.0 - beta) / (1.0 + beta))
        .optimizer(ema_spec("horizon")),
        Claim::monte_carlo(
            "4.lib.power",
            "with debias=power, Adam's: σ²(1−β)(1+β^t)/((1+β)(1−β^t))",
            &params,
            adam_var,
            step_variance("power", "p4.lib.power")?,
        )
        .reject("σ²/t", s2 / t as f64)
        .reject("β^(t−1) in the correction", {
            let tm = t as i32 - 1;
            adam_var * (1.0 - powi(beta, t as i32)).powi(2) / (1.0 - powi(beta, tm)).powi(2)
        })
        .optimizer(ema_spec("power")),
        Claim::identity(
            "4.lib.adam",
            "the library's Adam (both corrections, β₂ = 0) steps by exactly ηc/(c+ε) on a \
             constant gradient: the corrected moments are exact, ε outside the root",
            &[("c", c), ("eps", eps), ("n", n), ("steps", steps as f64)],
            0.0,
            worst,
            1e-12,
        )
        .optimizer(adam_spec("power"))
        .optimizer(adam_spec("horizon")),
    ])
}
