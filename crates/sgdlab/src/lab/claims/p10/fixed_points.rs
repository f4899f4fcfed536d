//! 10i: where three more rules stand at problem 6's points {0, 0, 3} (Φ* = 1, the mean;
//! the median is 0), through the audit's measurements of the library's optimizers.
//!
//! * **Lion** with β₁ = β₂ = 0 steps by −η·sign(g) on the current example: a sign update
//!   is problem 6's normalised update at ε → 0, so its drift at Φ* is −E\[sign g\] = −1/3
//!   and its fixed point is the median. On the lattice Φ ∈ ηℤ (η = 2⁻⁷, exact in binary, so
//!   that sign(0) = 0 is reached), the chain from 0 moves up with probability 1/3 and stays
//!   otherwise, and from kη > 0 moves down with probability 2/3: its stationary law is
//!   geometric, πₖ ∝ 2⁻ᵏ, with mean η. The average iterate at η and at η/2, extrapolated
//!   to η → 0 (2Φ̄\_(η/2) − Φ̄\_η), is the median 0.
//! * **Madam** multiplies: Φ ← Φ·exp(−ηĝ sign Φ), ĝ = g/√v̂. Its scale |Φ| is a function of
//!   Φ, as problem 7's multiplicative rule's, but its drift at Φ* is not 0. Per unit η,
//!   E\[exp(−ηĝ) − 1\]/η = −E\[ĝ\] + ½ηE\[ĝ²\] − ⅙η²E\[ĝ³\] + …, and v contains the current
//!   g² (problem 6c): −E\[ĝ\] = ½(1 − β)κ₃ with κ₃ = E\[g³\]/E\[g²\]^{3/2}, and
//!   E\[ĝ²\] = 1 − c(κ₄ − 1)(1 − c)/(2 − c) with c = 1 − β, κ₄ = E\[g⁴\]/E\[g²\]²: the current g²
//!   in v lowers it by c(κ₄ − 1), the spread of the earlier v, variance
//!   c/(2 − c)·Var(g²) (problem 2), raises E\[1/v\] by as much times 1/(2 − c); and E\[ĝ³\] = κ₃,
//!   to first order in c.
//! * **Schedule-Free AdamW** divides each example's gradient by a second moment that
//!   contains it: at Φ* its drift is RMSProp's ½(1 − β₂)κ₃ (6c), and with no momentum noise
//!   in its state the bias stands hundreds of standard errors from 0.

use super::cautious::drift;
use super::{Claim, VerifyOptions};
use crate::Result;
use crate::data::parse_csv;
use crate::lab::audit::{SimulationOptions, simulated_fixed_point, stationary_drift};
use crate::lab::montecarlo::Measurement;
use crate::model::Points;
use crate::optim::OptimizerSpec;

/// Problem 6's points.
const POINTS: &str = "0\n0\n3\n";
/// The per-example gradients g = Φ* − x at Φ* = 1.
const GRADIENTS: [f64; 3] = [1.0, 1.0, -2.0];

/// E\[gᵏ\] over the three examples at Φ*.
fn moment(k: i32) -> f64 {
    GRADIENTS.iter().map(|g| g.powi(k)).sum::<f64>() / 3.0
}

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = lion(options)?;
    claims.push(madam(options)?);
    claims.push(schedule_free_adamw(options)?);
    Ok(claims)
}

fn lion(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let model = Points::new(parse_csv(POINTS, false)?);
    let lr = 0.0078125; // 2⁻⁷
    let spec_text = format!("lion:lr={lr},beta1=0,beta2=0,weight_decay=0");
    let spec: OptimizerSpec = spec_text.parse()?;
    let sign_mean = GRADIENTS.iter().map(|g| g.signum()).sum::<f64>() / 3.0;
    // The drift is the same on every probe (no state enters a sign of the current g).
    let probe = SimulationOptions {
        burn_in: 10,
        steps: 1_000,
        seed: options.derive_seed("p10.lion.drift"),
    };
    let (at_star, _) = stationary_drift(&model, &spec, &[1.0], &probe)?;
    let sim = SimulationOptions {
        burn_in: 20_000,
        steps: if options.quick { 100_000 } else { 400_000 },
        seed: options.derive_seed("p10.lion.fp"),
    };
    // Independent example orders: with one order the two chains, once at 0, are the same
    // chain in units of their η, and the extrapolation would be exact, not measured.
    let (full, full_se) = simulated_fixed_point(&model, &spec, &[1.0], 1.0, &sim)?;
    let half_sim = SimulationOptions {
        seed: options.derive_seed("p10.lion.fp.half"),
        ..sim
    };
    let (half, half_se) = simulated_fixed_point(&model, &spec, &[1.0], 0.5, &half_sim)?;
    let extrapolated = Measurement::new(
        2.0 * half[0] - full[0],
        (4.0 * half_se[0] * half_se[0] + full_se[0] * full_se[0]).sqrt(),
    );
    Ok(vec![
        Claim::identity(
            "10i.lion",
            "Lion with β₁ = β₂ = 0 is a sign update, problem 6's normalised update at ε → 0: \
             its drift at Φ* = 1 of the points {0, 0, 3} is −E[sign g] = −1/3",
            &[("lr", lr), ("points", 3.0)],
            -sign_mean,
            at_star[0],
            1e-12,
        )
        .reject("0 (a stationary point of the loss)", 0.0)
        .optimizer(&spec_text),
        Claim::monte_carlo(
            "10i.lion.fp",
            "…and its fixed point is the median 0, not the mean: the average iterate at η and \
             η/2 extrapolated to η → 0 (2Φ̄_{η/2} − Φ̄_η; each is η's geometric-law mean)",
            &[
                ("lr", lr),
                ("steps", sim.steps as f64),
                ("mean_at_lr", full[0]),
                ("mean_at_half_lr", half[0]),
            ],
            0.0,
            extrapolated,
        )
        .reject("the mean Φ* = 1", 1.0)
        .optimizer(&spec_text),
    ])
}

fn madam(options: &VerifyOptions) -> Result<Claim> {
    let lr = 0.01;
    // Madam's second-moment decay, fixed in its reference implementation.
    let beta = 0.999;
    let spec = format!("madam:lr={lr}");
    let measured = drift(options, "p10.madam", POINTS, 1.0, &spec)?;
    let m2 = moment(2);
    let skew = moment(3) / m2.powf(1.5);
    let c = 1.0 - beta;
    let normalised_sq = 1.0 - c * (moment(4) / (m2 * m2) - 1.0) * (1.0 - c) / (2.0 - c);
    let rms_bias = 0.5 * (1.0 - beta) * skew;
    let exponential = 0.5 * lr * normalised_sq - lr * lr * skew / 6.0;
    Ok(Claim::monte_carlo(
        "10i.madam",
        "Madam's drift at Φ* is not problem 7's 0: the exponential adds ½ηE[ĝ²] − ⅙η²E[ĝ³] \
         to RMSProp's bias ½(1 − β)E[g³]/E[g²]^{3/2} (6c), per unit η (state stationary)",
        &[("lr", lr), ("beta", beta), ("skewness", skew)],
        rms_bias + exponential,
        measured,
    )
    .reject("0 (problem 7's multiplicative rule)", 0.0)
    .reject("RMSProp's bias alone (no exponential)", rms_bias)
    .reject("the exponential's ½η alone (no bias from v)", 0.5 * lr)
    .optimizer(spec))
}

fn schedule_free_adamw(options: &VerifyOptions) -> Result<Claim> {
    let beta2 = 0.999;
    let spec = format!("sf-adamw:lr=0.01,beta2={beta2}");
    let measured = drift(options, "p10.sf-adamw", POINTS, 1.0, &spec)?;
    let skew = moment(3) / moment(2).powf(1.5);
    Ok(Claim::monte_carlo(
        "10i.sf-adamw",
        "Schedule-Free AdamW's drift at Φ* is RMSProp's O(1 − β₂) bias ½(1 − β₂)E[g³]/E[g²]^{3/2} \
         (6c): its v contains the current g², and no momentum noise hides it",
        &[("lr", 0.01), ("beta2", beta2), ("skewness", skew)],
        0.5 * (1.0 - beta2) * skew,
        measured,
    )
    .reject("0 (consistent, as Schedule-Free SGD)", 0.0)
    .optimizer(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moments_of_the_gradients_at_the_minimiser() {
        assert_eq!(moment(1), 0.0);
        assert_eq!(moment(2), 2.0);
        assert_eq!(moment(3), -2.0);
        assert_eq!(moment(4), 6.0);
    }
}
