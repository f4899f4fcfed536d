//! 10d: Muon's Newton–Schulz iteration, measured on the singular values of its update.

use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;
use crate::lab::claims::{Claim, VerifyOptions, sequences};
use crate::lab::montecarlo::chain_rng;
use crate::optim::{Optimizer, StepInfo, Tensor};

/// The quintic's coefficients as PyTorch writes them (`torch.optim._muon`: DEFAULT_A, _B,
/// _C), not the library's constant: a wrong coefficient in the optimizer shows as a
/// mismatch between its update's singular values and this quintic.
const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// p(x) = ax + bx³ + cx⁵ applied `k` times.
pub(super) fn quintic(x: f64, k: usize) -> f64 {
    let (a, b, c) = NS_COEFFICIENTS;
    (0..k).fold(x, |x, _| {
        let x2 = x * x;
        a * x + b * x * x2 + c * x * x2 * x2
    })
}

/// The range of q (the quintic applied `steps` times) on \[lo, hi\]: a grid of 20,000
/// intervals, then every local extreme refined by golden-section search to within rounding
/// (the grid alone misses a peak by up to ~1e-8, more than the claims' tolerance).
pub(super) fn quintic_range(lo: f64, hi: f64, steps: usize) -> (f64, f64) {
    let n = 20_000;
    let x = |i: usize| lo + (hi - lo) * i as f64 / n as f64;
    let g: Vec<f64> = (0..=n).map(|i| quintic(x(i), steps)).collect();
    let refine = |a: f64, b: f64, sign: f64| {
        // Maximise sign·q on [a, b].
        let r = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (a, b);
        for _ in 0..100 {
            let (c, d) = (b - r * (b - a), a + r * (b - a));
            if sign * quintic(c, steps) > sign * quintic(d, steps) {
                b = d;
            } else {
                a = c;
            }
        }
        quintic((a + b) / 2.0, steps)
    };
    let (mut min, mut max) = (g[0].min(g[n]), g[0].max(g[n]));
    for i in 1..n {
        if g[i] >= g[i - 1] && g[i] >= g[i + 1] {
            max = max.max(refine(x(i - 1), x(i + 1), 1.0));
        }
        if g[i] <= g[i - 1] && g[i] <= g[i + 1] {
            min = min.min(refine(x(i - 1), x(i + 1), -1.0));
        }
    }
    (min, max)
}

/// Singular values of a row-major `rows` × `cols` matrix, in decreasing order, by one-sided
/// Jacobi (Hestenes) rotations of its columns (of its rows when wide), which give small
/// singular values to high relative accuracy. Hand-written for the lab (about 40 lines)
/// rather than pulling a linear-algebra crate into the library for one use.
pub(crate) fn singular_values(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    // Vectors to orthogonalise: the columns of the taller orientation.
    let (n, len) = (rows.min(cols), rows.max(cols));
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            (0..len)
                .map(|i| {
                    if rows >= cols {
                        m[i * cols + j]
                    } else {
                        m[j * cols + i]
                    }
                })
                .collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) =
                    (dot(&v[p], &v[p]), dot(&v[q], &v[q]), dot(&v[p], &v[q]));
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (vp, vq) = (v[p].clone(), v[q].clone());
                for i in 0..len {
                    v[p][i] = c * vp[i] - s * vq[i];
                    v[q][i] = s * vp[i] + c * vq[i];
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s: Vec<f64> = v.iter().map(|c| dot(c, c).sqrt()).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// The spec whose single step from Φ = 0 reads off Muon's orthogonalised update.
const PROBE: &str = "muon:lr=1,weight_decay=0,momentum=0";

/// Muon's orthogonalised update of `g` (row-major `rows` × `cols`), read off the real
/// optimizer: from Φ = 0 with momentum 0, no decay and η = 1,
/// Φ₁ = −η′O.
pub(super) fn muon_update(g: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>> {
    let mut opt = Optimizer::<f64>::from_spec(PROBE)?;
    let mut p = [Tensor::new("w", vec![rows, cols], vec![0.0; g.len()])?];
    let gt = [Tensor::new("w", vec![rows, cols], g.to_vec())?];
    opt.step(&mut p, &gt, &StepInfo::default())?;
    let adjusted = (rows as f64 / cols as f64).max(1.0).sqrt();
    Ok(p[0].data().iter().map(|&x| -x / adjusted).collect())
}

/// `k` orthonormal vectors of length `n` (modified Gram–Schmidt on Gaussian draws, twice).
pub(super) fn orthonormal(
    rng: &mut crate::lab::montecarlo::ChainRng,
    n: usize,
    k: usize,
) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(k);
    while out.len() < k {
        let mut v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        for _ in 0..2 {
            for u in &out {
                let d: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                for (x, &ui) in v.iter_mut().zip(u) {
                    *x -= d * ui;
                }
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-8 {
            out.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    out
}

/// Pairs each normalised singular value xᵢ of a gradient with a singular value of its
/// update: q is not monotone, so the update's values (sorted, decreasing) are matched to
/// the xᵢ in the order of decreasing q(xᵢ).
pub(super) fn matched(xs: &[f64], update: &[f64], steps: usize) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| quintic(xs[b], steps).total_cmp(&quintic(xs[a], steps)));
    order
        .iter()
        .zip(update)
        .map(|(&i, &y)| (xs[i], y))
        .collect()
}

/// The measurements behind 10d and its figure.
pub(super) struct MuonResult {
    pub(super) claims: Vec<Claim>,
    /// (normalised singular value of G, singular value of Muon's update).
    pub(super) pairs: Vec<(f64, f64)>,
    /// q's band on [0.02, 1].
    pub(super) band: (f64, f64),
}

pub(super) fn muon(options: &VerifyOptions) -> Result<MuonResult> {
    let mut rng = chain_rng(options.derive_seed("p10.muon"), 0);
    let steps = 5;
    // Identity: G = U diag(s) Vᵀ with prescribed, adversarial spectra (rank-deficient,
    // spread over six decades, clustered), wide and tall.
    let spectra: [&[f64]; 4] = [
        &[3.0, 1.0, 0.5, 1e-3, 1e-6, 0.0],
        &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        &[1e8, 2e7, 5e6, 1e6, 1e5, 1e4],
        &[1e-9, 1e-9, 5e-10, 1e-10, 0.0, 0.0],
    ];
    let mut worst = 0.0f64;
    let mut pairs = Vec::new();
    for (k, s) in spectra.iter().enumerate() {
        let (rows, cols) = if k % 2 == 0 { (6, 11) } else { (13, 6) };
        let u = orthonormal(&mut rng, rows, 6);
        let v = orthonormal(&mut rng, cols, 6);
        let mut g = vec![0.0; rows * cols];
        for (l, &sl) in s.iter().enumerate() {
            for i in 0..rows {
                for j in 0..cols {
                    g[i * cols + j] += sl * u[l][i] * v[l][j];
                }
            }
        }
        let o = muon_update(&g, rows, cols)?;
        let got = singular_values(&o, rows, cols);
        let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-7);
        let xs: Vec<f64> = s.iter().map(|si| si / norm).collect();
        for (x, y) in matched(&xs, &got, steps) {
            worst = sequences::nan_max(worst, (y - quintic(x, steps)).abs());
            if x > 0.0 {
                pairs.push((x, y));
            }
        }
    }
    // The band on Gaussian gradients: q's range on [0.02, 1], against every singular value
    // (a 24×48 Gaussian matrix's normalised singular values lie in about [0.05, 0.3]).
    let band = quintic_range(0.02, 1.0, steps);
    let matrices = if options.quick { 10 } else { 40 };
    let (rows, cols) = (24, 48);
    let (mut outside, mut spread, mut predicted_spread) = (0.0f64, 0.0f64, 0.0f64);
    let mut min_x = f64::INFINITY;
    for _ in 0..matrices {
        let g: Vec<f64> = (0..rows * cols)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let o = muon_update(&g, rows, cols)?;
        let sg = singular_values(&g, rows, cols);
        let so = singular_values(&o, rows, cols);
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let xs: Vec<f64> = sg.iter().map(|x| x / norm).collect();
        for (x, y) in matched(&xs, &so, steps) {
            min_x = min_x.min(x);
            outside = outside.max(band.0 - y).max(y - band.1);
            spread = spread.max((y - 1.0).abs());
            predicted_spread = predicted_spread.max((quintic(x, steps) - 1.0).abs());
            pairs.push((x, y));
        }
    }
    // Scale invariance through the real optimizer (momentum, Nesterov, several steps).
    let (sr, sc) = (9, 5);
    let grads: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..sr * sc).map(|_| rng.random::<f64>() - 0.5).collect())
        .collect();
    let scale_spec = "muon:lr=0.02,weight_decay=0";
    let run = |scale: f64| -> Result<Vec<f64>> {
        let mut opt = Optimizer::<f64>::from_spec(scale_spec)?;
        let mut p = [Tensor::new("w", vec![sr, sc], vec![0.3; sr * sc])?];
        for g in &grads {
            let g = [Tensor::new(
                "w",
                vec![sr, sc],
                g.iter().map(|x| x * scale).collect(),
            )?];
            opt.step(&mut p, &g, &StepInfo::default())?;
        }
        Ok(p[0].data().to_vec())
    };
    let base = run(1.0)?;
    let mut scale_err = 0.0f64;
    for c in [1e-4, 0.37, 3.0, 1e5] {
        let other = run(c)?;
        for (a, b) in base.iter().zip(&other) {
            scale_err = sequences::nan_max(scale_err, (a - b).abs() / 0.3);
        }
    }
    let claims = vec![
        Claim::identity(
            "10d",
            "Muon's update has singular values q(σᵢ/‖G‖_F), q the quintic applied 5 times \
             (adversarial spectra: rank-deficient, 1e-10 to 1e8; worst absolute error)",
            &[("ns_steps", steps as f64)],
            0.0,
            worst,
            1e-9,
        )
        .optimizer(PROBE),
        Claim::identity(
            "10d.band",
            "on Gaussian 24×48 gradients every singular value of the update lies in q's band \
             on [0.02, 1] (distance outside it)",
            &[
                ("matrices", matrices as f64),
                ("band_lo", band.0),
                ("band_hi", band.1),
                ("min_x", min_x),
            ],
            0.0,
            outside.max(if min_x < 0.02 { f64::INFINITY } else { 0.0 }),
            1e-9,
        )
        .optimizer(PROBE),
        Claim::identity(
            "10d.uv",
            "the iteration does not converge to UVᵀ: max |σᵢ − 1| of the update, as q predicts",
            &[("matrices", matrices as f64)],
            predicted_spread,
            spread,
            1e-9,
        )
        .reject("UVᵀ (every σᵢ = 1)", 0.0)
        .optimizer(PROBE),
        Claim::identity(
            "10d.scale",
            "Muon's trajectory is invariant to the gradient's scale c ∈ {1e-4, 0.37, 3, 1e5} \
             (problem 5: no learning-rate change with the loss unit; worst relative change)",
            &[("steps", grads.len() as f64)],
            0.0,
            scale_err,
            1e-12,
        )
        .optimizer(scale_spec),
    ];
    Ok(MuonResult {
        claims,
        pairs,
        band,
    })
}
