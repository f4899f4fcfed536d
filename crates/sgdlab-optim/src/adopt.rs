//! ADOPT (Taniguchi et al. 2024): Adam that converges for any β₂, with
//! pytorch-optimizer's semantics (`pytorch_optimizer.ADOPT`).

use super::StepContext;
use super::kernel::{State, bf16_elements, blocks};
use super::rule::{UpdateRule, fused_steps};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `adopt`: the gradient is normalised by the second moment of the *previous* steps,
    /// clipped, and only then averaged into the momentum. With g ← g + λΦ
    /// (L2), or Φ ← (1 − ηλ)Φ first (`decoupled_weight_decay`):
    /// at t = 1 only v ← g²; from t = 2,
    /// n = clamp(g/max(√v, ε), ±tᶜ),
    /// m ← m + (1 − β₁)(n − m), Φ ← Φ − ηm,
    /// v ← β₂v + (1 − β₂)g² (c = `clip`, 1/4 by default; `clip=none`
    /// does not clip). No bias correction: the first step fills v instead.
    Adopt("adopt") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// Momentum decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.9999,
        /// Floor ε > 0 of √v.
        eps: f64 = 1e-6,
        /// Weight decay λ ≥ 0: L2 (added to the gradient), or decoupled.
        weight_decay: f64 = 0.0,
        /// Decoupled weight decay: shrink Φ by 1 − ηλ before the update.
        decoupled_weight_decay: bool = false,
        /// The exponent c ≥ 0 of the clip tᶜ of the normalised gradient, or `none`.
        clip: Option<f64> = Some(0.25),
    }
}

impl UpdateRule for Adopt {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::either(self.decoupled_weight_decay, ctx.lr, self.weight_decay)
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        if let Some(c) = self.clip {
            check::at_least("clip", c, 0.0)?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fused_steps!();
}

impl Adopt {
    /// One chunk's update ([`fused_steps`]), with m and v in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let gs = T::from_f64(ctx.grad_scale);
        let (l2, shrink) = if self.decoupled_weight_decay {
            (T::zero(), T::from_f64(1.0 - ctx.lr * self.weight_decay))
        } else {
            (T::from_f64(self.weight_decay), T::one())
        };
        let first = ctx.t == 1;
        // The clip bound t^c, once per step (infinite without a clip: clamping is then a no-op).
        let bound = T::from_f64(self.clip.map_or(f64::INFINITY, |c| (ctx.t as f64).powf(c)));
        let (lr, eps) = (T::from_f64(ctx.lr), T::from_f64(self.eps));
        let (b2, c2) = (T::from_f64(self.beta2), T::from_f64(1.0 - self.beta2));
        let w1 = T::from_f64(1.0 - self.beta1);
        macro_rules! rule {
            () => {
                |p: &mut T, g: T, m: &mut T, v: &mut T| {
                    let g = g * gs + l2 * *p;
                    *p = *p * shrink;
                    if first {
                        *v = *v + g * g;
                    } else {
                        let n = (g / v.sqrt().max(eps)).max(-bound).min(bound);
                        *m = *m + w1 * (n - *m);
                        *p = *p - lr * *m;
                        *v = *v * b2 + c2 * g * g;
                    }
                }
            };
        }
        match state {
            State::Bf16(lowp) => {
                bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [m, v]| rule!()(p, g, m, v))
            }
            State::Plain([m, v]) => blocks(ctx.prefetch, p, g, [m, v], |p, g, [m, v]| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    rule!()(p, g, m, v);
                }
            }),
            State::Plain(_) => unreachable!("adopt has two slots"),
        }
    }
}
