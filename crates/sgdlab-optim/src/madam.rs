//! Madam: the multiplicative Adam of Bernstein, Zhao, Meister, Liu, Anandkumar and Yue,
//! "Learning compositional functions via multiplicative weight updates" (NeurIPS 2020).

use super::StepContext;
use super::rule::{TensorScalars, UpdateRule};
use super::spec::{check, config};
use crate::{Real, Result};

/// The decay of Madam's second-moment EMA (fixed in the reference implementation).
pub const MADAM_BETA: f64 = 0.999;

config! {
    /// `madam`: the reference update. With v ← 0.999v + 0.001g² and
    /// ĝ = clamp(g/√(v/(1 − 0.999ᵗ)), ±g\_bound) (0/0 → 0):
    /// Φ ← Φ·exp(−η ĝ sign Φ), then
    /// Φ ← clamp(Φ, ±p\_scale·RMS(Φ₀)) per
    /// tensor, where Φ₀ is the tensor at its first step.
    Madam("madam") {
        /// Learning rate η ≥ 0 (a relative step size).
        lr: f64 = 1e-2,
        /// Bound on |Φ| as a multiple p\_scale > 0 of the initial RMS.
        p_scale: f64 = 3.0,
        /// Bound g\_bound > 0 on the normalised gradient.
        g_bound: f64 = 10.0,
    }
}

impl UpdateRule for Madam {
    /// Φ·exp(−ηĝ sign Φ) and the clamp are nonlinear in η.
    fn linear_in_lr(&self) -> bool {
        false
    }

    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        Some(self)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![MADAM_BETA, 0.0]
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("p_scale", self.p_scale)?;
        check::positive("g_bound", self.g_bound)
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        scalars: &[f64],
    ) {
        let [v] = slots else {
            unreachable!("madam has one slot")
        };
        let [max] = scalars else {
            unreachable!("madam has one tensor scalar")
        };
        let bound = T::from_f64(*max);
        let bc = T::from_f64(1.0 - ctx.beta_pow[0]);
        let (b, c) = (T::from_f64(MADAM_BETA), T::from_f64(1.0 - MADAM_BETA));
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let g_bound = T::from_f64(self.g_bound);
        // |exponent| ≤ lr·g_bound: pick the number of squarings of the exp kernel once.
        let squarings = exp_squarings(ctx.lr * self.g_bound);
        macro_rules! run {
            ($exp:expr) => {
                for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                    let g = g * gs;
                    *v = b * *v + c * g * g;
                    let mut normed = g / (*v / bc).sqrt();
                    if normed.is_nan() {
                        normed = T::zero();
                    }
                    let normed = normed.max(-g_bound).min(g_bound);
                    let sign = if *p > T::zero() {
                        T::one()
                    } else if *p < T::zero() {
                        -T::one()
                    } else {
                        T::zero()
                    };
                    let factor = T::from_f64($exp((-lr * normed * sign).as_f64()));
                    *p = (*p * factor).max(-bound).min(bound);
                }
            };
        }
        // f32 parameters need far fewer Taylor terms than f64 for a correctly rounded factor.
        macro_rules! by_squarings {
            ($deg:ident) => {
                match squarings {
                    0 => run!(exp_bounded::<0, $deg>),
                    1 => run!(exp_bounded::<1, $deg>),
                    2 => run!(exp_bounded::<2, $deg>),
                    3 => run!(exp_bounded::<3, $deg>),
                    4 => run!(exp_bounded::<4, $deg>),
                    5 => run!(exp_bounded::<5, $deg>),
                    6 => run!(exp_bounded::<6, $deg>),
                    7 => run!(exp_bounded::<7, $deg>),
                    8 => run!(exp_bounded::<8, $deg>),
                    _ => run!(f64::exp),
                }
            };
        }
        if T::BYTES <= 4 {
            by_squarings!(F32_DEGREE)
        } else {
            by_squarings!(F64_DEGREE)
        }
    }
}

impl<T: Real> TensorScalars<T> for Madam {
    /// Per-tensor scalars: `max`, the clamp bound fixed at the first step.
    fn names(&self) -> &'static [&'static str] {
        &["max"]
    }

    /// Fixes the per-tensor clamp bound `max` = p_scale·RMS(Φ) at the first step (a reduction
    /// over the whole tensor, so it runs before the tensor is split into chunks).
    fn begin(&self, ctx: &StepContext, p: &[T], scalars: &mut [f64]) {
        if ctx.t == 1 {
            let mean_sq =
                p.iter().map(|x| x.as_f64() * x.as_f64()).sum::<f64>() / p.len().max(1) as f64;
            scalars[0] = self.p_scale * mean_sq.sqrt();
        }
    }
}

/// Taylor degree of [`exp_bounded`] for `f32` parameters: the truncation error,
/// 2ᴺ(1/16)⁷/7! < 2·10⁻¹⁰ relative, is far below `f32`'s 6·10⁻⁸.
const F32_DEGREE: usize = 6;

/// Taylor degree of [`exp_bounded`] for `f64` parameters: 2ᴺ(1/16)¹⁰/10! < 10⁻¹⁶.
const F64_DEGREE: usize = 9;

/// 1/k! for k = 0, …, 9, each rounded once.
const INV_FACTORIAL: [f64; 10] = {
    let mut c = [1.0; 10];
    let mut k = 1;
    while k < 10 {
        c[k] = c[k - 1] / k as f64;
        k += 1;
    }
    c
};

/// Squarings n such that |x|/2ⁿ ≤ 1/16 for every |x| ≤ `max_abs`, or `usize::MAX`
/// (use the library `exp`) beyond 2⁸/16 = 16.
fn exp_squarings(max_abs: f64) -> usize {
    (0..=8)
        .find(|&n| max_abs / f64::from(1u32 << n) <= 1.0 / 16.0)
        .unwrap_or(usize::MAX)
}

/// eˣ for |x| ≤ 2ᴺ/16 from exact operations only (so that it vectorises and every SIMD
/// level gives the same bits): the Taylor polynomial of degree `DEG` of e^(x/2ᴺ) in Horner
/// form, then N squarings. Relative error below 2ᴺ((1/16)ᴰ⁺¹/(D + 1)!+10⁻¹⁶).
#[inline(always)]
fn exp_bounded<const N: usize, const DEG: usize>(x: f64) -> f64 {
    // Dividing by 2^N is exact; so is multiplying by its reciprocal.
    let r = x * (1.0 / f64::from(1u32 << N));
    let mut e = INV_FACTORIAL[DEG];
    for k in (0..DEG).rev() {
        e = e * r + INV_FACTORIAL[k];
    }
    for _ in 0..N {
        e *= e;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_exp_matches_the_library_exp() {
        fn at<const DEG: usize>(n: usize, x: f64) -> f64 {
            match n {
                0 => exp_bounded::<0, DEG>(x),
                1 => exp_bounded::<1, DEG>(x),
                2 => exp_bounded::<2, DEG>(x),
                3 => exp_bounded::<3, DEG>(x),
                4 => exp_bounded::<4, DEG>(x),
                5 => exp_bounded::<5, DEG>(x),
                6 => exp_bounded::<6, DEG>(x),
                7 => exp_bounded::<7, DEG>(x),
                _ => exp_bounded::<8, DEG>(x),
            }
        }
        for n in 0..=8usize {
            let max = f64::from(1u32 << n) / 16.0;
            for k in -100..=100 {
                let x = max * f64::from(k) / 100.0;
                let rel = (at::<F64_DEGREE>(n, x) / x.exp() - 1.0).abs();
                assert!(rel < 1e-13, "f64 degree, n={n} x={x}: {rel:e}");
                // The f32 degree must round to the f32 nearest e^x (or a neighbour at a tie).
                let (got, want) = (at::<F32_DEGREE>(n, x) as f32, x.exp() as f32);
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 1, "f32 degree, n={n} x={x}: {got} vs {want}");
            }
        }
        assert_eq!(exp_squarings(0.1), 1);
        assert_eq!(exp_squarings(0.0), 0);
        assert_eq!(exp_squarings(1e3), usize::MAX);
    }

    /// The exp kernel's squarings are chosen for |η g\_bound |, the largest exponent a
    /// step can take, and that exponent is reached: after 70 zero gradients (v = 0, the
    /// normalised gradient 0/0 taken as 0, factor 1), a gradient ±1 normalises to
    /// ±√((1 − β⁷¹)/(1 − β)) ≈ ±8.3, clipped to g\_bound = 8, so
    /// with η = 8 the factor is e⁻⁶⁴, beyond the bounded kernel (the library `exp`).
    /// Squarings chosen from η + g\_bound = 16 or η/g\_bound = 1 would take it with
    /// 8 or 4 squarings, 6·10⁻¹¹ relative or far worse.
    #[test]
    fn the_exp_kernel_covers_the_largest_exponent() {
        use crate::{Optimizer, StepInfo, Tensor};
        let mut opt = Optimizer::<f64>::from_spec("madam:lr=8,g_bound=8,p_scale=1e30").unwrap();
        let mut p = vec![Tensor::vector("w", vec![0.5, -2.0])];
        for _ in 0..70 {
            let zero = vec![Tensor::vector("w", vec![0.0, 0.0])];
            opt.step(&mut p, &zero, &StepInfo::default()).unwrap();
        }
        assert_eq!(p[0].data(), &[0.5, -2.0]);
        let g = vec![Tensor::vector("w", vec![1.0, -1.0])];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let e = (-64f64).exp();
        for (got, want) in p[0].data().iter().zip([0.5 * e, -2.0 * e]) {
            assert!(
                (got - want).abs() <= 1e-13 * want.abs(),
                "{got:e} vs {want:e}"
            );
        }
    }

    /// The clamp bound is `p_scale` times the RMS of the tensor at the first step, as the
    /// reference's `p_scale * (p*p).mean().sqrt()`: with Φ₀ = (3, 1, −1, ½) and
    /// `p_scale` 1 it is √(11.25/4), which clamps the first element's step
    /// 3e^(−0.1) and leaves the others, Φe^(−η sign(g) sign(Φ))
    /// (the first normalised gradient is sign(g)), unclamped.
    #[test]
    fn the_clamp_bound_is_p_scale_times_the_first_rms() {
        use crate::{Optimizer, StepInfo, Tensor};
        let mut opt = Optimizer::<f64>::from_spec("madam:lr=0.1,p_scale=1").unwrap();
        let mut p = vec![Tensor::vector("w", vec![3.0, 1.0, -1.0, 0.5])];
        let g = vec![Tensor::vector("w", vec![1.0, -1.0, -1.0, 2.0])];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let e = 0.1f64.exp();
        let want = [(11.25f64 / 4.0).sqrt(), e, -1.0 / e, 0.5 / e];
        for (got, want) in p[0].data().iter().zip(want) {
            assert!((got - want).abs() <= 1e-13, "{got} vs {want}");
        }
    }

    /// The largest exponent the bounded kernel takes, |η g\_bound | = 16 (8 squarings):
    /// an `f64` step is e^(∓16) to 1e-12 relative, which only the `f64` degree gives
    /// (the `f32` degree's truncation is 2⁸(1/16)⁷/7! ≈ 2·10⁻¹⁰ there), and
    /// an `f32` step is the `f32` nearest of it. At the first step the normalised gradient is
    /// sign(g) (so g\_bound = 1 does not clip it), and the factor is
    /// e^(−η sign(g) sign(Φ)).
    #[test]
    fn each_precision_takes_the_exp_of_its_own_degree() {
        use crate::{Optimizer, StepInfo, Tensor};
        let spec = "madam:lr=16,g_bound=1,p_scale=100";
        let (p0, g0) = (vec![0.5, -2.0, 0.0], vec![0.25, -3.0, 1.0]);
        let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
        let mut p = vec![Tensor::vector("w", p0.clone())];
        let g = vec![Tensor::vector("w", g0.clone())];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let e = (-16f64).exp();
        for (got, want) in p[0].data().iter().zip([0.5 * e, -2.0 * e, 0.0]) {
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "{got:e} vs {want:e}"
            );
        }
        let mut opt = Optimizer::<f32>::from_spec(spec).unwrap();
        let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mut p = vec![Tensor::vector("w", to32(&p0))];
        let g = vec![Tensor::vector("w", to32(&g0))];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let e = (-16f64).exp() as f32;
        for (got, want) in p[0].data().iter().zip([0.5 * e, -2.0 * e, 0.0]) {
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 1, "{got:e} vs {want:e}");
        }
    }
}
