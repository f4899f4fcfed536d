//! Calibration of the lab's error bars: every Monte Carlo claim run under K seeds.
//!
//! If a claim's standard error is right (and its expected value exact), its z-scores over
//! independent seeds are draws from N(0, 1). For each claim the calibration reports the
//! mean and standard deviation of its K z-scores and the Kolmogorov–Smirnov distance
//! D\_K = sup\_z |F̂\_K (z) − Φ(z)| with its asymptotic p-value, and fails the claim
//! when the mean or the spread is off by more than K draws allow:
//! |z̄| > 4/√K (a biased expectation or measurement) or
//! |s\_z − 1| > 4/√(2(K − 1)) (a standard error mis-stated: s\_z > 1 means it is too
//! small), or p < 10⁻⁴ (a shape far from normal, e.g. heavy tails from a noisy SE).

use std::collections::BTreeMap;

use serde::Serialize;

use super::claims::{VerifyOptions, verify};
use crate::{Error, Result};

/// One claim's z-scores over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClaimCalibration {
    /// The claim's id.
    pub id: String,
    /// Seeds run.
    pub k: usize,
    /// Mean z.
    pub mean_z: f64,
    /// Standard deviation of z (should be 1).
    pub sd_z: f64,
    /// Largest |z|.
    pub max_abs_z: f64,
    /// Kolmogorov–Smirnov distance to N(0, 1).
    pub ks_d: f64,
    /// Its asymptotic p-value.
    pub ks_p: f64,
    /// Whether mean, spread and shape are within what K seeds allow.
    pub passed: bool,
}

/// A calibration run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// The first seed; seed i is `first_seed + i`.
    pub first_seed: u64,
    /// One entry per Monte Carlo claim, in id order.
    pub claims: Vec<ClaimCalibration>,
    /// Every `(seed, claim id)` whose own verify run failed (|z| ≥ 4, a wrong answer not
    /// rejected, or an identity out of tolerance).
    pub failed_runs: Vec<(u64, String)>,
}

impl Calibration {
    /// Whether every claim's error bars hold.
    pub fn passed(&self) -> bool {
        self.claims.iter().all(|c| c.passed)
    }
}

/// Φ(z), the standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The asymptotic p-value of a Kolmogorov–Smirnov distance D from n samples:
/// Q(λ) = 2Σ\_(j ≥ 1) (−1)ʲ⁻¹e^(−2j²λ²) with
/// λ = (√n + 0.12 + 0.11/√n)D (Stephens' correction).
pub fn ks_p_value(d: f64, n: usize) -> f64 {
    let sn = (n as f64).sqrt();
    let lambda = (sn + 0.12 + 0.11 / sn) * d;
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let j = j as f64;
        let term = (-2.0 * j * j * lambda * lambda).exp();
        sum += if j as u64 % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The Kolmogorov–Smirnov distance of `z` to N(0, 1).
pub fn ks_distance(z: &[f64]) -> f64 {
    let mut s = z.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = normal_cdf(v);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max)
}

/// Summarises one claim's z-scores.
pub fn summarise(id: &str, z: &[f64]) -> ClaimCalibration {
    let k = z.len();
    let kf = k as f64;
    let mean = z.iter().sum::<f64>() / kf;
    let sd = if k > 1 {
        (z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (kf - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    let d = ks_distance(z);
    let p = ks_p_value(d, k);
    let passed = k >= 2
        && mean.abs() <= 4.0 / kf.sqrt()
        && (sd - 1.0).abs() <= 4.0 / (2.0 * (kf - 1.0)).sqrt()
        && p >= 1e-4;
    ClaimCalibration {
        id: id.to_string(),
        k,
        mean_z: mean,
        sd_z: sd,
        max_abs_z: z.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        ks_d: d,
        ks_p: p,
        passed,
    }
}

/// Runs `verify(problems)` under seeds `options.seed + i`, i < k, and calibrates every
/// Monte Carlo claim; `progress(i)` after each seed.
pub fn calibrate(
    problems: &[u8],
    options: &VerifyOptions,
    k: usize,
    mut progress: impl FnMut(usize),
) -> Result<Calibration> {
    if !(2..=100_000).contains(&k) {
        return Err(Error::invalid(
            "calibrate",
            k,
            "must lie in 2..=100000 seeds",
        ));
    }
    let mut z: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut failed_runs = Vec::new();
    for i in 0..k {
        let seeded = VerifyOptions {
            seed: options.seed.wrapping_add(i as u64),
            ..*options
        };
        let report = verify(problems, &seeded)?;
        for c in report.claims {
            if !c.passed {
                failed_runs.push((seeded.seed, c.id.clone()));
            }
            if let Some(v) = c.z {
                z.entry(c.id).or_default().push(v);
            }
        }
        progress(i + 1);
    }
    Ok(Calibration {
        first_seed: options.seed,
        claims: z.iter().map(|(id, v)| summarise(id, v)).collect(),
        failed_runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::montecarlo::chain_rng;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn normal_cdf_and_ks_by_hand() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-16);
        assert!((normal_cdf(1.959963984540054) - 0.975).abs() < 1e-12);
        // Kolmogorov's distribution: P(√n·D > 1.358) ≈ 0.05.
        assert!((ks_p_value(1.358 / 1000.0, 1_000_000) - 0.05).abs() < 2e-3);
        assert_eq!(ks_distance(&[0.0]), 0.5);
    }

    #[test]
    fn calibrated_z_pass_and_miscalibrated_fail() {
        let mut rng = chain_rng(9, 0);
        let z: Vec<f64> = (0..400).map(|_| StandardNormal.sample(&mut rng)).collect();
        assert!(summarise("ok", &z).passed);
        // An SE understated by 20%: sd(z) = 1.2.
        let wide: Vec<f64> = z.iter().map(|v| 1.2 * v).collect();
        let c = summarise("wide", &wide);
        assert!(!c.passed && (c.sd_z - 1.2).abs() < 0.1, "{c:?}");
        // A bias of 0.3 standard errors.
        let shifted: Vec<f64> = z.iter().map(|v| v + 0.3).collect();
        assert!(!summarise("biased", &shifted).passed);
    }
}
