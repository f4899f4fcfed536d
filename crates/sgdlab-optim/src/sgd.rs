//! SGD with momentum (PyTorch semantics) and problem 3's EMA-form momentum.

use super::StepContext;
use super::kernel::{State, blocks, one_buffer};
use super::rule::{UpdateRule, fused_steps};
use super::spec::{Debias, check, config};
use crate::{Error, Real, Result};

config! {
    /// `sgd`: PyTorch's `torch.optim.SGD`.
    ///
    /// With d = g + λΦ (weight decay λ): without momentum
    /// Φ ← Φ − ηd. With momentum μ the buffer is b₁ = d₁ on the first
    /// step and bₜ = μbₜ₋₁ + (1 − τ)dₜ after (dampening τ); then
    /// Φ ← Φ − η(d + μb) with Nesterov, Φ ← Φ − ηb
    /// without.
    Sgd("sgd") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// Momentum μ ∈ \[0, 1).
        momentum: f64 = 0.0,
        /// Dampening τ ∈ \[0, 1\] of the gradient entering the buffer.
        dampening: f64 = 0.0,
        /// Nesterov momentum (needs momentum > 0 and dampening = 0).
        nesterov: bool = false,
        /// L2 weight decay λ ≥ 0, added to the gradient.
        weight_decay: f64 = 0.0,
    }
}

impl UpdateRule for Sgd {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        let _ = ctx;
        crate::rule::DecayForm::coupled(self.weight_decay)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    /// Checks ranges, and Nesterov's requirements (as PyTorch does).
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("momentum", self.momentum)?;
        check::unit_closed("dampening", self.dampening)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                "nesterov",
                true,
                format!(
                    "requires momentum > 0 and dampening = 0 (got momentum={}, dampening={})",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }

    fn slots(&self) -> &'static [&'static str] {
        if self.momentum == 0.0 {
            &[]
        } else {
            &["momentum_buffer"]
        }
    }

    fused_steps!();
}

impl Sgd {
    /// One chunk's update, with the momentum buffer (if any) in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let wd = T::from_f64(self.weight_decay);
        let mu = T::from_f64(self.momentum);
        let keep = T::from_f64(1.0 - self.dampening);
        let first = ctx.t == 1;
        // The momentum element rule, one loop per (first step, Nesterov), so that no element
        // tests either: the SSE2 baseline does not vectorise a loop with a select in it.
        macro_rules! element {
            ($first:expr, $nesterov:expr) => {
                |p: &mut T, g: T, b: &mut T| {
                    let d = g * gs + wd * *p;
                    *b = if $first { d } else { mu * *b + keep * d };
                    let step = if $nesterov { d + mu * *b } else { *b };
                    *p = *p - lr * step;
                }
            };
        }
        match (&state, first, self.nesterov) {
            (State::Plain([]), _, _) => blocks(ctx.prefetch, p, g, [], |p, g, []| {
                for (p, &g) in p.iter_mut().zip(g) {
                    let d = g * gs + wd * *p;
                    *p = *p - lr * d;
                }
            }),
            (_, true, true) => {
                one_buffer!(ctx.prefetch, p, g, state, element!(true, true), "sgd")
            }
            (_, true, false) => {
                one_buffer!(ctx.prefetch, p, g, state, element!(true, false), "sgd")
            }
            (_, false, true) => {
                one_buffer!(ctx.prefetch, p, g, state, element!(false, true), "sgd")
            }
            (_, false, false) => {
                one_buffer!(ctx.prefetch, p, g, state, element!(false, false), "sgd")
            }
        }
    }
}

config! {
    /// `ema-momentum`: problem 3's EMA-form momentum, m ← βm + (1 − β)g,
    /// Φ ← Φ − ηm̂.
    ///
    /// m̂ = m (`debias=none`), m/(1 − βᵗ) (`power`), or the average with rate
    /// 1/min(t, N), N = 1/(1 − β) (`horizon`). With η = η\_sgd/(1 − β) and no
    /// debiasing it reproduces `sgd:lr=η_sgd,momentum=β` (problem 3c).
    EmaMomentum("ema-momentum") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
        /// Decay β ∈ \[0, 1).
        beta: f64 = 0.9,
        /// Start-up bias correction.
        debias: Debias = Debias::None,
    }
}

impl UpdateRule for EmaMomentum {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn decays(&self) -> crate::rule::Decays {
        smallvec::smallvec![self.beta, 0.0]
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta", self.beta)
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    fused_steps!();
}

impl EmaMomentum {
    /// One chunk's update, with m in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let (decay, rate, factor) =
            ema_coefficients(self.beta, ctx.beta_pow[0], self.debias, ctx.t);
        let (decay, rate) = (T::from_f64(decay), T::from_f64(rate));
        let step = T::from_f64(ctx.lr * factor);
        let gs = T::from_f64(ctx.grad_scale);
        macro_rules! element {
            () => {
                |p: &mut T, g: T, m: &mut T| {
                    *m = decay * *m + rate * (g * gs);
                    *p = *p - step * *m;
                }
            };
        }
        one_buffer!(ctx.prefetch, p, g, state, element!(), "ema-momentum")
    }
}

/// The coefficients of one debiased EMA step at step t ≥ 1:
/// `(decay, rate, factor)` with m ← decay·m + rate·x and
/// m̂ = factor·m.
///
/// * `None`: (β, 1 − β, 1);
/// * `Power`: (β, 1 − β, 1/(1 − βᵗ));
/// * `Horizon`: (1 − r, r, 1) with r = 1/min(t, 1/(1 − β)).
///
/// `beta_pow_t` is βᵗ, computed once per step by the caller.
pub(crate) fn ema_coefficients(
    beta: f64,
    beta_pow_t: f64,
    debias: Debias,
    t: u64,
) -> (f64, f64, f64) {
    match debias {
        Debias::None => (beta, 1.0 - beta, 1.0),
        Debias::Power => (beta, 1.0 - beta, 1.0 / (1.0 - beta_pow_t)),
        Debias::Horizon => {
            let r = 1.0 / (t as f64).min(1.0 / (1.0 - beta));
            (1.0 - r, r, 1.0)
        }
    }
}
