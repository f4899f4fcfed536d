//! Section 12, beyond the problem set: batch-size scaling rules, measured on problem 5's model
//! with minibatches — per-example loss c(Φ − x)²/2, x ~ N(0, σ²), a minibatch of B examples
//! giving the gradient c(Φ − x̄\_B), x̄\_B ~ N(0, σ²/B) (the mean of B Gaussian examples is
//! Gaussian, and is drawn as such) — through the library's optimizers.
//!
//! * **SGD's linear rule.** The iterate is AR(1), Φ ← (1 − ηc)Φ + ηc x̄\_B, with stationary
//!   variance ηcσ²/(B(2 − ηc)): η/B sets it to first order in ηc, so B → κB with η → κη
//!   keeps it only while κηc ≪ 1 — exactly, the variance changes by
//!   (2 − ηc)/(2 − κηc) (31% at κηc = ½, where the rule breaks).
//! * **Adam's square-root rule** (Malladi, Lyu, Panigrahi and Arora, "On the SDEs and scaling
//!   rules for adaptive gradient algorithms", NeurIPS 2022): with noise-dominated gradients
//!   √v̂ ≈ cσ/√B, so Adam is SGD at the rate η√B/(cσ) with the noise σ²/B, and
//!   Var Φ ≈ ησ/(2√B): B → κB keeps it with η → √κη, 1 − β₁ → κ(1 − β₁),
//!   1 − β₂ → κ(1 − β₂) and ε → ε/√κ (the averages keep their horizons in units of the
//!   rate). The linear rule η → κη multiplies it by √κ instead. The rule can only be
//!   applied while κ(1 − β₁) < 1. RMSProp (Adam without the first moment, α for β₂) obeys the
//!   same rule.
//! * **The gradient noise scale in closed form** ([`crate::lab::noise`]). Least squares
//!   ½(w·x − y)² with x ~ N(0, I\_d), y = w\*·x + sε, at w = w\* + δ: the per-example
//!   gradient g = x(x·δ − sε) has G = δ and, by Isserlis' theorem
//!   (E[x\_j²(x·δ)²] = |δ|² + 2δ\_j²), tr Σ = (d + 1)|δ|² + s²d, so
//!   B\_simple = (d + 1) + s²d/|δ|². Measured by `gradient_noise` on sampled data sets: its
//!   tr Σ̂ and its bias-corrected |G|²̂ are unbiased for them, while the sample's raw |ḡ|²
//!   overstates |G|² by tr Σ/n.
//! * **The noisy quadratic model** (Zhang, Li, Nado et al., "Which algorithmic choices matter
//!   at which batch sizes?", NeurIPS 2019): ℒ = ½Σᵢhᵢxᵢ², hᵢ = 1/i (i = 1…d), minibatch
//!   gradients hᵢxᵢ + √(hᵢ/B)zᵢ (the noise covariance C = H). Every coordinate is a linear
//!   recursion, so the steady-state risk is exact: SGD's E[xᵢ²] = η/(B(2 − ηhᵢ)); a fixed
//!   diagonal preconditioner Pᵢ = hᵢ^(−½) (Adam's √v under C = H) replaces η by ηPᵢ; heavy
//!   ball (PyTorch's v ← βv + g, x ← x − ηv) has the stationary covariance P of the 2×2
//!   recursion s ← As + bn, P = APAᵀ + (hᵢ/B)bbᵀ, solved as a 3×3 linear system. Measured
//!   through the library's `sgd` (with momentum) on chains of every coordinate.

use rand_distr::{Distribution, StandardNormal};

use super::{Claim, VerifyOptions};
use crate::Result;
use crate::data::Dataset;
use crate::lab::figures::{Figure, Line};
use crate::lab::montecarlo::{Estimate, Measurement};
use crate::lab::noise::gradient_noise;
use crate::model::LinReg;
use crate::optim::{Optimizer, StepInfo, Tensor};

/// Curvature c and example noise σ.
const C: f64 = 1.0;
const SIGMA: f64 = 1.0;
/// Chains per optimizer (each an element of one tensor).
const BLOCK: usize = 1_000;

/// The stationary Var Φ of `spec` with minibatches of `batch`: `blocks` optimizers, each
/// stepping a tensor of [`BLOCK`] independent chains from Φ = 0 for `steps` steps on their own
/// gradient draws (the stream of the block), the variance over every chain's last Φ.
fn stationary_variance(
    options: &VerifyOptions,
    tag: &str,
    spec: &str,
    batch: f64,
    steps: usize,
    blocks: usize,
) -> Result<Measurement> {
    let template = Optimizer::<f64>::from_spec(spec)?;
    let mc = options.monte_carlo(tag, blocks)?;
    let noise = SIGMA / batch.sqrt();
    let finals = mc.run(|rng, _| -> Result<Vec<f64>> {
        let mut opt = template.clone();
        let mut phi = [Tensor::vector("phi", vec![0.0; BLOCK])];
        let mut grad = [Tensor::vector("phi", vec![0.0; BLOCK])];
        for _ in 0..steps {
            for (g, p) in grad[0].data_mut().iter_mut().zip(phi[0].data()) {
                let z: f64 = StandardNormal.sample(rng);
                *g = C * (p - noise * z);
            }
            opt.step(&mut phi, &grad, &StepInfo::default())?;
        }
        Ok(phi[0].data().to_vec())
    });
    let mut all = Vec::with_capacity(blocks * BLOCK);
    for block in finals {
        all.extend(block?);
    }
    Ok(Estimate::from_samples(&all).variance())
}

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let blocks = 40;
    let kappa = 16.0f64;
    let mut claims = Vec::new();

    // SGD: η₀c = 1/32, so that κη₀c = ½ at κ = 16.
    let lr = 1.0 / 32.0;
    let sgd_steps = |rate: f64| (30.0 / (rate * C)).ceil() as usize;
    let sgd_base = format!("sgd:lr={lr}");
    let sgd_scaled = format!("sgd:lr={}", kappa * lr);
    // SGD's runs are short: four times the chains, so that the first-order rule's 1 lies
    // 20 standard errors away even with --quick.
    let sgd_blocks = 4 * blocks;
    let base = stationary_variance(
        options,
        "p12.sgd.1",
        &sgd_base,
        1.0,
        sgd_steps(lr),
        sgd_blocks,
    )?;
    let scaled = stationary_variance(
        options,
        "p12.sgd.16",
        &sgd_scaled,
        kappa,
        sgd_steps(kappa * lr),
        sgd_blocks,
    )?;
    let a = lr * C;
    claims.push(
        Claim::monte_carlo(
            "12a",
            "SGD's linear rule (B → κB, η → κη) keeps Var Φ only to first order in ηc: \
             exactly it changes by (2 − ηc)/(2 − κηc), +31% at κ = 16, κηc = ½",
            &[
                ("kappa", kappa),
                ("lr", lr),
                ("c", C),
                ("chains", (mc_chains(options, sgd_blocks) * BLOCK) as f64),
            ],
            (2.0 - a) / (2.0 - kappa * a),
            scaled.ratio(base),
        )
        .reject("1 (the rule exact)", 1.0)
        .reject("1/κ (η unchanged)", 1.0 / kappa)
        .optimizer(&sgd_base)
        .optimizer(&sgd_scaled),
    );

    let (lr, beta1, beta2) = (ADAM_LR, ADAM_BETA1, ADAM_BETA2);
    let run = |k: f64, rule: Rule| adam_variance(options, k, rule, blocks);
    let adam = adam_spec;
    let base = run(1.0, Rule::Sqrt)?;
    let sqrt = run(kappa, Rule::Sqrt)?;
    let linear4 = run(4.0, Rule::Linear)?;
    let linear16 = run(kappa, Rule::Linear)?;
    let params = |k: f64| {
        [
            ("kappa", k),
            ("lr", lr),
            ("beta1", beta1),
            ("beta2", beta2),
            ("chains", (mc_chains(options, blocks) * BLOCK) as f64),
        ]
    };
    claims.push(
        Claim::monte_carlo(
            "12b",
            "Adam's square-root rule (Malladi et al.): B → κB with η → √κη, 1 − β → κ(1 − β), \
             ε → ε/√κ keeps Var Φ (ratio 1 at κ = 16, β₁ = 0.2, β₂ = 0.984)",
            &params(kappa),
            1.0,
            sqrt.ratio(base),
        )
        .reject(
            "the linear rule's ratio (η → κη, measured)",
            linear16.ratio(base).value,
        )
        .optimizer(adam(1.0, Rule::Sqrt))
        .optimizer(adam(kappa, Rule::Sqrt)),
    );
    claims.push(
        Claim::monte_carlo(
            "12b.linear",
            "Adam under SGD's linear rule (η → κη, β's kept) multiplies Var Φ ≈ ησ/(2√B) by √κ \
             (2 at κ = 4)",
            &params(4.0),
            2.0,
            linear4.ratio(base),
        )
        .reject("1 (the linear rule keeps it)", 1.0)
        .optimizer(adam(1.0, Rule::Sqrt))
        .optimizer(adam(4.0, Rule::Linear)),
    );
    let rms =
        |k: f64, scaling: Rule| adaptive_variance(options, Adaptive::RmsProp, k, scaling, blocks);
    let rms_base = rms(1.0, Rule::Sqrt)?;
    let rms_sqrt = rms(kappa, Rule::Sqrt)?;
    let rms_linear = rms(kappa, Rule::Linear)?;
    claims.push(
        Claim::monte_carlo(
            "12b.rmsprop",
            "RMSProp's square-root rule: B → κB with η → √κη, 1 − α → κ(1 − α), ε → ε/√κ keeps \
             Var Φ ≈ ησ/(2√B) (ratio 1 at κ = 16, α = 0.984); the linear rule multiplies it by √κ",
            &[
                ("kappa", kappa),
                ("lr", lr),
                ("alpha", beta2),
                ("chains", (mc_chains(options, blocks) * BLOCK) as f64),
            ],
            1.0,
            rms_sqrt.ratio(rms_base),
        )
        .reject(
            "the linear rule's ratio (η → κη, measured)",
            rms_linear.ratio(rms_base).value,
        )
        .reject("√κ = 4 (the linear rule's prediction)", kappa.sqrt())
        .optimizer(adaptive_spec(Adaptive::RmsProp, 1.0, Rule::Sqrt))
        .optimizer(adaptive_spec(Adaptive::RmsProp, kappa, Rule::Sqrt)),
    );
    claims.extend(noise_claims(options)?);
    claims.extend(nqm_claims(options)?);
    Ok(claims)
}

/// Dimension, label noise s and offset |δ|² of the noise-scale claims.
const NOISE_D: usize = 8;
const NOISE_S: f64 = 1.0;
const NOISE_DELTA_SQ: f64 = 4.0;

/// `gradient_noise` on `sets` data sets of `n` Gaussian examples each, at w = w\* + δ
/// (w\* = 0, δ spread evenly over the coordinates): the estimates tr Σ̂, |G|²̂ and the raw
/// |ḡ|² of each set.
fn noise_estimates(
    options: &VerifyOptions,
    tag: &str,
    n: usize,
    sets: usize,
) -> Result<[Estimate; 3]> {
    let d = NOISE_D;
    let delta = vec![(NOISE_DELTA_SQ / d as f64).sqrt(); d];
    let mc = options.monte_carlo(tag, sets)?;
    let rows = mc.run(|rng, _| -> Result<[f64; 3]> {
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            for _ in 0..d {
                x.push(StandardNormal.sample(rng));
            }
            let e: f64 = StandardNormal.sample(rng);
            y.push(NOISE_S * e);
        }
        let model = LinReg::new(Dataset::new(x, Some(y), d)?, false)?;
        let r = gradient_noise(&model, &delta, &[], None)?;
        Ok([r.total.trace, r.total.grad_sq, r.total.data_grad_sq])
    });
    let rows = rows.into_iter().collect::<Result<Vec<_>>>()?;
    let column = |k: usize| Estimate::from_samples(&rows.iter().map(|r| r[k]).collect::<Vec<_>>());
    Ok([column(0), column(1), column(2)])
}

fn noise_claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let d = NOISE_D as f64;
    let (s2, delta2) = (NOISE_S * NOISE_S, NOISE_DELTA_SQ);
    let trace = (d + 1.0) * delta2 + s2 * d;
    let spec = |n: usize| {
        [
            ("d", d),
            ("s", NOISE_S),
            ("|delta|^2", delta2),
            ("examples per set", n as f64),
        ]
    };
    let (n_big, n_small) = (2_000, 20);
    let [big_trace, ..] = noise_estimates(options, "p12.noise.trace", n_big, 400)?;
    let [_, small_g2, small_raw] = noise_estimates(options, "p12.noise.g2", n_small, 8_000)?;
    let mut params = spec(n_big).to_vec();
    params.push(("sets", mc_chains(options, 400) as f64));
    let mut params_small = spec(n_small).to_vec();
    params_small.push(("sets", mc_chains(options, 8_000) as f64));
    Ok(vec![
        Claim::monte_carlo(
            "12c",
            "The gradient noise of least squares with Gaussian inputs at w* + δ: \
             tr Σ = (d + 1)|δ|² + s²d (Isserlis), so B_simple = (d + 1) + s²d/|δ|² = 11 — \
             `sgdlab noise`'s tr Σ̂ on sampled data sets",
            &params,
            trace,
            big_trace.mean(),
        )
        .reject(
            "d|δ|² + s²d (x·δ taken independent of x)",
            d * delta2 + s2 * d,
        )
        .reject("s²d (the label noise alone)", s2 * d),
        Claim::monte_carlo(
            "12c.bias",
            "On n examples the mean gradient's |ḡ|² overstates |G|² = |δ|² by tr Σ/n; the \
             noise scale's corrected |G|²̂ = |ḡ|² − tr Σ̂/n is unbiased (n = 20)",
            &params_small,
            delta2,
            small_g2.mean(),
        )
        .reject(
            "E|ḡ|² = |δ|² + tr Σ/n (no correction; measured)",
            small_raw.mean().value,
        ),
    ])
}

/// Adam's base hyper-parameters: η = 10⁻³ (the rate η√B/(cσ) = 10⁻³ at B = 1), β₁ = 0.95,
/// β₂ = 0.999, ε = 10⁻⁸.
const ADAM_LR: f64 = 1e-3;
const ADAM_BETA1: f64 = 0.95;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// A scaling rule for B → κB.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    /// η → √κη, 1 − β → κ(1 − β), ε → ε/√κ.
    Sqrt,
    /// η → κη, the rest kept.
    Linear,
}

/// An adaptive rule of the square-root claims: Adam (η, β₁, β₂, ε) or RMSProp (η, α, ε; its
/// α is Adam's β₂, and it has no first moment).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Adaptive {
    Adam,
    RmsProp,
}

impl Adaptive {
    /// The registry name.
    fn name(self) -> &'static str {
        match self {
            Adaptive::Adam => "adam",
            Adaptive::RmsProp => "rmsprop",
        }
    }
}

/// The spec of `rule` at batch κB under `scaling`.
fn adaptive_spec(rule: Adaptive, k: f64, scaling: Rule) -> String {
    let (lr, beta1, beta2, eps) = match scaling {
        Rule::Sqrt => (
            ADAM_LR * k.sqrt(),
            1.0 - k * (1.0 - ADAM_BETA1),
            1.0 - k * (1.0 - ADAM_BETA2),
            ADAM_EPS / k.sqrt(),
        ),
        Rule::Linear => (ADAM_LR * k, ADAM_BETA1, ADAM_BETA2, ADAM_EPS),
    };
    match rule {
        Adaptive::Adam => format!("adam:lr={lr},beta1={beta1},beta2={beta2},eps={eps:e}"),
        Adaptive::RmsProp => format!("rmsprop:lr={lr},alpha={beta2},eps={eps:e}"),
    }
}

/// Adam's spec at batch κB under `rule`.
fn adam_spec(k: f64, rule: Rule) -> String {
    adaptive_spec(Adaptive::Adam, k, rule)
}

/// The stationary Var Φ of `rule` at batch κB under `scaling`, after a burn-in of 20 horizons
/// of v and 30 of Φ (whose rate is η√B/σ per unit c).
fn adaptive_variance(
    options: &VerifyOptions,
    rule: Adaptive,
    k: f64,
    scaling: Rule,
    blocks: usize,
) -> Result<Measurement> {
    let (rate, horizon) = match scaling {
        Rule::Sqrt => (ADAM_LR * k, 1.0 / (k * (1.0 - ADAM_BETA2))),
        Rule::Linear => (ADAM_LR * k * k.sqrt(), 1.0 / (1.0 - ADAM_BETA2)),
    };
    let steps = (20.0 * horizon + 30.0 / (rate / SIGMA)).ceil() as usize;
    stationary_variance(
        options,
        &format!("p12.{}.{scaling:?}.{k}", rule.name()),
        &adaptive_spec(rule, k, scaling),
        k,
        steps,
        blocks,
    )
}

/// Adam's stationary Var Φ at batch κB under `rule`.
fn adam_variance(
    options: &VerifyOptions,
    k: f64,
    rule: Rule,
    blocks: usize,
) -> Result<Measurement> {
    adaptive_variance(options, Adaptive::Adam, k, rule, blocks)
}

/// The report's plot: Adam's Var Φ(κ)/Var Φ(1) under each rule and RMSProp's under the
/// square-root rule, κ = 1, 2, 4, 8, 16, with √κ (dashed), and SGD's linear rule against its
/// exact (2 − ηc)/(2 − κηc).
pub(crate) fn figures(options: &VerifyOptions) -> Result<Vec<Figure>> {
    let blocks = 8;
    let kappas = [1.0, 2.0, 4.0, 8.0, 16.0];
    let base = adam_variance(options, 1.0, Rule::Sqrt, blocks)?;
    let rms_base = adaptive_variance(options, Adaptive::RmsProp, 1.0, Rule::Sqrt, blocks)?;
    let curve = |adaptive: Adaptive, rule: Rule| -> Result<Vec<(f64, f64)>> {
        let base = match adaptive {
            Adaptive::Adam => base,
            Adaptive::RmsProp => rms_base,
        };
        kappas
            .iter()
            .map(|&k| {
                Ok((
                    k,
                    adaptive_variance(options, adaptive, k, rule, blocks)?
                        .ratio(base)
                        .value,
                ))
            })
            .collect()
    };
    let line = |label: &str, points: Vec<(f64, f64)>, dashed: bool| Line {
        label: label.to_string(),
        points,
        dashed,
        group: usize::MAX,
    };
    let lr = 1.0 / 32.0;
    let sgd_base = stationary_variance(
        options,
        "p12.fig.sgd.1",
        &format!("sgd:lr={lr}"),
        1.0,
        960,
        4 * blocks,
    )?;
    let mut sgd = Vec::new();
    for &k in &kappas {
        let v = stationary_variance(
            options,
            &format!("p12.fig.sgd.{k}"),
            &format!("sgd:lr={}", k * lr),
            k,
            (30.0 / (k * lr * C)).ceil() as usize,
            4 * blocks,
        )?;
        sgd.push((k, v.ratio(sgd_base).value));
    }
    Ok(vec![
        Figure {
            title: "Section 12: batch-size scaling rules".into(),
            caption: format!(
                "Stationary Var Φ at batch κB over its value at B = 1, on c(Φ − x)²/2 with \
             minibatch gradients ({} chains a point). Adam and RMSProp under the square-root \
             rule (η → √κη, 1 − β → κ(1 − β), ε → ε/√κ) stay at 1; under the linear rule \
             (η → κη) Adam's grows as √κ. SGD under its linear rule (η₀c = 1/32) follows \
             (2 − η₀c)/(2 − κη₀c), not 1, as κη₀c grows.",
                mc_chains(options, blocks) * BLOCK
            ),
            x_label: "κ (batch B = κ)".into(),
            y_label: "Var Φ(κ) / Var Φ(1)".into(),
            lines: vec![
                line(
                    "Adam, square-root rule",
                    curve(Adaptive::Adam, Rule::Sqrt)?,
                    false,
                ),
                line(
                    "Adam, linear rule",
                    curve(Adaptive::Adam, Rule::Linear)?,
                    false,
                ),
                line(
                    "RMSProp, square-root rule",
                    curve(Adaptive::RmsProp, Rule::Sqrt)?,
                    false,
                ),
                line("SGD, linear rule", sgd, false),
                line("√κ", kappas.iter().map(|&k| (k, k.sqrt())).collect(), true),
                line(
                    "SGD exact: (2 − η₀c)/(2 − κη₀c)",
                    kappas
                        .iter()
                        .map(|&k| (k, (2.0 - lr * C) / (2.0 - k * lr * C)))
                        .collect(),
                    true,
                ),
            ],
            ..Figure::default()
        },
        nqm_figure(),
    ])
}

/// The number of blocks a run of `blocks` uses (a quarter with `--quick`).
fn mc_chains(options: &VerifyOptions, blocks: usize) -> usize {
    if options.quick { blocks / 4 } else { blocks }
}

/// The noisy quadratic model's dimension and batch size.
const NQM_D: usize = 100;
const NQM_B: f64 = 4.0;
/// Chains per block of the NQM simulations.
const NQM_CHAINS: usize = 100;

/// The NQM's curvatures hᵢ = 1/i.
fn nqm_h() -> Vec<f64> {
    (1..=NQM_D).map(|i| 1.0 / i as f64).collect()
}

/// Heavy ball's stationary E[x²] on one coordinate of curvature `h` with minibatch noise
/// variance `q`: the x-entry of P = APAᵀ + q bbᵀ, A = [[1 − ηh, −ηβ], [h, β]], b = (−η, 1).
fn heavy_ball_second_moment(lr: f64, beta: f64, h: f64, q: f64) -> Option<f64> {
    let (a11, a12, a21, a22) = (1.0 - lr * h, -lr * beta, h, beta);
    let (b1, b2) = (-lr, 1.0);
    // vec(P) = (p_xx, p_xv, p_vv): (I − M) vec(P) = q (b1², b1b2, b2²).
    let m = [
        [a11 * a11, 2.0 * a11 * a12, a12 * a12],
        [a11 * a21, a11 * a22 + a12 * a21, a12 * a22],
        [a21 * a21, 2.0 * a21 * a22, a22 * a22],
    ];
    let mut a = vec![0.0; 9];
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            a[3 * r + c] = f64::from(u8::from(r == c)) - v;
        }
    }
    let mut rhs = vec![q * b1 * b1, q * b1 * b2, q * b2 * b2];
    crate::linalg::solve(&mut a, &mut rhs, 3)?;
    Some(rhs[0])
}

/// A rule of the NQM claims.
#[derive(Clone, Copy, Debug)]
enum NqmRule {
    /// SGD at η.
    Sgd(f64),
    /// Heavy ball at η, β.
    Momentum(f64, f64),
    /// SGD at η with the gradient scaled by Pᵢ = hᵢ^(−½).
    Preconditioned(f64),
}

impl NqmRule {
    fn spec(self) -> String {
        match self {
            NqmRule::Sgd(lr) | NqmRule::Preconditioned(lr) => format!("sgd:lr={lr}"),
            NqmRule::Momentum(lr, beta) => format!("sgd:lr={lr},momentum={beta}"),
        }
    }

    /// The exact steady-state risk ½Σᵢhᵢ E[xᵢ²].
    fn risk(self, batch: f64) -> Result<f64> {
        let mut total = 0.0;
        for h in nqm_h() {
            let q = h / batch;
            let second = match self {
                NqmRule::Sgd(lr) => lr / (batch * (2.0 - lr * h)),
                NqmRule::Preconditioned(lr) => {
                    let p = h.powf(-0.5);
                    lr * p / (batch * (2.0 - lr * p * h))
                }
                NqmRule::Momentum(lr, beta) => heavy_ball_second_moment(lr, beta, h, q)
                    .ok_or_else(|| {
                        crate::Error::Unsupported("heavy ball's recursion is singular".into())
                    })?,
            };
            total += 0.5 * h * second;
        }
        Ok(total)
    }

    /// The risk after `steps` from xᵢ = `start`, over `blocks` blocks of [`NQM_CHAINS`]
    /// chains, each block one library optimizer stepping a tensor of every chain's coordinates.
    fn simulated_risk(
        self,
        options: &VerifyOptions,
        tag: &str,
        start: f64,
        steps: usize,
        blocks: usize,
    ) -> Result<Measurement> {
        let template = Optimizer::<f64>::from_spec(&self.spec())?;
        let h = nqm_h();
        let precondition: Vec<f64> = match self {
            NqmRule::Preconditioned(_) => h.iter().map(|h| h.powf(-0.5)).collect(),
            _ => vec![1.0; NQM_D],
        };
        let noise: Vec<f64> = h.iter().map(|h| (h / NQM_B).sqrt()).collect();
        let mc = options.monte_carlo(tag, blocks)?;
        let risks = mc.run(|rng, _| -> Result<Vec<f64>> {
            let mut opt = template.clone();
            let n = NQM_CHAINS * NQM_D;
            let mut x = [Tensor::vector("x", vec![start; n])];
            let mut grad = [Tensor::vector("x", vec![0.0; n])];
            for _ in 0..steps {
                for (k, (g, xi)) in grad[0].data_mut().iter_mut().zip(x[0].data()).enumerate() {
                    let i = k % NQM_D;
                    let z: f64 = StandardNormal.sample(rng);
                    *g = precondition[i] * (h[i] * xi + noise[i] * z);
                }
                opt.step(&mut x, &grad, &StepInfo::default())?;
            }
            Ok(x[0]
                .data()
                .chunks_exact(NQM_D)
                .map(|c| c.iter().zip(&h).map(|(x, h)| 0.5 * h * x * x).sum())
                .collect())
        });
        let mut all = Vec::with_capacity(blocks * NQM_CHAINS);
        for block in risks {
            all.extend(block?);
        }
        Ok(Estimate::from_samples(&all).mean())
    }
}

fn nqm_claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let blocks = 40;
    // The slowest coordinate (h = 1/d) relaxes at ηh per step (η/(1 − β) with momentum, ηP
    // preconditioned): 1,500 steps are 15 of its horizons or more.
    let steps = 1_500;
    let params = |rule: NqmRule| {
        let mut p = vec![
            ("d", NQM_D as f64),
            ("B", NQM_B),
            ("chains", (mc_chains(options, blocks) * NQM_CHAINS) as f64),
        ];
        match rule {
            NqmRule::Sgd(lr) | NqmRule::Preconditioned(lr) => p.push(("lr", lr)),
            NqmRule::Momentum(lr, beta) => p.extend([("lr", lr), ("beta", beta)]),
        }
        p
    };
    let h = nqm_h();
    let mut claims = Vec::new();
    let sgd = NqmRule::Sgd(1.0);
    let measured = sgd.simulated_risk(options, "p12.nqm.sgd", 0.0, steps, blocks)?;
    let first_order: f64 = h.iter().map(|h| 0.5 * h / (2.0 * NQM_B)).sum();
    claims.push(
        Claim::monte_carlo(
            "12d",
            "The noisy quadratic model (hᵢ = 1/i, C = H, d = 100, B = 4): SGD's steady-state \
             risk is exactly ½Σᵢhᵢ η/(B(2 − ηhᵢ)) (η = 1)",
            &params(sgd),
            sgd.risk(NQM_B)?,
            measured,
        )
        .reject("the small-η risk ηΣᵢhᵢ/(4B)", first_order)
        .optimizer(sgd.spec()),
    );
    let momentum = NqmRule::Momentum(0.1, 0.9);
    let measured = momentum.simulated_risk(options, "p12.nqm.momentum", 0.0, steps, blocks)?;
    claims.push(
        Claim::monte_carlo(
            "12d.momentum",
            "Heavy ball's steady-state risk on the NQM is the stationary covariance of its 2×2 \
             recursion (η = 0.1, β = 0.9), not SGD's at the effective rate η/(1 − β)",
            &params(momentum),
            momentum.risk(NQM_B)?,
            measured,
        )
        .reject(
            "SGD's risk at η/(1 − β) = 1",
            NqmRule::Sgd(1.0).risk(NQM_B)?,
        )
        .optimizer(momentum.spec()),
    );
    // The transient from xᵢ = 1, which the critical-batch figure steps exactly.
    let t = 50;
    let measured = momentum.simulated_risk(options, "p12.nqm.transient", 1.0, t, blocks)?;
    let mut exact = HeavyBallMoments::new(0.1, 0.9, NQM_B);
    for _ in 0..t {
        exact.step();
    }
    let mut p = params(momentum);
    p.push(("t", t as f64));
    claims.push(
        Claim::monte_carlo(
            "12d.transient",
            "Heavy ball's risk 50 steps from xᵢ = 1 on the NQM follows the exact second-moment \
             recursion P ← APAᵀ + (hᵢ/B)bbᵀ (the critical-batch figure's), not SGD's at \
             η/(1 − β)",
            &p,
            exact.risk(),
            measured,
        )
        .reject(
            "SGD's risk at η/(1 − β) = 1 after 50 steps",
            nqm_risk_at(1.0, 0.0, NQM_B, t as f64),
        )
        .reject("heavy ball's steady-state risk", momentum.risk(NQM_B)?)
        .optimizer(momentum.spec()),
    );
    let target = 0.05;
    let [sgd_crit, momentum_crit, pre_crit] = critical_batches(target);
    claims.push(Claim::at_least(
        "12d.critical",
        "Momentum and preconditioning raise the NQM's critical batch (Zhang et al.): the \
             smaller of heavy ball's and the preconditioned rule's, over SGD's, is at least 2 \
             (exact, at each rule's best learning rate; risk 0.05 from xᵢ = 1)",
        &[
            ("target", target),
            ("sgd", sgd_crit),
            ("momentum", momentum_crit),
            ("preconditioned", pre_crit),
        ],
        2.0,
        momentum_crit.min(pre_crit) / sgd_crit,
        0.0,
    ));
    let pre = NqmRule::Preconditioned(0.8);
    let measured = pre.simulated_risk(options, "p12.nqm.pre", 0.0, steps, blocks)?;
    claims.push(
        Claim::monte_carlo(
            "12d.precond",
            "A fixed diagonal preconditioner Pᵢ = hᵢ^(−½) (Adam's under C = H) has the risk \
             ½Σᵢhᵢ ηPᵢ/(B(2 − ηPᵢhᵢ)) (η = 0.8)",
            &params(pre),
            pre.risk(NQM_B)?,
            measured,
        )
        .reject("SGD's risk at the same η", NqmRule::Sgd(0.8).risk(NQM_B)?)
        .reject(
            "the small-η risk ηΣᵢhᵢPᵢ/(4B)",
            h.iter()
                .map(|h| 0.5 * h * 0.8 * h.powf(-0.5) / (2.0 * NQM_B))
                .sum(),
        )
        .optimizer(pre.spec()),
    );
    Ok(claims)
}

/// The NQM's exact risk after `t` steps of SGD at `lr` from xᵢ = 1, with the gradient scaled
/// by Pᵢ = hᵢ^(−`power`) at batch `batch`: ½Σᵢhᵢ(s∞ + (1 − s∞)(1 − ηPᵢhᵢ)^(2t)),
/// s∞ = ηPᵢ/(B(2 − ηPᵢhᵢ)) (the second moment's own linear recursion).
fn nqm_risk_at(lr: f64, power: f64, batch: f64, t: f64) -> f64 {
    nqm_h()
        .iter()
        .map(|&h| {
            let a = lr * h.powf(-power) * h;
            let stationary = lr * h.powf(-power) / (batch * (2.0 - a));
            0.5 * h * (stationary + (1.0 - stationary) * (1.0 - a).powi(2).powf(t))
        })
        .sum()
}

/// The fewest steps after which [`nqm_risk_at`] is at most `target` (bisection: the risk falls
/// monotonically while every coordinate's s∞ < 1), or none when its steady state is above it.
fn nqm_steps_to(lr: f64, power: f64, batch: f64, target: f64) -> Option<u64> {
    if nqm_risk_at(lr, power, batch, f64::INFINITY) >= target {
        return None;
    }
    let (mut lo, mut hi) = (0u64, 1u64);
    while nqm_risk_at(lr, power, batch, hi as f64) > target {
        lo = hi;
        hi = hi.checked_mul(2)?;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if nqm_risk_at(lr, power, batch, mid as f64) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// The fewest steps to `target` over a grid of 64 learning rates, log-spaced up to the
/// stability bound 2/maxᵢ Pᵢhᵢ (= 2: the largest Pᵢhᵢ is h₁ = 1).
fn nqm_best_steps(power: f64, batch: f64, target: f64) -> Option<u64> {
    (0..64)
        .filter_map(|k| {
            let lr = 1.999 * 10f64.powf(-4.0 * f64::from(k) / 63.0);
            nqm_steps_to(lr, power, batch, target)
        })
        .min()
}

/// Heavy ball's exact NQM second moments from xᵢ = 1, vᵢ = 0: per coordinate
/// (E[x²], E[xv], E[v²]), stepped by P ← APAᵀ + (hᵢ/B)bbᵀ (A and b of
/// [`heavy_ball_second_moment`]).
struct HeavyBallMoments {
    lr: f64,
    beta: f64,
    batch: f64,
    h: Vec<f64>,
    moments: Vec<[f64; 3]>,
}

impl HeavyBallMoments {
    fn new(lr: f64, beta: f64, batch: f64) -> Self {
        Self {
            lr,
            beta,
            batch,
            h: nqm_h(),
            moments: vec![[1.0, 0.0, 0.0]; NQM_D],
        }
    }

    /// One step of every coordinate's second moments.
    fn step(&mut self) {
        let (lr, beta) = (self.lr, self.beta);
        for (p, &h) in self.moments.iter_mut().zip(&self.h) {
            let q = h / self.batch;
            let (a11, a12, a21, a22) = (1.0 - lr * h, -lr * beta, h, beta);
            let [xx, xv, vv] = *p;
            *p = [
                a11 * a11 * xx + 2.0 * a11 * a12 * xv + a12 * a12 * vv + q * lr * lr,
                a11 * a21 * xx + (a11 * a22 + a12 * a21) * xv + a12 * a22 * vv - q * lr,
                a21 * a21 * xx + 2.0 * a21 * a22 * xv + a22 * a22 * vv + q,
            ];
        }
    }

    /// The risk ½Σᵢhᵢ E[xᵢ²].
    fn risk(&self) -> f64 {
        self.moments
            .iter()
            .zip(&self.h)
            .map(|(p, h)| 0.5 * h * p[0])
            .sum()
    }
}

/// The fewest steps of heavy ball after which the risk is at most `target`, if fewer than
/// `cap`; none when its steady state is at or above the target (or the recursion unstable).
fn momentum_steps_to(lr: f64, beta: f64, batch: f64, target: f64, cap: u64) -> Option<u64> {
    let stationary = NqmRule::Momentum(lr, beta).risk(batch).ok()?;
    if !(stationary > 0.0 && stationary < target) {
        return None;
    }
    let mut moments = HeavyBallMoments::new(lr, beta, batch);
    (0..cap)
        .find(|_| {
            moments.step();
            moments.risk() <= target
        })
        .map(|t| t + 1)
}

/// The fewest heavy-ball steps to `target` over 32 learning rates, log-spaced up to the
/// stability bound 2(1 + β)/maxᵢ hᵢ, for each β of [`NQM_BETAS`].
fn momentum_best_steps(batch: f64, target: f64) -> Option<u64> {
    let mut best: Option<u64> = None;
    for &beta in &NQM_BETAS {
        for k in 0..32 {
            let lr = 1.999 * (1.0 + beta) * 10f64.powf(-4.0 * f64::from(k) / 31.0);
            let cap = best.unwrap_or(1 << 20);
            if let Some(steps) = momentum_steps_to(lr, beta, batch, target, cap) {
                best = Some(best.map_or(steps, |b| b.min(steps)));
            }
        }
    }
    best
}

/// The momenta of the NQM figure's heavy ball.
const NQM_BETAS: [f64; 3] = [0.5, 0.9, 0.99];

/// The NQM's batches of the critical-batch figure and claim: B = 1, 2, 4, …, 65,536.
fn nqm_batches() -> Vec<f64> {
    (0..=16).map(|k| 2f64.powi(k)).collect()
}

/// The curves (log₂ B, log₂ steps to `target` at the best learning rate) of SGD, heavy ball
/// and the preconditioned rule, exact.
fn nqm_curves(target: f64) -> [Vec<(f64, f64)>; 3] {
    let curve = |steps: &dyn Fn(f64) -> Option<u64>| -> Vec<(f64, f64)> {
        nqm_batches()
            .into_iter()
            .filter_map(|b| steps(b).map(|s| (b.log2(), (s as f64).log2())))
            .collect()
    };
    [
        curve(&|b| nqm_best_steps(0.0, b, target)),
        curve(&|b| momentum_best_steps(b, target)),
        curve(&|b| nqm_best_steps(0.5, b, target)),
    ]
}

/// The critical batch of a curve of [`nqm_curves`]: the first B whose steps come within twice
/// the largest batch's (the floor).
fn critical_batch(points: &[(f64, f64)]) -> f64 {
    let floor = points.last().map_or(0.0, |p| p.1);
    points
        .iter()
        .find(|p| p.1 <= floor + 1.0)
        .map_or(f64::NAN, |p| p.0.exp2())
}

/// The critical batches of SGD, heavy ball and the preconditioned rule.
fn critical_batches(target: f64) -> [f64; 3] {
    nqm_curves(target).map(|c| critical_batch(&c))
}

/// The report's NQM figure: the steps to a target risk against the batch size, each at its
/// best learning rate, for SGD, heavy ball and the preconditioned rule (exact), with the
/// critical batches in the caption.
fn nqm_figure() -> Figure {
    let target = 0.05;
    let [sgd, momentum, pre] = nqm_curves(target);
    let line = |label: &str, points: Vec<(f64, f64)>| Line {
        label: label.to_string(),
        points,
        dashed: false,
        group: usize::MAX,
    };
    Figure {
        title: "Section 12: the noisy quadratic model's critical batch size".into(),
        caption: format!(
            "Steps for the risk ½Σhᵢxᵢ² (hᵢ = 1/i, d = {NQM_D}, C = H) to fall from xᵢ = 1 to \
             {target}, at each rule's best learning rate (64 for SGD and the preconditioned \
             rule; 32 for each β of heavy ball), from the exact second-moment recursion. \
             Perfect scaling halves the steps as B doubles; every rule reaches a floor set by \
             the curvature, heavy ball's and the preconditioner's lower than SGD's. The \
             critical batch, where the steps first come within twice the floor: SGD {}, heavy \
             ball (best β of 0.5, 0.9, 0.99) {}, preconditioned (Pᵢ = hᵢ^(−½)) {}.",
            critical_batch(&sgd),
            critical_batch(&momentum),
            critical_batch(&pre)
        ),
        x_label: "log₂ B".into(),
        y_label: "log₂ steps to the target risk".into(),
        lines: vec![
            line("SGD", sgd),
            line("heavy ball", momentum),
            line("preconditioned, Pᵢ = hᵢ^(−½)", pre),
        ],
        ..Figure::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqm_steps_to_a_target_agree_with_stepping_the_recursion() {
        let (lr, batch, target) = (0.5, 8.0, 0.4);
        let steps = nqm_steps_to(lr, 0.5, batch, target).unwrap();
        // The second moments stepped one by one.
        let h = nqm_h();
        let mut m = vec![1.0f64; NQM_D];
        let risk = |m: &[f64]| -> f64 { m.iter().zip(&h).map(|(m, h)| 0.5 * h * m).sum() };
        let mut t = 0;
        while risk(&m) > target {
            for (m, &h) in m.iter_mut().zip(&h) {
                let p = h.powf(-0.5);
                *m = (1.0 - lr * p * h).powi(2) * *m + lr * lr * p * p * h / batch;
            }
            t += 1;
        }
        assert_eq!(steps, t);
        // A target below the steady state is never reached.
        assert_eq!(nqm_steps_to(1.0, 0.0, 1.0, 0.01), None);
    }

    #[test]
    fn heavy_ball_moments_at_beta_0_step_like_sgd() {
        let (lr, batch, target) = (0.7, 16.0, 0.3);
        assert_eq!(
            momentum_steps_to(lr, 0.0, batch, target, 1 << 20),
            nqm_steps_to(lr, 0.0, batch, target)
        );
        let mut m = HeavyBallMoments::new(lr, 0.0, batch);
        for _ in 0..37 {
            m.step();
        }
        let exact = nqm_risk_at(lr, 0.0, batch, 37.0);
        assert!(
            (m.risk() - exact).abs() < 1e-12 * exact,
            "{} {exact}",
            m.risk()
        );
        // The cap and a steady state above the target both give none.
        assert_eq!(momentum_steps_to(lr, 0.0, batch, target, 3), None);
        assert_eq!(momentum_steps_to(1.0, 0.9, 1.0, 0.01, 1 << 20), None);
    }

    #[test]
    fn momentum_and_preconditioning_raise_the_critical_batch() {
        let [sgd, momentum, pre] = critical_batches(0.05);
        assert_eq!((sgd, momentum, pre), (128.0, 256.0, 256.0));
    }

    #[test]
    fn heavy_ball_at_beta_0_is_sgd_and_its_moment_solves_the_recursion() {
        // β = 0: x ← (1 − ηh)x − ηn, E[x²] = η²q/(1 − (1 − ηh)²).
        let (lr, h, q) = (0.3, 0.7, 0.2);
        let m = heavy_ball_second_moment(lr, 0.0, h, q).unwrap();
        let sgd = lr * lr * q / (1.0 - (1.0 - lr * h).powi(2));
        assert!((m - sgd).abs() < 1e-14, "{m} {sgd}");
        // β = 0.9: iterate the covariance recursion to its fixed point.
        let (beta, mut p) = (0.9, [0.0f64; 3]);
        for _ in 0..200_000 {
            let (a11, a12, a21, a22) = (1.0 - lr * h, -lr * beta, h, beta);
            p = [
                a11 * a11 * p[0] + 2.0 * a11 * a12 * p[1] + a12 * a12 * p[2] + q * lr * lr,
                a11 * a21 * p[0] + (a11 * a22 + a12 * a21) * p[1] + a12 * a22 * p[2] - q * lr,
                a21 * a21 * p[0] + 2.0 * a21 * a22 * p[1] + a22 * a22 * p[2] + q,
            ];
        }
        let m = heavy_ball_second_moment(lr, beta, h, q).unwrap();
        assert!((m - p[0]).abs() < 1e-12 * p[0], "{m} {}", p[0]);
    }
}
