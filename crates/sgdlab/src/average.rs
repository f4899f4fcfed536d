//! Running averages: the building blocks of momentum, Adam and RMSProp (problems 1–4).
//!
//! Each type here is a small validated configuration (`Copy`, checked once at construction)
//! with a per-element update that is plain arithmetic: the reference recurrences of problems
//! 1–4, which the lab's claims run. The optimizers in [`crate::optim`] implement the same
//! recurrences inside their fused kernels (one pass over every slot); they do not call these
//! types, so problems 2–4's claims also run the optimizers themselves (Adam's `exp_avg`, SGD's
//! momentum and Nesterov steps, `ema-momentum` with both debias modes, Adam's ε). Slice updates
//! check lengths and finiteness and return an error instead of propagating a NaN.
//!
//! | type | recurrence | problem |
//! |---|---|---|
//! | [`Ema`] | yₜ₊₁ = βyₜ + (1 − β)xₜ | 1, 2, 3 |
//! | [`ScaledEma`] | zₜ₊₁ = βzₜ + γxₜ | 1 |
//! | [`SumMomentum`] | yₜ = (1 − 1/N)yₜ₋₁ + xₜ | 3 |
//! | [`PowerDebias`] | m̂ₜ = mₜ/(1 − βᵗ) | 4 (Adam) |
//! | [`HorizonAverage`] | yₜ = (1 − 1/min(t, N))yₜ₋₁ + xₜ/min(t, N) | 4 |
//! | [`RunningMoments`] | EMA of x and of x²; variance v − m² | RMSProp |

use crate::error::{Result, check_finite, check_len};
use crate::{Error, Real};

fn check_beta(name: &str, beta: f64) -> Result<f64> {
    if beta.is_finite() && (0.0..1.0).contains(&beta) {
        Ok(beta)
    } else {
        Err(Error::invalid(name, beta, "must lie in [0, 1)"))
    }
}

fn check_horizon(n: f64) -> Result<f64> {
    if n.is_finite() && n >= 1.0 {
        Ok(n)
    } else {
        Err(Error::invalid(
            "horizon N",
            n,
            "must be a finite number >= 1",
        ))
    }
}

/// Applies `rule(y, x)` elementwise after checking lengths and finiteness of `x`.
///
/// On error `y` is left unchanged.
fn update_slice_with<T: Real>(y: &mut [T], x: &[T], rule: impl Fn(T, T) -> T) -> Result<()> {
    check_len("running average input", y.len(), x.len())?;
    check_finite("running average input", x)?;
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = rule(*yi, xi);
    }
    Ok(())
}

/// Exponential moving average in the convex parameterisation
/// y ← βy + (1 − β)x.
///
/// With IID inputs of mean x̄, E yₜ = (1 − βᵗ)x̄ → x̄ from y₀ = 0;
/// with variance σ² and β = 1 − 1/N,
/// Var yₜ = σ²(1 − β²ᵗ)/(2N − 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ema {
    beta: f64,
}

impl Ema {
    /// An EMA with decay β ∈ \[0, 1).
    pub fn new(beta: f64) -> Result<Self> {
        Ok(Self {
            beta: check_beta("beta", beta)?,
        })
    }

    /// An EMA with horizon N ≥ 1: rate 1/N, β = 1 − 1/N.
    pub fn from_horizon(n: f64) -> Result<Self> {
        let n = check_horizon(n)?;
        Ok(Self {
            beta: 1.0 - 1.0 / n,
        })
    }

    /// The decay β.
    pub fn beta(self) -> f64 {
        self.beta
    }

    /// The rate 1 − β given to the new input.
    pub fn rate(self) -> f64 {
        1.0 - self.beta
    }

    /// The horizon N = 1/(1 − β).
    pub fn horizon(self) -> f64 {
        1.0 / (1.0 - self.beta)
    }

    /// One step βy + (1 − β)x for one element (unchecked arithmetic).
    #[inline(always)]
    pub fn update<T: Real>(self, y: T, x: T) -> T {
        let beta = T::from_f64(self.beta);
        beta * y + (T::one() - beta) * x
    }

    /// One step for every element of `y` with the matching element of `x`.
    ///
    /// Errors (leaving `y` unchanged) on a length mismatch or a non-finite input.
    pub fn update_slice<T: Real>(self, y: &mut [T], x: &[T]) -> Result<()> {
        update_slice_with(y, x, |y, x| self.update(y, x))
    }
}

/// Exponential moving average in the scaled parameterisation
/// z ← βz + γx (problem 1's zₜ).
///
/// From z₀ = 0 it is the convex EMA scaled by γ/(1 − β):
/// zₜ = γ/(1 − β) yₜ, so lim Ezₜ = γx̄/(1 − β).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaledEma {
    beta: f64,
    gamma: f64,
}

impl ScaledEma {
    /// A scaled EMA with decay β ∈ \[0, 1) and input weight γ > 0.
    pub fn new(beta: f64, gamma: f64) -> Result<Self> {
        let beta = check_beta("beta", beta)?;
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(Error::invalid(
                "gamma",
                gamma,
                "must be a finite number > 0",
            ));
        }
        Ok(Self { beta, gamma })
    }

    /// The decay β.
    pub fn beta(self) -> f64 {
        self.beta
    }

    /// The input weight γ.
    pub fn gamma(self) -> f64 {
        self.gamma
    }

    /// One step βz + γx for one element (unchecked arithmetic).
    #[inline(always)]
    pub fn update<T: Real>(self, z: T, x: T) -> T {
        T::from_f64(self.beta) * z + T::from_f64(self.gamma) * x
    }

    /// One step for every element; errors on a length mismatch or non-finite input.
    pub fn update_slice<T: Real>(self, z: &mut [T], x: &[T]) -> Result<()> {
        update_slice_with(z, x, |z, x| self.update(z, x))
    }
}

/// Sum-form momentum yₜ = βyₜ₋₁ + xₜ with β = 1 − 1/N (problem 3; PyTorch's
/// SGD momentum buffer without dampening).
///
/// It is an EMA of Nxₜ: yₜ = Nμₜ where μₜ is the [`Ema`] with horizon N, so
/// a constant input c gives lim yₜ = Nc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SumMomentum {
    beta: f64,
}

impl SumMomentum {
    /// Sum-form momentum with decay β ∈ \[0, 1).
    pub fn new(beta: f64) -> Result<Self> {
        Ok(Self {
            beta: check_beta("momentum", beta)?,
        })
    }

    /// Sum-form momentum with horizon N ≥ 1 (β = 1 − 1/N).
    pub fn from_horizon(n: f64) -> Result<Self> {
        let n = check_horizon(n)?;
        Ok(Self {
            beta: 1.0 - 1.0 / n,
        })
    }

    /// The decay β.
    pub fn beta(self) -> f64 {
        self.beta
    }

    /// One step βy + x for one element (unchecked arithmetic).
    #[inline(always)]
    pub fn update<T: Real>(self, y: T, x: T) -> T {
        T::from_f64(self.beta) * y + x
    }

    /// One step for every element; errors on a length mismatch or non-finite input.
    pub fn update_slice<T: Real>(self, y: &mut [T], x: &[T]) -> Result<()> {
        update_slice_with(y, x, |y, x| self.update(y, x))
    }
}

/// Adam's bias correction: m̂ₜ = mₜ/(1 − βᵗ) for an [`Ema`] started at zero.
///
/// The factor is computed once per step in `f64` ([`PowerDebias::factor`]) and applied per
/// element. For IID inputs of variance σ² the corrected value has variance
/// σ²((1 − β)(1 + βᵗ))/((1 + β)(1 − βᵗ)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerDebias {
    beta: f64,
}

impl PowerDebias {
    /// The correction for an EMA of decay β ∈ \[0, 1).
    pub fn new(beta: f64) -> Result<Self> {
        Ok(Self {
            beta: check_beta("beta", beta)?,
        })
    }

    /// The factor 1/(1 − βᵗ) for step t ≥ 1 (steps count from 1).
    ///
    /// Errors at t = 0, where no input has been averaged yet.
    pub fn factor(self, t: u64) -> Result<f64> {
        if t == 0 {
            return Err(Error::invalid("step t", 0, "bias correction needs t >= 1"));
        }
        Ok(1.0 / (1.0 - self.beta.powf(t as f64)))
    }
}

/// Problem 4's average with rate 1/min(t, N):
/// yₜ = (1 − 1/(min(t, N)))yₜ₋₁ + (1/(min(t, N)))xₜ.
///
/// For t ≤ N it is the exact running mean of x₁..xₜ (whatever y₀ is); after that an
/// EMA with horizon N. Constant input c gives yₜ = c for every t ≥ 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HorizonAverage {
    n: f64,
}

impl HorizonAverage {
    /// The horizon average with N ≥ 1.
    pub fn new(n: f64) -> Result<Self> {
        Ok(Self {
            n: check_horizon(n)?,
        })
    }

    /// The horizon N.
    pub fn horizon(self) -> f64 {
        self.n
    }

    /// The rate 1/min(t, N) at step t ≥ 1; errors at t = 0.
    pub fn rate(self, t: u64) -> Result<f64> {
        if t == 0 {
            return Err(Error::invalid("step t", 0, "steps count from 1"));
        }
        Ok(1.0 / (t as f64).min(self.n))
    }

    /// One step at rate `rate` (from [`HorizonAverage::rate`]) for one element:
    /// (1 − r)y + rx (unchecked arithmetic).
    #[inline(always)]
    pub fn update<T: Real>(rate: f64, y: T, x: T) -> T {
        let r = T::from_f64(rate);
        (T::one() - r) * y + r * x
    }

    /// Step t ≥ 1 for every element; errors on t = 0, a length mismatch or non-finite
    /// input.
    pub fn update_slice<T: Real>(self, t: u64, y: &mut [T], x: &[T]) -> Result<()> {
        let rate = self.rate(t)?;
        update_slice_with(y, x, |y, x| Self::update(rate, y, x))
    }
}

/// Running first and second moments by EMA: m ← βm + (1 − β)x,
/// v ← βv + (1 − β)x².
///
/// The *uncentered* estimate of the scale is v (RMSProp, Adam); the *centered* one is
/// v − m² (RMSProp with `centered=True`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunningMoments {
    ema: Ema,
    centered: bool,
}

impl RunningMoments {
    /// Moments with decay β ∈ \[0, 1); `centered` chooses v − m² over v.
    pub fn new(beta: f64, centered: bool) -> Result<Self> {
        Ok(Self {
            ema: Ema::new(beta)?,
            centered,
        })
    }

    /// Whether [`RunningMoments::variance`] subtracts the squared mean.
    pub fn centered(self) -> bool {
        self.centered
    }

    /// One step for one element: returns the new (m, v).
    #[inline(always)]
    pub fn update<T: Real>(self, m: T, v: T, x: T) -> (T, T) {
        (self.ema.update(m, x), self.ema.update(v, x * x))
    }

    /// The variance estimate from (m, v): v − m² if centered, else v.
    #[inline(always)]
    pub fn variance<T: Real>(self, m: T, v: T) -> T {
        if self.centered { v - m * m } else { v }
    }

    /// One step for every element; errors (state unchanged) on a length mismatch or
    /// non-finite input.
    pub fn update_slice<T: Real>(self, m: &mut [T], v: &mut [T], x: &[T]) -> Result<()> {
        check_len("running moments (second moment)", m.len(), v.len())?;
        check_len("running moments input", m.len(), x.len())?;
        check_finite("running moments input", x)?;
        for ((mi, vi), &xi) in m.iter_mut().zip(v.iter_mut()).zip(x) {
            (*mi, *vi) = self.update(*mi, *vi, xi);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_small_case_by_hand() {
        let ema = Ema::new(0.5).unwrap();
        let mut y = 0.0f64;
        for x in [2.0, 4.0, 8.0] {
            y = ema.update(y, x);
        }
        // 0 -> 1 -> 2.5 -> 5.25
        assert_eq!(y, 5.25);
        let mut ys = [0.0f32, 1.0];
        ema.update_slice(&mut ys, &[2.0, 3.0]).unwrap();
        assert_eq!(ys, [1.0, 2.0]);
    }

    #[test]
    fn horizon_constructor() {
        let ema = Ema::from_horizon(4.0).unwrap();
        assert_eq!(ema.beta(), 0.75);
        assert_eq!(ema.rate(), 0.25);
        assert_eq!(ema.horizon(), 4.0);
        assert_eq!(Ema::from_horizon(1.0).unwrap().beta(), 0.0);
    }

    #[test]
    fn scaled_ema_by_hand() {
        let z = ScaledEma::new(0.5, 2.0).unwrap();
        let mut v = 0.0f64;
        for x in [1.0, 1.0] {
            v = z.update(v, x);
        }
        // 0 -> 2 -> 3
        assert_eq!(v, 3.0);
    }

    #[test]
    fn sum_momentum_by_hand() {
        let s = SumMomentum::from_horizon(2.0).unwrap();
        let mut y = 0.0f64;
        for _ in 0..3 {
            y = s.update(y, 1.0);
        }
        // 1, 1.5, 1.75
        assert_eq!(y, 1.75);
    }

    #[test]
    fn power_debias_by_hand() {
        let d = PowerDebias::new(0.5).unwrap();
        assert_eq!(d.factor(1).unwrap(), 2.0);
        assert_eq!(d.factor(2).unwrap(), 1.0 / 0.75);
        assert!(d.factor(0).is_err());
    }

    #[test]
    fn horizon_average_is_running_mean_then_ema() {
        let h = HorizonAverage::new(2.0).unwrap();
        let mut y = [123.0f64];
        h.update_slice(1, &mut y, &[4.0]).unwrap();
        assert_eq!(y, [4.0]); // y_1 = x_1 whatever y_0
        h.update_slice(2, &mut y, &[8.0]).unwrap();
        assert_eq!(y, [6.0]); // running mean
        h.update_slice(3, &mut y, &[0.0]).unwrap();
        assert_eq!(y, [3.0]); // EMA with rate 1/2
        assert_eq!(h.rate(100).unwrap(), 0.5);
        assert!(h.rate(0).is_err());
    }

    /// Every `update_slice` is its scalar `update` element by element, with its error paths
    /// (state unchanged), and every getter returns its definition.
    #[test]
    fn slices_and_getters() {
        let x = [3.0f64, -1.5, 0.25];
        let start = [1.0f64, 2.0, -4.0];
        let ema = Ema::from_horizon(4.0).unwrap();
        assert_eq!((ema.beta(), ema.rate(), ema.horizon()), (0.75, 0.25, 4.0));
        let mut y = start;
        ema.update_slice(&mut y, &x).unwrap();
        assert_eq!(y[1], 0.75 * 2.0 + 0.25 * -1.5);
        let scaled = ScaledEma::new(0.5, 3.0).unwrap();
        assert_eq!((scaled.beta(), scaled.gamma()), (0.5, 3.0));
        let mut z = start;
        scaled.update_slice(&mut z, &x).unwrap();
        assert_eq!(z, [0.5 + 9.0, 1.0 - 4.5, -2.0 + 0.75]);
        let sum = SumMomentum::from_horizon(2.0).unwrap();
        assert_eq!(sum.beta(), 0.5);
        let mut b = start;
        sum.update_slice(&mut b, &x).unwrap();
        assert_eq!(b, [3.5, -0.5, -1.75]);
        let horizon = HorizonAverage::new(3.0).unwrap();
        assert_eq!(horizon.horizon(), 3.0);
        assert_eq!(horizon.rate(2).unwrap(), 0.5);
        assert_eq!(horizon.rate(7).unwrap(), 1.0 / 3.0);
        let mut h = start;
        horizon.update_slice(2, &mut h, &x).unwrap();
        assert_eq!(h, [2.0, 0.25, -1.875]);
        assert!(horizon.update_slice(0, &mut h, &x).is_err());
        let rm = RunningMoments::new(0.5, true).unwrap();
        assert!(rm.centered() && !RunningMoments::new(0.5, false).unwrap().centered());
        assert_eq!(
            PowerDebias::new(0.5).unwrap().factor(2).unwrap(),
            1.0 / 0.75
        );
        // Errors leave the state unchanged.
        for bad in [&[1.0, 2.0][..], &[1.0, f64::NAN, 0.0][..]] {
            let mut y = start;
            assert!(ema.update_slice(&mut y, bad).is_err());
            assert!(scaled.update_slice(&mut y, bad).is_err());
            assert!(sum.update_slice(&mut y, bad).is_err());
            assert!(horizon.update_slice(1, &mut y, bad).is_err());
            assert_eq!(y, start);
        }
    }

    #[test]
    fn running_moments_by_hand() {
        let rm = RunningMoments::new(0.5, true).unwrap();
        let (mut m, mut v) = ([0.0f64], [0.0f64]);
        rm.update_slice(&mut m, &mut v, &[2.0]).unwrap();
        rm.update_slice(&mut m, &mut v, &[2.0]).unwrap();
        assert_eq!((m[0], v[0]), (1.5, 3.0));
        assert_eq!(rm.variance(m[0], v[0]), 0.75);
        let un = RunningMoments::new(0.5, false).unwrap();
        assert_eq!(un.variance(m[0], v[0]), 3.0);
        // x = 3 then -1 (x² ≠ 2x, unlike x = 2): m = 0.5·(0.5·3) + 0.5·(−1) = 0.25,
        // v = 0.5·(0.5·9) + 0.5·1 = 2.75, centered variance 2.75 − 0.0625.
        let (mut m, mut v) = ([0.0f64, 0.0], [0.0f64, 0.0]);
        rm.update_slice(&mut m, &mut v, &[3.0, 1.0]).unwrap();
        rm.update_slice(&mut m, &mut v, &[-1.0, 1.0]).unwrap();
        assert_eq!((m[0], v[0]), (0.25, 2.75));
        assert_eq!(rm.variance(m[0], v[0]), 2.6875);
        assert_eq!((m[1], v[1]), (0.75, 0.75));
        // Errors leave the state unchanged.
        assert!(rm.update_slice(&mut m, &mut v, &[1.0]).is_err());
        assert!(rm.update_slice(&mut m, &mut v, &[f64::NAN, 1.0]).is_err());
        assert_eq!((m[0], v[0]), (0.25, 2.75));
    }

    #[test]
    fn invalid_parameters_are_errors() {
        for beta in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Ema::new(beta).is_err(), "beta {beta}");
            assert!(RunningMoments::new(beta, false).is_err());
            assert!(PowerDebias::new(beta).is_err());
        }
        for n in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY] {
            assert!(Ema::from_horizon(n).is_err(), "N {n}");
            assert!(SumMomentum::from_horizon(n).is_err());
            assert!(HorizonAverage::new(n).is_err());
        }
        for gamma in [0.0, -1.0, f64::NAN] {
            assert!(ScaledEma::new(0.5, gamma).is_err());
        }
        let msg = Ema::new(1.0).unwrap_err().to_string();
        assert!(msg.contains("beta") && msg.contains("[0, 1)"), "{msg}");
    }

    #[test]
    fn non_finite_input_and_shape_mismatch_are_errors_that_leave_state() {
        let ema = Ema::new(0.9).unwrap();
        let mut y = [1.0f64, 2.0];
        let err = ema.update_slice(&mut y, &[0.0, f64::NAN]).unwrap_err();
        assert!(matches!(err, Error::NonFinite { index: 1, .. }));
        assert_eq!(y, [1.0, 2.0]);
        assert!(matches!(
            ema.update_slice(&mut y, &[0.0]),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut m = [0.0f32];
        let mut v = [0.0f32, 0.0];
        let rm = RunningMoments::new(0.9, false).unwrap();
        assert!(rm.update_slice(&mut m, &mut v, &[1.0]).is_err());
    }
}
