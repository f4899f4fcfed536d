//! 10j: SOAP is Adam in the eigenbasis of the gradient's second moments, L = E\[GGᵀ\] and
//! R = E\[GᵀG\] (running averages), so it does not depend on the coordinates of a weight
//! matrix: under an orthogonal change of coordinates of either side, Φ → UΦVᵀ (and
//! G → UGVᵀ, L → ULUᵀ, R → VRVᵀ, the eigenbases Q\_L → UQ\_L, Q\_R → VQ\_R), the rotated
//! gradient, its moments and the update are the same numbers, so the trajectory is the
//! rotated trajectory. Adam's per-coordinate scaling is not: it is problem 5's question of
//! how an update changes with the loss's units, asked of its coordinates. Measured on
//! square matrices, whose statistics have full rank from the first step (on a rank-deficient
//! side the eigenbasis of its null space is any basis, and the trajectory depends on it).

use rand_distr::{Distribution, StandardNormal};

use super::muon::orthonormal;
use super::{Claim, VerifyOptions};
use crate::Result;
use crate::lab::claims::sequences::nan_max;
use crate::lab::montecarlo::chain_rng;
use crate::optim::{Optimizer, StepInfo, Tensor};

/// The side of the square weight matrix.
const N: usize = 6;

/// Row-major product of n×n matrices.
fn product(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; N * N];
    for i in 0..N {
        for k in 0..N {
            for j in 0..N {
                out[i * N + j] += a[i * N + k] * b[k * N + j];
            }
        }
    }
    out
}

/// UXVᵀ for row-major n×n X, with `u` and `v` given as lists of orthonormal columns.
fn rotate(u: &[Vec<f64>], x: &[f64], v: &[Vec<f64>]) -> Vec<f64> {
    let matrix =
        |cols: &[Vec<f64>]| -> Vec<f64> { (0..N * N).map(|ij| cols[ij % N][ij / N]).collect() };
    let vt: Vec<f64> = (0..N * N).map(|ij| v[ij / N][ij % N]).collect();
    product(&product(&matrix(u), x), &vt)
}

/// `spec`'s parameters after stepping from `start` on `grads`.
fn trajectory(spec: &str, start: &[f64], grads: &[Vec<f64>]) -> Result<Vec<f64>> {
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let mut p = [Tensor::new("w", vec![N, N], start.to_vec())?];
    for g in grads {
        let g = [Tensor::new("w", vec![N, N], g.clone())?];
        opt.step(&mut p, &g, &StepInfo::default())?;
    }
    Ok(p[0].data().to_vec())
}

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut rng = chain_rng(options.derive_seed("p10.soap"), 0);
    let steps = 30;
    // Gradients with unequal row and column scales, so that the eigenbases are far from the
    // coordinate axes and Adam's coordinates matter.
    let scale = |i: usize| 1.0 + i as f64;
    let grads: Vec<Vec<f64>> = (0..steps)
        .map(|_| {
            (0..N * N)
                .map(|ij| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z * scale(ij / N) / scale(ij % N)
                })
                .collect()
        })
        .collect();
    let start: Vec<f64> = (0..N * N)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let (u, v) = (orthonormal(&mut rng, N, N), orthonormal(&mut rng, N, N));
    let rotated: Vec<Vec<f64>> = grads.iter().map(|g| rotate(&u, g, &v)).collect();
    let soap = "soap:lr=0.01,precondition_frequency=3";
    let adam = "adamw:lr=0.01,beta1=0.95,beta2=0.95";
    let relative_gap = |spec: &str| -> Result<f64> {
        let plain = trajectory(spec, &start, &grads)?;
        let turned = trajectory(spec, &rotate(&u, &start, &v), &rotated)?;
        let expected = rotate(&u, &plain, &v);
        let moved = plain
            .iter()
            .zip(&start)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        Ok(turned
            .iter()
            .zip(&expected)
            .fold(0.0f64, |m, (a, b)| nan_max(m, (a - b).abs()))
            / moved)
    };
    Ok(vec![
        Claim::identity(
            "10j",
            "SOAP does not depend on a weight matrix's coordinates: rotating both sides \
             (Φ → UΦVᵀ, G → UGVᵀ) rotates its trajectory (30 steps, a refresh every 3; worst \
             difference relative to the largest move)",
            &[("n", N as f64), ("steps", steps as f64), ("lr", 0.01)],
            0.0,
            relative_gap(soap)?,
            1e-9,
        )
        .reject(
            "AdamW at SOAP's β₁ = β₂ = 0.95 on the same rotation (measured)",
            relative_gap(adam)?,
        )
        .optimizer(soap)
        .optimizer(adam),
    ])
}
