//! Adagrad (PyTorch semantics).

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `adagrad`: PyTorch's `torch.optim.Adagrad`.
    ///
    /// g ← g + λΦ; s ← s + g² (from s₀ =
    /// `initial_accumulator_value`); Φ ← Φ − η/(1 + (t − 1)δ)·g/(√s + ε)
    ///  with learning-rate decay δ.
    Adagrad("adagrad") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
        /// Learning-rate decay δ ≥ 0.
        lr_decay: f64 = 0.0,
        /// L2 weight decay λ ≥ 0.
        weight_decay: f64 = 0.0,
        /// Starting value s₀ ≥ 0 of the accumulator.
        initial_accumulator_value: f64 = 0.0,
        /// ε > 0 added to the root.
        eps: f64 = 1e-10,
    }
}

impl UpdateRule for Adagrad {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        let _ = ctx;
        crate::rule::DecayForm::coupled(self.weight_decay)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::at_least("lr_decay", self.lr_decay, 0.0)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::at_least(
            "initial_accumulator_value",
            self.initial_accumulator_value,
            0.0,
        )?;
        check::positive("eps", self.eps)
    }

    fn slots(&self) -> &'static [&'static str] {
        &["sum"]
    }

    fn initial_state(&self) -> f64 {
        self.initial_accumulator_value
    }

    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let [sum] = slots else {
            unreachable!("adagrad has one slot")
        };
        let clr = T::from_f64(ctx.lr / (1.0 + (ctx.t - 1) as f64 * self.lr_decay));
        let gs = T::from_f64(ctx.grad_scale);
        let wd = T::from_f64(self.weight_decay);
        let eps = T::from_f64(self.eps);
        blocks(ctx.prefetch, p, g, [sum], |p, g, [sum]| {
            for ((p, &g), s) in p.iter_mut().zip(g).zip(sum.iter_mut()) {
                let g = g * gs + wd * *p;
                *s = *s + g * g;
                *p = *p - clr * (g / (s.sqrt() + eps));
            }
        });
    }
}
