//! Monte Carlo over independent seeded chains.
//!
//! Chain r draws from its own ChaCha8 stream: key from the run's seed, stream number r.
//! Streams are independent by construction, so a chain's numbers depend only on
//! `(seed, r)` — never on which thread ran it or in which order. Chains run in parallel with
//! rayon; their outputs are collected in chain order and reduced sequentially, so every
//! statistic is bit-identical for any number of threads.

use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

pub use crate::rng::{ChainRng, chain_rng};

/// A Monte Carlo run: `chains` independent replications seeded from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonteCarlo {
    seed: u64,
    chains: usize,
}

impl MonteCarlo {
    /// A run of `chains >= 2` replications (two are needed for a variance).
    pub fn new(seed: u64, chains: usize) -> Result<Self> {
        if chains < 2 {
            return Err(Error::invalid("chains", chains, "must be at least 2"));
        }
        Ok(Self { seed, chains })
    }

    /// The number of chains.
    pub fn chains(self) -> usize {
        self.chains
    }

    /// The seed.
    pub fn seed(self) -> u64 {
        self.seed
    }

    /// Runs `chain(rng, index)` for every chain in parallel; outputs in chain order.
    pub fn run<T, F>(self, chain: F) -> Vec<T>
    where
        T: Send,
        F: Fn(&mut ChainRng, usize) -> T + Sync,
    {
        (0..self.chains)
            .into_par_iter()
            .map(|r| chain(&mut chain_rng(self.seed, r as u64), r))
            .collect()
    }

    /// Runs chains that each return `K` observations and summarises each observation across
    /// chains.
    pub fn estimate<const K: usize, F>(self, chain: F) -> [Estimate; K]
    where
        F: Fn(&mut ChainRng, usize) -> [f64; K] + Sync,
    {
        let outputs = self.run(chain);
        std::array::from_fn(|k| {
            let column: Vec<f64> = outputs.iter().map(|o| o[k]).collect();
            Estimate::from_samples(&column)
        })
    }
}

/// Summary of n IID samples: mean and variance with their standard errors.
///
/// * SE(x̄) = s/√n;
/// * SE(s²) = √((m₄ − s⁴(n − 3)/(n − 1))/n) with m₄ the fourth central
///   moment, the large-sample standard error of the unbiased sample variance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Number of samples.
    pub n: usize,
    /// Sample mean x̄.
    pub mean: f64,
    /// Unbiased sample variance s².
    pub variance: f64,
    /// Standard error of the mean.
    pub stderr_mean: f64,
    /// Standard error of the variance.
    pub stderr_variance: f64,
}

impl Estimate {
    /// Summarises `samples` (two passes, fixed order; at least two samples).
    ///
    /// # Panics
    /// If fewer than two samples are given (a programming error: [`MonteCarlo::new`] rejects
    /// such runs).
    pub fn from_samples(samples: &[f64]) -> Self {
        let n = samples.len();
        assert!(n >= 2, "an estimate needs at least two samples");
        let nf = n as f64;
        let mean = samples.iter().sum::<f64>() / nf;
        let (mut m2, mut m4) = (0.0, 0.0);
        for &x in samples {
            let d = x - mean;
            let d2 = d * d;
            m2 += d2;
            m4 += d2 * d2;
        }
        let variance = m2 / (nf - 1.0);
        let m4 = m4 / nf;
        let var_of_var = ((m4 - variance * variance * (nf - 3.0) / (nf - 1.0)) / nf).max(0.0);
        Self {
            n,
            mean,
            variance,
            stderr_mean: (variance / nf).sqrt(),
            stderr_variance: var_of_var.sqrt(),
        }
    }

    /// The mean as a [`Measurement`].
    pub fn mean(&self) -> Measurement {
        Measurement::new(self.mean, self.stderr_mean)
    }

    /// The variance as a [`Measurement`].
    pub fn variance(&self) -> Measurement {
        Measurement::new(self.variance, self.stderr_variance)
    }
}

/// A measured value with its standard error, and the arithmetic of independent measurements
/// (first-order error propagation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// The value.
    pub value: f64,
    /// Its standard error.
    pub stderr: f64,
}

impl Measurement {
    /// A value with standard error `stderr`.
    pub fn new(value: f64, stderr: f64) -> Self {
        Self { value, stderr }
    }

    /// z = (value − expected)/SE.
    pub fn z(self, expected: f64) -> f64 {
        (self.value - expected) / self.stderr
    }

    /// Difference of two independent measurements: SE = √(sₐ² + s\_b ²).
    pub fn minus(self, other: Measurement) -> Measurement {
        Measurement::new(self.value - other.value, self.stderr.hypot(other.stderr))
    }

    /// Ratio of two independent measurements: relative SEs add in quadrature.
    pub fn ratio(self, other: Measurement) -> Measurement {
        let r = self.value / other.value;
        let rel = (self.stderr / self.value).hypot(other.stderr / other.value);
        Measurement::new(r, (r * rel).abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use rand_distr::{Distribution, StandardNormal};

    /// Measurement arithmetic against hand-computed delta-method values.
    #[test]
    fn measurement_arithmetic_by_hand() {
        let (a, b) = (Measurement::new(2.0, 0.1), Measurement::new(4.0, 0.3));
        assert_eq!(a.z(1.8), (2.0 - 1.8) / 0.1);
        let d = a.minus(b);
        assert_eq!(d.value, -2.0);
        assert!((d.stderr - (0.01f64 + 0.09).sqrt()).abs() < 1e-15);
        // r = a/b, SE = r·sqrt((sa/a)² + (sb/b)²) = 0.5·sqrt(0.0025 + 0.005625).
        let r = a.ratio(b);
        assert_eq!(r.value, 0.5);
        assert!((r.stderr - 0.5 * 0.008125f64.sqrt()).abs() < 1e-15, "{r:?}");
        // A negative denominator: the SE stays positive.
        assert!(a.ratio(Measurement::new(-4.0, 0.3)).stderr > 0.0);
    }

    /// The SE of a sample variance of normal draws is σ²·sqrt(2/(n−1)) for large n.
    #[test]
    fn variance_standard_error_of_normal_samples() {
        let mut rng = chain_rng(5, 0);
        let x: Vec<f64> = (0..200_000)
            .map(|_| {
                let v: f64 = StandardNormal.sample(&mut rng);
                3.0 * v
            })
            .collect();
        let e = Estimate::from_samples(&x);
        let exact = 9.0 * (2.0f64 / (x.len() as f64 - 1.0)).sqrt();
        assert!((e.stderr_variance / exact - 1.0).abs() < 0.02, "{e:?}");
        assert!((e.variance - 9.0).abs() < 4.0 * exact);
    }

    #[test]
    fn estimate_by_hand() {
        let e = Estimate::from_samples(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        assert!((e.variance - 5.0 / 3.0).abs() < 1e-15);
        assert!((e.stderr_mean - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        // SE(s²)² = (m₄ − s⁴(n−3)/(n−1))/n with m₄ = (2·1.5⁴ + 2·0.5⁴)/4 = 2.5625 and
        // s² = 5/3: (2.5625 − (25/9)(1/3))/4. A small n, where n±3 and n±1 matter.
        let want = ((2.5625 - 25.0 / 9.0 / 3.0) / 4.0f64).sqrt();
        assert!((e.stderr_variance - want).abs() < 1e-15, "{e:?} vs {want}");
    }

    #[test]
    fn same_results_for_any_thread_count() {
        let mc = MonteCarlo::new(7, 1000).unwrap();
        let f = |rng: &mut ChainRng, _: usize| {
            let x: f64 = StandardNormal.sample(rng);
            [x, rng.random::<f64>()]
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| mc.estimate(f));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| mc.estimate(f));
        assert_eq!(one, three);
    }

    #[test]
    fn chains_are_distinct_streams() {
        let a: u64 = chain_rng(1, 0).random();
        let b: u64 = chain_rng(1, 1).random();
        let c: u64 = chain_rng(2, 0).random();
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn standard_errors_are_calibrated() {
        // Variance of N(0, 4) estimated from 20 000 samples: z within a few units, and the
        // SE of the variance close to its Gaussian value s^2 sqrt(2/(n-1)).
        let mc = MonteCarlo::new(11, 20_000).unwrap();
        let [e] = mc.estimate(|rng, _| {
            let x: f64 = StandardNormal.sample(rng);
            [2.0 * x]
        });
        assert!(e.mean().z(0.0).abs() < 4.5);
        assert!(e.variance().z(4.0).abs() < 4.5);
        let gaussian = 4.0 * (2.0f64 / 19_999.0).sqrt();
        assert!((e.stderr_variance / gaussian - 1.0).abs() < 0.05);
    }

    #[test]
    fn too_few_chains_is_an_error() {
        assert!(MonteCarlo::new(0, 1).is_err());
    }
}
