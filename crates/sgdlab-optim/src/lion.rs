//! Lion (Chen et al. 2023), with optax's semantics.

use super::StepContext;
use super::kernel::{State, one_buffer};
use super::rule::{UpdateRule, fused_steps};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `lion`: c = β₁m + (1 − β₁)g,
    /// Φ ← Φ − η (sign(c) + λΦ),
    /// m ← β₂m + (1 − β₂)g (decoupled weight decay λ;
    /// sign(0) = 0). Defaults are optax's `lion` (learning rate excepted, which
    /// optax requires: 1e-4 here, the paper's advice of 3–10× below AdamW's).
    Lion("lion") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-4,
        /// Interpolation β₁ ∈ \[0, 1\] for the update direction.
        beta1: f64 = 0.9,
        /// Decay β₂ ∈ \[0, 1\] of the momentum.
        beta2: f64 = 0.99,
        /// Decoupled weight decay λ ≥ 0.
        weight_decay: f64 = 1e-3,
    }
}

impl UpdateRule for Lion {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::decoupled(ctx.lr, self.weight_decay)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_closed("beta1", self.beta1)?;
        check::unit_closed("beta2", self.beta2)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    fused_steps!();
}

impl Lion {
    /// One chunk's update, with m in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let wd = T::from_f64(self.weight_decay);
        let (b1, c1) = (T::from_f64(self.beta1), T::from_f64(1.0 - self.beta1));
        let (b2, c2) = (T::from_f64(self.beta2), T::from_f64(1.0 - self.beta2));
        macro_rules! element {
            () => {
                |p: &mut T, g: T, m: &mut T| {
                    let g = g * gs;
                    let c = b1 * *m + c1 * g;
                    let sign = if c > T::zero() {
                        T::one()
                    } else if c < T::zero() {
                        -T::one()
                    } else {
                        T::zero()
                    };
                    *p = *p - lr * (sign + wd * *p);
                    *m = b2 * *m + c2 * g;
                }
            };
        }
        one_buffer!(ctx.prefetch, p, g, state, element!(), "lion")
    }
}
