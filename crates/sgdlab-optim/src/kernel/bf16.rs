//! bfloat16 state: the fused element loop that widens and narrows in registers, and the
//! scratch path for rules without one. Both give the same bits.

use super::blocks::{BLOCK_BYTES, prefetch_lines_to, prefetch_policy};
use super::{Bufs, Lowp, SimdLevel, Unit, multiversion, run_unit};
use crate::Real;
use crate::lowp::{Block, bf16_nearest, bf16_stochastic, half_word};
use crate::rule::UpdateRule;
use crate::{StateRounding, StepContext};

/// Elements per sub-block of a bfloat16 unit: the widened state of one sub-block (up to
/// three buffers of 8 KiB in f32) stays in L1 between widening, the update and narrowing.
pub(crate) const LOWP_BLOCK: usize = 2048;

/// A unit with bfloat16 state: the rule's fused element loop when it has one
/// ([`UpdateRule::step_tensor_bf16`](super::rule::UpdateRule::step_tensor_bf16), e.g. Adam),
/// else [`run_lowp_scratch`]. Both compute the same bits.
#[inline(always)]
pub(crate) fn run_lowp_unit<R: UpdateRule, T: Real>(
    rule: &R,
    ctx: &StepContext,
    u: &mut Unit<'_, T>,
    scratch: &mut [T],
) {
    let Some(lowp) = u.lowp.as_mut() else {
        return run_unit(rule, ctx, u);
    };
    if !rule.step_tensor_bf16(ctx, u.p, u.g, lowp, u.scalars) {
        run_lowp_scratch(rule, ctx, u, scratch);
    }
}

/// A unit with bfloat16 state for any rule, sub-block by sub-block: the buffers widened (exactly) into
/// `scratch`, the rule's element loop on them as on any state, and the results narrowed back
/// with the spec's rounding. The sub-blocks are small enough for the widened values to stay
/// in L1, so that memory sees 2 bytes per state element each way and every array streams
/// at once, as in the plain kernel.
#[inline(always)]
pub(crate) fn run_lowp_scratch<R: UpdateRule, T: Real>(
    rule: &R,
    ctx: &StepContext,
    u: &mut Unit<'_, T>,
    scratch: &mut [T],
) {
    let Some(lowp) = u.lowp.as_mut() else {
        return run_unit(rule, ctx, u);
    };
    let n = u.p.len();
    let n_slots = u.n_slots;
    let mut start = 0;
    while start < n {
        let len = LOWP_BLOCK.min(n - start);
        let end = start + len;
        let mut rest = &mut *scratch;
        let mut bufs: Bufs<'_, T> = lowp
            .slots
            .iter()
            .take(n_slots)
            .map(|src| {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
                for (d, &b) in head.iter_mut().zip(&src[start..end]) {
                    *d = T::from_bf16(b);
                }
                rest = tail;
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
        for (b, (buf, dst)) in bufs
            .iter()
            .zip(lowp.slots.iter_mut())
            .take(n_slots)
            .enumerate()
        {
            let key = lowp.keys[b / 2];
            let dst = &mut dst[start..end];
            match lowp.rounding {
                StateRounding::Nearest => {
                    for (d, &x) in dst.iter_mut().zip(buf.iter()) {
                        *d = bf16_nearest(x.to_f32_for_bf16());
                    }
                }
                StateRounding::Stochastic => {
                    // A unit never crosses a multiple of 2^32 (units start at multiples of
                    // CHUNK, a power of two): one block serves it, with 32-bit counters.
                    let block = Block::new(key, lowp.offset);
                    let base = (lowp.offset as u32).wrapping_add(start as u32);
                    for (i, (d, &x)) in dst.iter_mut().zip(buf.iter()).enumerate() {
                        let r = half_word(block.bits(base.wrapping_add(i as u32)), b);
                        *d = bf16_stochastic(x.to_f32_for_bf16(), r);
                    }
                }
            }
        }
        start = end;
    }
}

/// The element loop of a rule with `S` bfloat16 state buffers, fused: each element's state
/// is widened (exactly) into registers, `body` updates parameter and state as it would f32
/// state, and the results are narrowed straight back with the unit's rounding — one pass
/// over memory at 2 bytes per state element each way, with no scratch buffer. Blocked and
/// prefetched like the plain element loops when `prefetch` is set. The stochastic-rounding
/// bits of buffer s, element i of the unit are half s mod 2
/// ([`crate::lowp::half_word`]) of `Block::new(keys[s / 2], offset).bits(offset + i)`,
/// the stream the generic path (widening into scratch) draws too, so the two give the same
/// bits.
#[inline(always)]
pub fn bf16_elements<T: Real, const S: usize>(
    prefetch: bool,
    p: &mut [T],
    g: &[T],
    lowp: &mut Lowp<'_>,
    mut body: impl FnMut(&mut T, T, &mut [T; S]),
) {
    // This repeats `blocks`' block and prefetch loop on purpose: built on `blocks` (one
    // closure per rounding mode handed to it), the closures are compiled out of line,
    // without the caller's SIMD features, and Adam with bf16 state runs at a fifth of the
    // reference's speed (CI's `nm` check names such closures).
    let n = p.len();
    let g = &g[..n];
    let mut it = lowp.slots.iter_mut();
    let mut slots: [&mut [u16]; S] = std::array::from_fn(|_| match it.next() {
        Some(s) => &mut s[..n],
        None => unreachable!("the rule's element loop takes as many buffers as it declares"),
    });
    let block = if prefetch {
        (BLOCK_BYTES / std::mem::size_of::<T>()).max(1)
    } else {
        n.max(1)
    };
    let policy = prefetch_policy();
    let level = if prefetch { policy.level } else { None };
    let ahead = policy.ahead_bytes / std::mem::size_of::<T>();
    // One loop per rounding mode, chosen outside it, so that each vectorises branch-free.
    #[inline(always)]
    fn each<T: Real, const S: usize>(
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [u16]; S],
        range: std::ops::Range<usize>,
        body: &mut impl FnMut(&mut T, T, &mut [T; S]),
        narrow: impl Fn(u32, [f32; S]) -> [u16; S],
    ) {
        let first = range.start as u32;
        let p = &mut p[range.clone()];
        let g = &g[range.clone()];
        let slots = slots.each_mut().map(|s| &mut s[range.clone()]);
        let len = p.len();
        assert!(slots.iter().all(|s| s.len() == len));
        let slots = slots.map(|s| s.as_mut_ptr());
        for (i, (p, &g)) in p.iter_mut().zip(g).enumerate() {
            // SAFETY: every slot has `len` elements (asserted above) and `i < len`; the slots
            // are distinct `&mut` borrows, so these accesses alias nothing else. (Indexing
            // the slices instead leaves a bounds check that LLVM cannot drop, which keeps the
            // last vector's worth of each block on a scalar path.)
            let mut state: [T; S] =
                std::array::from_fn(|s| T::from_bf16(unsafe { *slots[s].add(i) }));
            body(p, g, &mut state);
            let narrowed = narrow(
                first.wrapping_add(i as u32),
                state.map(|x| x.to_f32_for_bf16()),
            );
            for (s, b) in narrowed.into_iter().enumerate() {
                // SAFETY: as above.
                unsafe { *slots[s].add(i) = b };
            }
        }
    }
    // A unit never crosses a multiple of 2^32 (units start at multiples of CHUNK, a power of
    // two): one block per stream serves it, with 32-bit counters.
    // (Stream k serves buffers 2k and 2k + 1; the streams past S/2 are never drawn.)
    let streams: [Block; S] =
        std::array::from_fn(|k| Block::new(lowp.keys.get(k).copied().unwrap_or(0), lowp.offset));
    let base = lowp.offset as u32;
    let stochastic = lowp.rounding == StateRounding::Stochastic;
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        if let Some(level) = level {
            let (from, to) = ((start + ahead).min(n), (end + ahead).min(n));
            prefetch_lines_to(level, &p[from..to]);
            prefetch_lines_to(level, &g[from..to]);
            for slot in &slots {
                prefetch_lines_to(level, &slot[from..to]);
            }
        }
        if stochastic {
            each(p, g, &mut slots, start..end, &mut body, |i, xs| {
                // One word per pair of buffers (stream k for buffers 2k and 2k + 1).
                let c = base.wrapping_add(i);
                let words: [u32; S] =
                    std::array::from_fn(|k| if 2 * k < S { streams[k].bits(c) } else { 0 });
                std::array::from_fn(|s| bf16_stochastic(xs[s], half_word(words[s / 2], s)))
            })
        } else {
            each(p, g, &mut slots, start..end, &mut body, |_, xs| {
                xs.map(bf16_nearest)
            })
        }
        start = end;
    }
}

multiversion!(pub(crate) fn dispatch_lowp<R: UpdateRule, T: Real>(rule: &R, ctx: &StepContext, u: &mut Unit<'_, T>, scratch: &mut [T]) = run_lowp_unit);
