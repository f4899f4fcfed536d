//! bfloat16 parameters and gradients: the mixed-precision step of large-model training.
//!
//! The parameters are bfloat16 (as bits, `u16`: the top half of an `f32`), the gradients
//! bfloat16 or the compute type `T`. Each step widens them exactly to `T` and runs the
//! ordinary step on the widened values, then writes the parameters back:
//!
//! * `master_weights=true`: the optimizer keeps an exact copy Φ of the parameters in
//!   `T` (made from the bfloat16 values at the first step, saved in checkpoints as
//!   `master/{tensor}`), steps it, and rounds it to nearest into the bfloat16 parameters:
//!   Φ\_bf16 = rn(Φ). Updates smaller than half an ulp of the
//!   parameter accumulate in Φ instead of being lost.
//! * without: the widened parameters are stepped and rounded back with the spec's `rounding`
//!   (stochastic by default, from the stream `(sr_seed, step, tensor, 2)` of
//!   [`crate::lowp`]; `stream_key`'s streams 0 and 1 round bfloat16 state buffers, 3 on 8-bit
//!   ones), so that on
//!   average a small update moves the parameter by its exact size,
//!   E\[sr(Φ − Δ)\] = Φ − Δ, where round-to-nearest drops every
//!   |Δ| < ½ulp(Φ).
//!
//! The widening and narrowing are separate passes over memory (vectorised, over the
//! threads), not fused into the rules' element loops; the widened values go to buffers the
//! optimizer keeps between steps (huge-page backed, as the state), so that a step does not
//! fault in fresh pages for them.

use rayon::prelude::*;

use super::kernel::{CHUNK, SimdLevel, multiversion};
use super::{GradRef, Optimizer, ParamMut, StateRounding, StepInfo, StepOutcome, StepReport};
use crate::lowp::{Block, bf16_nearest, bf16_stochastic, stream_key};
use crate::{Error, Real, Result};

/// The stochastic-rounding stream of the parameters within a tensor's step (bfloat16
/// state's pairs of buffers use streams 0 and 1, 8-bit state's buffers streams 3 on).
pub(crate) const PARAM_STREAM: u64 = 2;

/// How the parameters are narrowed to bfloat16 after a step.
#[derive(Clone, Copy)]
enum Narrow {
    Nearest,
    /// Stochastic, with the tensor's stream key.
    Stochastic(u64),
}

#[inline(always)]
fn widen_loop<T: Real>(src: &[u16], dst: &mut [T]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = T::from_bf16(b);
    }
}

multiversion!(fn widen_dispatch<T: Real>(src: &[u16], dst: &mut [T]) = widen_loop);

#[inline(always)]
fn narrow_loop<T: Real>(src: &[T], dst: &mut [u16], block: Option<(Block, u32)>) {
    match block {
        None => {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = bf16_nearest(x.to_f32_for_bf16());
            }
        }
        Some((block, base)) => {
            for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                let r = block.bits(base.wrapping_add(i as u32));
                *d = bf16_stochastic(x.to_f32_for_bf16(), r);
            }
        }
    }
}

multiversion!(fn narrow_dispatch<T: Real>(src: &[T], dst: &mut [u16], block: Option<(Block, u32)>) = narrow_loop);

/// `src` widened exactly to `T` into `out` (resized, and allocated with huge pages, when its
/// length differs), chunk by chunk over the threads.
fn widen_into<T: Real>(src: &[u16], out: &mut Vec<T>) {
    if out.len() != src.len() {
        *out = crate::alloc::huge_filled(src.len(), |_| T::zero());
    }
    let level = SimdLevel::current();
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| widen_dispatch(level, s, d));
}

/// One buffer per source in `buffers` (kept between steps), each `sources[i]` widened.
fn widen_all<'a, T: Real>(
    sources: impl ExactSizeIterator<Item = &'a [u16]>,
    buffers: &mut Vec<Vec<T>>,
) {
    buffers.resize_with(sources.len(), Vec::new);
    for (src, out) in sources.zip(buffers.iter_mut()) {
        widen_into(src, out);
    }
}

/// `src` narrowed into `dst`; element i of a stochastic narrowing takes the low 16 bits of
/// `counter_bits(key, i)` (the same bits for any thread count).
fn narrow<T: Real>(src: &[T], dst: &mut [u16], how: Narrow) {
    let level = SimdLevel::current();
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (d, s))| {
            // Chunks start at multiples of CHUNK (a power of two), so none crosses a
            // multiple of 2^32: one block serves each, with 32-bit counters.
            let offset = (c * CHUNK) as u64;
            let block = match how {
                Narrow::Nearest => None,
                Narrow::Stochastic(key) => Some((Block::new(key, offset), offset as u32)),
            };
            narrow_dispatch(level, s, d, block);
        });
}

impl<T: Real> Optimizer<T> {
    /// One step on bfloat16 parameters (bits, updated in place) with bfloat16 gradients:
    /// both widened exactly to `T`, the step of [`Optimizer::step_views`] on them, and the
    /// parameters written back:
    ///
    /// * `master_weights=true`: the optimizer keeps an exact copy Φ of the parameters
    ///   in `T` (made from the bfloat16 values at the first step, saved in checkpoints as
    ///   `master/{tensor}`, read with [`Optimizer::master`]), steps it, and rounds it to
    ///   nearest into the parameters, Φ\_bf16 = rn(Φ): updates
    ///   below half an ulp accumulate in Φ instead of being lost;
    /// * without: the widened parameters are stepped and rounded back with the spec's
    ///   `rounding` — stochastic by default, E\[sr(Φ − Δ)\] = Φ − Δ,
    ///   with random bits keyed by (`sr_seed`, step, tensor, element) as for the state, so
    ///   the same for any thread count and across a resume; `nearest` drops every
    ///   |Δ| < ½ ulp(Φ).
    ///
    /// Widening and narrowing are passes of their own over memory (vectorised, threaded),
    /// not fused into the rule's element loop.
    ///
    /// ```
    /// use sgdlab_optim::lowp::{bf16_nearest, bf16_to_f32};
    /// use sgdlab_optim::{GradRef, Optimizer, ParamMut, StepInfo};
    ///
    /// // 1 + 2^-10 is not a bfloat16: without a master copy, round to nearest loses it.
    /// let mut w = vec![bf16_nearest(1.0)];
    /// let g = vec![bf16_nearest(-1.0)];
    /// let mut opt = Optimizer::<f32>::from_spec("sgd:lr=0.0009765625,master_weights=true")?;
    /// for _ in 0..6 {
    ///     opt.step_bf16(&mut [ParamMut::vector("w", &mut w)], &[GradRef::vector("w", &g)],
    ///                   &StepInfo::default())?;
    /// }
    /// assert_eq!(opt.master(0), Some(&[1.005859375f32][..])); // 1 + 6 * 2^-10, exact
    /// assert_eq!(bf16_to_f32(w[0]), 1.0078125);                // the nearest bfloat16 of it
    /// # Ok::<(), sgdlab_optim::Error>(())
    /// ```
    ///
    /// Errors as [`Optimizer::step_views`] does, leaving parameters, master copy and state
    /// untouched; also for rules that evaluate at another point than they train
    /// (Schedule-Free: keep its parameters in `T`).
    pub fn step_bf16(
        &mut self,
        params: &mut [ParamMut<'_, u16>],
        grads: &[GradRef<'_, u16>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        crate::threads::install(|| {
            let mut wide = std::mem::take(&mut self.wide_grads.0);
            widen_all(grads.iter().map(|g| g.data), &mut wide);
            let views: Vec<GradRef<'_, T>> = grads
                .iter()
                .zip(&wide)
                .map(|(g, w)| GradRef {
                    name: std::borrow::Cow::Borrowed(&g.name),
                    shape: g.shape.clone(),
                    data: w,
                })
                .collect();
            let result = self.step_mixed(params, &views, info);
            drop(views);
            self.wide_grads.0 = wide;
            result
        })
    }

    /// [`Optimizer::step_bf16`] with gradients in `T` (bfloat16 parameters, full-precision
    /// gradients).
    pub fn step_bf16_params(
        &mut self,
        params: &mut [ParamMut<'_, u16>],
        grads: &[GradRef<'_, T>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        crate::threads::install(|| self.step_mixed(params, grads, info))
    }

    /// The master copy of tensor `tensor`'s parameters (`master_weights=true`, after the
    /// first step).
    pub fn master(&self, tensor: usize) -> Option<&[T]> {
        let m = &self.tensors.get(tensor)?.master;
        (!m.is_empty()).then_some(m.as_slice())
    }

    fn step_mixed(
        &mut self,
        params: &mut [ParamMut<'_, u16>],
        grads: &[GradRef<'_, T>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        if let Some(spec) = self.all_specs().find(|s| s.rule.eval_slot().is_some()) {
            return Err(Error::Unsupported(format!(
                "bfloat16 parameters with {} (it trains at one point and evaluates at another, \
                 which must stay exact): keep its parameters in {}",
                spec.name(),
                T::NAME
            )));
        }
        let first = self.layout.is_none();
        // The points to step: the master copies (made from the parameters at the first
        // step), or the parameters widened.
        let mut points: Vec<Vec<T>> = if self.spec.master_weights && !first {
            if params.len() != self.tensors.len() {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "parameter tensors: the optimizer's state is for {} tensors, this step \
                         passes {}",
                        self.tensors.len(),
                        params.len()
                    ),
                    expected: self.tensors.len(),
                    got: params.len(),
                });
            }
            self.tensors
                .iter_mut()
                .map(|t| std::mem::take(&mut t.master))
                .collect()
        } else {
            let mut points = std::mem::take(&mut self.wide_params.0);
            widen_all(params.iter().map(|p| &*p.data), &mut points);
            points
        };
        let mut views: Vec<ParamMut<'_, T>> = params
            .iter()
            .zip(points.iter_mut())
            .map(|(p, m)| ParamMut {
                name: std::borrow::Cow::Borrowed(&p.name),
                shape: p.shape.clone(),
                data: m.as_mut_slice(),
            })
            .collect();
        let result = self.step_unchecked(&mut views, grads, info);
        drop(views);
        if self.spec.master_weights && !self.tensors.is_empty() {
            // Back into the state (after a failed step too: a step that errs changes
            // nothing, and the first step's copies are kept only if it allocated the state).
            for (t, m) in self.tensors.iter_mut().zip(&mut points) {
                if t.master.is_empty() {
                    t.master = std::mem::take(m);
                }
            }
        }
        let report = result?;
        if report.outcome == StepOutcome::Applied {
            let (seed, step) = (self.spec.sr_seed, self.step);
            for (t, (p, state)) in params.iter_mut().zip(&self.tensors).enumerate() {
                let (src, how) = if self.spec.master_weights {
                    (&state.master, Narrow::Nearest)
                } else {
                    let how = match self.spec.rounding {
                        StateRounding::Nearest => Narrow::Nearest,
                        StateRounding::Stochastic => {
                            Narrow::Stochastic(stream_key(seed, step, t as u64, PARAM_STREAM))
                        }
                    };
                    (&points[t], how)
                };
                narrow(src, p.data, how);
            }
        }
        if !self.spec.master_weights {
            self.wide_params.0 = points;
        }
        Ok(report)
    }
}
