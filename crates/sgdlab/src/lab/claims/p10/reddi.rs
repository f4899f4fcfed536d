//! 10e: Reddi, Kale and Kumar's counterexample (ICLR 2018, "On the convergence of Adam and
//! beyond"), the reason AMSGrad and ADOPT exist, run through the library's optimizers.
//!
//! Online linear losses on the interval \[−1, 1\]: fₜ(x) = Cx when t ≡ 1 (mod 3) and
//! −x otherwise, C > 2. The average gradient (C − 2)/3 is positive, so the best fixed
//! point is x = −1. Each rule steps with αₜ = α/√t and its iterate is projected back
//! onto the interval (Reddi et al.'s projected online setting); the limit point is the mean of
//! x over the last third of the run.
//!
//! * Adam with β₁ = 0 and β₂ = 1/(1 + C²) ends at +1 (their Theorem 1): the large
//!   gradient C is divided by the √v that it has just inflated, the two small ones by a
//!   √v that has decayed back, so the steps towards +1 win. RMSProp is this Adam.
//! * AMSGrad divides by the running maximum of v, which stops that: it ends at −1.
//! * ADOPT divides by the v of the *previous* steps, independent of the current gradient, and
//!   ends at −1 for any β₂ (Taniguchi et al. 2024): measured at β₂ = 1/(1 + C²), 1/2
//!   and 0.999.
//! * A sign update (Lion with β₁ = β₂ = 0, signSGD) follows the *median* gradient, −1
//!   (two steps in three), not the mean: it ends at +1 — problem 6's median-type fixed point
//!   of normalised updates, here on the boundary. Plain SGD follows the mean to −1.
//! * Cautious masking keeps each rule's end: C-Adam at +1, C-AMSGrad at −1 (a masked
//!   coordinate only stops, so it cannot turn a drift around on one coordinate).
//! * Prodigy's estimate d multiplies Adam's step and leaves its ratio m/√v alone: with
//!   β₁ = 0, β₂ = 1/(1 + C²) it ends at +1 as Adam does. Adan with its second moment's
//!   β₃ = 1/(1 + C²) and near-zero β₁, β₂ (no momentum, no gradient difference) is Adam
//!   here too.

use super::Claim;
use crate::Result;
use crate::optim::{Optimizer, StepInfo, Tensor};

/// The large gradient C of one step in three.
const C: f64 = 3.0;
/// The base step α (the rule's `lr`; the step is α/√t).
const ALPHA: f64 = 0.5;
/// Steps per run.
const STEPS: usize = 30_000;
/// How far from an end of the interval the limit point may lie and still count as that end.
const TOL: f64 = 0.01;

/// The limit point of `spec` on the counterexample: the mean of the projected iterate over the
/// last third of the run, from x₀ = 0.
fn limit_point(spec: &str) -> Result<f64> {
    Ok(run(spec, usize::MAX)?.0)
}

/// `spec` on the counterexample: its limit point, and the iterate every `every` steps.
fn run(spec: &str, every: usize) -> Result<(f64, Vec<(f64, f64)>)> {
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let mut x = [Tensor::vector("x", vec![0.0])];
    let mut g = [Tensor::vector("x", vec![0.0])];
    let (mut sum, mut n) = (0.0, 0usize);
    let mut path = Vec::new();
    for t in 1..=STEPS {
        g[0].data_mut()[0] = if t % 3 == 1 { C } else { -1.0 };
        let info = StepInfo {
            lr_scale: 1.0 / (t as f64).sqrt(),
            ..StepInfo::default()
        };
        opt.step(&mut x, &g, &info)?;
        let p = &mut x[0].data_mut()[0];
        *p = p.clamp(-1.0, 1.0);
        if t > 2 * STEPS / 3 {
            sum += *p;
            n += 1;
        }
        if t % every == 0 {
            path.push((t as f64, *p));
        }
    }
    Ok((sum / n as f64, path))
}

/// A labelled path (t, xₜ).
pub(super) type Path = (&'static str, Vec<(f64, f64)>);

/// The caption of [`paths`]' figure.
pub(super) fn caption() -> String {
    format!(
        "The projected iterate x_t on f_t = Cx once in three steps and −x otherwise (C = {C}, \
         α_t = {ALPHA}/√t, x ∈ [−1, 1]; the optimum is −1), run by the library's optimizers: \
         Adam with β₁ = 0, β₂ = 1/(1+C²) and the sign update go to +1, AMSGrad, ADOPT and SGD \
         to −1."
    )
}

/// The iterates of Adam, AMSGrad, ADOPT, the sign update and SGD on the counterexample (the
/// report's figure), every 30th step.
pub(super) fn paths() -> Result<Vec<Path>> {
    let b2 = 1.0 / (1.0 + C * C);
    let adam = format!("adam:lr={ALPHA},beta1=0,beta2={b2},eps=1e-12");
    [
        ("Adam, β₂ = 1/(1+C²)", adam.clone()),
        ("AMSGrad", format!("{adam},amsgrad=true")),
        (
            "ADOPT, β₂ = 1/(1+C²)",
            format!("adopt:lr={ALPHA},beta1=0,beta2={b2},eps=1e-12"),
        ),
        (
            "sign update (Lion)",
            format!("lion:lr={ALPHA},beta1=0,beta2=0,weight_decay=0"),
        ),
        ("SGD", format!("sgd:lr={ALPHA}")),
    ]
    .into_iter()
    .map(|(label, spec)| Ok((label, run(&spec, 30)?.1)))
    .collect()
}

/// One claim: `spec`'s limit point is the `end` the theory gives, and not the other one.
fn ends_at(id: &str, title: &str, spec: &str, beta2: f64, end: f64) -> Result<Claim> {
    let measured = limit_point(spec)?;
    let params = [
        ("C", C),
        ("alpha", ALPHA),
        ("beta2", beta2),
        ("steps", STEPS as f64),
    ];
    let other = if end > 0.0 {
        "−1, the optimum"
    } else {
        "+1, the wrong end"
    };
    Ok(Claim::identity(id, title, &params, end, measured, TOL)
        .reject(other, -end)
        .optimizer(spec))
}

pub(crate) fn claims() -> Result<Vec<Claim>> {
    let b2 = 1.0 / (1.0 + C * C);
    let adam = format!("adam:lr={ALPHA},beta1=0,beta2={b2},eps=1e-12");
    let adopt = |beta2: f64| format!("adopt:lr={ALPHA},beta1=0,beta2={beta2},eps=1e-12");
    let mut claims = vec![
        ends_at(
            "10e",
            "Reddi et al.'s counterexample (fₜ = Cx once in three steps, −x otherwise, on \
             [−1, 1]; optimum −1): Adam with β₁ = 0, β₂ = 1/(1 + C²) ends at +1",
            &adam,
            b2,
            1.0,
        )?,
        ends_at(
            "10e.amsgrad",
            "AMSGrad (the running maximum of v) on the counterexample ends at the optimum −1",
            &format!("{adam},amsgrad=true"),
            b2,
            -1.0,
        )?,
    ];
    // ADOPT for any β₂: the claim holds at each, and the worst (largest) limit point is
    // what is checked.
    let betas = [b2, 0.5, 0.999];
    let mut worst = f64::NEG_INFINITY;
    for &beta2 in &betas {
        worst = worst.max(limit_point(&adopt(beta2))?);
    }
    let mut adopt_claim = Claim::identity(
        "10e.adopt",
        "ADOPT (v of the previous steps) ends at the optimum −1 for any β₂: the largest \
             limit point over β₂ ∈ {1/(1 + C²), 1/2, 0.999}",
        &[
            ("C", C),
            ("alpha", ALPHA),
            ("beta2_min", b2),
            ("beta2_max", 0.999),
            ("steps", STEPS as f64),
        ],
        -1.0,
        worst,
        TOL,
    )
    .reject("+1, the wrong end", 1.0);
    for &beta2 in &betas {
        adopt_claim = adopt_claim.optimizer(adopt(beta2));
    }
    claims.push(adopt_claim);
    claims.push(ends_at(
        "10e.sign",
        "A sign update (Lion, β₁ = β₂ = 0) follows the median gradient −1, not the mean \
         (C − 2)/3: it ends at +1",
        &format!("lion:lr={ALPHA},beta1=0,beta2=0,weight_decay=0"),
        0.0,
        1.0,
    )?);
    claims.push(ends_at(
        "10e.sgd",
        "SGD follows the mean gradient (C − 2)/3 > 0 to the optimum −1",
        &format!("sgd:lr={ALPHA}"),
        0.0,
        -1.0,
    )?);
    claims.push(ends_at(
        "10e.c-adam",
        "Cautious masking keeps Adam's end: C-Adam ends at +1",
        &format!("{adam},cautious=true"),
        b2,
        1.0,
    )?);
    claims.push(ends_at(
        "10e.c-amsgrad",
        "Cautious masking keeps AMSGrad's end: C-AMSGrad ends at −1",
        &format!("{adam},amsgrad=true,cautious=true"),
        b2,
        -1.0,
    )?);
    claims.push(ends_at(
        "10e.prodigy",
        "Prodigy inherits Adam's failure: its estimate d scales Adam's step, not the ratio \
         m/√v, so with β₁ = 0, β₂ = 1/(1 + C²) it ends at +1",
        &format!("prodigy:beta1=0,beta2={b2},eps=1e-12"),
        b2,
        1.0,
    )?);
    claims.push(ends_at(
        "10e.adan",
        "Adan with its second moment's decay β₃ = 1/(1 + C²) and near-zero β₁, β₂ is \
         Adam on this problem: it ends at +1",
        &format!("adan:lr={ALPHA},beta1=0.02,beta2=0.08,beta3={b2},eps=1e-12"),
        b2,
        1.0,
    )?);
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure's paths end where the claims say.
    #[test]
    fn the_paths_end_at_the_claimed_ends() {
        let paths = paths().unwrap();
        let last = |i: usize| paths[i].1.last().unwrap().1;
        assert_eq!(paths.len(), 5);
        assert!(last(0) > 0.99 && last(3) > 0.99);
        assert!(last(1) < -0.99 && last(2) < -0.99 && last(4) < -0.99);
        assert_eq!(paths[0].1.len(), STEPS / 30);
    }

    /// The claims pass, and each limit point is the end it claims, not the other.
    #[test]
    fn each_rule_ends_where_the_theory_says() {
        let claims = claims().unwrap();
        assert_eq!(claims.len(), 9);
        for c in &claims {
            assert!(c.passed, "{}: {}", c.id, c.measured);
            assert!((c.measured - c.expected).abs() < 0.01, "{}", c.id);
        }
    }

    /// RMSProp is the β₁ = 0 Adam of the theorem: it goes to the wrong end too, and so does
    /// Adam started at the optimum.
    #[test]
    fn the_wrong_end_is_not_an_artefact_of_the_start() {
        let b2 = 1.0 / (1.0 + C * C);
        assert!(limit_point(&format!("rmsprop:lr={ALPHA},alpha={b2},eps=1e-12")).unwrap() > 0.99);
        // From the optimum itself: the path leaves it for +1.
        let mut opt =
            Optimizer::<f64>::from_spec(&format!("adam:lr={ALPHA},beta1=0,beta2={b2},eps=1e-12"))
                .unwrap();
        let mut x = [Tensor::vector("x", vec![-1.0])];
        let mut g = [Tensor::vector("x", vec![0.0])];
        for t in 1..=STEPS {
            g[0].data_mut()[0] = if t % 3 == 1 { C } else { -1.0 };
            let info = StepInfo {
                lr_scale: 1.0 / (t as f64).sqrt(),
                ..StepInfo::default()
            };
            opt.step(&mut x, &g, &info).unwrap();
            let p = &mut x[0].data_mut()[0];
            *p = p.clamp(-1.0, 1.0);
        }
        assert!(x[0].data()[0] > 0.9);
    }
}
