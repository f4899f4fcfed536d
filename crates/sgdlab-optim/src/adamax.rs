//! Adamax (PyTorch's `torch.optim.Adamax`): Adam with the infinity norm.

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `adamax`: PyTorch's `torch.optim.Adamax` (Kingma & Ba 2015, §7.1).
    ///
    /// g ← g + λΦ, m ← m + (1 − β₁)(g − m),
    /// u ← max(β₂u, |g| + ε),
    /// Φ ← Φ − η/(1 − β₁ᵗ) m/u.
    Adamax("adamax") {
        /// Learning rate η ≥ 0.
        lr: f64 = 2e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Decay β₂ ∈ \[0, 1) of the infinity norm.
        beta2: f64 = 0.999,
        /// ε > 0 added to |g|.
        eps: f64 = 1e-8,
        /// L2 weight decay λ ≥ 0, added to the gradient.
        weight_decay: f64 = 0.0,
    }
}

impl UpdateRule for Adamax {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        let _ = ctx;
        crate::rule::DecayForm::coupled(self.weight_decay)
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_inf"]
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![self.beta1, 0.0]
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
        let [m, u] = slots else {
            unreachable!("adamax has two slots")
        };
        let clr = T::from_f64(ctx.lr / (1.0 - ctx.beta_pow[0]));
        let (gs, wd) = (T::from_f64(ctx.grad_scale), T::from_f64(self.weight_decay));
        let (w1, b2, eps) = (
            T::from_f64(1.0 - self.beta1),
            T::from_f64(self.beta2),
            T::from_f64(self.eps),
        );
        blocks(ctx.prefetch, p, g, [m, u], |p, g, [m, u]| {
            for (((p, &g), m), u) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(u.iter_mut()) {
                let g = g * gs + wd * *p;
                *m = *m + w1 * (g - *m);
                *u = (b2 * *u).max(g.abs() + eps);
                *p = *p - clr * (*m / *u);
            }
        });
    }
}
