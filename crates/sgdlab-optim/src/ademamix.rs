//! AdEMAMix (Pagliardini et al. 2024): Adam with a second, slow EMA of the gradient mixed in.

use super::StepContext;
use super::kernel::blocks;
use super::rule::UpdateRule;
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `ademamix`: AdEMAMix as optax's `contrib.ademamix`, with the paper's optional warm-up
    /// of α and β₃ over `t_alpha_beta3` steps.
    ///
    /// m₁ ← β₁m₁ + (1 − β₁)g (fast, bias-corrected),
    /// m₂ ← β₃m₂ + (1 − β₃)g (slow, horizon N₃ = 1/(1 − β₃), **not**
    /// bias-corrected), ν ← β₂ν + (1 − β₂)g²,
    /// Φ ← Φ − η((m₁/(1 − β₁ᵗ) + αm₂)/(√(ν/(1 − β₂ᵗ)) + ε) + λΦ).
    ///
    /// With `t_alpha_beta3` = T > 0, for t < T (the paper's schedulers, a = t/T):
    /// αₜ = aα, and β₃‚ₜ = f⁻¹((1 − a)f(β₁) + af(β₃)) with
    /// f(β) = ln ½/ln(β + 10⁻⁸) − 1 (the half-life, in steps, grows
    /// linearly) and f⁻¹(h) = 0.5^(1/(h + 1)).
    Ademamix("ademamix") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// Fast EMA decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// Slow EMA decay β₃ ∈ \[0, 1).
        beta3: f64 = 0.9999,
        /// Weight α ≥ 0 of the slow EMA.
        alpha: f64 = 5.0,
        /// ε > 0 added to the denominator.
        eps: f64 = 1e-8,
        /// Decoupled weight decay λ ≥ 0 (optax's `add_decayed_weights`).
        weight_decay: f64 = 0.0,
        /// Warm-up steps T of α and β₃ (0: none).
        t_alpha_beta3: u64 = 0,
    }
}

impl Ademamix {
    /// (αₜ, β₃‚ₜ) at step t (the paper's `linear_warmup_scheduler` and
    /// `linear_hl_warmup_scheduler`).
    pub fn scheduled(&self, t: u64) -> (f64, f64) {
        if t >= self.t_alpha_beta3 {
            return (self.alpha, self.beta3);
        }
        let a = t as f64 / self.t_alpha_beta3 as f64;
        let f = |beta: f64| 0.5f64.ln() / (beta + 1e-8).ln() - 1.0;
        let f_inv = |h: f64| 0.5f64.powf(1.0 / (h + 1.0));
        (
            a * self.alpha,
            f_inv((1.0 - a) * f(self.beta1) + a * f(self.beta3)),
        )
    }
}

impl UpdateRule for Ademamix {
    fn decay_form(&self, ctx: &crate::StepContext) -> crate::rule::DecayForm {
        crate::rule::DecayForm::decoupled(ctx.lr, self.weight_decay)
    }

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
        let [m1, m2, nu] = slots else {
            unreachable!("ademamix has three slots")
        };
        let c = |x: f64| T::from_f64(x);
        let (alpha, beta3) = self.scheduled(ctx.t);
        let (b1, c1, b2, c2, b3, c3) = (
            c(self.beta1),
            c(1.0 - self.beta1),
            c(self.beta2),
            c(1.0 - self.beta2),
            c(beta3),
            c(1.0 - beta3),
        );
        let (bc1, bc2) = (c(1.0 - ctx.beta_pow[0]), c(1.0 - ctx.beta_pow[1]));
        let (alpha, eps, wd, lr) = (c(alpha), c(self.eps), c(self.weight_decay), c(ctx.lr));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedulers_follow_the_paper() {
        let plain = Ademamix::default();
        assert_eq!(plain.scheduled(1), (5.0, 0.9999));
        let s = Ademamix {
            t_alpha_beta3: 100,
            ..Ademamix::default()
        };
        // α grows linearly from 0; β₃ starts at β₁ and its half-life grows linearly.
        let (a0, b0) = s.scheduled(0);
        assert_eq!(a0, 0.0);
        assert!((b0 - 0.9).abs() < 2e-8, "{b0}"); // f^{-1}(f(β)) = β + 1e-8
        let paper_f = |b: f64| 0.5f64.ln() / (b + 1e-8).ln() - 1.0;
        let half_life = |b: f64| 0.5f64.ln() / b.ln() - 1.0;
        let (a, b) = s.scheduled(25);
        assert!((a - 1.25).abs() < 1e-15);
        let want = 0.75 * paper_f(0.9) + 0.25 * paper_f(0.9999);
        assert!((half_life(b) - want).abs() < 1e-9 * want, "{b}");
        assert_eq!(s.scheduled(100), (5.0, 0.9999));
    }
}
