//! Madam: the multiplicative Adam of Bernstein, Zhao, Meister, Liu, Anandkumar and Yue,
//! "Learning compositional functions via multiplicative weight updates" (NeurIPS 2020).

use super::StepContext;
use super::spec::{check, config};
use crate::{Real, Result};

/// The decay of Madam's second-moment EMA (fixed in the reference implementation).
pub const MADAM_BETA: f64 = 0.999;

config! {
    /// `madam`: the reference update. With $v \leftarrow 0.999 v + 0.001 g^2$ and
    /// $\hat g = \operatorname{clamp}(g/\sqrt{v/(1-0.999^t)}, \pm g_{bound})$ ($0/0 \to 0$):
    /// $\Phi \leftarrow \Phi \cdot \exp(-\eta\, \hat g\, \operatorname{sign}\Phi)$, then
    /// $\Phi \leftarrow \operatorname{clamp}(\Phi, \pm p_{scale}\cdot\mathrm{RMS}(\Phi_0))$ per
    /// tensor, where $\Phi_0$ is the tensor at its first step.
    Madam("madam") {
        /// Learning rate $\eta \ge 0$ (a relative step size).
        lr: f64 = 1e-2,
        /// Bound on $|\Phi|$ as a multiple $p_{scale} > 0$ of the initial RMS.
        p_scale: f64 = 3.0,
        /// Bound $g_{bound} > 0$ on the normalised gradient.
        g_bound: f64 = 10.0,
    }
}

impl Madam {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::positive("p_scale", self.p_scale)?;
        check::positive("g_bound", self.g_bound)
    }

    pub(crate) fn slots(&self) -> &'static [&'static str] {
        &["exp_avg_sq"]
    }

    /// Fixes the per-tensor clamp bound `max` = p_scale·RMS(Φ) at the first step (a reduction
    /// over the whole tensor, so it runs before the tensor is split into chunks).
    pub(crate) fn begin_tensor<T: Real>(&self, ctx: &StepContext, p: &[T], scalars: &mut [f64]) {
        if ctx.t == 1 {
            let mean_sq =
                p.iter().map(|x| x.as_f64() * x.as_f64()).sum::<f64>() / p.len().max(1) as f64;
            scalars[0] = self.p_scale * mean_sq.sqrt();
        }
    }

    /// Per-tensor scalars: `max`, the clamp bound fixed at the first step.
    pub(crate) fn tensor_scalars(&self) -> &'static [&'static str] {
        &["max"]
    }

    #[inline(always)]
    pub(crate) fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        scalars: &[f64],
    ) {
        let [v] = slots else {
            unreachable!("madam has one slot")
        };
        let [max] = scalars else {
            unreachable!("madam has one tensor scalar")
        };
        let bound = T::from_f64(*max);
        let bc = T::from_f64(1.0 - MADAM_BETA.powf(ctx.t as f64));
        let (b, c) = (T::from_f64(MADAM_BETA), T::from_f64(1.0 - MADAM_BETA));
        let lr = T::from_f64(ctx.lr);
        let gs = T::from_f64(ctx.grad_scale);
        let g_bound = T::from_f64(self.g_bound);
        for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
            let g = g * gs;
            *v = b * *v + c * g * g;
            let mut normed = g / (*v / bc).sqrt();
            if normed.is_nan() {
                normed = T::zero();
            }
            let normed = normed.max(-g_bound).min(g_bound);
            let sign = if *p > T::zero() {
                T::one()
            } else if *p < T::zero() {
                -T::one()
            } else {
                T::zero()
            };
            *p = (*p * (-lr * normed * sign).exp()).max(-bound).min(bound);
        }
    }
}
