//! Schedule-Free SGD and AdamW (Defazio et al. 2024, "The Road Less Scheduled"), as the
//! `schedulefree` package's reference implementations.
//!
//! Three sequences: the base iterate z takes the gradient steps, the average
//! xₜ = (1 − cₜ)xₜ₋₁ + cₜzₜ is what a user evaluates and ships, and gradients are
//! taken at the interpolation yₜ = βxₜ + (1 − β)zₜ, which the parameters hold
//! during training. The averaging weights are
//! cₜ = wₜ/Σ\_(s ≤ t) wₛ with wₜ = tʳ η\_(max , t) ᵖ (p =
//! `weight_lr_power`, η\_(max , t) the largest warmed-up learning rate so far): with
//! `r=0, weight_lr_power=0`, xₜ is the uniform average of z₁..zₜ — problem 4's rate
//! 1/min(t, N) with N = ∞.
//!
//! The state keeps z and x (and AdamW's second moment), so that
//! [`Optimizer::eval_point`](super::Optimizer::eval_point) reads x exactly and
//! [`Optimizer::eval_mode`](super::Optimizer::eval_mode) /
//! [`train_mode`](super::Optimizer::train_mode) swap the parameters between x and y bit
//! for bit (the package's memory-saving variant recovers x from y and z with rounding).

use super::StepContext;
use super::kernel::blocks;
use super::rule::{AveragingRule, TensorScalars, UpdateRule};
use super::spec::{check, config};
use crate::{Real, Result};

/// Per-tensor scalars of both rules: ηₘₐₓ, Σw, and this step's cₜ.
const SCALARS: &[&str] = &["lr_max", "weight_sum", "ckp1"];

/// The averaging weights of step `ctx.t`: updates `[lr_max, weight_sum, ckp1]` as the
/// reference does, ηₘₐₓ ← max(ηₘₐₓ, ηₜ),
/// wₜ = tʳηₘₐₓᵖ, Σw+ = wₜ and cₜ = wₜ/Σw (0 while
/// Σw = 0).
fn averaging(ctx: &StepContext, warmup: f64, r: f64, power: f64, scalars: &mut [f64]) {
    if ctx.t == 1 {
        scalars[0] = -1.0;
        scalars[1] = 0.0;
    }
    scalars[0] = scalars[0].max(warmed_lr(ctx, warmup));
    let weight = (ctx.t as f64).powf(r) * scalars[0].powf(power);
    scalars[1] += weight;
    scalars[2] = if scalars[1] == 0.0 {
        0.0
    } else {
        weight / scalars[1]
    };
}

/// The learning rate of step `ctx.t`, warmed up linearly over `warmup` steps:
/// ηₜ = η min(1, t/warmup), as the reference computes it
/// ((k + 1)/warmup for k = t − 1 < warmup).
fn warmed_lr(ctx: &StepContext, warmup: f64) -> f64 {
    let k = (ctx.t - 1) as f64;
    ctx.lr * if k < warmup { (k + 1.0) / warmup } else { 1.0 }
}

fn check_common(r: f64, weight_lr_power: f64) -> Result<()> {
    check::at_least("r", r, 0.0)?;
    check::at_least("weight_lr_power", weight_lr_power, 0.0)
}

/// y = βx + (1 − β)z, element by element, as the step computes it.
fn interpolate<T: Real>(p: &mut [T], z: &[T], x: &[T], beta: f64) {
    let (b, c) = (T::from_f64(beta), T::from_f64(1.0 - beta));
    for ((p, &z), &x) in p.iter_mut().zip(z).zip(x) {
        *p = x * b + z * c;
    }
}

config! {
    /// `sf-sgd`: Schedule-Free SGD (`schedulefree.SGDScheduleFreeReference`).
    ///
    /// With ηₜ warmed up linearly over `warmup_steps` and L2 decay λ at y:
    /// z ← z − ηₜ(g + λy), x ← (1 − cₜ)x + cₜz,
    /// y ← βx + (1 − β)z (the parameters).
    SfSgd("sf-sgd") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1.0,
        /// Interpolation β ∈ (0, 1) between the average x and the iterate z.
        momentum: f64 = 0.9,
        /// L2 weight decay λ ≥ 0, taken at y.
        weight_decay: f64 = 0.0,
        /// Steps of linear learning-rate warm-up.
        warmup_steps: u64 = 0,
        /// Power r ≥ 0 of the polynomial weights tʳ of the average.
        r: f64 = 0.0,
        /// Power p ≥ 0 of ηₘₐₓ in the average's weights.
        weight_lr_power: f64 = 2.0,
    }
}

impl UpdateRule for SfSgd {
    /// The averaging weight c = η^power/Σηₛ^power depends on η.
    fn linear_in_lr(&self) -> bool {
        false
    }

    /// z and x start at the parameters.
    fn starts_at_params(&self, _slot: usize) -> bool {
        true
    }

    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        Some(self)
    }

    fn averaging<T: Real>(&self) -> Option<&dyn AveragingRule<T>> {
        Some(self)
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        if !(self.momentum > 0.0 && self.momentum < 1.0) {
            return Err(crate::Error::invalid(
                "momentum",
                self.momentum,
                "must lie in (0, 1), exclusive",
            ));
        }
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check_common(self.r, self.weight_lr_power)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["z", "x"]
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
        let [z, x] = slots else {
            unreachable!("sf-sgd has two slots")
        };
        let c = |v: f64| T::from_f64(v);
        let lr = c(warmed_lr(ctx, self.warmup_steps as f64));
        let ckp1 = scalars[2];
        let (keep, take) = (c(1.0 - ckp1), c(ckp1));
        let (b, cb) = (c(self.momentum), c(1.0 - self.momentum));
        let (gs, wd) = (c(ctx.grad_scale), c(self.weight_decay));
        blocks(ctx.prefetch, p, g, [z, x], |p, g, [z, x]| {
            for (((p, &g), z), x) in p.iter_mut().zip(g).zip(z.iter_mut()).zip(x.iter_mut()) {
                let g = g * gs + wd * *p;
                *z = *z - lr * g;
                *x = *x * keep + *z * take;
                *p = *x * b + *z * cb;
            }
        });
    }
}

impl<T: Real> TensorScalars<T> for SfSgd {
    fn names(&self) -> &'static [&'static str] {
        SCALARS
    }

    fn begin(&self, ctx: &StepContext, _p: &[T], scalars: &mut [f64]) {
        averaging(
            ctx,
            self.warmup_steps as f64,
            self.r,
            self.weight_lr_power,
            scalars,
        );
    }
}

impl<T: Real> AveragingRule<T> for SfSgd {
    fn eval_slot(&self) -> usize {
        1
    }

    fn train_point(&self, p: &mut [T], slots: &[&[T]]) {
        interpolate(p, slots[0], slots[1], self.momentum);
    }
}

config! {
    /// `sf-adamw`: Schedule-Free AdamW (`schedulefree.AdamWScheduleFreeReference`).
    ///
    /// With ηₜ warmed up over `warmup_steps`: z ← z − ηₜλy,
    /// v ← β₂v + (1 − β₂)g²,
    /// z ← z − ηₜ g/(√(v/(1 − β₂ᵗ)) + ε),
    /// x ← (1 − cₜ)x + cₜz, y ← β₁x + (1 − β₁)z.
    SfAdamW("sf-adamw") {
        /// Learning rate η ≥ 0.
        lr: f64 = 0.0025,
        /// Interpolation β₁ ∈ \[0, 1) between the average x and the iterate z.
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// ε > 0 added to the denominator.
        eps: f64 = 1e-8,
        /// Decoupled weight decay λ ≥ 0, taken at y.
        weight_decay: f64 = 0.0,
        /// Steps of linear learning-rate warm-up.
        warmup_steps: u64 = 0,
        /// Power r ≥ 0 of the polynomial weights tʳ of the average.
        r: f64 = 0.0,
        /// Power p ≥ 0 of ηₘₐₓ in the average's weights.
        weight_lr_power: f64 = 2.0,
    }
}

impl UpdateRule for SfAdamW {
    /// The averaging weight c = η^power/Σηₛ^power depends on η.
    fn linear_in_lr(&self) -> bool {
        false
    }

    /// z and x start at the parameters (v at 0).
    fn starts_at_params(&self, slot: usize) -> bool {
        slot < 2
    }

    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        Some(self)
    }

    fn averaging<T: Real>(&self) -> Option<&dyn AveragingRule<T>> {
        Some(self)
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check_common(self.r, self.weight_lr_power)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["z", "x", "exp_avg_sq"]
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
        let [z, x, v] = slots else {
            unreachable!("sf-adamw has three slots")
        };
        let c = |v: f64| T::from_f64(v);
        let lr_f = warmed_lr(ctx, self.warmup_steps as f64);
        let (neg_lr, decay) = (c(-lr_f), c(lr_f * self.weight_decay));
        let ckp1 = scalars[2];
        let (keep, take) = (c(1.0 - ckp1), c(ckp1));
        let (b1, cb1) = (c(self.beta1), c(1.0 - self.beta1));
        let (b2, c2) = (c(self.beta2), c(1.0 - self.beta2));
        let (bc2, eps, gs) = (c(1.0 - ctx.beta_pow[1]), c(self.eps), c(ctx.grad_scale));
        blocks(ctx.prefetch, p, g, [z, x, v], |p, g, [z, x, v]| {
            for ((((p, &g), z), x), v) in p
                .iter_mut()
                .zip(g)
                .zip(z.iter_mut())
                .zip(x.iter_mut())
                .zip(v.iter_mut())
            {
                let g = g * gs;
                *z = *z - decay * *p;
                *v = *v * b2 + c2 * g * g;
                let d = (*v / bc2).sqrt() + eps;
                *z = *z + neg_lr * (g / d);
                *x = *x * keep + *z * take;
                *p = *x * b1 + *z * cb1;
            }
        });
    }
}

impl<T: Real> TensorScalars<T> for SfAdamW {
    fn names(&self) -> &'static [&'static str] {
        SCALARS
    }

    fn begin(&self, ctx: &StepContext, _p: &[T], scalars: &mut [f64]) {
        averaging(
            ctx,
            self.warmup_steps as f64,
            self.r,
            self.weight_lr_power,
            scalars,
        );
    }
}

impl<T: Real> AveragingRule<T> for SfAdamW {
    fn eval_slot(&self) -> usize {
        1
    }

    fn train_point(&self, p: &mut [T], slots: &[&[T]]) {
        interpolate(p, slots[0], slots[1], self.beta1);
    }
}
