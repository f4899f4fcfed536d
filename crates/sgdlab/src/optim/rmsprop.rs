//! RMSprop (PyTorch semantics), plain or centered, with momentum.

use super::StepContext;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `rmsprop`: PyTorch's `torch.optim.RMSprop`.
    ///
    /// $g \leftarrow g + \lambda\Phi$; $v \leftarrow \alpha v + (1-\alpha) g^2$; centered:
    /// $\bar g \leftarrow \alpha \bar g + (1-\alpha) g$ and $a = \sqrt{v - \bar g^2} + \epsilon$,
    /// else $a = \sqrt v + \epsilon$. Without momentum $\Phi \leftarrow \Phi - \eta g/a$; with
    /// momentum $\mu$: $b \leftarrow \mu b + g/a$, $\Phi \leftarrow \Phi - \eta b$.
    Rmsprop("rmsprop") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-2,
        /// Decay $\alpha \in [0, 1)$ of the squared-gradient average.
        alpha: f64 = 0.99,
        /// $\epsilon > 0$ added to the root.
        eps: f64 = 1e-8,
        /// L2 weight decay $\lambda \ge 0$.
        weight_decay: f64 = 0.0,
        /// Momentum $\mu \in [0, 1)$.
        momentum: f64 = 0.0,
        /// Divide by the centered (variance) estimate instead of the second moment.
        centered: bool = false,
    }
}

impl Rmsprop {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("alpha", self.alpha)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::unit_open("momentum", self.momentum)
    }

    pub(crate) fn slots(&self) -> &'static [&'static str] {
        match (self.momentum > 0.0, self.centered) {
            (false, false) => &["square_avg"],
            (true, false) => &["square_avg", "momentum_buffer"],
            (false, true) => &["square_avg", "grad_avg"],
            (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
        }
    }

    #[inline(always)]
    pub(crate) fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
    ) {
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let wd = T::from_f64(self.weight_decay);
        let alpha = T::from_f64(self.alpha);
        let rate = T::from_f64(1.0 - self.alpha);
        let eps = T::from_f64(self.eps);
        let mu = T::from_f64(self.momentum);
        // Per element: returns the direction g/a after updating the averages.
        let direction = |p: T, g: T, v: &mut T, gbar: Option<&mut T>| {
            let g = g * gs + wd * p;
            *v = alpha * *v + rate * g * g;
            let a = match gbar {
                Some(gbar) => {
                    *gbar = alpha * *gbar + rate * g;
                    (*v - *gbar * *gbar).sqrt() + eps
                }
                None => v.sqrt() + eps,
            };
            g / a
        };
        match (self.momentum > 0.0, slots) {
            (false, [v]) => {
                for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                    *p = *p - lr * direction(*p, g, v, None);
                }
            }
            (true, [v, b]) => {
                for (((p, &g), v), b) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(b.iter_mut()) {
                    *b = mu * *b + direction(*p, g, v, None);
                    *p = *p - lr * *b;
                }
            }
            (false, [v, c]) => {
                for (((p, &g), v), c) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(c.iter_mut()) {
                    *p = *p - lr * direction(*p, g, v, Some(c));
                }
            }
            (true, [v, b, c]) => {
                for ((((p, &g), v), b), c) in p
                    .iter_mut()
                    .zip(g)
                    .zip(v.iter_mut())
                    .zip(b.iter_mut())
                    .zip(c.iter_mut())
                {
                    *b = mu * *b + direction(*p, g, v, Some(c));
                    *p = *p - lr * *b;
                }
            }
            _ => unreachable!("rmsprop slot layout"),
        }
    }
}
