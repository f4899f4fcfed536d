//! Property tests: the exact identities of problems 1, 3 and 4 over random sequences and
//! parameters, in f64, to 1e-12 relative to the magnitude of what was averaged.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use proptest::prelude::*;
use sgdlab::average::{Ema, HorizonAverage, PowerDebias, ScaledEma, SumMomentum};

fn inputs() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![-1e6..1e6f64, -1e-6..1e-6f64, -1e120..1e120f64],
        1..300,
    )
}

proptest! {
    /// Problem 1b: z_t = γ/(1-β)·y_t for every t.
    #[test]
    fn scaled_ema_is_a_multiple_of_the_ema(beta in 0.0..0.999f64, gamma in 1e-3..1e3f64, xs in inputs()) {
        let y_rule = Ema::new(beta).unwrap();
        let z_rule = ScaledEma::new(beta, gamma).unwrap();
        let k = gamma / (1.0 - beta);
        let (mut y, mut z, mut a) = (0.0f64, 0.0f64, 0.0f64);
        for x in xs {
            y = y_rule.update(y, x);
            z = z_rule.update(z, x);
            a = y_rule.update(a, x.abs());
            prop_assert!((z - k * y).abs() <= 1e-12 * k * a + f64::MIN_POSITIVE);
        }
    }

    /// Problem 3c: y_t = N·μ_t for sum-form momentum and the EMA with horizon N.
    #[test]
    fn sum_momentum_is_n_times_the_ema(n in 1.0..1e4f64, xs in inputs()) {
        let sum = SumMomentum::from_horizon(n).unwrap();
        let ema = Ema::from_horizon(n).unwrap();
        let (mut y, mut mu, mut a) = (0.0f64, 0.0f64, 0.0f64);
        for x in xs {
            y = sum.update(y, x);
            mu = ema.update(mu, x);
            a = ema.update(a, x.abs());
            prop_assert!((y - n * mu).abs() <= 1e-12 * n * a + f64::MIN_POSITIVE);
        }
    }

    /// Problem 4: constant input is reproduced from step 1 whatever the start, by both
    /// corrections.
    #[test]
    fn both_corrections_are_exact_on_constants(n in 1.0..1e3f64, c in -1e100..1e100f64, y0 in -1e300..1e300f64, steps in 1u64..200) {
        prop_assume!(c != 0.0);
        let h = HorizonAverage::new(n).unwrap();
        let ema = Ema::from_horizon(n).unwrap();
        let debias = PowerDebias::new(ema.beta()).unwrap();
        let (mut y, mut m) = (y0, 0.0f64);
        for t in 1..=steps {
            y = HorizonAverage::update(h.rate(t).unwrap(), y, c);
            m = ema.update(m, c);
            prop_assert!(((y - c) / c).abs() <= 1e-12);
            prop_assert!(((m * debias.factor(t).unwrap() - c) / c).abs() <= 1e-12);
        }
    }

    /// For t ≤ N the horizon average is the running mean, whatever y_0.
    #[test]
    fn horizon_average_is_the_running_mean(xs in prop::collection::vec(-1e3..1e3f64, 1..50), y0 in -1e6..1e6f64) {
        let h = HorizonAverage::new(xs.len() as f64).unwrap();
        let mut y = y0;
        let mut sum = 0.0;
        for (i, &x) in xs.iter().enumerate() {
            y = HorizonAverage::update(h.rate(i as u64 + 1).unwrap(), y, x);
            sum += x;
            let mean = sum / (i + 1) as f64;
            prop_assert!((y - mean).abs() <= 1e-12 * (1.0 + mean.abs()) * 1e3);
        }
    }
}
