//! 10g: the start-up of three adaptive rules on a constant gradient g, the setting of problem
//! 4 (bias correction), run through the library's optimizers.
//!
//! * **Adagrad** sums g² instead of averaging it: √(Σg²) = √t·|g|, so its step
//!   decays like t^(−1/2) — measured as the exponent of the step between t = 10 and
//!   t = 1000 (SGD with ηₜ ∝ 1/t would give −1, an EMA of g² 0).
//! * **Adamax** normalises by uₜ = max(β₂uₜ₋₁, |g| + ε), an infinity norm that
//!   reaches |g| + ε at the first step: no start-up bias to correct in the denominator, so
//!   its first step is already η·g/(|g| + ε) (an EMA of g² not corrected would give
//!   η√(1 − β₂)-sized steps).
//! * **RAdam** takes SGD-with-momentum steps η·m̂ until the variance of the adaptive
//!   rate is finite, ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ) > 5 with
//!   ρ∞ = 2/(1 − β₂) − 1, and adaptive steps after: the first adaptive step is
//!   measured as the first step that is not η·g.
//! * **NAdam** keeps m as an EMA with β₁, m = (1 − β₁ᵗ)g on a constant gradient, but
//!   debiases with the product of its momentum schedule μₛ = β₁(1 − ½·0.96^(sψ)),
//!   Πₜ = ∏\_(s ≤ t) μₛ, not with β₁ᵗ: its step on a constant gradient is
//!   η·g/|g| times wₜ = (1 − μₜ)/(1 − Πₜ) + μₜ₊₁(1 − β₁ᵗ)/(1 − Πₜμₜ₊₁), not 1 — problem 4's
//!   correction of a total weight by another. w₁ = 1.056: the first steps are 5.6% too long,
//!   and wₜ → 1 only as μₜ → β₁ (ψt ≫ 25).

use super::Claim;
use crate::Result;
use crate::optim::{Optimizer, Tensor};

/// The gradient (≠ 1, so that η·g and η·g/|g| differ).
const G: f64 = 3.0;

/// The steps Φₜ − Φₜ₋₁ of `spec` on the constant gradient G, t = 1..=steps.
fn steps_on_constant(spec: &str, steps: usize) -> Result<Vec<f64>> {
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let mut p = [Tensor::vector("p", vec![0.0])];
    let g = [Tensor::vector("p", vec![G])];
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let before = p[0].data()[0];
        opt.step(&mut p, &g, &Default::default())?;
        out.push(p[0].data()[0] - before);
    }
    Ok(out)
}

/// The first t with ρₜ > 5 (RAdam's adaptive regime), from the formula; `usize::MAX` when
/// there is none in 10⁶ steps (ρ∞ ≤ 5: β₂ ≤ 2/3 never adapts).
fn radam_switch(beta2: f64) -> usize {
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    (1..1_000_000)
        .find(|&t| {
            let bt = beta2.powi(t as i32);
            rho_inf - 2.0 * t as f64 * bt / (1.0 - bt) > 5.0
        })
        .unwrap_or(usize::MAX)
}

pub(crate) fn claims() -> Result<Vec<Claim>> {
    let lr = 0.01;
    let adagrad_spec = format!("adagrad:lr={lr},eps=1e-300");
    let steps = steps_on_constant(&adagrad_spec, 1000)?;
    let exponent = (steps[999] / steps[9]).ln() / (1000f64 / 10.0).ln();
    let adagrad = Claim::identity(
        "10g",
        "Adagrad on a constant gradient: its step decays like t^(−1/2) (√Σg² = √t·|g|), the \
         exponent measured between t = 10 and t = 1000",
        &[("lr", lr), ("g", G)],
        -0.5,
        exponent,
        1e-9,
    )
    .reject("−1 (a step ∝ 1/t)", -1.0)
    .reject("0 (an EMA of g²: a constant step)", 0.0)
    .optimizer(adagrad_spec);

    let (beta2, eps) = (0.999, 1e-8);
    let adamax_spec = format!("adamax:lr={lr},beta2={beta2},eps={eps:e}");
    let first = steps_on_constant(&adamax_spec, 1)?[0];
    let adamax = Claim::identity(
        "10g.adamax",
        "Adamax's infinity norm needs no start-up correction: its first step on a constant \
         gradient is already η·g/(|g| + ε), relative to η",
        &[("lr", lr), ("g", G), ("beta2", beta2), ("eps", eps)],
        -G / (G + eps),
        first / lr,
        1e-12,
    )
    .reject(
        "an uncorrected EMA of g²: η·g/√((1 − β₂)g²)",
        -1.0 / (1.0 - beta2).sqrt(),
    )
    .optimizer(adamax_spec);

    let beta2 = 0.999;
    let radam_spec = format!("radam:lr={lr},beta2={beta2}");
    let steps = steps_on_constant(&radam_spec, 20)?;
    // The first step that is not SGD with momentum's η·m̂ = η·g.
    let measured = steps
        .iter()
        .position(|s| (s + lr * G).abs() > 1e-12)
        .map_or(f64::NAN, |i| (i + 1) as f64);
    let radam = Claim::identity(
        "10g.radam",
        "RAdam's first adaptive step is the first t with ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ) > 5 \
         (before it, SGD with momentum: η·m̂)",
        &[("lr", lr), ("g", G), ("beta2", beta2)],
        radam_switch(beta2) as f64,
        measured,
        0.1,
    )
    .reject("t = 1 (adaptive from the start, as Adam)", 1.0)
    .optimizer(radam_spec);
    Ok(vec![adagrad, adamax, radam, nadam()?])
}

/// NAdam's weight wₜ of a constant gradient in its step (module doc), from its momentum
/// schedule as `torch.optim.NAdam` defines it (β₁ = 0.9, ψ = 0.004).
fn nadam_weight(t: usize) -> f64 {
    let (beta1, psi) = (0.9f64, 0.004f64);
    let mu = |s: usize| beta1 * (1.0 - 0.5 * 0.96f64.powf(s as f64 * psi));
    let product: f64 = (1..=t).map(mu).product();
    (1.0 - mu(t)) / (1.0 - product)
        + mu(t + 1) * (1.0 - beta1.powi(t as i32)) / (1.0 - product * mu(t + 1))
}

/// 10g.nadam: NAdam's steps on a constant gradient against wₜ, at t = 1, 10, 100 and 1000.
fn nadam() -> Result<Claim> {
    let (lr, eps) = (0.01, 1e-300);
    let spec = format!("nadam:lr={lr},eps={eps:e}");
    let steps = steps_on_constant(&spec, 1000)?;
    let at = [1usize, 10, 100, 1000];
    let worst = |weight: &dyn Fn(usize) -> f64| {
        at.iter().fold(0.0f64, |m, &t| {
            let w = nadam_weight(t);
            m.max((-steps[t - 1] / lr - weight(t)).abs() / w)
        })
    };
    let measured = worst(&nadam_weight);
    Ok(Claim::identity(
        "10g.nadam",
        "NAdam's momentum schedule: on a constant gradient its step is η·wₜ with \
         wₜ = (1 − μₜ)/(1 − Πₜ) + μₜ₊₁(1 − β₁ᵗ)/(1 − Πₜμₜ₊₁) (its EMA debiased by Πμ, not \
         β₁ᵗ): worst relative error at t = 1, 10, 100, 1000",
        &[
            ("lr", lr),
            ("g", G),
            ("w1", nadam_weight(1)),
            ("w1000", nadam_weight(1000)),
        ],
        0.0,
        measured,
        1e-12,
    )
    .reject(
        "a debiased EMA's η (wₜ = 1, Adam's step): its worst relative error",
        worst(&|_| 1.0),
    )
    .optimizer(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_claims_pass() {
        let claims = claims().unwrap();
        assert_eq!(claims.len(), 4);
        for c in &claims {
            assert!(c.passed, "{}: {} against {}", c.id, c.measured, c.expected);
        }
    }

    /// w₁ by hand: μ₁ = 0.9(1 − ½0.96^0.004), μ₂ likewise at 0.008; the schedule's first
    /// step is 5.6% longer than η.
    #[test]
    fn nadam_first_weight_by_hand() {
        let mu1 = 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.004));
        let mu2 = 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.008));
        let w1 = 1.0 + mu2 * 0.1 / (1.0 - mu1 * mu2);
        assert!((nadam_weight(1) - w1).abs() < 1e-15);
        assert!((w1 - 1.0564).abs() < 1e-3, "{w1}");
    }

    /// ρₜ > 5 first at t = 6 for β₂ = 0.999 (ρ₅ ≈ 4.996), and never for β₂ = ½
    /// (ρ∞ = 3).
    #[test]
    fn radam_switches_where_rho_passes_five() {
        assert_eq!(radam_switch(0.999), 6);
        assert_eq!(radam_switch(0.5), usize::MAX);
    }
}
