//! Section 13, beyond the problem set: optimizer state in 8 bits — blockwise dynamic
//! quantization ([`crate::optim::quant`], `state_dtype=q8`): each block of elements keeps
//! its absmax a in `f32` and one byte per element, the index of a value c\[q\] of
//! bitsandbytes' dynamic code book with x̂ = c\[q\]·a. Every measurement runs the library's
//! optimizers with `state_dtype=q8`.
//!
//! * **Round to nearest stalls where the book is coarse** (13a). An EMA element climbing
//!   from 0 to c in a block whose absmax is held at a stops at the first code with
//!   (1 − β)(c − c\[q\]a) below half the gap to the next code — read off the book alone.
//!   The book's gaps are 1.4 % of a value just below 1 but grow by the decade down, so an
//!   element at 2 % of its block's absmax stalls there for ever. Near zero (13a.zero) an
//!   element whose first increment (1 − β)c is below half the smallest code c₁·a never
//!   leaves 0: a coordinate whose gradient is 10⁻⁴ of its block's largest is invisible to
//!   its momentum.
//! * **Stochastic rounding is unbiased** (13b), and its error variance is predicted by the
//!   book's spacing (13c): rounding between neighbours cₗ < y < cₕ adds an error of variance
//!   u²f(1 − f), u = (cₕ − cₗ)a, f = (y − cₗ)/(cₕ − cₗ); the EMA is linear, so the difference
//!   from the exact EMA has variance E\[Σₜβ^(2(T − t))uₜ²fₜ(1 − fₜ)\].
//! * **Adam's step with 8-bit moments** (13d) is larger by Jensen's term of the
//!   relative error x of v, E\[(1 + x)^(−1/2)\] − 1 = ⅜E\[x²\] − (5/16)E\[x³\] + (35/128)E\[x⁴\]
//!   + …, as with bfloat16 (11e), x now from the 8-bit v.
//! * **One outlier coarsens its block** (13e): a block's scale is its largest magnitude, so a
//!   block of N(0, 1) values beside one outlier of size a is stored on the book scaled by a;
//!   the mean squared error of round to nearest is
//!   E\[(a·c\[nearest(x/a)\] − x)²\], predicted by integrating the book against the normal
//!   density — not the (a/127)²/12 of a linear 8-bit grid.
//! * **The drift at Φ\*** (13f, `audit`'s stationary drift on problem 6's points): a
//!   coordinate whose v is far below its block's absmax is stored on the book's coarse
//!   bottom codes, and RMSProp's drift there (6c) is rescaled by λ^(3/2), λ the ratio of
//!   its v to the stored one — not by the λ^(1/2) that rescales its step.

use rand_distr::{Distribution, StandardNormal};

use super::p11::{RoundingEstimates, RoundingSums, adam_v, jensen, uniform_gradients};
use super::{Claim, VerifyOptions};
use crate::data::parse_csv;
use crate::lab::audit::{SimulationOptions, stationary_drift};
use crate::lab::figures::{Figure, Line};
use crate::lab::montecarlo::{Estimate, Measurement};
use crate::lowp::stream_key;
use crate::model::Points;
use crate::optim::math::powi;
use crate::optim::quant::CodeBook;
use crate::optim::{GradRef, Optimizer, OptimizerSpec, ParamMut, StepInfo, Tensor};
use crate::{Error, Result};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = nearest_stalls()?;
    claims.extend(stochastic(options)?);
    claims.extend(adam(options)?);
    claims.extend(outliers(options)?);
    claims.extend(drift(options)?);
    Ok(claims)
}

/// An `ema-momentum` spec with 8-bit state (`lr=0`: the parameters stay, the state is the
/// EMA of the inputs).
fn ema_spec(beta: f64, extra: &str) -> String {
    format!("ema-momentum:lr=0,beta={beta},state_dtype=q8{extra}")
}

/// The optimizer of `spec` on one tensor `v` of `state.len()` elements whose EMA state is
/// `state`, with block scales `absmax` (each value must be c\[q\]·a of its block): set
/// through the state dict, as a user restores one.
fn ema_with_state(spec: &str, state: &[f64], absmax: &[f64]) -> Result<Optimizer<f64>> {
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let n = state.len();
    let zeros = vec![0.0; n];
    opt.step_views(
        &mut [ParamMut::vector("v", &mut zeros.clone())],
        &[GradRef::vector("v", &zeros)],
        &StepInfo::default(),
    )?;
    let mut dict = opt.state_dict()?;
    for (key, values) in [("exp_avg/v", state), ("exp_avg.absmax/v", absmax)] {
        let (_, buffer) = dict
            .buffers
            .get_mut(key)
            .ok_or_else(|| Error::Unsupported(format!("the q8 EMA's state dict has no `{key}`")))?;
        buffer.copy_from_slice(values);
    }
    Optimizer::from_state_dict(&dict)
}

/// The EMA's state of tensor 0.
fn ema_state(opt: &Optimizer<f64>) -> Result<Vec<f64>> {
    opt.state_values("exp_avg", 0)
        .ok_or_else(|| Error::Unsupported("ema-momentum keeps no exp_avg".into()))
}

/// The stall predicted from the book alone for an EMA climbing from 0 to `c` below a block
/// absmax of 1: the first code value v ≥ 0 whose increment (1 − β)(c − v) is below half the
/// gap to the next code.
fn predicted_stall(book: &CodeBook, beta: f64, c: f64) -> Option<f64> {
    let values = book.values();
    (usize::from(book.zero_code())..255).find_map(|q| {
        let (v, next) = (f64::from(values[q]), f64::from(values[q + 1]));
        ((1.0 - beta) * (c - v) < (next - v) / 2.0).then_some(v)
    })
}

/// 13a and 13a.zero: the library's EMA with 8-bit state rounded to nearest, in a block of 16
/// whose first element holds the absmax at 1 (fed 1 from 1).
fn nearest_stalls() -> Result<Vec<Claim>> {
    let (beta, c, steps) = (0.999f64, 0.5f64, 20_000usize);
    let book = CodeBook::signed();
    let spec = ema_spec(beta, ",rounding=nearest,block_size=16");
    let mut start = vec![0.0; 16];
    start[0] = 1.0;
    let run = |c: f64, steps: usize| -> Result<f64> {
        let mut opt = ema_with_state(&spec, &start, &[1.0])?;
        let mut p = [Tensor::vector("v", vec![0.0f64; 16])];
        let mut g = [Tensor::vector("v", vec![c; 16])];
        g[0].data_mut()[0] = 1.0;
        for _ in 0..steps {
            opt.step(&mut p, &g, &StepInfo::default())?;
        }
        Ok(ema_state(&opt)?[1])
    };
    let expected = predicted_stall(book, beta, c)
        .ok_or_else(|| Error::Unsupported("no stall predicted by the code book".into()))?;
    let measured = run(c, steps)?;
    let exact = c * (1.0 - powi(beta, steps as i32));
    let stall = Claim::identity(
        "13a",
        "an 8-bit EMA rounded to nearest, climbing to c below its block's absmax a, stalls at \
         the first code with (1−β)(c − c[q]a) < half the gap to the next code",
        &[
            ("beta", beta),
            ("c", c),
            ("absmax", 1.0),
            ("t", steps as f64),
        ],
        expected,
        measured,
        1e-7 * expected,
    )
    .reject("the f64 EMA c(1 − β^t)", exact)
    .reject(
        "bfloat16's stall (11a's ulp condition)",
        super::p11::predicted_stall(beta, c).unwrap_or(f64::NAN),
    )
    .optimizer(&spec);
    // The smallest input that moves the element off 0 in one step, by bisection through the
    // optimizer: from 0 the first step either leaves 0 or the state never changes.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if run(mid, 1)? == 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let smallest = f64::from(book.value(book.zero_code() + 1));
    let threshold = smallest / (2.0 * (1.0 - beta));
    let zero = Claim::identity(
        "13a.zero",
        "…and an element fed c from 0 never leaves 0 while (1−β)c < c₁a/2, c₁ the book's \
         smallest positive value: the threshold on c, by bisection",
        &[("beta", beta), ("absmax", 1.0), ("c1", smallest)],
        threshold,
        hi,
        1e-6 * threshold,
    )
    .reject("the smallest value itself, (1−β)c < c₁a", 2.0 * threshold)
    .optimizer(&spec);
    Ok(vec![stall, zero])
}

/// 13b and 13c: the library's EMA with stochastically rounded 8-bit state against the exact
/// one on the same noisy inputs x = g², element by element.
fn stochastic(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (beta, steps) = (0.999f64, 2_000usize);
    // Each chain block is one tensor of BLOCK elements: 4 blocks of the default 256, each
    // element its own input sequence and rounding bits.
    const BLOCK: usize = 1_024;
    const QBLOCK: usize = 256;
    let mc = options.monte_carlo("p13.stochastic", 48)?;
    let seed = mc.seed();
    let book = CodeBook::signed();
    let spec = |rounding: &str, sr_seed: u64| {
        ema_spec(beta, &format!(",rounding={rounding},sr_seed={sr_seed}"))
    };
    let blocks = mc.run(|rng, block| -> Result<Vec<[f64; 6]>> {
        let sr_seed = seed.wrapping_add(block as u64);
        let mut sr = Optimizer::<f64>::from_spec(&spec("stochastic", sr_seed))?;
        let mut rn = Optimizer::<f64>::from_spec(&spec("nearest", sr_seed))?;
        let mut p_sr = [Tensor::vector("v", vec![0.0f64; BLOCK])];
        let mut p_rn = [Tensor::vector("v", vec![0.0f64; BLOCK])];
        let mut x = [Tensor::vector("v", vec![0.0f64; BLOCK])];
        let mut exact = vec![0.0f64; BLOCK];
        let mut sums = RoundingSums::new(beta, BLOCK);
        let mut v = vec![0.0f64; BLOCK];
        let mut pre = vec![0.0f64; BLOCK];
        let (decay, rate) = (beta, 1.0 - beta);
        for _ in 0..steps {
            for ((xi, e), (p, &vi)) in x[0]
                .data_mut()
                .iter_mut()
                .zip(exact.iter_mut())
                .zip(pre.iter_mut().zip(&v))
            {
                let g: f64 = StandardNormal.sample(rng);
                let input = g * g;
                *xi = input;
                *e = beta * *e + (1.0 - beta) * input;
                // The kernel's step before rounding, from the stored (dequantized) v.
                *p = decay * vi + rate * input;
            }
            sr.step(&mut p_sr, &x, &StepInfo::default())?;
            rn.step(&mut p_rn, &x, &StepInfo::default())?;
            let stored = ema_state(&sr)?;
            for (b, range) in (0..BLOCK)
                .step_by(QBLOCK)
                .map(|k| k..k + QBLOCK)
                .enumerate()
            {
                // The block's scale, as the kernel takes it: the largest |x| in f32.
                let a = pre[range.clone()]
                    .iter()
                    .fold(0.0f32, |m, &x| m.max((x as f32).abs()));
                let inv = 1.0 / a;
                for i in range {
                    let y = pre[i] as f32 * inv;
                    let (lo, hi) = book.bracket(y);
                    let (cl, ch) = (book.value(lo), book.value(hi));
                    let (down, up) = (f64::from(cl * a), f64::from(ch * a));
                    if stored[i] != down && stored[i] != up {
                        return Err(Error::Unsupported(format!(
                            "claim 13b: the EMA's 8-bit state {} (block {b}) is neither \
                             neighbour {down} nor {up} of its step {}",
                            stored[i], pre[i]
                        )));
                    }
                    let u = f64::from(ch - cl) * f64::from(a);
                    let f = if hi > lo {
                        f64::from(y - cl) / f64::from(ch - cl)
                    } else {
                        0.0
                    };
                    sums.add(i, u, f);
                    v[i] = stored[i];
                }
            }
        }
        Ok(sums.rows(&v, &ema_state(&rn)?, &exact))
    });
    let measured = RoundingEstimates::from_blocks(blocks)?;
    let params = [
        ("beta", beta),
        ("t", steps as f64),
        ("elements", measured.elements as f64),
        ("block_size", QBLOCK as f64),
    ];
    let bias = Claim::monte_carlo(
        "13b",
        "an 8-bit EMA rounded stochastically is unbiased: E[v_T(q8, SR) − v_T(f64)] = 0 on \
         x = g², g ~ N(0,1)",
        &params,
        0.0,
        measured.bias,
    )
    .reject("round to nearest's bias (measured)", measured.nearest_bias)
    .optimizer(spec("stochastic", seed))
    .optimizer(spec("nearest", seed));
    let variance = Claim::monte_carlo(
        "13c",
        "its error variance is Σ β^{2(T−t)} u_t² f_t(1−f_t), u = (c_h − c_l)·a the book's gap \
         times the block's absmax, f the dropped fraction: ratio 1",
        &params,
        1.0,
        measured.ratio,
    )
    .reject(
        "uniform rounding error, variance u²/12",
        measured.uniform_ratio,
    )
    .optimizer(spec("stochastic", seed));
    Ok(vec![bias, variance])
}

/// 13d: Adam with 8-bit moments (the optimizer's own kernel, stochastic rounding) against
/// f64 moments on the same gradients, as 11e: i.i.d. gradients per element and step, uniform
/// with mean μ and variance σ², from a state at m = μ, v = E g².
fn adam(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (mu, sigma, beta2, lr) = (1.3f64, 0.6f64, 0.999f64, 1e-3f64);
    let steps = 1_000usize;
    let n = if options.quick { 200_000 } else { 800_000 };
    let seed = options.derive_seed("p13.adam");
    let grad_seed = options.derive_seed("p13.adam.gradients");
    let spec = |extra: &str| format!("adam:lr={lr},beta2={beta2},sr_seed={seed}{extra}");
    let q8 = ",state_dtype=q8";
    let mut opts = [
        Optimizer::<f64>::from_spec(&spec(""))?,
        Optimizer::<f64>::from_spec(&spec(q8))?,
    ];
    let mut params = vec![vec![0.0f64; n]; 2];
    let mut g = vec![0.0f64; n];
    // m and v start at values every block holds exactly (its absmax, code 1).
    let (m0, v0) = (
        f64::from(mu as f32),
        f64::from((mu * mu + sigma * sigma) as f32),
    );
    for (opt, p) in opts.iter_mut().zip(&mut params) {
        opt.step_views(
            &mut [ParamMut::vector("w", p)],
            &[GradRef::vector("w", &g)],
            &StepInfo::default(),
        )?;
        let mut dict = opt.state_dict()?;
        for (slot, value) in [
            ("exp_avg/w", m0),
            ("exp_avg_sq/w", v0),
            ("exp_avg.absmax/w", m0),
            ("exp_avg_sq.absmax/w", v0),
        ] {
            if let Some((_, buffer)) = dict.buffers.get_mut(slot) {
                buffer.fill(value);
            }
        }
        dict.metadata.insert("step".into(), "1000000".into());
        *opt = Optimizer::from_state_dict(&dict)?;
        p.fill(0.0);
    }
    let state = |opt: &Optimizer<f64>, slot: &str| {
        opt.state_values(slot, 0)
            .ok_or_else(|| Error::Unsupported(format!("adam has no `{slot}` buffer")))
    };
    let mut v_before = Vec::new();
    let mut before = vec![vec![0.0f64; n]; 2];
    for t in 0..steps {
        uniform_gradients(stream_key(grad_seed, t as u64, 0, 0), mu, sigma, &mut g);
        if t + 1 == steps {
            v_before = state(&opts[1], "exp_avg_sq")?;
        }
        for ((opt, p), b) in opts.iter_mut().zip(&mut params).zip(&mut before) {
            if t + 1 == steps {
                b.copy_from_slice(p);
            }
            opt.step_views(
                &mut [ParamMut::vector("w", p)],
                &[GradRef::vector("w", &g)],
                &StepInfo::default(),
            )?;
        }
    }
    let v64 = state(&opts[0], "exp_avg_sq")?;
    let step = |k: usize| -> Vec<f64> {
        params[k]
            .iter()
            .zip(&before[k])
            .map(|(a, b)| a - b)
            .collect()
    };
    let (d64, d8) = (step(0), step(1));
    // The v the last step divided by: β₂v + (1 − β₂)g² from the stored 8-bit v, in f64 as the
    // kernel computes it on the dequantized state before requantizing.
    let jensen: Vec<f64> = v_before
        .iter()
        .zip(&g)
        .zip(&v64)
        .map(|((&v, &g), &exact)| jensen(adam_v(beta2, v, g) / exact - 1.0))
        .collect();
    let r: Vec<f64> = d8.iter().zip(&d64).map(|(a, b)| a / b - 1.0).collect();
    let paired: Vec<f64> = r.iter().zip(&jensen).map(|(r, j)| r - j).collect();
    let (r_est, q) = (Estimate::from_samples(&r), Estimate::from_samples(&paired));
    let predicted = jensen.iter().sum::<f64>() / n as f64;
    Ok(vec![
        Claim::monte_carlo(
            "13d",
            "Adam's own kernel with 8-bit moments (stochastic rounding): its step is larger by \
             Jensen's term E[(3/8)x² − (5/16)x³ + (35/128)x⁴] of v's relative error x",
            &[
                ("mu", mu),
                ("sigma", sigma),
                ("beta2", beta2),
                ("t", steps as f64),
                ("elements", n as f64),
            ],
            predicted,
            Measurement::new(r_est.mean, q.stderr_mean),
        )
        .reject("an unbiased step (0)", 0.0)
        .optimizer(spec(""))
        .optimizer(spec(q8)),
    ])
}

/// The mean squared error of rounding x ~ N(0, 1) to nearest on the book scaled by `a`:
/// E\[(a·c\[nearest(x/a)\] − x)²\], by the midpoint rule on \[−10, 10\] (the book's steps
/// are resolved: 4·10⁶ points).
fn predicted_outlier_mse(book: &CodeBook, a: f64) -> f64 {
    let points = 4_000_000usize;
    let (lo, width) = (-10.0f64, 20.0f64);
    let h = width / points as f64;
    let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    let a32 = a as f32;
    let inv = 1.0 / a32;
    (0..points)
        .map(|k| {
            let x = lo + (k as f64 + 0.5) * h;
            let q = book.nearest(x as f32 * inv);
            let e = f64::from(book.value(q) * a32) - x;
            norm * (-0.5 * x * x).exp() * e * e
        })
        .sum::<f64>()
        * h
}

/// 13e: a block of 255 N(0, 1) values and one outlier of size a, stored by the library's
/// kernel (an EMA with β = 0 stores its input), rounded to nearest: the neighbours' mean
/// squared error against the book's prediction, for a = 100, 1000, 10000.
fn outliers(options: &VerifyOptions) -> Result<Vec<Claim>> {
    const QBLOCK: usize = 256;
    let blocks = if options.quick { 400 } else { 1_600 };
    let book = CodeBook::signed();
    let spec = ema_spec(0.0, ",rounding=nearest");
    let mut claims = Vec::new();
    for (id, a) in [
        ("13e", 100.0f64),
        ("13e.1000", 1000.0),
        ("13e.10000", 10_000.0),
    ] {
        let mut rng = crate::lab::montecarlo::chain_rng(options.derive_seed(id), 0);
        let n = blocks * QBLOCK;
        let mut x = vec![0.0f64; n];
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = if i % QBLOCK == 0 {
                a
            } else {
                StandardNormal.sample(&mut rng)
            };
        }
        let mut opt = Optimizer::<f64>::from_spec(&spec)?;
        let mut p = vec![0.0f64; n];
        opt.step_views(
            &mut [ParamMut::vector("v", &mut p)],
            &[GradRef::vector("v", &x)],
            &StepInfo::default(),
        )?;
        let stored = ema_state(&opt)?;
        let errors: Vec<f64> = (0..n)
            .filter(|i| i % QBLOCK != 0)
            .map(|i| (stored[i] - x[i]).powi(2))
            .collect();
        let measured = Estimate::from_samples(&errors).mean();
        let linear = (a / 127.0).powi(2) / 12.0;
        claims.push(
            Claim::monte_carlo(
                id,
                "one outlier a in a block of N(0,1) values: the neighbours' error when rounded \
                 to nearest is E[(a·c[nearest(x/a)] − x)²], the book integrated against the \
                 normal density",
                &[
                    ("outlier", a),
                    ("block_size", QBLOCK as f64),
                    ("blocks", blocks as f64),
                ],
                predicted_outlier_mse(book, a),
                measured,
            )
            .reject("a linear 8-bit grid of step a/127: (a/127)²/12", linear)
            .reject("the neighbours lost to 0: E x² = 1", 1.0)
            .optimizer(&spec),
        );
    }
    Ok(claims)
}

/// 13f: RMSProp's drift at Φ* on problem 6's points (6c) in two coordinates, the second a
/// copy of the first scaled by s (rows (0, 0), (0, 0), (3, 3s)): one block of two elements
/// whose absmax is the first coordinate's v. In f64 RMSProp is scale-invariant and the two
/// drifts are equal. In 8 bits, with s² = 10⁻⁷ below half the unsigned book's smallest value
/// c₁ = 3.25·10⁻⁷, the second v would round to 0; the zero-point rule stores it as c₁·v₁,
/// and round to nearest keeps it there. The step then divides by
/// √(αc₁v₁ + (1 − α)s²g²) = √c₁·√(αv₁ + (1 − α)λg²), λ = s²/c₁, whose expansion in 1 − α
/// gives the second coordinate √λ times the first one's step and λ times its
/// ½(1 − α)E\[g³\] term: the drifts' ratio is λ^(3/2), to O(1 − α).
fn drift(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (alpha, s2) = (0.9995f64, 1e-7f64);
    let text = format!("0,0\n0,0\n3,{}\n", 3.0 * s2.sqrt());
    let model = Points::new(parse_csv(&text, false)?);
    // Φ* is the mean of the rows; the second coordinate's gradients are s times the first's.
    let column = |j: usize| -> f64 { (0..3).map(|i| model.data().row(i)[j]).sum::<f64>() / 3.0 };
    let star = [column(0), column(1)];
    let s = star[1] / star[0];
    let spec_text = format!("rmsprop:lr=0.01,alpha={alpha},state_dtype=q8,rounding=nearest");
    let spec: OptimizerSpec = spec_text.parse()?;
    let steps = if options.quick { 500_000 } else { 2_000_000 };
    let sim = SimulationOptions {
        burn_in: (20.0 / (1.0 - alpha)) as usize,
        steps,
        seed: options.derive_seed("p13.drift"),
    };
    let (mean, se) = stationary_drift(&model, &spec, &star, &sim)?;
    let book = CodeBook::unsigned();
    let c1 = f64::from(book.value(book.zero_code() + 1));
    let lambda = s * s / c1;
    // g = Φ* − x over the rows of the first coordinate: 6c's skewness.
    let g: Vec<f64> = (0..3).map(|i| star[0] - model.data().row(i)[0]).collect();
    let m2 = g.iter().map(|v| v * v).sum::<f64>() / 3.0;
    let m3 = g.iter().map(|v| v * v * v).sum::<f64>() / 3.0;
    let skew = m3 / m2.powf(1.5);
    let sixc = 0.5 * (1.0 - alpha) * skew;
    let sign = g.iter().map(|v| v.signum()).sum::<f64>() / 3.0;
    let params = [
        ("alpha", alpha),
        ("s2", s * s),
        ("c1", c1),
        ("steps", steps as f64),
    ];
    let expected = lambda.powf(1.5);
    Ok(vec![
        Claim::monte_carlo(
            "13f",
            "RMSProp with 8-bit v at problem 6's points, two coordinates in one block: the \
             block's absmax (coordinate 1) drifts as 6c's ½(1−α)E[g³]/E[g²]^{3/2}",
            &params,
            sixc,
            Measurement::new(mean[0], se[0]),
        )
        .reject("0 (no bias at all)", 0.0)
        .optimizer(&spec_text),
        Claim::identity(
            "13f.ratio",
            "…and coordinate 2 (scale s, s² below half the book's smallest value c₁, kept at \
             c₁v₁ by the zero-point rule) drifts λ^{3/2} times as much, λ = s²/c₁ (1 in f64)",
            &params,
            expected,
            mean[1] / mean[0],
            0.005 * expected,
        )
        .reject("f64 state: RMSProp is scale-invariant (1)", 1.0)
        .reject("the step's scale alone, λ^{1/2}", lambda.sqrt())
        .reject(
            "v stored as 0: steps sign(g)/√(1−α)",
            -sign / (1.0 - alpha).sqrt() / sixc,
        )
        .optimizer(&spec_text),
    ])
}

/// The report's plot: the EMA climbing to c below its block's absmax, exact, rounded to
/// nearest and stochastically, through the optimizer.
pub(crate) fn figures(options: &VerifyOptions) -> Result<Vec<Figure>> {
    let (beta, c, steps, every) = (0.999f64, 0.5f64, 6_000usize, 20usize);
    let book = CodeBook::signed();
    let mut start = vec![0.0; 16];
    start[0] = 1.0;
    let seed = options.derive_seed("p13.figure");
    let trace = |rounding: &str| -> Result<Vec<(f64, f64)>> {
        let spec = ema_spec(
            beta,
            &format!(",rounding={rounding},block_size=16,sr_seed={seed}"),
        );
        let mut opt = ema_with_state(&spec, &start, &[1.0])?;
        let mut p = [Tensor::vector("v", vec![0.0f64; 16])];
        let mut g = [Tensor::vector("v", vec![c; 16])];
        g[0].data_mut()[0] = 1.0;
        let mut points = Vec::new();
        for t in 0..steps {
            opt.step(&mut p, &g, &StepInfo::default())?;
            if t % every == 0 {
                points.push((t as f64 + 1.0, ema_state(&opt)?[1]));
            }
        }
        Ok(points)
    };
    let exact: Vec<(f64, f64)> = (0..steps)
        .step_by(every)
        .map(|t| (t as f64 + 1.0, c * (1.0 - powi(beta, t as i32 + 1))))
        .collect();
    let stall = predicted_stall(book, beta, c).unwrap_or(f64::NAN);
    let line = |label: &str, points: Vec<(f64, f64)>, dashed: bool| Line {
        label: label.to_string(),
        points,
        dashed,
        group: usize::MAX,
    };
    Ok(vec![Figure {
        title: "Section 13: an 8-bit EMA below its block's absmax".into(),
        caption: format!(
            "v_t ← round(βv + (1−β)c) from 0 (β = {beta}, c = {c}) in a block of 16 whose \
             absmax is held at 1, stored as bitsandbytes' signed dynamic code book times the \
             absmax: exact (f64), rounded to nearest, and rounded stochastically. Nearest \
             stops at {stall}, where the increment (1−β)(c−v) falls below half the gap to \
             the next code (dashed: that prediction, claim 13a); stochastic rounding follows \
             the exact curve up to its rounding noise (13b, 13c)."
        ),
        x_label: "step t".into(),
        y_label: "v_t".into(),
        lines: vec![
            line("exact (f64)", exact, false),
            line("q8, round to nearest", trace("nearest")?, false),
            line("q8, stochastic rounding", trace("stochastic")?, false),
            line(
                "predicted stall",
                vec![(1.0, stall), (steps as f64, stall)],
                true,
            ),
        ],
        ..Figure::default()
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_prediction_reads_the_books_gaps() {
        // Signed book, β = 0.999, c = 0.5: the increment ≈ 5·10⁻⁴ clears half the gaps of the
        // decade [10⁻³, 10⁻²) (2.8·10⁻⁴) but not the gap from its last code 0.00971875 to
        // the first of the next decade, 0.01140625 (half: 8.4·10⁻⁴).
        let v = predicted_stall(CodeBook::signed(), 0.999, 0.5).unwrap();
        assert!((v - 0.009_718_75).abs() < 1e-9, "{v}");
        // A fast EMA reaches the top decade.
        let fast = predicted_stall(CodeBook::signed(), 0.9, 0.5).unwrap();
        assert!(fast > 0.1, "{fast}");
    }

    #[test]
    fn the_outlier_prediction_is_the_rounding_error_of_the_scaled_book() {
        let book = CodeBook::signed();
        // With a = 1000 the values sit in the book's coarse lower decades; with a = 10 in its
        // fine upper ones, so the error grows with a, slower than a linear grid's a².
        let (small, large) = (
            predicted_outlier_mse(book, 10.0),
            predicted_outlier_mse(book, 1000.0),
        );
        assert!(
            small > 0.0 && large > small && large < 1.0,
            "{small} {large}"
        );
        assert!(large / small < 1e4 / 10.0, "{small} {large}");
    }

    #[test]
    fn section_13_stalls_pass() {
        let claims = nearest_stalls().unwrap();
        assert!(claims.iter().all(|c| c.passed), "{claims:#?}");
    }
}
