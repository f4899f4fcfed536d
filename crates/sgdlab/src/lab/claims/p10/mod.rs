//! Section 10, beyond the problem set: Schedule-Free, AdEMAMix and Muon, measured with the
//! library's own optimizers through the problem set's pieces, and Reddi et al.'s
//! counterexample to Adam's convergence (`reddi`: where Adam, AMSGrad, ADOPT, a sign update,
//! SGD and their cautious variants end), and whether cautious masking keeps AdamW's fixed
//! point (`cautious`: it moves it towards the median under skewed noise), and the start-up of
//! Adagrad, Adamax and RAdam on a constant gradient (`rules`), and Prodigy's estimate of the
//! distance to the solution (`prodigy`).
//!
//! * Schedule-Free with `warmup_steps=0, r=0, weight_lr_power=0` averages with problem 4's
//!   rate 1/min(t, N) at N = ∞: xₜ = (1/t)Σ\_(s ≤ t) zₛ exactly. On a noisy
//!   quadratic (h/2)Φ² with gradient noise σ, Var xₜ follows
//!   the linear-Gaussian covariance recursion of the (z, x) system and decays like 1/t,
//!   while plain SGD's stays at its temperature ησ²/(h(2 − ηh)) (problem 5b).
//! * AdEMAMix's slow EMA m₂ has problem 2's lag N₃ − 1 and variance
//!   σ²/(2N₃ − 1) with N₃ = 1/(1 − β₃), and, not bias-corrected, the start-up
//!   bias β₃ᵗ of problem 4.
//! * Muon's Newton–Schulz iteration acts on each singular value alone: the update's singular
//!   values are q(σᵢ/‖G‖\_F) with q the quintic
//!   p(x) = ax + bx³ + cx⁵ applied five times. q does not converge to 1 (the update is
//!   not UVᵀ): it maps \[0.02, 1\] into a band, measured here. The update is invariant
//!   to the gradient's scale (problem 5's question: no learning-rate change with the loss
//!   unit).

use rand_distr::{Distribution, StandardNormal};

use super::{Claim, VerifyOptions, drive};
use crate::lab::figures::{Figure, Line, Marker};
use crate::lab::montecarlo::{Estimate, chain_rng};
use crate::optim::Optimizer;
use crate::optim::math::powi;
use crate::{Error, Result};

mod cautious;
mod fixed_points;
mod muon;
mod prodigy;
mod reddi;
mod rules;
mod soap;
use muon::{muon, quintic};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = vec![sf_uniform_average()?];
    claims.extend(sf_variance(options)?.claims);
    claims.extend(ademamix_slow_ema(options)?);
    claims.extend(muon(options)?.claims);
    claims.extend(reddi::claims()?);
    claims.extend(cautious::claims(options)?);
    claims.extend(rules::claims()?);
    claims.extend(prodigy::claims(options)?);
    claims.extend(fixed_points::claims(options)?);
    claims.extend(soap::claims(options)?);
    Ok(claims)
}

/// 10a: xₜ is the uniform running mean of z₁..zₜ on adversarial gradients.
fn sf_uniform_average() -> Result<Claim> {
    let (lr, steps) = (0.5, 600usize);
    // Four coordinates: magnitudes from 1e-8 to 1e8 with alternating signs, a ramp, a
    // constant, and a spike train (zeros with rare huge values).
    let g = |t: usize, i: usize| -> f64 {
        let t = t as f64;
        match i {
            0 => {
                (if (t as u64).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }) * 10f64.powf((t % 17.0) - 8.0)
            }
            1 => t - 300.0,
            2 => 3.7,
            _ => {
                if (t as u64).is_multiple_of(97) {
                    1e6
                } else {
                    0.0
                }
            }
        }
    };
    let init = vec![1.0, -2.0, 1e-3, 5e4];
    let mut z = init.clone();
    let mut sum = [0.0; 4];
    let mut comp = [0.0; 4];
    let mut scale = [0.0f64; 4];
    let mut worst = 0.0f64;
    let spec = format!("sf-sgd:lr={lr},momentum=0.9,warmup_steps=0,r=0,weight_lr_power=0");
    drive(
        &spec,
        init,
        steps,
        |t, _, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = g(t, i);
            }
        },
        |t, opt, _| {
            let x = opt
                .eval_point(0)
                .ok_or_else(|| Error::Unsupported("sf-sgd has no evaluation point".into()))?;
            for i in 0..4 {
                // z by its own recurrence; the mean by compensated (Neumaier) summation.
                z[i] -= lr * g(t, i);
                let (s, v) = (sum[i], z[i]);
                let next = s + v;
                comp[i] += if s.abs() >= v.abs() {
                    (s - next) + v
                } else {
                    (v - next) + s
                };
                sum[i] = next;
                scale[i] = scale[i].max(z[i].abs());
                let mean = (sum[i] + comp[i]) / t as f64;
                worst = super::sequences::nan_max(worst, (x[i] - mean).abs() / scale[i]);
            }
            Ok(())
        },
    )?;
    Ok(Claim::identity(
        "10a",
        "Schedule-Free (warmup 0, r = 0, weight_lr_power = 0): x_t is the uniform mean of \
         z_1..z_t, problem 4's rate 1/min(t,N) at N = ∞ (worst error relative to max |z|)",
        &[("lr", lr), ("steps", steps as f64)],
        0.0,
        worst,
        1e-12,
    )
    .optimizer(spec))
}

/// The noisy quadratic of 10b: curvature, noise, learning rate, interpolation, steps.
const H: f64 = 1.0;
const SIGMA: f64 = 1.0;
const ETA: f64 = 0.5;
const BETA: f64 = 0.9;
const STEPS: usize = 400;

/// Var xₜ for t = 1..`steps` of Schedule-Free SGD with uniform averaging
/// on (h/2)Φ² with gradient noise σ, from Φ₀ = 0: the covariance
/// recursion Σₜ = AₜΣₜ₋₁Aₜᵀ + bbᵀ of the state (z, x), with
/// c = 1/t, Aₜ = \[1 − ηh(1 − β), −ηhβ; c(1 − ηh(1 − β)), 1 − c − cηhβ\], b = −ησ(1, c).
fn sf_predicted_variance(steps: usize) -> Vec<f64> {
    let (mut szz, mut szx, mut sxx) = (0.0f64, 0.0f64, 0.0f64);
    let k = 1.0 - ETA * H * (1.0 - BETA);
    let mut out = Vec::with_capacity(steps);
    for t in 1..=steps {
        let c = 1.0 / t as f64;
        let a = [[k, -ETA * H * BETA], [c * k, 1.0 - c - c * ETA * H * BETA]];
        let b = [-ETA * SIGMA, -c * ETA * SIGMA];
        let s = [[szz, szx], [szx, sxx]];
        let mut n = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                let mut v = b[i] * b[j];
                for p in 0..2 {
                    for q in 0..2 {
                        v += a[i][p] * s[p][q] * a[j][q];
                    }
                }
                n[i][j] = v;
            }
        }
        (szz, szx, sxx) = (n[0][0], n[0][1], n[1][1]);
        out.push(sxx);
    }
    out
}

/// The measured variances behind 10b and its figure.
struct SfVariance {
    claims: Vec<Claim>,
    /// Per step: Var x_t of Schedule-Free, Var Φ_t of SGD (all chains).
    sf: Vec<Estimate>,
    sgd: Vec<Estimate>,
}

/// Runs `spec` on `chains` independent copies of the noisy quadratic (one tensor element
/// each), returning per-step estimates of the variance of the evaluation point (or the
/// parameters), over all chains and over the two halves separately.
fn quadratic_chains(
    spec: &str,
    seed: u64,
    chains: usize,
) -> Result<(Vec<Estimate>, Vec<Estimate>, Vec<Estimate>)> {
    let mut rng = chain_rng(seed, 0);
    let (mut all, mut first, mut second) = (Vec::new(), Vec::new(), Vec::new());
    let half = chains / 2;
    drive(
        spec,
        vec![0.0; chains],
        STEPS,
        |_, p, out| {
            for (o, &y) in out.iter_mut().zip(p) {
                let xi: f64 = StandardNormal.sample(&mut rng);
                *o = H * y + SIGMA * xi;
            }
        },
        |_, opt, p| {
            let x = opt.eval_point(0).unwrap_or(p);
            all.push(Estimate::from_samples(x));
            first.push(Estimate::from_samples(&x[..half]));
            second.push(Estimate::from_samples(&x[half..]));
            Ok(())
        },
    )?;
    Ok((all, first, second))
}

fn sf_variance(options: &VerifyOptions) -> Result<SfVariance> {
    let chains = if options.quick { 10_000 } else { 40_000 };
    let seed = options.derive_seed("p10.sf");
    let spec = format!("sf-sgd:lr={ETA},momentum={BETA},warmup_steps=0,r=0,weight_lr_power=0");
    let (sf, first, second) = quadratic_chains(&spec, seed, chains)?;
    let sgd_spec = format!("sgd:lr={ETA}");
    let (sgd, _, _) = quadratic_chains(&sgd_spec, options.derive_seed("p10.sgd"), chains)?;
    let predicted = sf_predicted_variance(STEPS);
    let temperature = ETA * SIGMA * SIGMA / (H * (2.0 - ETA * H));
    let t_late = STEPS;
    let t_early = STEPS / 4;
    let params = [
        ("h", H),
        ("sigma", SIGMA),
        ("lr", ETA),
        ("beta", BETA),
        ("t", t_late as f64),
        ("chains", chains as f64),
    ];
    // The ratio from disjoint halves of the chains: independent measurements.
    let ratio = second[t_late - 1]
        .variance()
        .ratio(first[t_early - 1].variance());
    let claims = vec![
        Claim::monte_carlo(
            "10b",
            "Schedule-Free SGD on a noisy quadratic: Var x_T follows the (z, x) covariance \
             recursion, far below SGD's temperature",
            &params,
            predicted[t_late - 1],
            sf[t_late - 1].variance(),
        )
        .reject("SGD's temperature ησ²/(h(2−ηh))", temperature)
        .optimizer(&spec),
        Claim::monte_carlo(
            "10b.t",
            "… and decays like 1/t: Var x_T / Var x_{T/4} (disjoint halves of the chains)",
            &[("t", t_late as f64), ("t_early", t_early as f64)],
            predicted[t_late - 1] / predicted[t_early - 1],
            ratio,
        )
        .reject("no decay (1)", 1.0)
        .reject("1/t² decay (1/16)", 1.0 / 16.0)
        .optimizer(&spec),
        Claim::monte_carlo(
            "10b.sgd",
            "plain SGD on the same quadratic stays at its temperature ησ²/(h(2−ηh)) \
             (problem 5b)",
            &params,
            temperature,
            sgd[t_late - 1].variance(),
        )
        .reject(
            "small-η approximation ησ²/(2h)",
            ETA * SIGMA * SIGMA / (2.0 * H),
        )
        .optimizer(&sgd_spec),
    ];
    Ok(SfVariance { claims, sf, sgd })
}

/// 10c: AdEMAMix's slow EMA — lag, variance, start-up bias — read from the optimizer state.
fn ademamix_slow_ema(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let beta3 = 0.99f64;
    let n3 = 1.0 / (1.0 - beta3);
    let spec = format!("ademamix:lr=0.001,beta3={beta3}");
    let slow = |opt: &Optimizer<f64>| -> Result<Vec<f64>> {
        opt.state("exp_avg_slow", 0)
            .map(<[f64]>::to_vec)
            .ok_or_else(|| Error::Unsupported("ademamix has no exp_avg_slow".into()))
    };
    // Lag on a ramp g_t = t, long after the start-up (β₃^t < 1e-40).
    let ramp_steps = 10_000;
    let mut lag = f64::NAN;
    drive(
        &spec,
        vec![0.0],
        ramp_steps,
        |t, _, out| out[0] = t as f64,
        |t, opt, _| {
            if t == ramp_steps {
                lag = t as f64 - slow(opt)?[0];
            }
            Ok(())
        },
    )?;
    // Start-up bias on a constant input, at t = N₃.
    let c = 2.5;
    let t_bias = n3.round() as usize;
    let mut bias = f64::NAN;
    drive(
        &spec,
        vec![0.0],
        t_bias,
        |_, _, out| out[0] = c,
        |t, opt, _| {
            if t == t_bias {
                bias = (c - slow(opt)?[0]) / c;
            }
            Ok(())
        },
    )?;
    // Variance on white noise, one chain per element, at t = 20 N₃.
    let chains = if options.quick { 10_000 } else { 40_000 };
    let sigma = 1.5f64;
    let mut rng = chain_rng(options.derive_seed("p10.ademamix"), 0);
    let t_var = 20 * n3.round() as usize;
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
                var = Some(Estimate::from_samples(&slow(opt)?).variance());
            }
            Ok(())
        },
    )?;
    let var = var.ok_or_else(|| Error::Unsupported("no variance measured".into()))?;
    let s2 = sigma * sigma;
    Ok(vec![
        Claim::identity(
            "10c",
            "AdEMAMix's slow EMA lags a ramp by N₃ − 1 = β₃/(1−β₃) (problem 2)",
            &[("beta3", beta3), ("t", ramp_steps as f64)],
            n3 - 1.0,
            lag,
            1e-8,
        )
        .optimizer(&spec),
        Claim::monte_carlo(
            "10c.var",
            "its stationary variance on white noise is σ²/(2N₃−1) (problem 2)",
            &[
                ("beta3", beta3),
                ("sigma", sigma),
                ("t", t_var as f64),
                ("chains", chains as f64),
            ],
            s2 / (2.0 * n3 - 1.0) * (1.0 - powi(beta3, 2 * t_var as i32)),
            var,
        )
        .reject("σ²/N₃, a mean of N₃ samples", s2 / n3)
        .optimizer(&spec),
        Claim::identity(
            "10c.bias",
            "not bias-corrected, it starts with the relative bias β₃^t (problem 4), here at \
             t = N₃",
            &[("beta3", beta3), ("t", t_bias as f64)],
            powi(beta3, t_bias as i32),
            bias,
            1e-12,
        )
        .optimizer(&spec),
    ])
}

/// The figures of section 10: Schedule-Free's variance against SGD's, and Muon's quintic.
pub(crate) fn figures(options: &VerifyOptions) -> Result<Vec<Figure>> {
    let sf = sf_variance(options)?;
    let predicted = sf_predicted_variance(STEPS);
    let temperature = ETA * SIGMA * SIGMA / (H * (2.0 - ETA * H));
    let series = |e: &[Estimate]| -> Vec<(f64, f64)> {
        e.iter()
            .enumerate()
            .map(|(t, e)| (t as f64 + 1.0, e.variance))
            .collect()
    };
    let line = |label: &str, points: Vec<(f64, f64)>, dashed: bool| Line {
        label: label.to_string(),
        points,
        dashed,
        group: usize::MAX,
    };
    let m = muon(options)?;
    let curve: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let x = 10f64.powf(-7.0 + 7.0 * i as f64 / 400.0);
            (x.log10(), quintic(x, 5))
        })
        .collect();
    Ok(vec![
        Figure {
            title: "Section 10: Schedule-Free's average against SGD's temperature".into(),
            caption: format!(
                "Variance over chains of the evaluated point on ½hΦ² with gradient noise σ \
                 (h = {H}, σ = {SIGMA}, η = {ETA}, β = {BETA}): Schedule-Free's x_t (uniform \
                 averaging) and plain SGD's Φ_t, both run by the library's optimizers; dashed: \
                 the (z, x) covariance recursion and SGD's temperature ησ²/(h(2−ηh))."
            ),
            x_label: "step t".into(),
            y_label: "variance (units of Φ²)".into(),
            lines: vec![
                line("Schedule-Free x_t (measured)", series(&sf.sf), false),
                line("SGD Φ_t (measured)", series(&sf.sgd), false),
                line(
                    "covariance recursion",
                    predicted
                        .iter()
                        .enumerate()
                        .map(|(t, &v)| (t as f64 + 1.0, v))
                        .collect(),
                    true,
                ),
                line(
                    "temperature ησ²/(h(2−ηh))",
                    vec![(1.0, temperature), (STEPS as f64, temperature)],
                    true,
                ),
            ],
            ..Figure::default()
        },
        Figure {
            title: "Section 10: Muon's singular values through the quintic".into(),
            caption: format!(
                "q(x), the quintic Newton–Schulz map applied 5 times, against x = σᵢ/‖G‖_F \
                 (log scale); markers: singular values of the library's Muon update for \
                 adversarial and Gaussian gradients. q's band on [0.02, 1] is [{:.3}, {:.3}]: \
                 the update is not UVᵀ.",
                m.band.0, m.band.1
            ),
            x_label: "log10 σᵢ/‖G‖_F".into(),
            y_label: "singular value of the update".into(),
            lines: vec![line("q(x)", curve, true)],
            markers: vec![Marker {
                label: "Muon update (measured)".into(),
                at: m.pairs.iter().map(|&(x, y)| (x.log10(), y)).collect(),
            }],
            ..Figure::default()
        },
        Figure {
            title: "Section 10: where each rule ends on Reddi et al.'s counterexample".into(),
            caption: reddi::caption(),
            x_label: "step t".into(),
            y_label: "x_t".into(),
            lines: reddi::paths()?
                .into_iter()
                .map(|(label, points)| line(label, points, false))
                .collect(),
            ..Figure::default()
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::muon::singular_values;
    use super::*;

    #[test]
    fn singular_values_by_hand() {
        // diag(3, 2) padded, and a rank-one matrix.
        let s = singular_values(&[3.0, 0.0, 0.0, 0.0, 2.0, 0.0], 2, 3);
        assert!(
            (s[0] - 3.0).abs() < 1e-15 && (s[1] - 2.0).abs() < 1e-15,
            "{s:?}"
        );
        let s = singular_values(&[1.0, 2.0, 2.0, 4.0, 3.0, 6.0], 3, 2);
        assert!(
            (s[0] - 70f64.sqrt()).abs() < 1e-14 && s[1].abs() < 1e-14,
            "{s:?}"
        );
    }

    #[test]
    fn the_recursion_starts_at_the_first_step_s_noise() {
        // After one step (c = 1): z = x = −ησξ, so Var x₁ = η²σ².
        let v = sf_predicted_variance(1);
        assert!((v[0] - ETA * ETA * SIGMA * SIGMA).abs() < 1e-15);
    }
}
