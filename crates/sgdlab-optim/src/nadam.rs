//! NAdam (PyTorch's `torch.optim.NAdam`): Adam with Nesterov momentum and a momentum schedule.

use super::StepContext;
use super::kernel::blocks;
use super::rule::{TensorScalars, UpdateRule};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `nadam`: PyTorch's `torch.optim.NAdam` (Dozat 2016).
    ///
    /// With the momentum schedule μₜ = β₁(1 − ½0.96^tψ) and its running
    /// product Πₜ = ∏\_(s ≤ t) μₛ (kept per tensor, as PyTorch does):
    /// m ← m + (1 − β₁)(g − m), v ← β₂v + (1 − β₂)g²,
    /// d = √(v/(1 − β₂ᵗ)) + ε,
    /// Φ ← Φ − η(1 − μₜ)/(1 − Πₜ) g/d − η(μₜ₊₁)/(1 − Πₜμₜ₊₁) m/d.
    /// Weight decay λ is added to g, or with `decoupled_weight_decay=true` applied
    /// as Φ ← (1 − ηλ)Φ first (NAdamW).
    Nadam("nadam") {
        /// Learning rate η ≥ 0.
        lr: f64 = 2e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// ε > 0 added to the denominator.
        eps: f64 = 1e-8,
        /// Weight decay λ ≥ 0.
        weight_decay: f64 = 0.0,
        /// Momentum decay ψ ≥ 0 of the schedule μₜ.
        momentum_decay: f64 = 4e-3,
        /// Decoupled weight decay (NAdamW) instead of L2.
        decoupled_weight_decay: bool = false,
    }
}

impl Nadam {
    /// μₜ = β₁(1 − ½0.96^tψ).
    fn mu(&self, t: u64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }
}

impl UpdateRule for Nadam {
    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        Some(self)
    }

    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::either(self.decoupled_weight_decay, ctx.lr, self.weight_decay)
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::at_least("momentum_decay", self.momentum_decay, 0.0)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![0.0, self.beta2]
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
        let [m, v] = slots else {
            unreachable!("nadam has two slots")
        };
        let [mu_product] = scalars else {
            unreachable!("nadam has one tensor scalar")
        };
        let (mu, mu_next) = (self.mu(ctx.t), self.mu(ctx.t + 1));
        let c_grad = T::from_f64(-ctx.lr * (1.0 - mu) / (1.0 - mu_product));
        let c_avg = T::from_f64((-ctx.lr * mu_next) / (1.0 - mu_product * mu_next));
        let bc2 = T::from_f64(1.0 - ctx.beta_pow[1]);
        let gs = T::from_f64(ctx.grad_scale);
        let wd = T::from_f64(self.weight_decay);
        let (l2, decay) = if self.decoupled_weight_decay {
            (T::zero(), T::from_f64(1.0 - ctx.lr * self.weight_decay))
        } else {
            (wd, T::one())
        };
        let (w1, b2, c2, eps) = (
            T::from_f64(1.0 - self.beta1),
            T::from_f64(self.beta2),
            T::from_f64(1.0 - self.beta2),
            T::from_f64(self.eps),
        );
        blocks(ctx.prefetch, p, g, [m, v], |p, g, [m, v]| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let x = *p * decay;
                let g = g * gs + l2 * x;
                *m = *m + w1 * (g - *m);
                *v = b2 * *v + c2 * g * g;
                let d = (*v / bc2).sqrt() + eps;
                let x = x + c_grad * (g / d);
                *p = x + c_avg * (*m / d);
            }
        });
    }
}

impl<T: Real> TensorScalars<T> for Nadam {
    /// `mu_product`, Πₜ.
    fn names(&self) -> &'static [&'static str] {
        &["mu_product"]
    }

    fn begin(&self, ctx: &StepContext, _p: &[T], scalars: &mut [f64]) {
        let before = if ctx.t == 1 { 1.0 } else { scalars[0] };
        scalars[0] = before * self.mu(ctx.t);
    }
}
