//! RAdam (PyTorch's `torch.optim.RAdam`): Adam with the variance rectification of Liu et al.

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `radam`: PyTorch's `torch.optim.RAdam` (Liu et al. 2020).
    ///
    /// m, v as in Adam; with ρ\_∞ = 2/(1 − β₂) − 1 and
    /// ρₜ = ρ\_∞−2tβ₂ᵗ/(1 − β₂ᵗ): when ρₜ > 5,
    /// Φ ← Φ − η m̂ rₜ√(1 − β₂ᵗ)/(√v + ε) with
    /// rₜ = √(((ρₜ − 4)(ρₜ − 2)ρ\_∞)/((ρ\_∞−4)(ρ\_∞−2)ρₜ));
    /// otherwise the unadapted momentum step Φ ← Φ − ηm̂
    /// (m̂ = m/(1 − β₁ᵗ)). Weight decay as in NAdam (`decoupled_weight_decay`).
    Radam("radam") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// ε > 0 added to √v.
        eps: f64 = 1e-8,
        /// Weight decay λ ≥ 0.
        weight_decay: f64 = 0.0,
        /// Decoupled weight decay instead of L2.
        decoupled_weight_decay: bool = false,
    }
}

impl UpdateRule for Radam {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::either(self.decoupled_weight_decay, ctx.lr, self.weight_decay)
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
        &["exp_avg", "exp_avg_sq"]
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![self.beta1, self.beta2]
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
        let [m, v] = slots else {
            unreachable!("radam has two slots")
        };
        let (bc1, bc2) = (1.0 - ctx.beta_pow[0], 1.0 - ctx.beta_pow[1]);
        let rho_inf = 2.0 / (1.0 - self.beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * ctx.t as f64 * ctx.beta_pow[1] / bc2;
        // The rectified step, or None for the unadapted one.
        let rect = (rho_t > 5.0).then(|| {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt()
        });
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
        let (bc1, lr, bc2_sqrt) = (
            T::from_f64(bc1),
            T::from_f64(ctx.lr),
            T::from_f64(bc2.sqrt()),
        );
        match rect {
            Some(r) => {
                let r = T::from_f64(r);
                blocks(ctx.prefetch, p, g, [m, v], |p, g, [m, v]| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let x = *p * decay;
                        let g = g * gs + l2 * x;
                        *m = *m + w1 * (g - *m);
                        *v = b2 * *v + c2 * g * g;
                        let adaptive = bc2_sqrt / (v.sqrt() + eps);
                        *p = x - (*m / bc1) * lr * adaptive * r;
                    }
                })
            }
            None => blocks(ctx.prefetch, p, g, [m, v], |p, g, [m, v]| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let x = *p * decay;
                    let g = g * gs + l2 * x;
                    *m = *m + w1 * (g - *m);
                    *v = b2 * *v + c2 * g * g;
                    *p = x - (*m / bc1) * lr;
                }
            }),
        }
    }
}
