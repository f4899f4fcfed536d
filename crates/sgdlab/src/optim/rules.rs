//! The update rules of the problem set that no framework ships: per-example normalised SGD
//! (problem 6), multiplicative updates and loss-proportional updates (problem 7).

use super::StepContext;
use super::kernel::blocks;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `normsgd` (problem 6): $\Phi \leftarrow \Phi - \eta\, g/\sqrt{\lVert g\rVert^2/d + \epsilon}$,
    /// with $\lVert g\rVert$ and $d$ taken over all parameters of the step.
    NormSgd("normsgd") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-2,
        /// $\epsilon > 0$ under the root.
        eps: f64 = 1e-8,
    }
}

impl NormSgd {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("eps", self.eps)
    }

    #[inline(always)]
    pub(crate) fn step_tensor<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T]) {
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
    /// `multiplicative` (problem 7a): $\Phi_i \leftarrow \Phi_i - \eta \max(\epsilon, |\Phi_i|)\, g_i$.
    Multiplicative("multiplicative") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-2,
        /// Floor $\epsilon > 0$ of the scale, letting a weight pass through zero.
        eps: f64 = 1e-3,
    }
}

impl Multiplicative {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("eps", self.eps)
    }

    #[inline(always)]
    pub(crate) fn step_tensor<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T]) {
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
    /// `lossprop` (problem 7b): $\Phi \leftarrow \Phi - \eta\, L\, g$, with $L$ the step's loss
    /// (which the caller must supply). Since $L\nabla L = \nabla(L^2/2)$ its fixed points are
    /// the stationary points of $E\[L^2\]$, not of $E\[L\]$.
    LossProp("lossprop") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-2,
    }
}

impl LossProp {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)
    }

    #[inline(always)]
    pub(crate) fn step_tensor<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T]) {
        let loss = ctx.loss.unwrap_or(f64::NAN);
        let factor = T::from_f64(ctx.lr * loss * ctx.grad_scale);
        blocks(ctx.prefetch, p, g, [], |p, g, []| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - factor * g;
            }
        });
    }
}
