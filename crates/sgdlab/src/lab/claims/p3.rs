//! Problem 3: momentum as an exponential moving average.
//!
//! yₜ = (1 − 1/N)yₜ₋₁ + xₜ (sum form). Claims: constant input c gives
//! lim yₜ = Nc; yₜ is an EMA (rate 1/N) of Nxₜ; yₜ = Nμₜ exactly. Hence
//! sum-form and EMA-form momentum give identical trajectories.

use rand_distr::{Distribution, StandardNormal};

use super::sequences::{adversarial, nan_max, worst_relative_residual};
use super::{Claim, VerifyOptions};
use crate::Result;
use crate::average::{Ema, SumMomentum};
use crate::lab::montecarlo::chain_rng;
use crate::optim::{Optimizer, StepInfo, Tensor};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = vec![limit()?];
    claims.extend(ema_identities(options)?);
    claims.extend(momentum_trajectories(options)?);
    claims.push(library_optimizers(options)?);
    claims.extend(super::real::problem3()?);
    Ok(claims)
}

/// The same equivalence through the optimizer library a user calls:
/// `sgd:lr=η,momentum=β` against `ema-momentum:lr=η/(1−β),beta=β`, on gradients of a noisy
/// quadratic evaluated at each optimizer's own parameters.
fn library_optimizers(options: &VerifyOptions) -> Result<Claim> {
    let (eta, beta, steps) = (0.01f64, 0.9f64, 1_000usize);
    let curvature = [0.1, 1.0, 10.0, 100.0];
    let sgd_spec = format!("sgd:lr={eta},momentum={beta}");
    let ema_spec = format!("ema-momentum:lr={},beta={beta}", eta / (1.0 - beta));
    let mut sgd = Optimizer::<f64>::from_spec(&sgd_spec)?;
    let mut ema = Optimizer::<f64>::from_spec(&ema_spec)?;
    let start = vec![1.0, -2.0, 3.0, 0.5];
    let mut a = vec![Tensor::vector("phi", start.clone())];
    let mut b = vec![Tensor::vector("phi", start)];
    let mut rng = chain_rng(options.derive_seed("p3.library"), 0);
    let (mut worst, mut scale) = (0.0f64, 0.0f64);
    let grad = |p: &[Tensor<f64>], noise: &[f64]| {
        let g = p[0].data().iter().zip(curvature).zip(noise);
        vec![Tensor::vector(
            "phi",
            g.map(|((x, c), n)| c * x + n).collect(),
        )]
    };
    for _ in 0..steps {
        let noise: Vec<f64> = (0..4)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                0.1 * z
            })
            .collect();
        let (ga, gb) = (grad(&a, &noise), grad(&b, &noise));
        sgd.step(&mut a, &ga, &StepInfo::default())?;
        ema.step(&mut b, &gb, &StepInfo::default())?;
        for (x, y) in a[0].data().iter().zip(b[0].data()) {
            scale = scale.max(x.abs());
            worst = nan_max(worst, (x - y).abs());
        }
    }
    Ok(Claim::identity(
        "3c.optim",
        "the library's sgd:lr=η,momentum=β and ema-momentum:lr=η/(1-β),beta=β agree",
        &[("lr", eta), ("beta", beta), ("t", steps as f64)],
        0.0,
        worst / scale,
        1e-12,
    )
    .optimizer(&sgd_spec)
    .optimizer(&ema_spec))
}

/// 3a: run the recurrence on a constant until it stops moving.
fn limit() -> Result<Claim> {
    let (n, c, steps) = (10.0f64, 1.5f64, 3_000usize);
    let rule = SumMomentum::from_horizon(n)?;
    let y = (0..steps).fold(0.0f64, |y, _| rule.update(y, c));
    Ok(Claim::identity(
        "3a",
        "constant input c: lim y_t = N·c",
        &[("N", n), ("c", c), ("t", steps as f64)],
        n * c,
        y,
        1e-12 * n * c,
    )
    // The plausible slip: β/(1-β)·c = (N-1)·c, the sum of the past inputs without the current
    // one (or the EMA form's limit c scaled by N-1 instead of N).
    .reject("(N-1)·c = β/(1-β)·c", (n - 1.0) * c))
}

/// 3b and 3c on adversarial sequences, for several horizons.
fn ema_identities(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let len = 2_000;
    let sequences = adversarial(options.derive_seed("p3.identity"), len);
    let (mut worst_b, mut worst_c) = (0.0f64, 0.0f64);
    for n in [1.0, 2.0, 10.0, 1000.0] {
        let sum = SumMomentum::from_horizon(n)?;
        let ema = Ema::from_horizon(n)?;
        for (_, xs) in &sequences {
            let (mut y, mut of_nx, mut mu, mut abs) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            let (mut ys, mut ema_of_nx, mut n_mu, mut scale) = (vec![], vec![], vec![], vec![]);
            for &x in xs {
                y = sum.update(y, x);
                of_nx = ema.update(of_nx, n * x);
                mu = ema.update(mu, x);
                abs = ema.update(abs, x.abs());
                ys.push(y);
                ema_of_nx.push(of_nx);
                n_mu.push(n * mu);
                scale.push(n * abs);
            }
            worst_b = nan_max(worst_b, worst_relative_residual(&ys, &ema_of_nx, &scale));
            worst_c = nan_max(worst_c, worst_relative_residual(&ys, &n_mu, &scale));
        }
    }
    let params = [("sequences", sequences.len() as f64), ("t", len as f64)];
    Ok(vec![
        Claim::identity(
            "3b",
            "y_t is an EMA (rate 1/N) of N·x_t (worst relative residual, adversarial inputs)",
            &params,
            0.0,
            worst_b,
            1e-12,
        ),
        Claim::identity(
            "3c",
            "y_t = N·μ_t exactly (worst relative residual, adversarial inputs)",
            &params,
            0.0,
            worst_c,
            1e-12,
        ),
    ])
}

/// Three momentum forms on a noisy ill-conditioned quadratic, with the same gradient noise:
/// sum form (b ← βb + g, Φ ← Φ − η b), EMA form (m ← βm + (1−β)g, Φ ← Φ − η/(1−β)·m) and the
/// form that accumulates the learning rate in its buffer (v ← βv + η g, Φ ← Φ − v).
struct Trajectories {
    sum: Vec<f64>,
    ema: Vec<f64>,
    lr_in_buffer: Vec<f64>,
    scale: f64,
}

fn run_momentum(seed: u64, lr_after_change: f64) -> Result<Trajectories> {
    let curvature = [0.1, 1.0, 10.0, 100.0];
    let (beta, lr, steps, change_at) = (0.9, 0.01, 1_000usize, 500usize);
    let sum_rule = SumMomentum::new(beta)?;
    let ema_rule = Ema::new(beta)?;
    let mut rng = chain_rng(seed, 0);
    let start = [1.0, -2.0, 3.0, 0.5];
    let (mut p_sum, mut p_ema, mut p_buf) = (start, start, start);
    let (mut b, mut m, mut v) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let mut out = Trajectories {
        sum: vec![],
        ema: vec![],
        lr_in_buffer: vec![],
        scale: 0.0,
    };
    for t in 0..steps {
        let eta = if t < change_at { lr } else { lr_after_change };
        for i in 0..4 {
            let noise: f64 = StandardNormal.sample(&mut rng);
            let g = |p: f64| curvature[i] * p + 0.1 * noise;
            b[i] = sum_rule.update(b[i], g(p_sum[i]));
            p_sum[i] -= eta * b[i];
            m[i] = ema_rule.update(m[i], g(p_ema[i]));
            p_ema[i] -= eta / (1.0 - beta) * m[i];
            v[i] = beta * v[i] + eta * g(p_buf[i]);
            p_buf[i] -= v[i];
        }
        out.sum.extend(p_sum);
        out.ema.extend(p_ema);
        out.lr_in_buffer.extend(p_buf);
    }
    out.scale = out.sum.iter().fold(0.0f64, |s, p| s.max(p.abs()));
    Ok(out)
}

fn worst_difference(a: &[f64], b: &[f64], scale: f64) -> f64 {
    a.iter()
        .zip(b)
        .fold(0.0, |w, (a, b)| nan_max(w, (a - b).abs() / scale))
}

fn momentum_trajectories(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let seed = options.derive_seed("p3.momentum");
    let constant = run_momentum(seed, 0.01)?;
    let changed = run_momentum(seed, 0.001)?;
    let params = [
        ("beta", 0.9),
        ("lr", 0.01),
        ("lr_after_change", 0.001),
        ("change_at", 500.0),
        ("t", 1000.0),
    ];
    let tolerance = 1e-12;
    Ok(vec![
        Claim::identity(
            "3c.momentum",
            "sum-form and EMA-form momentum: identical trajectories at constant lr",
            &params,
            0.0,
            worst_difference(&constant.sum, &constant.ema, constant.scale),
            tolerance,
        ),
        Claim::identity(
            "3c.buffer",
            "lr inside the buffer (v ← βv + ηg) is also identical at constant lr",
            &params,
            0.0,
            worst_difference(&constant.sum, &constant.lr_in_buffer, constant.scale),
            tolerance,
        ),
        Claim::identity(
            "3c.schedule",
            "lr changed mid-run: sum and EMA forms (lr applied at use) stay identical; \
             the lr-in-buffer form departs",
            &params,
            0.0,
            worst_difference(&changed.sum, &changed.ema, changed.scale),
            tolerance,
        )
        .reject(
            "the lr-in-buffer form's difference",
            worst_difference(&changed.sum, &changed.lr_in_buffer, changed.scale),
        ),
    ])
}
