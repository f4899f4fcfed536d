//! The fused, vectorised, multi-threaded element loops.
//!
//! A step is one pass over memory: every tensor is cut into chunks of [`CHUNK`] elements
//! (never split below that, so small tensors stay whole), each chunk runs its rule's
//! per-element function over parameters, gradient and state together, and rayon spreads the
//! chunks over threads. The rules are elementwise with per-step scalars computed in `f64`
//! beforehand, so the result is bit-identical whatever the chunking or thread count.
//!
//! Vectorisation is by runtime CPU-feature dispatch: the same generic loop is compiled a
//! second and third time with AVX2 and AVX-512 enabled (x86-64) and the widest level the CPU
//! supports is chosen at run time, so a default release build is fast everywhere without
//! `-C target-cpu=native` (on AMD's Zen 3/4, whose AVX-512 runs on 256-bit units, the
//! full-precision loops take AVX2: [`SimdLevel::plain`]). Only IEEE-exact operations are used
//! (add, mul, div, sqrt, min, max; no fused multiply-add, which Rust never introduces
//! implicitly), so every level produces the same bits.
//!
//! Within a chunk, the loops of steps whose working set is at least 32 MiB run in blocks of
//! 512 bytes per array and, on Intel, prefetch 1 KiB ahead in every array (on Zen 3/4 the
//! hardware prefetchers do better alone; [`prefetch_policy`], `SGDLAB_PREFETCH` to choose);
//! that changes where a loop pauses, never what it computes.
//!
//! The global reduction (finiteness and ‖g‖²) is a separate pre-pass over fixed
//! chunks with partial sums added in chunk order: deterministic for any thread count. It must
//! finish before any write, so that a non-finite gradient leaves parameters and state
//! untouched; that costs one more read of the gradient per step (`check_finite=false` skips
//! it when no norm is needed).
//!
//! The rooms: `simd.rs` (the instruction-set levels and the `multiversion!` dispatch),
//! `blocks.rs` (the blocked, prefetching element loop), `bf16.rs` (bfloat16 state: the fused
//! loop and the scratch path), `q8.rs` (8-bit blockwise state), `reduce.rs` (the finiteness and norm pre-pass), and this module
//! (work units and how they are run).

mod bf16;
mod blocks;
pub use blocks::{Prefetch, PrefetchLevel, prefetch_policy};
mod q8;
mod reduce;
mod simd;
#[cfg(test)]
mod tests;

pub use bf16::bf16_elements;
pub(crate) use blocks::{BlockBody, blocks, blocks_with};
pub(crate) use reduce::reduce;
pub use simd::SimdLevel;
pub(crate) use simd::multiversion;

use rayon::prelude::*;

use crate::Real;
use crate::rule::UpdateRule;
use crate::transform::Cautious;
use crate::{Rule, StateRounding, StepContext};
use bf16::LOWP_BLOCK;
pub(crate) use bf16::dispatch_lowp;
#[cfg(test)]
pub(crate) use bf16::run_lowp_scratch;
use blocks::prefetch_lines_to;
pub(crate) use q8::{FIRST_STREAM, Quant, QuantSlot, dispatch_quant};

/// Elements per work unit (128 KiB of f32 per array).
pub const CHUNK: usize = 32 * 1024;

// Units start at multiples of CHUNK; a power of two keeps every unit inside one 2^32 block
// of the stochastic-rounding counters (`bf16_elements`, `run_lowp_scratch`, `mixed::narrow`).
const _: () = assert!(CHUNK.is_power_of_two() && CHUNK as u64 <= 1 << 32);

/// Below this many elements a step runs on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 2 * CHUNK;

/// The state buffers of one chunk, as many as the rule declares (up to four inline, without
/// allocation).
pub(crate) type Bufs<'a, E> = smallvec::SmallVec<[&'a mut [E]; 4]>;

/// [`Bufs`] of `slices`: filled in place when they fit inline (the common case, kept cheap
/// since a step builds one per work unit), collected otherwise.
#[inline]
pub(crate) fn bufs<'a, E>(slices: impl ExactSizeIterator<Item = &'a mut [E]>) -> Bufs<'a, E> {
    let n = slices.len();
    if n > 4 {
        return slices.collect();
    }
    let mut inline: [&'a mut [E]; 4] = [&mut [], &mut [], &mut [], &mut []];
    for (b, s) in inline.iter_mut().zip(slices) {
        *b = s;
    }
    Bufs::from_buf_and_len(inline, n)
}

/// The stochastic-rounding stream keys of one tensor's step, one per pair of state buffers.
pub(crate) type Keys = smallvec::SmallVec<[u64; 2]>;

/// One chunk of one tensor: its rule and step context (its parameter group's), parameters,
/// gradient and state buffers.
pub(crate) struct Unit<'a, T> {
    pub rule: &'a Rule,
    pub ctx: &'a StepContext,
    pub p: &'a mut [T],
    pub g: &'a [T],
    /// The state buffers in the parameters' type (empty when the state is bfloat16).
    pub slots: Bufs<'a, T>,
    /// How many state buffers the rule has (in `slots`, or in `lowp`).
    pub n_slots: usize,
    pub scalars: &'a [f64],
    /// The state buffers in bfloat16, when the spec says `state_dtype=bf16`.
    pub lowp: Option<Lowp<'a>>,
    /// The state buffers in 8 bits, when the spec says `state_dtype=q8`.
    pub quant: Option<Quant<'a>>,
    /// Cautious masking of the rule's update (`cautious=true`).
    pub cautious: Option<Cautious<'a, T>>,
}

/// The bfloat16 state buffers of one chunk and how they are narrowed after the update
/// (`state_dtype=bf16`): what [`UpdateRule::step_tensor_bf16`]
/// hands to [`bf16_elements`].
pub struct Lowp<'a> {
    pub(crate) slots: Bufs<'a, u16>,
    pub(crate) rounding: StateRounding,
    /// The stochastic-rounding streams of this step ([`crate::lowp::stream_key`]), one per
    /// pair of buffers: buffer b rounds with half b mod 2 of stream ⌊b/2⌋'s
    /// word ([`crate::lowp::half_word`]).
    pub(crate) keys: Keys,
    /// The index in its tensor of the unit's first element (the counter of the stream).
    pub(crate) offset: u64,
}

/// Where a chunk's state lives, for a rule whose element loop serves both storages
/// ([`UpdateRule::step_tensor`](super::UpdateRule::step_tensor) passes `Plain`,
/// [`UpdateRule::step_tensor_bf16`](super::UpdateRule::step_tensor_bf16) `Bf16`).
pub(crate) enum State<'s, 'a, T> {
    /// Buffers in the parameters' type, in [`UpdateRule::slots`](super::UpdateRule::slots) order.
    Plain(&'s mut [&'a mut [T]]),
    /// bfloat16 buffers, widened and narrowed in the element loop ([`bf16_elements`]).
    Bf16(&'s mut Lowp<'a>),
}

/// Runs a one-buffer element rule over a chunk whose buffer is in either storage
/// ([`State`]): `$element`, a closure `|p: &mut T, g: T, m: &mut T|`, is written out in each
/// loop, so that each copy inlines into its loop (a closure called from two loops may be
/// left out of line, and then compiled without the caller's SIMD features).
macro_rules! one_buffer {
    ($prefetch:expr, $p:expr, $g:expr, $state:expr, $element:expr, $rule:literal) => {
        match $state {
            $crate::kernel::State::Plain([m]) => {
                $crate::kernel::blocks($prefetch, $p, $g, [m], |p, g, [m]| {
                    for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                        ($element)(p, g, m);
                    }
                })
            }
            $crate::kernel::State::Bf16(lowp) => {
                $crate::kernel::bf16_elements($prefetch, $p, $g, lowp, |p, g, [m]| {
                    ($element)(p, g, m)
                })
            }
            $crate::kernel::State::Plain(_) => unreachable!(concat!($rule, " has one slot")),
        }
    };
}
pub(crate) use one_buffer;

/// One unit with state in the parameters' type: the rule's element loop.
#[inline(always)]
pub(crate) fn run_unit<R: UpdateRule, T: Real>(rule: &R, ctx: &StepContext, u: &mut Unit<'_, T>) {
    rule.step_tensor(ctx, u.p, u.g, &mut u.slots[..u.n_slots], u.scalars);
}

// One copy per rule type and level ([`Rule::dispatch_unit`] picks it): each holds one rule's
// loops only, so that its element closures are inlined into the SIMD copy.
multiversion!(pub(crate) fn dispatch<R: UpdateRule, T: Real>(rule: &R, ctx: &StepContext, u: &mut Unit<'_, T>) = run_unit);

/// Runs one unit at `level`: the plain element loop, or the bfloat16 one on this thread's
/// scratch buffers.
#[inline]
pub(crate) fn run_one<'a, T: Real>(level: SimdLevel, u: &mut Unit<'a, T>) {
    let (rule, ctx) = (u.rule, u.ctx);
    if let Some(c) = &mut u.cautious {
        c.before(&mut u.p);
    }
    if let Some(q) = &u.quant {
        let len = q8::scratch_len(u.n_slots, q.block);
        T::with_scratch(len, |scratch| {
            rule.dispatch_quant_unit(level, ctx, u, scratch)
        });
    } else if u.lowp.is_some() {
        let len = LOWP_BLOCK * u.n_slots;
        T::with_scratch(len, |scratch| {
            rule.dispatch_lowp_unit(level, ctx, u, scratch)
        });
    } else {
        rule.dispatch_unit(level.min(SimdLevel::plain()), ctx, u);
    }
    if let Some(c) = &mut u.cautious {
        c.after(level, &mut u.p, u.g);
    }
}

/// Working sets (parameters, gradient and state, in bytes) from which the element loops
/// prefetch ahead. Prefetching pays when the arrays stream from memory; when they sit in the
/// last-level cache its extra instructions cost more than they save. Measured on the
/// development VM: 25% slower for a 1M-parameter Adam step (16 MB), faster from 3M (48 MB).
pub(crate) const PREFETCH_MIN_BYTES: usize = 32 << 20;

/// Whether a step over `numel` parameters is small enough to run on the calling thread.
pub(crate) fn is_small(numel: usize) -> bool {
    numel < PARALLEL_MIN
}

/// Runs every unit (each with its own rule and context), in parallel when the step is large
/// enough; `prefetch` as in the units' contexts.
pub(crate) fn run_units<T: Real>(prefetch: bool, mut units: Vec<Unit<'_, T>>) {
    let level = SimdLevel::current();
    let total: usize = units.iter().map(|u| u.p.len()).sum();
    if total < PARALLEL_MIN {
        for u in &mut units {
            run_one(level, u);
        }
    } else {
        // Threads take runs of consecutive units; before computing one, a thread prefetches
        // (when the step prefetches at all) the start of the next, whose arrays (a separate tensor, elsewhere in memory) the
        // block loop's look-ahead would otherwise reach cold. Worth ~0.1 µs per small tensor.
        // Runs are short enough to leave every thread at least four of them.
        let per_job = (units.len() / (4 * rayon::current_num_threads())).clamp(1, UNITS_PER_JOB);
        units.par_chunks_mut(per_job).for_each(|run| {
            for i in 0..run.len() {
                let (head, tail) = run.split_at_mut(i + 1);
                if let Some(next) = tail.first().filter(|_| prefetch) {
                    next.prefetch_start();
                }
                run_one(level, &mut head[i]);
            }
        });
    }
}

/// Most consecutive units per rayon job.
pub(crate) const UNITS_PER_JOB: usize = 8;

impl<T> Unit<'_, T> {
    /// Prefetches the first bytes of each of the unit's arrays, as far as the element loops
    /// prefetch ahead ([`prefetch_policy`]).
    fn prefetch_start(&self) {
        let policy = prefetch_policy();
        let Some(level) = policy.level else {
            return;
        };
        let n = (policy.ahead_bytes / std::mem::size_of::<T>()).min(self.p.len());
        prefetch_lines_to(level, &self.p[..n]);
        prefetch_lines_to(level, &self.g[..n]);
        match (&self.lowp, &self.quant) {
            (Some(lowp), _) => {
                for slot in &lowp.slots[..self.n_slots] {
                    prefetch_lines_to(level, &slot[..n]);
                }
            }
            (None, Some(quant)) => {
                for slot in &quant.slots[..self.n_slots] {
                    prefetch_lines_to(level, &slot.codes[..n]);
                }
            }
            (None, None) => {
                for slot in &self.slots[..self.n_slots] {
                    prefetch_lines_to(level, &slot[..n]);
                }
            }
        }
    }
}
