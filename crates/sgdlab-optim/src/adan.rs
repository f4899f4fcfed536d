//! Adan (Xie et al. 2022): Nesterov momentum through gradient differences, with
//! pytorch-optimizer's semantics (`pytorch_optimizer.Adan`). Four state buffers and three
//! decay rates.

use super::StepContext;
use super::kernel::{BlockBody, blocks_with};
use super::rule::{Decays, UpdateRule};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `adan`: with δₜ = gₜ − gₜ₋₁ (δ₁ = 0),
    /// m ← m + (1 − β₁)(g − m), n ← n + (1 − β₂)(δ − n),
    /// u = g + β₂δ, v ← β₃v + (1 − β₃)u²,
    /// Φ ← (Φ − η/(1 − β₁ᵗ)m/d − ηβ₂/(1 − β₂ᵗ)n/d)/(1 + ηλ)
    ///  with
    /// d = √(v/(1 − β₃ᵗ)) + ε (the weight decay λ as a proximal
    /// step, the reference's default). The state holds m, v, n and −gₜ₋₁.
    Adan("adan") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// Gradient-average decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.98,
        /// Gradient-difference decay β₂ ∈ \[0, 1) (also the Nesterov weight).
        beta2: f64 = 0.92,
        /// Second-moment decay β₃ ∈ \[0, 1).
        beta3: f64 = 0.99,
        /// ε > 0 added to the denominator.
        eps: f64 = 1e-8,
        /// Weight decay λ ≥ 0: the step divided by 1 + ηλ.
        weight_decay: f64 = 0.0,
    }
}

impl UpdateRule for Adan {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        // (p - ηu)/(1 + ηλ): the update scaled by 1/(1 + ηλ) > 0.
        crate::rule::DecayForm {
            shrink: 1.0 / (1.0 + ctx.lr * self.weight_decay),
            l2: 0.0,
        }
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::unit_open("beta3", self.beta3)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"]
    }

    fn decays(&self) -> Decays {
        smallvec::smallvec![self.beta1, self.beta2, self.beta3]
    }

    /// One chunk's update. bfloat16 state takes the kernel's scratch path (widened into
    /// L1-sized blocks, this loop, narrowed back: the same bits a fused loop gives); a fused
    /// loop of four buffers is compiled out of line, outside the SIMD copies.
    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let (bc1, bc2, bc3) = (
            1.0 - ctx.beta_pow[0],
            1.0 - ctx.beta_pow[1],
            1.0 - ctx.beta_pow[2],
        );
        let mut k = Coefficients {
            first: ctx.t == 1,
            gs: T::from_f64(ctx.grad_scale),
            w1: T::from_f64(1.0 - self.beta1),
            w2: T::from_f64(1.0 - self.beta2),
            b2: T::from_f64(self.beta2),
            b3: T::from_f64(self.beta3),
            c3: T::from_f64(1.0 - self.beta3),
            step1: T::from_f64(ctx.lr / bc1),
            step2: T::from_f64(ctx.lr * self.beta2 / bc2),
            bc3_sqrt: T::from_f64(bc3.sqrt()),
            eps: T::from_f64(self.eps),
            decay: T::from_f64(1.0 + ctx.lr * self.weight_decay),
        };
        let [m, v, n, d] = slots else {
            unreachable!("adan has four slots")
        };
        blocks_with(ctx.prefetch, p, g, [m, v, n, d], &mut k);
    }
}

/// Adan's per-step scalars, in the parameters' type.
#[derive(Clone, Copy)]
struct Coefficients<T> {
    /// The first step, where the gradient difference is 0.
    first: bool,
    gs: T,
    w1: T,
    w2: T,
    b2: T,
    b3: T,
    c3: T,
    step1: T,
    step2: T,
    bc3_sqrt: T,
    eps: T,
    decay: T,
}

impl<T: Real> BlockBody<T, 4> for Coefficients<T> {
    /// The loop over one block: [`element`] on each parameter and its four buffers.
    #[inline(always)]
    fn run(&mut self, p: &mut [T], g: &[T], [m, v, n, d]: [&mut [T]; 4]) {
        for (((((p, &g), m), v), n), d) in p
            .iter_mut()
            .zip(g)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(n.iter_mut())
            .zip(d.iter_mut())
        {
            element(self, p, g, m, v, n, d);
        }
    }
}

/// One element's update (a function, not a closure, so that it is always inlined into the
/// SIMD copies of the loop).
#[inline(always)]
fn element<T: Real>(
    k: &Coefficients<T>,
    p: &mut T,
    g: T,
    m: &mut T,
    v: &mut T,
    n: &mut T,
    d: &mut T,
) {
    let g = g * k.gs;
    // d holds -g_{t-1}: the difference g_t - g_{t-1} (0 at the first step, where the
    // reference starts d at -g_1).
    let diff = if k.first { T::zero() } else { *d + g };
    *m = *m + k.w1 * (g - *m);
    *n = *n + k.w2 * (diff - *n);
    let u = diff * k.b2 + g;
    *v = *v * k.b3 + k.c3 * u * u;
    let den = v.sqrt() / k.bc3_sqrt + k.eps;
    *p = *p - k.step1 * (*m / den);
    *p = *p - k.step2 * (*n / den);
    *p = *p / k.decay;
    *d = -g;
}
