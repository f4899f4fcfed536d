//! 8-bit blockwise state (`state_dtype=q8`): each sub-block of a unit is dequantized into
//! scratch, stepped by the rule's own element loop, and requantized block by block.
//!
//! A quantization block never spans two units (its size is a power of two no larger than
//! [`CHUNK`](super::CHUNK), and units start at multiples of `CHUNK`), so every block is
//! quantized by one thread from values that only its own elements determine: the bits are
//! the same whatever the thread count.

use super::{Bufs, Keys, SimdLevel, Unit, multiversion, run_unit};
use crate::lowp::Rounding;
use crate::quant::{CodeBook, dequantize_values, quantize_values};
use crate::rule::UpdateRule;
use crate::{Real, StateRounding, StepContext};

/// The stochastic-rounding stream of a tensor's first 8-bit buffer; buffer k uses stream
/// `FIRST_STREAM + k` ([`crate::lowp::stream_key`]), past the parameters' own stream, so
/// that bfloat16 parameters rounded stochastically never share a buffer's bits.
pub(crate) const FIRST_STREAM: u64 = crate::mixed::PARAM_STREAM + 1;

/// Elements per sub-block of an 8-bit unit (or the block size, if larger): the dequantized
/// state of one sub-block stays in L1 between the update and requantization.
pub(crate) const Q8_SUB: usize = 2048;

/// One 8-bit state buffer of a unit: its codes, the scales of its blocks, and its book.
pub(crate) struct QuantSlot<'a> {
    pub(crate) codes: &'a mut [u8],
    pub(crate) absmax: &'a mut [f32],
    pub(crate) book: &'static CodeBook,
    /// Whether the buffer never goes negative: a positive value never takes the code of 0
    /// ([`crate::quant::keep_positive`]).
    pub(crate) nonnegative: bool,
}

/// The 8-bit state buffers of one unit and how they are requantized (`state_dtype=q8`).
pub(crate) struct Quant<'a> {
    pub(crate) slots: smallvec::SmallVec<[QuantSlot<'a>; 4]>,
    pub(crate) rounding: StateRounding,
    /// The stochastic-rounding stream of each buffer ([`crate::lowp::stream_key`]).
    pub(crate) keys: Keys,
    /// The index in its tensor of the unit's first element (a multiple of `block`).
    pub(crate) offset: u64,
    /// Elements per quantization block.
    pub(crate) block: usize,
}

/// The length of the scratch a unit with `n_slots` 8-bit buffers of blocks of `block` needs.
pub(crate) fn scratch_len(n_slots: usize, block: usize) -> usize {
    Q8_SUB.max(block) * n_slots
}

/// A unit with 8-bit state, sub-block by sub-block: every buffer dequantized (x̂ = c\[q\]·a,
/// in `f32`, then widened exactly) into `scratch`, the rule's element loop on them as on any
/// state, and each block requantized with its new absmax.
#[inline(always)]
pub(crate) fn run_quant_unit<R: UpdateRule, T: Real>(
    rule: &R,
    ctx: &StepContext,
    u: &mut Unit<'_, T>,
    scratch: &mut [T],
) {
    let Some(q) = u.quant.as_mut() else {
        return run_unit(rule, ctx, u);
    };
    let n = u.p.len();
    let n_slots = u.n_slots;
    let block = q.block;
    let sub = Q8_SUB.max(block);
    let mut start = 0;
    while start < n {
        let len = sub.min(n - start);
        let end = start + len;
        let first_block = start / block;
        let mut rest = &mut *scratch;
        let mut bufs: Bufs<'_, T> = q
            .slots
            .iter()
            .take(n_slots)
            .map(|s| {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                for (k, (out, codes)) in head
                    .chunks_mut(block)
                    .zip(s.codes[start..end].chunks(block))
                    .enumerate()
                {
                    dequantize_values(s.book, codes, s.absmax[first_block + k], out);
                }
                head
            })
            .collect();
        rule.step_tensor(
            ctx,
            &mut u.p[start..end],
            &u.g[start..end],
            &mut bufs[..n_slots],
            u.scalars,
        );
        for (b, (buf, s)) in bufs.iter().zip(q.slots.iter_mut()).enumerate() {
            let rounding = match q.rounding {
                StateRounding::Nearest => Rounding::Nearest,
                StateRounding::Stochastic => Rounding::Stochastic { key: q.keys[b] },
            };
            for (k, (x, codes)) in buf
                .chunks(block)
                .zip(s.codes[start..end].chunks_mut(block))
                .enumerate()
            {
                let first = q.offset + (start + k * block) as u64;
                s.absmax[first_block + k] =
                    quantize_values(s.book, x, rounding, first, codes, s.nonnegative);
            }
        }
        start = end;
    }
}

multiversion!(pub(crate) fn dispatch_quant<R: UpdateRule, T: Real>(rule: &R, ctx: &StepContext, u: &mut Unit<'_, T>, scratch: &mut [T]) = run_quant_unit);
