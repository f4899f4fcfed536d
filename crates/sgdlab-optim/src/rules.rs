//! The update rules of the problem set that no framework ships: per-example normalised SGD
//! (problem 6), multiplicative updates and loss-proportional updates (problem 7).

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `normsgd` (problem 6): Φ ← Φ − η g/√(‖g‖²/d + ε),
    /// with ‖g‖ and d taken over all parameters of the step.
    NormSgd("normsgd") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
        /// ε > 0 under the root.
        eps: f64 = 1e-8,
    }
}

impl UpdateRule for NormSgd {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn needs(&self) -> crate::rule::Needs {
        crate::rule::Needs {
            norm: true,
            loss: false,
        }
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("eps", self.eps)
    }

    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let d = ctx.numel.max(1) as f64;
        let factor =
            T::from_f64(ctx.lr * ctx.grad_scale / (ctx.grad_norm_sq / d + self.eps).sqrt());
        blocks(ctx.prefetch, p, g, [], |p, g, []| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - factor * g;
            }
        });
    }
}

config! {
    /// `multiplicative` (problem 7a): Φᵢ ← Φᵢ − η max(ε, |Φᵢ|) gᵢ.
    Multiplicative("multiplicative") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
        /// Floor ε > 0 of the scale, letting a weight pass through zero.
        eps: f64 = 1e-3,
    }
}

impl UpdateRule for Multiplicative {
    fn lr(&self) -> f64 {
        self.lr
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("eps", self.eps)
    }

    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let eps = T::from_f64(self.eps);
        blocks(ctx.prefetch, p, g, [], |p, g, []| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - lr * p.abs().max(eps) * (g * gs);
            }
        });
    }
}

config! {
    /// `lossprop` (problem 7b): Φ ← Φ − η L g, with L the step's loss
    /// (which the caller must supply). Since L∇L = ∇(L²/2) its fixed points are
    /// the stationary points of E\[L²\], not of E\[L\].
    LossProp("lossprop") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
    }
}

impl UpdateRule for LossProp {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn needs(&self) -> crate::rule::Needs {
        crate::rule::Needs {
            loss: true,
            norm: false,
        }
    }

    /// Checks ranges.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)
    }

    #[inline(always)]
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let loss = ctx.loss.unwrap_or(f64::NAN);
        let factor = T::from_f64(ctx.lr * loss * ctx.grad_scale);
        blocks(ctx.prefetch, p, g, [], |p, g, []| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - factor * g;
            }
        });
    }
}
