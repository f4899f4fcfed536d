//! Prodigy (Mishchenko & Defazio 2024): Adam whose step size is an estimate d of the
//! distance to the solution, with the authors' package's semantics (`prodigyopt.Prodigy`
//! 1.1.2). The estimate is a sum over every parameter of the step: the global capability
//! ([`GlobalRule`]) gathers it in a read-only pass before the fused update.

use super::StepContext;
use super::kernel::{BlockBody, SimdLevel, blocks_with, multiversion};
use super::rule::{Decays, GlobalRule, TensorScalars, UpdateRule};
use super::spec::{check, config};
use crate::{Real, Result};

config! {
    /// `prodigy`: with d the current estimate, d₀ its start, η the learning rate,
    /// b = √(1 − β₂ᵏ⁺¹)/(1 − β₁ᵏ⁺¹) (1 without bias correction) and
    /// η̂ = dηb, each step first updates, for every tensor,
    /// m ← β₁m + d(1 − β₁)g, v ← β₂v + d²(1 − β₂)g²,
    /// s ← β₃s + (d/d₀)η̂ g (d/d₀·d g with `safeguard_warmup`),
    /// and the sums r ← β₃r + (d/d₀)η̂ Σ g·(x₀ − x), D = Σ|s| over every tensor;
    /// then d̂ = c r/D, d_max ← max(d_max, d̂) (and d ← max(d, d̂) while d = d₀),
    /// d ← min(d_max, γd), and the step is
    /// Φ ← Φ − η̂λΦ − η̂ m/(√v + dε)
    /// (β₁ = 0: η̂d′g instead of η̂m, d′ the new estimate). Weight decay λ is decoupled (as written) or, with
    /// `decouple=false`, added to g. β₃ defaults to √β₂. A step with D = 0 (no gradient
    /// yet) only updates the averages. The scalars d, d_max, r and the step count k are
    /// optimizer-wide; parameter groups may differ in η (each the largest η or 0, as in
    /// the reference), λ, ε and `safeguard_warmup`, and share the other keys.
    Prodigy("prodigy") {
        /// Learning-rate multiplier η ≥ 0 of the estimated step (leave it at 1; 0 freezes a group).
        lr: f64 = 1.0,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.9,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.999,
        /// Decay β₃ ∈ \[0, 1) of s and r, or `none` for √β₂.
        beta3: Option<f64> = None,
        /// ε > 0, times d, added to √v.
        eps: f64 = 1e-8,
        /// Weight decay λ ≥ 0.
        weight_decay: f64 = 0.0,
        /// Decoupled weight decay (AdamW's); `false`: L2, added to g.
        decouple: bool = true,
        /// Adam's bias correction in η̂.
        use_bias_correction: bool = false,
        /// s accumulates d g instead of η̂ g (no learning rate: steadier under warm-up).
        safeguard_warmup: bool = false,
        /// The initial estimate d₀ > 0.
        d0: f64 = 1e-6,
        /// The coefficient c > 0 of the estimate d̂.
        d_coef: f64 = 1.0,
        /// The largest factor γ > 0 by which d grows per step (`inf`: unbounded).
        growth_rate: f64 = f64::INFINITY,
    }
}

/// The kept scalars, in every tensor (the same values): d, d_max, r, k.
const SCALARS: &[&str] = &["d", "d_max", "d_numerator", "k"];

/// The step's values the chunks read ([`StepContext::global`]) are d (before the step), η̂,
/// d after the step, and 1 if the step moves the parameters (else 0); by index:
const DLR: usize = 1;
const ADVANCE: usize = 3;

impl Prodigy {
    /// β₃: the given value, or √β₂.
    fn beta3(&self) -> f64 {
        self.beta3.unwrap_or_else(|| self.beta2.sqrt())
    }

    /// d, d_max, r and k from a tensor's scalars (all zero before the first step: d = d₀).
    fn kept(&self, scalars: &[f64]) -> (f64, f64, f64, f64) {
        match scalars {
            [d, d_max, r, k] if *d > 0.0 => (*d, *d_max, *r, *k),
            _ => (self.d0, self.d0, 0.0, 0.0),
        }
    }

    /// η̂ = dηb at step count k.
    fn dlr(&self, d: f64, lr: f64, k: f64) -> f64 {
        let b = if self.use_bias_correction {
            (1.0 - self.beta2.powf(k + 1.0)).sqrt() / (1.0 - self.beta1.powf(k + 1.0))
        } else {
            1.0
        };
        d * lr * b
    }

    /// The gradient's coefficient in s: (d/d₀)η̂, or (d/d₀)d with `safeguard_warmup`.
    fn s_coef(&self, d: f64, dlr: f64) -> f64 {
        (d / self.d0) * if self.safeguard_warmup { d } else { dlr }
    }
}

impl UpdateRule for Prodigy {
    /// A step's η enters the estimate d (through d·η in its numerator) that scales the step.
    fn linear_in_lr(&self) -> bool {
        false
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        if let Some(b) = self.beta3 {
            check::unit_open("beta3", b)?;
        }
        check::positive("eps", self.eps)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::positive("d0", self.d0)?;
        check::positive("d_coef", self.d_coef)?;
        if self.growth_rate.is_nan() || self.growth_rate <= 0.0 {
            return Err(crate::Error::invalid(
                "growth_rate",
                self.growth_rate,
                "must be a number > 0 (inf: unbounded)",
            ));
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    /// m, v, s and the initial point x₀.
    fn slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq", "s", "p0"]
    }

    fn starts_at_params(&self, slot: usize) -> bool {
        slot == 3
    }

    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        Some(self)
    }

    fn global<T: Real>(&self) -> Option<&dyn GlobalRule<T>> {
        Some(self)
    }

    fn decay_form(&self, ctx: &StepContext) -> crate::rule::DecayForm {
        let advance = ctx.global.get(ADVANCE).is_some_and(|&a| a > 0.0);
        match (self.decouple, advance) {
            (false, _) => crate::rule::DecayForm::coupled(self.weight_decay),
            (true, true) => crate::rule::DecayForm {
                shrink: 1.0 - self.weight_decay * ctx.global[DLR],
                l2: 0.0,
            },
            (true, false) => crate::rule::DecayForm::NONE,
        }
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
        let [m, v, s, _p0] = slots else {
            unreachable!("prodigy has four slots")
        };
        let &[d, dlr, d_after, advance] = ctx.global.as_slice() else {
            unreachable!("prodigy's step values are set by its settlement")
        };
        let (l2, decay) = if self.decouple {
            (T::zero(), T::from_f64(-self.weight_decay * dlr))
        } else {
            (T::from_f64(self.weight_decay), T::zero())
        };
        let mut k = Coefficients {
            gather: ctx.lr > 0.0,
            advance: advance > 0.0,
            momentum: self.beta1 > 0.0,
            gs: T::from_f64(ctx.grad_scale),
            l2,
            decay,
            b1: T::from_f64(self.beta1),
            c1: T::from_f64(d * (1.0 - self.beta1)),
            b2: T::from_f64(self.beta2),
            c2: T::from_f64(d * d * (1.0 - self.beta2)),
            b3: T::from_f64(self.beta3()),
            c3: T::from_f64(self.s_coef(d, dlr)),
            eps: T::from_f64(d_after * self.eps),
            step: T::from_f64(-dlr),
            step_grad: T::from_f64(-dlr * d_after),
        };
        blocks_with(ctx.prefetch, p, g, [m, v, s], &mut k);
    }
}

impl<T: Real> TensorScalars<T> for Prodigy {
    /// `d`, `d_max`, `d_numerator` (r) and `k`, the same in every tensor.
    fn names(&self) -> &'static [&'static str] {
        SCALARS
    }

    /// Nothing per tensor: the settlement writes them.
    fn begin(&self, _ctx: &StepContext, _p: &[T], _scalars: &mut [f64]) {}
}

impl<T: Real> GlobalRule<T> for Prodigy {
    /// Σ g·(x₀ − x) and Σ|s_new|.
    fn sums(&self) -> usize {
        2
    }

    fn shared_keys(&self) -> &'static [&'static str] {
        &[
            "beta1",
            "beta2",
            "beta3",
            "decouple",
            "use_bias_correction",
            "d0",
            "d_coef",
            "growth_rate",
        ]
    }

    fn gather(
        &self,
        ctx: &StepContext,
        p: &[T],
        g: &[T],
        slots: &[&[T]],
        scalars: &[f64],
        sums: &mut [f64],
    ) {
        if ctx.lr <= 0.0 {
            return;
        }
        let (d, _, _, k) = self.kept(scalars);
        let dlr = self.dlr(d, ctx.global[0], k);
        let terms = Gather {
            gs: T::from_f64(ctx.grad_scale),
            l2: T::from_f64(if self.decouple {
                0.0
            } else {
                self.weight_decay
            }),
            b3: T::from_f64(self.beta3()),
            c3: T::from_f64(self.s_coef(d, dlr)),
        };
        let (num, den) = gather_dispatch(SimdLevel::current(), &terms, p, g, slots[2], slots[3]);
        sums[0] += num;
        sums[1] += den;
    }

    fn settle(&self, lr: f64, scalars: &mut [f64], sums: &[f64]) -> Decays {
        let (d, d_max, r, k) = self.kept(scalars);
        let dlr = self.dlr(d, lr, k);
        if sums[1] == 0.0 {
            // No gradient has reached s yet: the reference returns after the averages.
            scalars.copy_from_slice(&[d, d_max, r, k]);
            return smallvec::smallvec![d, dlr, d, 0.0];
        }
        let r = self.beta3() * r + (d / self.d0) * dlr * sums[0];
        let d_hat = self.d_coef * r / sums[1];
        let d_grown = if d == self.d0 { d.max(d_hat) } else { d };
        let d_max = d_max.max(d_hat);
        let d_after = d_max.min(d_grown * self.growth_rate);
        scalars.copy_from_slice(&[d_after, d_max, r, k + 1.0]);
        smallvec::smallvec![d, dlr, d_after, 1.0]
    }
}

/// The gather's per-step scalars, in the parameters' type.
struct Gather<T> {
    gs: T,
    l2: T,
    b3: T,
    c3: T,
}

/// Lanes of the gather's sums (fixed: the sums do not depend on the SIMD level).
const LANES: usize = 8;

/// (Σ g′(x₀ − x), Σ|β₃s + c g′|) in `f64` over one chunk, g′ = γg + λx, in
/// [`LANES`] independent lanes added in a fixed order.
#[inline(always)]
fn gather<T: Real>(k: &Gather<T>, p: &[T], g: &[T], s: &[T], p0: &[T]) -> (f64, f64) {
    let mut num = [0.0f64; LANES];
    let mut den = [0.0f64; LANES];
    let term = |p: T, g: T, s: T, p0: T| {
        let g = g * k.gs + k.l2 * p;
        let s = k.b3 * s + k.c3 * g;
        (g.as_f64() * (p0 - p).as_f64(), s.abs().as_f64())
    };
    let (pc, gc, sc, p0c) = (
        p.chunks_exact(LANES),
        g.chunks_exact(LANES),
        s.chunks_exact(LANES),
        p0.chunks_exact(LANES),
    );
    let (pr, gr, sr, p0r) = (
        pc.remainder(),
        gc.remainder(),
        sc.remainder(),
        p0c.remainder(),
    );
    for (((p, g), s), p0) in pc.zip(gc).zip(sc).zip(p0c) {
        for lane in 0..LANES {
            let (a, b) = term(p[lane], g[lane], s[lane], p0[lane]);
            num[lane] += a;
            den[lane] += b;
        }
    }
    let (mut tail_num, mut tail_den) = (0.0, 0.0);
    for (((&p, &g), &s), &p0) in pr.iter().zip(gr).zip(sr).zip(p0r) {
        let (a, b) = term(p, g, s, p0);
        tail_num += a;
        tail_den += b;
    }
    (
        num.iter().sum::<f64>() + tail_num,
        den.iter().sum::<f64>() + tail_den,
    )
}

multiversion!(fn gather_dispatch<T: Real>(k: &Gather<T>, p: &[T], g: &[T], s: &[T], p0: &[T]) -> (f64, f64) = gather);

/// Prodigy's per-step scalars for the update, in the parameters' type.
#[derive(Clone, Copy)]
struct Coefficients<T> {
    /// The tensor's group has a learning rate > 0: its averages move.
    gather: bool,
    /// The step moves the parameters (D > 0).
    advance: bool,
    /// β₁ > 0: the step follows m (else the gradient).
    momentum: bool,
    gs: T,
    l2: T,
    /// −λη̂ (decoupled), 0 otherwise.
    decay: T,
    b1: T,
    c1: T,
    b2: T,
    c2: T,
    b3: T,
    c3: T,
    /// d ε with the new d.
    eps: T,
    /// −η̂.
    step: T,
    /// −η̂ d′ with the new d′ (β₁ = 0).
    step_grad: T,
}

impl<T: Real> BlockBody<T, 3> for Coefficients<T> {
    /// The loop over one block, compiled once per combination of the step's flags (which are
    /// the same for every element), so that each loop is branch-free and vectorises.
    #[inline(always)]
    fn run(&mut self, p: &mut [T], g: &[T], [m, v, s]: [&mut [T]; 3]) {
        match (self.gather, self.advance, self.momentum) {
            (true, true, true) => block::<T, true, true, true>(self, p, g, m, v, s),
            (true, true, false) => block::<T, true, true, false>(self, p, g, m, v, s),
            (true, false, _) => block::<T, true, false, true>(self, p, g, m, v, s),
            (false, true, true) => block::<T, false, true, true>(self, p, g, m, v, s),
            (false, true, false) => block::<T, false, true, false>(self, p, g, m, v, s),
            (false, false, _) => {}
        }
    }
}

/// One block's loop for one combination of the flags ([`element`]).
#[inline(always)]
fn block<T: Real, const GATHER: bool, const ADVANCE: bool, const MOMENTUM: bool>(
    k: &Coefficients<T>,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    s: &mut [T],
) {
    for ((((p, &g), m), v), s) in p
        .iter_mut()
        .zip(g)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
        .zip(s.iter_mut())
    {
        element::<T, GATHER, ADVANCE, MOMENTUM>(k, p, g, m, v, s);
    }
}

/// One element's update, in the reference's order of operations.
#[inline(always)]
fn element<T: Real, const GATHER: bool, const ADVANCE: bool, const MOMENTUM: bool>(
    k: &Coefficients<T>,
    p: &mut T,
    g: T,
    m: &mut T,
    v: &mut T,
    s: &mut T,
) {
    let g = g * k.gs + k.l2 * *p;
    if GATHER {
        *m = *m * k.b1 + k.c1 * g;
        *v = *v * k.b2 + k.c2 * g * g;
        *s = *s * k.b3 + k.c3 * g;
    }
    if ADVANCE {
        let den = v.sqrt() + k.eps;
        let x = *p + k.decay * *p;
        *p = if MOMENTUM {
            x + k.step * (*m / den)
        } else {
            x + k.step_grad * (g / den)
        };
    }
}
