//! AdEMAMix (Pagliardini et al. 2024): Adam with a second, slow EMA of the gradient mixed in.

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `ademamix`: AdEMAMix as optax's `contrib.ademamix` (without its optional `alpha` and
    /// `beta3` schedulers).
    ///
    /// $m_1 \leftarrow \beta_1 m_1 + (1-\beta_1)g$ (fast, bias-corrected),
    /// $m_2 \leftarrow \beta_3 m_2 + (1-\beta_3)g$ (slow, horizon $N_3 = 1/(1-\beta_3)$, **not**
    /// bias-corrected), $\nu \leftarrow \beta_2\nu + (1-\beta_2)g^2$,
    /// $\Phi \leftarrow \Phi - \eta\left(\frac{m_1/(1-\beta_1^t) + \alpha m_2}
    /// {\sqrt{\nu/(1-\beta_2^t)} + \epsilon} + \lambda\Phi\right)$.
    Ademamix("ademamix") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-3,
        /// Fast EMA decay $\beta_1 \in [0, 1)$.
        beta1: f64 = 0.9,
        /// Second-moment decay $\beta_2 \in [0, 1)$.
        beta2: f64 = 0.999,
        /// Slow EMA decay $\beta_3 \in [0, 1)$.
        beta3: f64 = 0.9999,
        /// Weight $\alpha \ge 0$ of the slow EMA.
        alpha: f64 = 5.0,
        /// $\epsilon > 0$ added to the denominator.
        eps: f64 = 1e-8,
        /// Decoupled weight decay $\lambda \ge 0$ (optax's `add_decayed_weights`).
        weight_decay: f64 = 0.0,
    }
}

impl UpdateRule for Ademamix {
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::unit_open("beta3", self.beta3)?;
        check::at_least("alpha", self.alpha, 0.0)?;
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg_fast", "exp_avg_slow", "exp_avg_sq"]
    }

    fn decays(&self) -> [f64; 2] {
        [self.beta1, self.beta2]
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
        let [m1, m2, nu] = slots else {
            unreachable!("ademamix has three slots")
        };
        let c = |x: f64| T::from_f64(x);
        let (b1, c1, b2, c2, b3, c3) = (
            c(self.beta1),
            c(1.0 - self.beta1),
            c(self.beta2),
            c(1.0 - self.beta2),
            c(self.beta3),
            c(1.0 - self.beta3),
        );
        let (bc1, bc2) = (c(1.0 - ctx.beta_pow[0]), c(1.0 - ctx.beta_pow[1]));
        let (alpha, eps, wd, lr) = (c(self.alpha), c(self.eps), c(self.weight_decay), c(ctx.lr));
        let gs = c(ctx.grad_scale);
        blocks(ctx.prefetch, p, g, [m1, m2, nu], |p, g, [m1, m2, nu]| {
            for ((((p, &g), m1), m2), nu) in p
                .iter_mut()
                .zip(g)
                .zip(m1.iter_mut())
                .zip(m2.iter_mut())
                .zip(nu.iter_mut())
            {
                let g = g * gs;
                *m1 = c1 * g + b1 * *m1;
                *m2 = c3 * g + b3 * *m2;
                *nu = c2 * (g * g) + b2 * *nu;
                let update = (*m1 / bc1 + alpha * *m2) / ((*nu / bc2).sqrt() + eps);
                *p = *p - lr * (update + wd * *p);
            }
        });
    }
}
