//! Adan (Xie et al. 2022): Nesterov momentum through gradient differences, with
//! pytorch-optimizer's semantics (`pytorch_optimizer.Adan`). Four state buffers and three
//! decay rates.

use super::StepContext;
use super::kernel::{State, bf16_elements, blocks};
use super::rule::{Decays, UpdateRule, fused_steps};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `adan`: with $\delta_t = g_t - g_{t-1}$ ($\delta_1 = 0$),
    /// $m \leftarrow m + (1-\beta_1)(g - m)$, $n \leftarrow n + (1-\beta_2)(\delta - n)$,
    /// $u = g + \beta_2\delta$, $v \leftarrow \beta_3 v + (1-\beta_3)u^2$,
    /// $\Phi \leftarrow \big(\Phi - \frac{\eta}{1-\beta_1^t}\frac{m}{d} -
    /// \frac{\eta\beta_2}{1-\beta_2^t}\frac{n}{d}\big) / (1 + \eta\lambda)$ with
    /// $d = \sqrt{v/(1-\beta_3^t)} + \epsilon$ (the weight decay $\lambda$ as a proximal
    /// step, the reference's default). The state holds $m$, $v$, $n$ and $-g_{t-1}$.
    Adan("adan") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-3,
        /// Gradient-average decay $\beta_1 \in [0, 1)$.
        beta1: f64 = 0.98,
        /// Gradient-difference decay $\beta_2 \in [0, 1)$ (also the Nesterov weight).
        beta2: f64 = 0.92,
        /// Second-moment decay $\beta_3 \in [0, 1)$.
        beta3: f64 = 0.99,
        /// $\epsilon > 0$ added to the denominator.
        eps: f64 = 1e-8,
        /// Weight decay $\lambda \ge 0$: the step divided by $1 + \eta\lambda$.
        weight_decay: f64 = 0.0,
    }
}

impl UpdateRule for Adan {
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::unit_open("beta3", self.beta3)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"]
    }

    fn decays(&self) -> Decays {
        smallvec::smallvec![self.beta1, self.beta2, self.beta3]
    }

    fused_steps!();
}

impl Adan {
    /// One chunk's update ([`fused_steps`]), with the four buffers in either storage.
    #[inline(always)]
    fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state: State<'_, '_, T>) {
        let first = ctx.t == 1;
        let gs = T::from_f64(ctx.grad_scale);
        let (w1, w2) = (T::from_f64(1.0 - self.beta1), T::from_f64(1.0 - self.beta2));
        let (b2, b3, c3) = (
            T::from_f64(self.beta2),
            T::from_f64(self.beta3),
            T::from_f64(1.0 - self.beta3),
        );
        let [bc1, bc2, bc3] = [0, 1, 2].map(|k| 1.0 - ctx.beta_pow[k]);
        let (step1, step2) = (
            T::from_f64(ctx.lr / bc1),
            T::from_f64(ctx.lr * self.beta2 / bc2),
        );
        let bc3_sqrt = T::from_f64(bc3.sqrt());
        let eps = T::from_f64(self.eps);
        let decay = T::from_f64(1.0 + ctx.lr * self.weight_decay);
        macro_rules! rule {
            () => {
                |p: &mut T, g: T, m: &mut T, v: &mut T, n: &mut T, d: &mut T| {
                    let g = g * gs;
                    // d holds -g_{t-1}: the difference g_t - g_{t-1} (0 at the first step,
                    // where the reference starts d at -g_1).
                    let diff = if first { T::zero() } else { *d + g };
                    *m = *m + w1 * (g - *m);
                    *n = *n + w2 * (diff - *n);
                    let u = diff * b2 + g;
                    *v = *v * b3 + c3 * u * u;
                    let den = v.sqrt() / bc3_sqrt + eps;
                    *p = *p - step1 * (*m / den);
                    *p = *p - step2 * (*n / den);
                    *p = *p / decay;
                    *d = -g;
                }
            };
        }
        match state {
            State::Bf16(lowp) => bf16_elements(ctx.prefetch, p, g, lowp, |p, g, [m, v, n, d]| {
                rule!()(p, g, m, v, n, d)
            }),
            State::Plain([m, v, n, d]) => {
                blocks(ctx.prefetch, p, g, [m, v, n, d], |p, g, [m, v, n, d]| {
                    for (((((p, &g), m), v), n), d) in p
                        .iter_mut()
                        .zip(g)
                        .zip(m.iter_mut())
                        .zip(v.iter_mut())
                        .zip(n.iter_mut())
                        .zip(d.iter_mut())
                    {
                        rule!()(p, g, m, v, n, d);
                    }
                })
            }
            State::Plain(_) => unreachable!("adan has four slots"),
        }
    }
}
