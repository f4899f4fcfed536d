//! The data behind the report's pictures: one or more measured figures per problem, and the
//! expected-update field of an audit.
//!
//! A [`Figure`] is plain data (lines, arrows, markers, bars) so that any front end can draw it;
//! every number in it comes from running the averages, optimizers and models of this crate.

use rand_distr::{Distribution, Exp, Normal};
use serde::Serialize;

use super::audit::{expected_update, fixed_point};
use super::claims::VerifyOptions;
use super::montecarlo::{Estimate, chain_rng};
use super::temperature::NoisyQuadratic;
use crate::average::{Ema, HorizonAverage, PowerDebias, ScaledEma, SumMomentum};
use crate::data::parse_csv;
use crate::model::{LinReg, Model, Points};
use crate::optim::OptimizerSpec;
use crate::optim::math::powi;
use crate::{Error, Result};

mod audit;
pub use audit::audit_figure;

/// A polyline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed: a prediction or reference, as opposed to a measurement.
    pub dashed: bool,
    /// Lines of one group share a colour (e.g. the train and test loss of one run).
    pub group: usize,
}

/// An arrow of a vector field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arrow {
    /// Tail.
    pub from: (f64, f64),
    /// Head.
    pub to: (f64, f64),
}

/// A labelled point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Marker {
    /// Legend label.
    pub label: String,
    /// Position.
    pub at: Vec<(f64, f64)>,
}

/// A figure: axes, lines, arrows, markers, or bars.
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
pub struct Figure {
    /// Title.
    pub title: String,
    /// What the figure shows and how it was measured.
    pub caption: String,
    /// X-axis label, with unit.
    pub x_label: String,
    /// Y-axis label, with unit.
    pub y_label: String,
    /// Lines.
    pub lines: Vec<Line>,
    /// Vector-field arrows.
    pub arrows: Vec<Arrow>,
    /// Markers.
    pub markers: Vec<Marker>,
    /// Bars (label, height), drawn instead of lines when non-empty.
    pub bars: Vec<(String, f64)>,
}

fn line(label: &str, points: Vec<(f64, f64)>, dashed: bool) -> Line {
    Line {
        label: label.to_string(),
        points,
        dashed,
        group: usize::MAX,
    }
}

impl Figure {
    /// Gives every line without a group its own colour, in order.
    fn numbered(mut self) -> Self {
        for (i, l) in self.lines.iter_mut().enumerate() {
            if l.group == usize::MAX {
                l.group = i;
            }
        }
        self
    }
}

/// Per-step means (or variances) over `chains` replications of a recurrence.
fn per_step<F>(seed: u64, chains: usize, steps: usize, outputs: usize, f: F) -> Vec<Vec<Estimate>>
where
    F: Fn(&mut super::montecarlo::ChainRng) -> Vec<Vec<f64>> + Sync,
{
    // f returns [output][step]; summarise over chains.
    let runs: Vec<Vec<Vec<f64>>> = super::montecarlo::MonteCarlo::new(seed, chains.max(2))
        .map(|mc| mc.run(|rng, _| f(rng)))
        .unwrap_or_default();
    (0..outputs)
        .map(|o| {
            (0..steps)
                .map(|t| {
                    let column: Vec<f64> = runs.iter().map(|r| r[o][t]).collect();
                    Estimate::from_samples(&column)
                })
                .collect()
        })
        .collect()
}

/// The figures of problem `problem` (1–7 and section 10; 8 and 9 are 5 and 7).
pub fn problem_figures(problem: u8, options: &VerifyOptions) -> Result<Vec<Figure>> {
    let chains = if options.quick { 2_000 } else { 8_000 };
    let figures = match super::claims::canonical_problem(problem)? {
        1 => p1(options, chains),
        2 => p2(options, chains),
        3 => p3(),
        4 => p4(options, chains),
        5 => p5(options),
        6 => p6(),
        7 => p7(),
        10 => super::claims::p10::figures(options),
        11 => super::claims::p11::figures(options),
        12 => super::claims::p12::figures(options),
        13 => super::claims::p13::figures(options),
        p => Err(Error::Unsupported(format!("no figures for problem {p}"))),
    }?;
    Ok(figures.into_iter().map(Figure::numbered).collect())
}

fn p1(options: &VerifyOptions, chains: usize) -> Result<Vec<Figure>> {
    let (beta, gamma, xbar, steps) = (0.9, 0.5, 2.0, 60);
    let (y_rule, z_rule) = (Ema::new(beta)?, ScaledEma::new(beta, gamma)?);
    let input = Exp::new(1.0 / xbar).map_err(|e| Error::invalid("xbar", xbar, e.to_string()))?;
    let est = per_step(options.derive_seed("fig1"), chains, steps + 1, 2, |rng| {
        let (mut y, mut z) = (0.0f64, 0.0f64);
        let (mut ys, mut zs) = (vec![0.0; steps + 1], vec![0.0; steps + 1]);
        for (yt, zt) in ys[1..].iter_mut().zip(&mut zs[1..]) {
            let x: f64 = input.sample(rng);
            y = y_rule.update(y, x);
            z = z_rule.update(z, x);
            (*yt, *zt) = (y, z);
        }
        vec![ys, zs]
    });
    let mean = |o: usize| {
        est[o]
            .iter()
            .enumerate()
            .map(|(t, e)| (t as f64, e.mean))
            .collect()
    };
    let flat = |v: f64| vec![(0.0, v), (steps as f64, v)];
    Ok(vec![Figure {
        title: "Problem 1: the two running averages".into(),
        caption: format!(
            "Mean of y_t (convex EMA) and z_t (γ-form) over {chains} seeded chains, x_t ~ Exp \
             with mean x̄ = {xbar}, β = {beta}, γ = {gamma}; dashed: the limits x̄ and γx̄/(1−β)."
        ),
        x_label: "step t".into(),
        y_label: "E y_t, E z_t (units of x)".into(),
        lines: vec![
            line("E y_t (measured)", mean(0), false),
            line("E z_t (measured)", mean(1), false),
            line("x̄", flat(xbar), true),
            line("γx̄/(1−β)", flat(gamma * xbar / (1.0 - beta)), true),
        ],
        ..Figure::default()
    }])
}

fn p2(options: &VerifyOptions, chains: usize) -> Result<Vec<Figure>> {
    let (n, sigma, steps) = (4.0f64, 2.0f64, 30usize);
    let rule = Ema::from_horizon(n)?;
    let beta = rule.beta();
    let input =
        Normal::new(0.0, sigma).map_err(|e| Error::invalid("sigma", sigma, e.to_string()))?;
    let est = per_step(options.derive_seed("fig2"), chains, steps + 1, 1, |rng| {
        let mut mu = 0.0f64;
        let mut mus = vec![0.0; steps + 1];
        for m in &mut mus[1..] {
            mu = rule.update(mu, input.sample(rng));
            *m = mu;
        }
        vec![mus]
    });
    let s2 = sigma * sigma;
    Ok(vec![Figure {
        title: "Problem 2: variance of an EMA with rate 1/N".into(),
        caption: format!(
            "Variance of μ̂_t over {chains} chains (N = {n}, σ² = {s2}); dashed: \
             σ²(1−β^(2t))/(2N−1), and the block means of N and 2N−1 samples."
        ),
        x_label: "step t".into(),
        y_label: "Var μ̂_t (units of x²)".into(),
        lines: vec![
            line(
                "Var μ̂_t (measured)",
                est[0]
                    .iter()
                    .enumerate()
                    .map(|(t, e)| (t as f64, e.variance))
                    .collect(),
                false,
            ),
            line(
                "σ²(1−β^(2t))/(2N−1)",
                (0..=steps)
                    .map(|t| {
                        (
                            t as f64,
                            s2 * (1.0 - powi(beta, 2 * t as i32)) / (2.0 * n - 1.0),
                        )
                    })
                    .collect(),
                true,
            ),
            line(
                "block of N: σ²/N",
                vec![(0.0, s2 / n), (steps as f64, s2 / n)],
                true,
            ),
            line(
                "block of 2N−1: σ²/(2N−1)",
                vec![
                    (0.0, s2 / (2.0 * n - 1.0)),
                    (steps as f64, s2 / (2.0 * n - 1.0)),
                ],
                true,
            ),
        ],
        ..Figure::default()
    }])
}

fn p3() -> Result<Vec<Figure>> {
    let (beta, lr, steps, change) = (0.9, 0.01, 300usize, 150usize);
    let sum = SumMomentum::new(beta)?;
    let ema = Ema::new(beta)?;
    let (mut ps, mut pe, mut pb) = (3.0f64, 3.0f64, 3.0f64);
    let (mut b, mut m, mut v) = (0.0f64, 0.0f64, 0.0f64);
    let mut rng = chain_rng(3, 0);
    let noise = Normal::new(0.0, 0.1).map_err(|e| Error::Unsupported(e.to_string()))?;
    let mut lines = vec![vec![], vec![], vec![]];
    for t in 0..steps {
        let eta = if t < change { lr } else { lr / 10.0 };
        let xi: f64 = noise.sample(&mut rng);
        b = sum.update(b, ps + xi);
        ps -= eta * b;
        m = ema.update(m, pe + xi);
        pe -= eta / (1.0 - beta) * m;
        v = beta * v + eta * (pb + xi);
        pb -= v;
        for (l, p) in lines.iter_mut().zip([ps, pe, pb]) {
            l.push((t as f64 + 1.0, p));
        }
    }
    let mut it = lines.into_iter();
    let mut next = || it.next().unwrap_or_default();
    Ok(vec![Figure {
        title: "Problem 3: sum-form and EMA-form momentum".into(),
        caption: format!(
            "Φ on the quadratic Φ²/2 with gradient noise, β = {beta}, lr {lr} then {} from step \
             {change}. The sum and EMA forms coincide throughout; the form that accumulates the \
             learning rate in its buffer departs after the change.",
            lr / 10.0
        ),
        x_label: "step t".into(),
        y_label: "Φ_t (parameter units)".into(),
        lines: vec![
            line("sum form b ← βb + g, Φ −= ηb", next(), false),
            line("EMA form m ← βm + (1−β)g, Φ −= η/(1−β)·m", next(), true),
            line("lr in buffer v ← βv + ηg, Φ −= v", next(), false),
        ],
        ..Figure::default()
    }])
}

fn p4(options: &VerifyOptions, chains: usize) -> Result<Vec<Figure>> {
    let (n, sigma, steps) = (10.0f64, 2.0f64, 40usize);
    let horizon = HorizonAverage::new(n)?;
    let ema = Ema::from_horizon(n)?;
    let debias = PowerDebias::new(ema.beta())?;
    let rates: Vec<f64> = (1..=steps as u64)
        .map(|t| horizon.rate(t))
        .collect::<Result<_>>()?;
    let factors: Vec<f64> = (1..=steps as u64)
        .map(|t| debias.factor(t))
        .collect::<Result<_>>()?;
    let input =
        Normal::new(1.0, sigma).map_err(|e| Error::invalid("sigma", sigma, e.to_string()))?;
    let est = per_step(options.derive_seed("fig4"), chains, steps, 2, |rng| {
        let (mut y, mut m) = (0.0f64, 0.0f64);
        let mut out = vec![vec![0.0; steps], vec![0.0; steps]];
        for t in 0..steps {
            let x = input.sample(rng);
            y = HorizonAverage::update(rates[t], y, x);
            m = ema.update(m, x);
            out[0][t] = y;
            out[1][t] = m * factors[t];
        }
        out
    });
    let s2 = sigma * sigma;
    let series = |o: usize, f: fn(&Estimate) -> f64| {
        est[o]
            .iter()
            .enumerate()
            .map(|(t, e)| (t as f64 + 1.0, f(e)))
            .collect()
    };
    Ok(vec![
        Figure {
            title: "Problem 4: variance of the two bias corrections".into(),
            caption: format!(
                "Variance over {chains} chains, N = {n}, σ² = {s2}: rate 1/min(t,N) against \
                 Adam's m_t/(1−β^t); dashed: σ²/t and σ²/(2N−1)."
            ),
            x_label: "step t".into(),
            y_label: "variance (units of x²)".into(),
            lines: vec![
                line("1/min(t,N) (measured)", series(0, |e| e.variance), false),
                line(
                    "Adam m_t/(1−β^t) (measured)",
                    series(1, |e| e.variance),
                    false,
                ),
                line(
                    "σ²/t",
                    (1..=steps).map(|t| (t as f64, s2 / t as f64)).collect(),
                    true,
                ),
                line(
                    "σ²/(2N−1)",
                    vec![
                        (1.0, s2 / (2.0 * n - 1.0)),
                        (steps as f64, s2 / (2.0 * n - 1.0)),
                    ],
                    true,
                ),
            ],
            ..Figure::default()
        },
        Figure {
            title: "Problem 4: bias of the two corrections".into(),
            caption: "Mean minus x̄ = 1 over the same chains: both corrections are unbiased from \
                      the first step (the uncorrected EMA is not)."
                .into(),
            x_label: "step t".into(),
            y_label: "E y_t − x̄ (units of x)".into(),
            lines: vec![
                line("1/min(t,N)", series(0, |e| e.mean - 1.0), false),
                line("Adam m_t/(1−β^t)", series(1, |e| e.mean - 1.0), false),
                line(
                    "uncorrected EMA: −β^t x̄",
                    (1..=steps)
                        .map(|t| (t as f64, -powi(ema.beta(), t as i32)))
                        .collect(),
                    true,
                ),
            ],
            ..Figure::default()
        },
    ])
}

fn histogram(samples: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64)> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &x in samples {
        if x >= lo && x < hi {
            counts[((x - lo) / width) as usize] += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            (
                lo + (i as f64 + 0.5) * width,
                c as f64 / (samples.len() as f64 * width),
            )
        })
        .collect()
}

fn p5(options: &VerifyOptions) -> Result<Vec<Figure>> {
    let (c, sigma, lr) = (0.25, 2.0, 0.2);
    let chains = if options.quick { 5_000 } else { 20_000 };
    let base = NoisyQuadratic::new(c, sigma)?;
    let doubled = NoisyQuadratic::new(2.0 * c, sigma)?;
    let run = |q: &NoisyQuadratic, lr: f64, tag: &str| -> Result<Vec<f64>> {
        let spec: OptimizerSpec = format!("sgd:lr={lr}").parse()?;
        let mc = options.monte_carlo(tag, chains * 4)?;
        q.stationary_samples(&spec, 600, mc)
    };
    let a = run(&base, lr, "fig5.L")?;
    let b = run(&doubled, lr / 2.0, "fig5.2L.half")?;
    let d = run(&doubled, lr, "fig5.2L")?;
    let h = |s: &[f64]| histogram(s, -2.5, 2.5, 50);
    Ok(vec![Figure {
        title: "Problem 5: temperature under a doubled loss".into(),
        caption: format!(
            "Stationary density of Φ for SGD on c(Φ−x)²/2, x ~ N(0, {}), over many chains: \
             loss ×2 with η/2 reproduces the original temperature, loss ×2 at η does not.",
            sigma * sigma
        ),
        x_label: "Φ (parameter units)".into(),
        y_label: "density (1/parameter units)".into(),
        lines: vec![
            line(&format!("loss L, η = {lr}"), h(&a), false),
            line(&format!("loss 2L, η = {}", lr / 2.0), h(&b), true),
            line(&format!("loss 2L, η = {lr}"), h(&d), false),
        ],
        ..Figure::default()
    }])
}

fn p6() -> Result<Vec<Figure>> {
    let rows = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 3.0], [-1.0, 5.0]];
    let text: String = rows
        .iter()
        .map(|r| format!("{},{}\n", r[0], r[1]))
        .collect();
    let model = Points::new(parse_csv(&text, false)?);
    let mean = model.mean();
    let spec_for = |eps: f64| -> Result<OptimizerSpec> { format!("normsgd:eps={eps}").parse() };
    let field_spec = spec_for(1e-6)?;
    let mut arrows = Vec::new();
    for i in 0..=12 {
        for j in 0..=12 {
            let p = [-1.5 + 6.0 * i as f64 / 12.0, -0.5 + 6.0 * j as f64 / 12.0];
            let (f, _) = expected_update(&model, &field_spec, &p)?;
            let norm = (f[0] * f[0] + f[1] * f[1]).sqrt().max(1e-12);
            let scale = 0.35 * norm.min(1.0) / norm;
            arrows.push(Arrow {
                from: (p[0], p[1]),
                to: (p[0] + scale * f[0], p[1] + scale * f[1]),
            });
        }
    }
    let mut path = Vec::new();
    for eps in [1e-8, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1e4] {
        let fp = fixed_point(&model, &spec_for(eps)?, &mean)?;
        path.push((fp.point[0], fp.point[1]));
    }
    Ok(vec![Figure {
        title: "Problem 6: normalised SGD pulls its fixed point to the geometric median".into(),
        caption: "Arrows: the expected update of normsgd (ε = 1e-6) over five points in the \
                  plane (length capped). The fixed point moves from the geometric median \
                  (ε → 0) to the mean, the loss minimiser (ε → ∞)."
            .into(),
        x_label: "Φ₁ (data units)".into(),
        y_label: "Φ₂ (data units)".into(),
        lines: vec![line("fixed point as ε grows (1e-8 … 1e4)", path, false)],
        arrows,
        markers: vec![
            Marker {
                label: "data points".into(),
                at: rows.iter().map(|r| (r[0], r[1])).collect(),
            },
            Marker {
                label: "loss minimiser (mean)".into(),
                at: vec![(mean[0], mean[1])],
            },
            Marker {
                label: "geometric median (Weiszfeld)".into(),
                at: {
                    let gm = super::claims::p6::geometric_median(&rows);
                    vec![(gm[0], gm[1])]
                },
            },
        ],
        ..Figure::default()
    }])
}

fn p7() -> Result<Vec<Figure>> {
    // Two examples, linear regression without bias: (x=1, y=1), (x=2, y=0); Φ* = 0.2.
    let model = LinReg::new(parse_csv("1,1\n2,0\n", true)?, false)?;
    let star = model.least_squares()?[0];
    let mut lines = Vec::new();
    let mut markers = Vec::new();
    for spec in [
        "sgd:lr=0.01",
        "multiplicative:lr=0.01,eps=0.001",
        "lossprop:lr=0.01",
    ] {
        let spec: OptimizerSpec = spec.parse()?;
        let points = (0..=80)
            .map(|k| {
                let w = -0.2 + 0.8 * k as f64 / 80.0;
                expected_update(&model, &spec, &[w]).map(|(f, _)| (w, f[0]))
            })
            .collect::<Result<Vec<_>>>()?;
        let fp = fixed_point(&model, &spec, &[star])?;
        markers.push(Marker {
            label: format!("fixed point of {spec}"),
            at: vec![(fp.point[0], 0.0)],
        });
        lines.push(line(&format!("E[ΔΦ]/lr, {spec}"), points, false));
    }
    markers.push(Marker {
        label: "loss minimiser Φ*".into(),
        at: vec![(star, 0.0)],
    });
    let mut l_sq = Vec::new();
    for k in 0..=80 {
        let w = -0.2 + 0.8 * k as f64 / 80.0;
        let v: f64 = (0..2)
            .map(|i| Model::<f64>::loss(&model, &[w], i).powi(2))
            .sum::<f64>()
            / 2.0;
        l_sq.push((w, v));
    }
    lines.push(line("E[L²] (for reference)", l_sq, true));
    Ok(vec![Figure {
        title: "Problem 7: multiplicative and loss-proportional updates".into(),
        caption: "Expected update per unit learning rate on two examples (x=1,y=1), (x=2,y=0): \
                  SGD and the multiplicative rule vanish at the loss minimiser; the \
                  loss-proportional rule vanishes at the minimiser of E[L²]."
            .into(),
        x_label: "w (parameter units)".into(),
        y_label: "E[ΔΦ]/lr (parameter units)".into(),
        lines,
        markers,
        ..Figure::default()
    }])
}
