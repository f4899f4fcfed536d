//! RMSprop (PyTorch semantics), plain or centered, with momentum.

use super::StepContext;
use super::kernel::{State, bf16_elements, blocks};
use super::rule::{UpdateRule, fused_steps};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `rmsprop`: PyTorch's `torch.optim.RMSprop`.
    ///
    /// g ← g + λΦ; v ← αv + (1 − α)g²; centered:
    /// ḡ ← αḡ + (1 − α)g and a = √(v − ḡ²) + ε,
    /// else a = √v + ε. Without momentum Φ ← Φ − ηg/a; with
    /// momentum μ: b ← μb + g/a, Φ ← Φ − ηb.
    Rmsprop("rmsprop") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-2,
        /// Decay α ∈ \[0, 1) of the squared-gradient average.
        alpha: f64 = 0.99,
        /// ε > 0 added to the root.
        eps: f64 = 1e-8,
        /// L2 weight decay λ ≥ 0.
        weight_decay: f64 = 0.0,
        /// Momentum μ ∈ \[0, 1).
        momentum: f64 = 0.0,
        /// Divide by the centered (variance) estimate instead of the second moment.
        centered: bool = false,
    }
}

impl UpdateRule for Rmsprop {
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
        check::unit_open("alpha", self.alpha)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::unit_open("momentum", self.momentum)
    }

    fn slots(&self) -> &'static [&'static str] {
        match (self.momentum > 0.0, self.centered) {
            (false, false) => &["square_avg"],
            (true, false) => &["square_avg", "momentum_buffer"],
            (false, true) => &["square_avg", "grad_avg"],
            (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
        }
    }

    fused_steps!();
}

impl Rmsprop {
    /// One chunk's update, with its buffers (v, then the momentum b and the mean
    /// ḡ when on) in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let lr = T::from_f64(ctx.lr);
        let mu = T::from_f64(self.momentum);
        let k = Coefficients {
            gs: T::from_f64(ctx.grad_scale),
            wd: T::from_f64(self.weight_decay),
            alpha: T::from_f64(self.alpha),
            rate: T::from_f64(1.0 - self.alpha),
            eps: T::from_f64(self.eps),
        };
        let momentum = self.momentum > 0.0;
        match (momentum, state) {
            (false, State::Plain([v])) => blocks(ctx.prefetch, p, g, [v], |p, g, [v]| {
                for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                    *p = *p - lr * k.direction(*p, g, v, None);
                }
            }),
            (true, State::Plain([v, b])) => blocks(ctx.prefetch, p, g, [v, b], |p, g, [v, b]| {
                for (((p, &g), v), b) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(b.iter_mut()) {
                    *b = mu * *b + k.direction(*p, g, v, None);
                    *p = *p - lr * *b;
                }
            }),
            (false, State::Plain([v, c])) => blocks(ctx.prefetch, p, g, [v, c], |p, g, [v, c]| {
                for (((p, &g), v), c) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(c.iter_mut()) {
                    *p = *p - lr * k.direction(*p, g, v, Some(c));
                }
            }),
            (true, State::Plain([v, b, c])) => {
                blocks(ctx.prefetch, p, g, [v, b, c], |p, g, [v, b, c]| {
                    for ((((p, &g), v), b), c) in p
                        .iter_mut()
                        .zip(g)
                        .zip(v.iter_mut())
                        .zip(b.iter_mut())
                        .zip(c.iter_mut())
                    {
                        *b = mu * *b + k.direction(*p, g, v, Some(c));
                        *p = *p - lr * *b;
                    }
                })
            }
            (_, State::Plain(_)) => unreachable!("rmsprop slot layout"),
            // The same element rules on bfloat16 buffers (the layout from the configuration:
            // `Lowp` holds as many buffers as `slots()` names).
            (false, State::Bf16(lowp)) if !self.centered => {
                bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [v]| {
                    *p = *p - lr * k.direction(*p, g, v, None);
                })
            }
            (true, State::Bf16(lowp)) if !self.centered => {
                bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [v, b]| {
                    *b = mu * *b + k.direction(*p, g, v, None);
                    *p = *p - lr * *b;
                })
            }
            (false, State::Bf16(lowp)) => {
                bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [v, c]| {
                    *p = *p - lr * k.direction(*p, g, v, Some(c));
                })
            }
            (true, State::Bf16(lowp)) => {
                bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [v, b, c]| {
                    *b = mu * *b + k.direction(*p, g, v, Some(c));
                    *p = *p - lr * *b;
                })
            }
        }
    }
}

/// RMSprop's per-step scalars, converted to the element type once.
struct Coefficients<T> {
    gs: T,
    wd: T,
    alpha: T,
    rate: T,
    eps: T,
}

impl<T: Real> Coefficients<T> {
    /// The direction g/a for one element, after updating its averages:
    /// v ← αv + (1 − α)g² and a = √v + ε, or, centred,
    /// ḡ ← αḡ + (1 − α)g and a = √(v − ḡ²) + ε.
    #[inline(always)]
    fn direction(&self, p: T, g: T, v: &mut T, gbar: Option<&mut T>) -> T {
        let g = g * self.gs + self.wd * p;
        *v = self.alpha * *v + self.rate * g * g;
        let a = match gbar {
            Some(gbar) => {
                *gbar = self.alpha * *gbar + self.rate * g;
                (*v - *gbar * *gbar).sqrt() + self.eps
            }
            None => v.sqrt() + self.eps,
        };
        g / a
    }
}

#[cfg(test)]
mod tests {
    use crate::{Optimizer, StepInfo, Tensor};

    /// Centered RMSprop without momentum (the one element loop no reference trajectory
    /// records) by hand: α = 1/2, gradients 2 then −1 give v = 2, 3/2 and
    /// ḡ = 1, 0, so steps η g/(√(v − ḡ²) + ε) of 0.1·2/1
    /// and 0.1·(−1)/√(3/2); and the same with L2 decay 0.5 at Φ = 1 (the
    /// gradient becomes g + Φ/2).
    #[test]
    fn centered_without_momentum_by_hand() {
        let eps = 1e-8;
        for (spec, wd) in [
            ("rmsprop:lr=0.1,alpha=0.5,centered=true", 0.0),
            (
                "rmsprop:lr=0.1,alpha=0.5,centered=true,weight_decay=0.5",
                0.5,
            ),
        ] {
            let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
            let mut p = vec![Tensor::vector("w", vec![1.0])];
            let (mut v, mut gbar) = (0.0f64, 0.0f64);
            for g in [2.0, -1.0] {
                let phi = p[0].data()[0];
                let grad = [Tensor::vector("w", vec![g])];
                opt.step(&mut p, &grad, &StepInfo::default()).unwrap();
                let g = g + wd * phi;
                v = 0.5 * v + 0.5 * g * g;
                gbar = 0.5 * gbar + 0.5 * g;
                let want = phi - 0.1 * g / ((v - gbar * gbar).sqrt() + eps);
                assert!((p[0].data()[0] - want).abs() < 1e-14, "{spec}");
            }
            if wd == 0.0 {
                let moved = 1.0 - p[0].data()[0];
                let by_hand = 0.1 * 2.0 / (1.0 + eps) - 0.1 / (1.5f64.sqrt() + eps);
                assert!((moved - by_hand).abs() < 1e-14, "{moved}");
            }
            assert_eq!(opt.state("grad_avg", 0).unwrap()[0], gbar);
        }
    }
}
