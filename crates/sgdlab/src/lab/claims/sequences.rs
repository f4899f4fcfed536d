//! Adversarial input sequences for the exact identities, and the residual they are judged by.

use rand::RngExt;

use crate::lab::montecarlo::chain_rng;

/// Named input sequences of length `len` that stress floating point: huge and tiny
/// magnitudes, alternating signs, mixed scales, a ramp, and plain Gaussian-like noise.
pub(crate) fn adversarial(seed: u64, len: usize) -> Vec<(&'static str, Vec<f64>)> {
    let mut rng = chain_rng(seed, 0);
    let mut random_signs = |scale: f64| -> Vec<f64> {
        (0..len)
            .map(|_| {
                let u: f64 = rng.random_range(0.5..2.0);
                if rng.random::<bool>() {
                    u * scale
                } else {
                    -u * scale
                }
            })
            .collect()
    };
    let huge = random_signs(1e150);
    let tiny = random_signs(1e-150);
    let noise = random_signs(1.0);
    let alternating = (0..len)
        .map(|t| {
            if t % 2 == 0 {
                1.0 + t as f64
            } else {
                -(1.0 + t as f64)
            }
        })
        .collect();
    let mixed = (0..len)
        .map(|t| match t % 3 {
            0 => 1e100,
            1 => -1e-100,
            _ => -3e99,
        })
        .collect();
    let ramp = (0..len).map(|t| t as f64).collect();
    vec![
        ("huge", huge),
        ("tiny", tiny),
        ("alternating", alternating),
        ("mixed-scale", mixed),
        ("ramp", ramp),
        ("noise", noise),
    ]
}

/// Worst relative discrepancy between two trajectories, each step's difference measured against
/// the magnitude `scale[t]` of what was summed to produce it (an EMA of |x| scaled alike), so
/// that cancellation in the sum does not make rounding look like a failure.
pub(crate) fn worst_relative_residual(a: &[f64], b: &[f64], scale: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .zip(scale)
        .map(|((a, b), s)| {
            if s.abs() == 0.0 {
                (a - b).abs()
            } else {
                (a - b).abs() / s.abs()
            }
        })
        .fold(0.0, nan_max)
}

/// Maximum that propagates NaN (a NaN residual must fail a claim, not vanish).
pub(crate) fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
