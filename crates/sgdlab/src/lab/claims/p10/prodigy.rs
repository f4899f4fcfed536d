//! 10h: Prodigy's estimate d of the distance to the solution, on convex quadratics
//! f(x) = ½Σᵢ hᵢ(xᵢ − x*ᵢ)² with exact gradients and a known distance, run through the
//! library's `prodigy`.
//!
//! Prodigy sets d̂ = r/‖s‖₁ with r = Σₖ wₖ⟨gₖ, x₀ − xₖ⟩ and s = Σₖ wₖgₖ
//! (the same weights wₖ, discounted by β₃). Convexity gives
//! ⟨gₖ, x₀ − xₖ⟩ ≤ ⟨gₖ, x₀ − x*⟩ (on a quadratic the gap is exactly
//! 2(f(xₖ) − f*)), so r ≤ ⟨s, x₀ − x*⟩ ≤ ‖s‖₁‖x₀ − x*‖∞: the estimate never
//! exceeds the **ℓ∞** distance D∞ = ‖x₀ − x*‖∞ (its denominator is an ℓ1 norm), at
//! every step of every instance. Mishchenko and Defazio's other claim, that d grows from
//! d₀ to the scale of D, is measured as the smallest d_T/D∞ over the instances after
//! T steps from d₀ = 10⁻⁶.

use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};

use super::{Claim, VerifyOptions};
use crate::Result;
use crate::lab::montecarlo::chain_rng;
use crate::optim::{Optimizer, StepInfo, Tensor};

/// Coordinates of each instance.
const DIM: usize = 100;
/// Steps per instance.
const STEPS: usize = 2000;
/// The factor of D∞ that d must reach for the growth claim.
const GROWTH: f64 = 0.05;

/// One instance's run: the largest d/D∞ over the steps, d_T/D∞ at the end, and D∞.
fn instance(seed: u64, k: u64) -> Result<(f64, f64, f64)> {
    let mut rng = chain_rng(seed, k);
    // Curvatures log-uniform on [0.01, 1], the solution standard normal, x₀ = 0.
    let h: Vec<f64> = (0..DIM)
        .map(|_| (rng.random_range(0.0..1.0) * 100f64.ln()).exp() / 100.0)
        .collect();
    let target: Vec<f64> = (0..DIM).map(|_| StandardNormal.sample(&mut rng)).collect();
    let d_inf = target.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut opt = Optimizer::<f64>::from_spec(SPEC)?;
    let mut x = [Tensor::vector("x", vec![0.0; DIM])];
    let mut g = [Tensor::vector("x", vec![0.0; DIM])];
    let mut worst = 0.0f64;
    for _ in 0..STEPS {
        for ((gi, xi), (hi, ti)) in g[0]
            .data_mut()
            .iter_mut()
            .zip(x[0].data())
            .zip(h.iter().zip(&target))
        {
            *gi = hi * (xi - ti);
        }
        opt.step(&mut x, &g, &StepInfo::default())?;
        worst = worst.max(d_of(&opt) / d_inf);
    }
    Ok((worst, d_of(&opt) / d_inf, d_inf))
}

/// The optimizer's current estimate d.
fn d_of(opt: &Optimizer<f64>) -> f64 {
    opt.tensor_scalars(0).map_or(f64::NAN, |s| s[0])
}

/// Prodigy at its defaults (d₀ = 10⁻⁶, lr 1).
const SPEC: &str = "prodigy";

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let instances: u64 = if options.quick { 8 } else { 32 };
    let seed = options.derive_seed("10h");
    let runs: Vec<(f64, f64, f64)> = (0..instances)
        .map(|k| instance(seed, k))
        .collect::<Result<_>>()?;
    let worst = runs.iter().fold(0.0f64, |m, r| m.max(r.0));
    let smallest = runs.iter().fold(f64::INFINITY, |m, r| m.min(r.1));
    let n = runs.len() as f64;
    let mean = runs.iter().map(|r| r.1).sum::<f64>() / n;
    let params = [
        ("dim", DIM as f64),
        ("steps", STEPS as f64),
        ("instances", n),
        ("d0", 1e-6),
    ];
    let bound = Claim::at_most(
        "10h",
        "Prodigy's d never exceeds the ℓ∞ distance ‖x₀ − x*‖∞ on a convex quadratic (exact \
         gradients; its denominator ‖s‖₁ pairs with the ∞-norm): the largest d/D∞ over every \
         step and instance",
        &params,
        1.0,
        worst,
        1e-12,
    )
    .optimizer(SPEC);
    let growth = Claim::at_least(
        "10h.growth",
        &format!(
            "…and d grows from d₀ = 10⁻⁶ to the scale of D∞: the smallest d_T/D∞ over the \
             instances (their mean is {mean:.3})"
        ),
        &params,
        GROWTH,
        smallest,
        0.0,
    )
    .optimizer(SPEC);
    Ok(vec![bound, growth])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prodigys_estimate_stays_below_the_distance_and_grows_to_its_scale() {
        let claims = claims(&VerifyOptions {
            quick: true,
            ..VerifyOptions::default()
        })
        .unwrap();
        for c in &claims {
            assert!(c.passed, "{}: {} against {}", c.id, c.measured, c.expected);
        }
        assert!(claims[0].measured > 0.01 && claims[0].measured < 1.0);
    }
}
