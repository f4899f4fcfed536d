//! Adam and AdamW (PyTorch semantics), with AMSGrad and a choice of bias correction.

use super::StepContext;
use super::kernel::{State, bf16_elements, blocks};
use super::rule::{UpdateRule, fused_steps};
use super::sgd::ema_coefficients;
use super::spec::{Debias, check, config};
use crate::{Real, Result};

config! {
    /// `adam` (L2 weight decay) and `adamw` (decoupled weight decay): PyTorch's
    /// `torch.optim.Adam` / `AdamW`.
    ///
    /// m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g²,
    /// Φ ← Φ − η m̂/(√v̂ + ε) with
    /// m̂ = m/(1 − β₁ᵗ), √v̂ = √v/√(1 − β₂ᵗ) (`debias=power`,
    /// PyTorch). Adam adds λΦ to g; AdamW first scales
    /// Φ ← (1 − ηλ)Φ. AMSGrad uses max\_(s ≤ t) vₛ in place of
    /// v. `debias=horizon` replaces both EMAs by problem 4's rate 1/min(t, Nᵢ),
    /// Nᵢ = 1/(1 − βᵢ), and `none` uses the raw EMAs.
    Adam("adam") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// ε > 0 added to √v̂.
        eps: f64 = 1e-8,
        /// Weight decay λ ≥ 0 (L2 for adam, decoupled for adamw).
        weight_decay: f64 = 0.0,
        /// AMSGrad: divide by the running maximum of v.
        amsgrad: bool = false,
        /// Start-up bias correction.
        debias: Debias = Debias::Power,
    }
}

config! {
    /// `adamw`: PyTorch's `torch.optim.AdamW`, Adam with decoupled weight decay
    /// Φ ← (1 − ηλ)Φ before the update (see [`Adam`] for the rest).
    /// The same keys as Adam, with `weight_decay = 0.01` by default, as in PyTorch.
    AdamW("adamw") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// ε > 0 added to √v̂.
        eps: f64 = 1e-8,
        /// Decoupled weight decay λ ≥ 0.
        weight_decay: f64 = 1e-2,
        /// AMSGrad: divide by the running maximum of v.
        amsgrad: bool = false,
        /// Start-up bias correction.
        debias: Debias = Debias::Power,
    }
}

impl From<&AdamW> for Adam {
    fn from(c: &AdamW) -> Self {
        Adam {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
            debias: c.debias,
        }
    }
}

impl UpdateRule for AdamW {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::decoupled(ctx.lr, self.weight_decay)
    }

    fn validate(&self) -> Result<()> {
        Adam::from(self).validate()
    }

    fn slots(&self) -> &'static [&'static str] {
        Adam::from(self).slots()
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![self.beta1, self.beta2]
    }

    fused_steps!();
}

impl AdamW {
    /// One chunk's update ([`fused_steps`]): Adam's, with decoupled weight decay.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        Adam::from(self).step_with_decay(true, ctx, p, g, state);
    }
}

impl UpdateRule for Adam {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        let _ = ctx;
        crate::rule::DecayForm::coupled(self.weight_decay)
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![self.beta1, self.beta2]
    }

    fused_steps!();

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn slots(&self) -> &'static [&'static str] {
        if self.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }
}

impl Adam {
    /// One chunk's update ([`fused_steps`]), with coupled (L2) weight decay.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        self.step_with_decay(false, ctx, p, g, state);
    }

    /// The update with coupled (L2, `adam`) or decoupled (`adamw`) weight decay.
    #[inline(always)]
    pub(crate) fn step_with_decay<T: Real>(
        &self,
        decoupled: bool,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        state: State<'_, '_, T>,
    ) {
        let (d1, r1, f1) = ema_coefficients(self.beta1, ctx.beta_pow[0], self.debias, ctx.t);
        let (d2, r2, f2) = ema_coefficients(self.beta2, ctx.beta_pow[1], self.debias, ctx.t);
        // Per-step scalars, in f64 once: step size η/(1-β1^t) and 1/√(1-β2^t) (a multiplier,
        // so that the element loop has one division and one square root).
        let step_size = T::from_f64(ctx.lr * f1);
        let inv_bc2_sqrt = T::from_f64(f2.sqrt());
        let (d1, r1, d2, r2) = (
            T::from_f64(d1),
            T::from_f64(r1),
            T::from_f64(d2),
            T::from_f64(r2),
        );
        let eps = T::from_f64(self.eps);
        let gs = T::from_f64(ctx.grad_scale);
        let (l2, shrink) = if decoupled {
            (T::zero(), T::from_f64(1.0 - ctx.lr * self.weight_decay))
        } else {
            (T::from_f64(self.weight_decay), T::one())
        };
        // Without clipping, L2 decay or decoupled decay the gradient and parameter are used
        // as they are (as PyTorch does, which skips those terms when they are off): a
        // cheaper loop, chosen once per step.
        let plain = gs == T::one() && l2 == T::zero() && shrink == T::one();
        macro_rules! rule {
            ($plain:expr) => {
                |p: &mut T, g: T, m: &mut T, v: &mut T, vmax: Option<&mut T>| {
                    let g = if $plain { g } else { g * gs + l2 * *p };
                    if !$plain {
                        *p = *p * shrink;
                    }
                    *m = d1 * *m + r1 * g;
                    *v = d2 * *v + r2 * g * g;
                    let v_used = match vmax {
                        Some(vmax) => {
                            *vmax = vmax.max(*v);
                            *vmax
                        }
                        None => *v,
                    };
                    *p = *p - step_size * (*m / (v_used.sqrt() * inv_bc2_sqrt + eps));
                }
            };
        }
        let amsgrad = self.amsgrad;
        macro_rules! run {
            ($rule:expr) => {
                match state {
                    State::Bf16(lowp) if amsgrad => {
                        bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [m, v, vmax]| {
                            $rule(p, g, m, v, Some(vmax))
                        })
                    }
                    State::Bf16(lowp) => bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [m, v]| {
                        $rule(p, g, m, v, None)
                    }),
                    State::Plain(slots) => match slots {
                        [m, v] => blocks(ctx.prefetch, p, g, [m, v], |p, g, [m, v]| {
                            for (((p, &g), m), v) in
                                p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                            {
                                $rule(p, g, m, v, None);
                            }
                        }),
                        [m, v, vmax] => {
                            blocks(ctx.prefetch, p, g, [m, v, vmax], |p, g, [m, v, vmax]| {
                                for ((((p, &g), m), v), vmax) in p
                                    .iter_mut()
                                    .zip(g)
                                    .zip(m.iter_mut())
                                    .zip(v.iter_mut())
                                    .zip(vmax.iter_mut())
                                {
                                    $rule(p, g, m, v, Some(vmax));
                                }
                            })
                        }
                        _ => unreachable!("adam has two or three slots"),
                    },
                }
            };
        }
        if plain {
            run!(rule!(true))
        } else {
            run!(rule!(false))
        }
    }
}
