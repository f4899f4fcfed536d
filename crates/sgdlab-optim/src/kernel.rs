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
//! `-C target-cpu=native`. Only IEEE-exact operations are used (add, mul, div, sqrt, min, max;
//! no fused multiply-add, which Rust never introduces implicitly), so every level produces the
//! same bits.
//!
//! Within a chunk, the loops of steps whose working set is at least 32 MiB run in blocks of
//! 512 bytes per array and prefetch 1 KiB ahead in every array; that changes where a loop
//! pauses, never what it computes.
//!
//! The global reduction (finiteness and $\lVert g\rVert^2$) is a separate pre-pass over fixed
//! chunks with partial sums added in chunk order: deterministic for any thread count. It must
//! finish before any write, so that a non-finite gradient leaves parameters and state
//! untouched; that costs one more read of the gradient per step (`check_finite=false` skips
//! it when no norm is needed).

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::{Rule, StateRounding, StepContext};
use crate::Real;
use crate::lowp::{Block, bf16_nearest, bf16_stochastic, half_word};

/// Elements per work unit (128 KiB of f32 per array).
pub const CHUNK: usize = 32 * 1024;

// Units start at multiples of CHUNK; a power of two keeps every unit inside one 2^32 block
// of the stochastic-rounding counters (`bf16_elements`, `run_lowp_scratch`, `mixed::narrow`).
const _: () = assert!(CHUNK.is_power_of_two() && CHUNK as u64 <= 1 << 32);

/// Below this many elements a step runs on the calling thread.
const PARALLEL_MIN: usize = 2 * CHUNK;

/// Bytes of each array per block of the prefetching element loop (a multiple of 64, so that
/// blocks start on cache lines when the arrays do).
const BLOCK_BYTES: usize = 512;

/// How far ahead of the block being computed the next lines are prefetched, in bytes.
const AHEAD_BYTES: usize = 1024;

/// Runs `body` over `p`, `g` and the state buffers `slots` (all of one length), block by
/// block when `prefetch` is set, issuing a software prefetch for each cache line
/// [`AHEAD_BYTES`] ahead of the block in every array before computing it.
///
/// A streaming step's speed is bounded by how many cache misses each core keeps in flight.
/// Software prefetches into L1, 1 KiB ahead in each of the 2–5 arrays, start them earlier
/// than the hardware prefetcher alone does: 7–23% faster on 10M-parameter steps (2 threads,
/// AVX-512; the distance from a sweep of 128 B–2 KiB blocks and 512 B–16 KiB distances). The
/// blocks change only where the loop pauses to prefetch, not what is computed, so results
/// are the same bits either way.
#[inline(always)]
pub(crate) fn blocks<T: Real, const S: usize>(
    prefetch: bool,
    p: &mut [T],
    g: &[T],
    mut slots: [&mut [T]; S],
    mut body: impl FnMut(&mut [T], &[T], [&mut [T]; S]),
) {
    let n = p.len();
    // Without prefetching the whole slice is one block. Either way `body` has exactly one
    // call site, which LLVM always inlines: a closure left out of line would be compiled
    // without the caller's AVX2/AVX-512 features (measured: 5x slower for SGD with Nesterov
    // when a second call site kept it out of line).
    let block = if prefetch {
        (BLOCK_BYTES / std::mem::size_of::<T>()).max(1)
    } else {
        n.max(1)
    };
    let ahead = AHEAD_BYTES / std::mem::size_of::<T>();
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        if prefetch {
            let (from, to) = ((start + ahead).min(n), (end + ahead).min(n));
            prefetch_lines(&p[from..to]);
            prefetch_lines(&g[from..to]);
            for slot in &slots {
                prefetch_lines(&slot[from..to]);
            }
        }
        body(
            &mut p[start..end],
            &g[start..end],
            slots.each_mut().map(|s| &mut s[start..end]),
        );
        start = end;
    }
}

/// Asks the CPU to bring every cache line of `xs` into L1 (x86-64; nothing elsewhere).
#[inline(always)]
fn prefetch_lines<T>(xs: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let base = xs.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(xs);
        let mut offset = 0;
        while offset < bytes {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is a hint that never
            // dereferences, faults or changes a value (the address is inside `xs` anyway).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(offset)) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xs;
}

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64; scalar elsewhere).
    Baseline = 1,
    /// x86-64 with AVX2.
    Avx2 = 2,
    /// x86-64 with AVX-512F.
    Avx512 = 3,
}

impl SimdLevel {
    /// The levels this CPU can run, from the baseline up.
    pub fn available() -> Vec<SimdLevel> {
        let mut levels = vec![SimdLevel::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                levels.push(SimdLevel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                levels.push(SimdLevel::Avx512);
            }
        }
        levels
    }

    /// The level steps use: the widest available, unless [`SimdLevel::force`] chose another.
    pub fn current() -> SimdLevel {
        match FORCED.load(Ordering::Relaxed) {
            2 => SimdLevel::Avx2,
            3 => SimdLevel::Avx512,
            1 => SimdLevel::Baseline,
            _ => {
                *DETECTED.get_or_init(|| *Self::available().last().unwrap_or(&SimdLevel::Baseline))
            }
        }
    }

    /// Forces a level for the whole process (`None` restores automatic choice); for tests
    /// and benchmarks. A level the CPU lacks falls back to the widest available.
    pub fn force(level: Option<SimdLevel>) {
        let level = level.filter(|l| Self::available().contains(l));
        FORCED.store(level.map_or(0, |l| l as u8), Ordering::Relaxed);
    }

    /// The level's name (`baseline`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

static FORCED: AtomicU8 = AtomicU8::new(0);
static DETECTED: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();

/// Defines `$name(level, args...)`: calls the `#[inline(always)]` function `$inner` compiled
/// for the baseline, for AVX2 or for AVX-512F according to `level` (x86-64; the baseline
/// elsewhere). The same source is compiled three times, so every level computes the same
/// IEEE operations in the same order.
///
/// Built with `--cfg sgdlab_mutants` (what `scripts/mutants` sets), every level runs the
/// baseline copy: a mutant then compiles its kernel once instead of three times (the
/// rebuild of the library and its tests for one mutant: 74 s → 42 s on 2 cores). The copies
/// share their source, and the tests check that the levels agree bit for bit, so mutation
/// testing loses nothing a mutant could change in one copy alone.
macro_rules! multiversion {
    ($vis:vis fn $name:ident<$T:ident: Real>($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $inner:ident) => {
        $vis fn $name<$T: Real>(level: SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<$T: Real>($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<$T: Real>($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            match level {
                #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
                // SAFETY: `SimdLevel::available` only offers AVX2 when the CPU reports it.
                SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
                // SAFETY: `SimdLevel::available` only offers AVX-512F when the CPU reports it.
                SimdLevel::Avx512 => unsafe { avx512($($arg),*) },
                _ => $inner($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

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
}

/// The bfloat16 state buffers of one chunk and how they are narrowed after the update
/// (`state_dtype=bf16`): what [`UpdateRule::step_tensor_bf16`](super::UpdateRule::step_tensor_bf16)
/// hands to [`bf16_elements`].
pub struct Lowp<'a> {
    pub(crate) slots: Bufs<'a, u16>,
    pub(crate) rounding: StateRounding,
    /// The stochastic-rounding streams of this step ([`crate::lowp::stream_key`]), one per
    /// pair of buffers: buffer $b$ rounds with half $b \bmod 2$ of stream $\lfloor b/2\rfloor$'s
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

#[inline(always)]
fn run_unit<T: Real>(rule: &Rule, ctx: &StepContext, u: &mut Unit<'_, T>) {
    rule.step_tensor(ctx, u.p, u.g, &mut u.slots[..u.n_slots], u.scalars);
}

multiversion!(fn dispatch<T: Real>(rule: &Rule, ctx: &StepContext, u: &mut Unit<'_, T>) = run_unit);

/// Elements per sub-block of a bfloat16 unit: the widened state of one sub-block (up to
/// three buffers of 8 KiB in f32) stays in L1 between widening, the update and narrowing.
const LOWP_BLOCK: usize = 2048;

/// A unit with bfloat16 state: the rule's fused element loop when it has one
/// ([`UpdateRule::step_tensor_bf16`](super::rule::UpdateRule::step_tensor_bf16), e.g. Adam),
/// else [`run_lowp_scratch`]. Both compute the same bits.
#[inline(always)]
fn run_lowp_unit<T: Real>(rule: &Rule, ctx: &StepContext, u: &mut Unit<'_, T>, scratch: &mut [T]) {
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
fn run_lowp_scratch<T: Real>(
    rule: &Rule,
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
/// bits of buffer $s$, element $i$ of the unit are half $s \bmod 2$
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
    let ahead = AHEAD_BYTES / std::mem::size_of::<T>();
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
        if prefetch {
            let (from, to) = ((start + ahead).min(n), (end + ahead).min(n));
            prefetch_lines(&p[from..to]);
            prefetch_lines(&g[from..to]);
            for slot in &slots {
                prefetch_lines(&slot[from..to]);
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

multiversion!(fn dispatch_lowp<T: Real>(rule: &Rule, ctx: &StepContext, u: &mut Unit<'_, T>, scratch: &mut [T]) = run_lowp_unit);

/// Runs one unit at `level`: the plain element loop, or the bfloat16 one on this thread's
/// scratch buffers.
#[inline]
fn run_one<T: Real>(level: SimdLevel, u: &mut Unit<'_, T>) {
    let (rule, ctx) = (u.rule, u.ctx);
    if u.lowp.is_some() {
        let len = LOWP_BLOCK * u.n_slots;
        T::with_scratch(len, |scratch| dispatch_lowp(level, rule, ctx, u, scratch));
    } else {
        dispatch(level, rule, ctx, u);
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

/// Runs one whole tensor on the calling thread (the small-step path: no allocation).
pub(crate) fn run_tensor<'a, T: Real>(
    rule: &'a Rule,
    ctx: &'a StepContext,
    p: &'a mut [T],
    g: &'a [T],
    slots: &'a mut [Vec<T>],
    scalars: &'a [f64],
    lowp: Option<Lowp<'a>>,
) {
    let n_slots = rule.slots().len();
    let unit_slots: Bufs<'a, T> = bufs(slots.iter_mut().map(Vec::as_mut_slice));
    let mut unit = Unit {
        rule,
        ctx,
        p,
        g,
        slots: unit_slots,
        n_slots,
        scalars,
        lowp,
    };
    run_one(SimdLevel::current(), &mut unit);
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
const UNITS_PER_JOB: usize = 8;

impl<T> Unit<'_, T> {
    /// Prefetches the first [`AHEAD_BYTES`] of each of the unit's arrays.
    fn prefetch_start(&self) {
        let n = (AHEAD_BYTES / std::mem::size_of::<T>()).min(self.p.len());
        prefetch_lines(&self.p[..n]);
        prefetch_lines(&self.g[..n]);
        match &self.lowp {
            None => {
                for slot in &self.slots[..self.n_slots] {
                    prefetch_lines(&slot[..n]);
                }
            }
            Some(lowp) => {
                for slot in &lowp.slots[..self.n_slots] {
                    prefetch_lines(&slot[..n]);
                }
            }
        }
    }
}

/// The pre-pass over all gradients: the first non-finite element (tensor, index, value) if
/// any, else $\sum g^2$ in `f64` (summed per [`CHUNK`], then in chunk order) when `norm` is
/// asked for, or 0.
pub(crate) fn reduce<T: Real>(grads: &[&[T]], norm: bool) -> Result<f64, (usize, usize, f64)> {
    let level = SimdLevel::current();
    let partial = |t: usize, offset: usize, chunk: &[T]| -> Result<f64, (usize, usize, f64)> {
        let sum = if norm {
            sum_of_squares_dispatch(level, chunk)
        } else {
            finiteness_dispatch(level, chunk)
        };
        if sum.is_finite() {
            return Ok(sum);
        }
        match chunk.iter().position(|x| !x.is_finite()) {
            Some(i) => Err((t, offset + i, chunk[i].as_f64())),
            // Finite values whose sum of squares overflows `f64`: the squared norm is +∞, which
            // the caller refuses (a norm-dividing step would be zero).
            None => Ok(f64::INFINITY),
        }
    };
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let mut sum = 0.0;
    if total < PARALLEL_MIN {
        // Small steps: no thread hand-off and no allocation; the same chunk sums, in order.
        for (t, g) in grads.iter().enumerate() {
            for (c, chunk) in g.chunks(CHUNK).enumerate() {
                sum += partial(t, c * CHUNK, chunk)?;
            }
        }
        return Ok(sum);
    }
    let chunks: Vec<(usize, usize, &[T])> = grads
        .iter()
        .enumerate()
        .flat_map(|(t, g)| {
            g.chunks(CHUNK)
                .enumerate()
                .map(move |(c, chunk)| (t, c * CHUNK, chunk))
        })
        .collect();
    let partials: Vec<Result<f64, (usize, usize, f64)>> = chunks
        .par_iter()
        .map(|&(t, offset, chunk)| partial(t, offset, chunk))
        .collect();
    for p in partials {
        sum += p?;
    }
    Ok(sum)
}

/// $\sum x^2$ in `f64` with 16 independent lanes (summed in a fixed order at the end), so
/// that the loop vectorises instead of waiting on one long chain of additions.
///
/// Unlike the update loops, the read-only passes do not prefetch in software: with one
/// stream per thread the hardware prefetcher does better alone (software prefetching 1 KiB
/// ahead measured 10–30% slower on a cold 40 MB gradient).
#[inline(always)]
fn sum_of_squares<T: Real>(xs: &[T]) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f64; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for block in &mut blocks {
        for (a, &x) in acc.iter_mut().zip(block) {
            let x = x.as_f64();
            *a += x * x;
        }
    }
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&x| x.as_f64() * x.as_f64())
        .sum();
    acc.iter().sum::<f64>() + tail
}

multiversion!(fn sum_of_squares_dispatch<T: Real>(xs: &[T]) -> f64 = sum_of_squares);

/// 0 if every element is finite, NaN otherwise: $\sum (x - x)$ over 64 lanes, which
/// vectorises and reads each element once ($x - x$ is 0 for finite $x$, NaN for ±∞ and NaN).
/// 64 lanes are four independent vector accumulators at AVX-512 (eight at AVX2), so that the
/// additions do not wait on each other (measured 8% faster than 16 lanes).
#[inline(always)]
#[allow(clippy::eq_op)]
fn finiteness<T: Real>(xs: &[T]) -> f64 {
    const LANES: usize = 64;
    if xs.len() < 4 * LANES {
        // Short slices (the lab's one- and two-parameter models): the lanes' set-up and
        // final sum would cost more than the loop.
        return xs.iter().fold(T::zero(), |a, &x| a + (x - x)).as_f64();
    }
    let mut acc = [T::zero(); LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for block in &mut blocks {
        for (a, &x) in acc.iter_mut().zip(block) {
            *a = *a + (x - x);
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(T::zero(), |a, &x| a + (x - x));
    acc.iter().fold(tail, |a, &b| a + b).as_f64()
}

multiversion!(fn finiteness_dispatch<T: Real>(xs: &[T]) -> f64 = finiteness);

#[cfg(test)]
mod tests {
    use super::super::{Optimizer, StepContext};
    use super::*;

    /// `reduce` on every path — short slices, the 64-lane loop with a tail, several chunks,
    /// and the threaded path from `PARALLEL_MIN` elements — in both precisions: 0 exactly for
    /// finite gradients without the norm, $\sum g^2$ with it (against a plain sum), and the
    /// first non-finite element by (tensor, index, value) wherever it lies: first, last, in
    /// the lanes, in a lane loop's tail, in a later chunk, in the second tensor.
    #[test]
    fn reduce_sums_squares_and_finds_the_first_non_finite_element() {
        fn check<T: Real>() {
            for n in [3, 255, 256, 300, CHUNK + 5, PARALLEL_MIN + 77] {
                let a: Vec<T> = (0..n)
                    .map(|i| T::from_f64(((i * 7919) % 1009) as f64 / 500.0 - 1.0))
                    .collect();
                let b: Vec<T> = (0..17).map(|i| T::from_f64(i as f64 * 0.25)).collect();
                assert_eq!(reduce(&[&a, &b], false), Ok(0.0), "n = {n}");
                let want: f64 = a.iter().chain(&b).map(|x| x.as_f64() * x.as_f64()).sum();
                let got = reduce(&[&a, &b], true).unwrap();
                assert!(
                    (got - want).abs() <= 1e-12 * want,
                    "n = {n}: {got} vs {want}"
                );
                let mut spots = vec![(0, 0), (0, n - 1), (0, n / 2), (1, 16)];
                if n > 2 * CHUNK {
                    spots.push((0, CHUNK + 3));
                }
                for (t, i) in spots {
                    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                        let (mut a, mut b) = (a.clone(), b.clone());
                        [&mut a, &mut b][t][i] = T::from_f64(bad);
                        if t == 1 {
                            a[n - 1] = T::from_f64(f64::INFINITY);
                            b[i] = T::from_f64(bad);
                        }
                        for norm in [false, true] {
                            let (gt, gi, gv) = reduce(&[&a, &b], norm).unwrap_err();
                            // With the second tensor poisoned, the first tensor's last
                            // element comes first.
                            let (wt, wi, wv) = if t == 1 {
                                (0, n - 1, f64::INFINITY)
                            } else {
                                (t, i, bad)
                            };
                            assert_eq!((gt, gi), (wt, wi), "n = {n}, {bad}, norm {norm}");
                            assert!(gv == wv || (gv.is_nan() && wv.is_nan()), "{gv}");
                        }
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
        // Finite values whose squares overflow: the squared norm is +∞.
        let huge = [1e200, -1e200, 1.0];
        assert_eq!(reduce::<f64>(&[&huge], true), Ok(f64::INFINITY));
        assert_eq!(reduce::<f64>(&[&huge], false), Ok(0.0));
    }

    /// The levels on offer are the baseline and what the CPU reports, in order; a forced
    /// level is the one steps use until `force(None)` restores the widest; each has its name.
    /// (The only lib test that forces a level: the levels give the same bits, so other tests
    /// running meanwhile see no difference.)
    #[test]
    fn simd_levels_are_detected_forced_and_named() {
        let available = SimdLevel::available();
        assert_eq!(available.first(), Some(&SimdLevel::Baseline));
        assert!(available.windows(2).all(|w| w[0] < w[1]), "{available:?}");
        #[cfg(target_arch = "x86_64")]
        {
            let has = |l| available.contains(&l);
            assert_eq!(has(SimdLevel::Avx2), is_x86_feature_detected!("avx2"));
            assert_eq!(has(SimdLevel::Avx512), is_x86_feature_detected!("avx512f"));
        }
        for &level in &available {
            SimdLevel::force(Some(level));
            assert_eq!(SimdLevel::current(), level);
        }
        SimdLevel::force(None);
        assert_eq!(Some(&SimdLevel::current()), available.last());
        let names = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512].map(SimdLevel::name);
        assert_eq!(names, ["baseline", "avx2", "avx512"]);
    }

    /// The prefetching block loop computes exactly what one pass over the whole slice does,
    /// for every rule and slot layout, on a length that is not a multiple of the block.
    #[test]
    fn blocked_and_whole_loops_give_the_same_bits() {
        let specs = [
            "sgd:lr=0.05",
            "sgd:lr=0.02,momentum=0.9,nesterov=true,weight_decay=0.01",
            "ema-momentum:lr=0.1,debias=power",
            "adam:lr=0.01",
            "adam:lr=0.01,amsgrad=true,weight_decay=0.1",
            "adamw:lr=0.01",
            "rmsprop:lr=0.01",
            "rmsprop:lr=0.01,momentum=0.9",
            "rmsprop:lr=0.01,centered=true",
            "rmsprop:lr=0.01,centered=true,momentum=0.9",
            "adagrad:lr=0.1",
            "lion:lr=0.01",
            "madam:lr=0.01",
            "normsgd:lr=0.1",
            "multiplicative:lr=0.1",
            "lossprop:lr=0.1",
        ];
        let n = 5 * BLOCK_BYTES / 4 + 7;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01)
            .collect();
        for spec in specs {
            let opt = Optimizer::<f32>::from_spec(spec).unwrap();
            let rule = &opt.spec().rule;
            let run = |prefetch: bool| {
                let ctx = StepContext {
                    t: 3,
                    lr: rule.lr(),
                    grad_scale: 1.0,
                    loss: Some(0.5),
                    grad_norm_sq: 2.0,
                    numel: n,
                    beta_pow: rule.decays().iter().map(|b| b.powf(3.0)).collect(),
                    prefetch,
                };
                let mut p: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
                let mut slots: Vec<Vec<f32>> = (0..opt.slot_names().len())
                    .map(|k| (0..n).map(|i| ((i + k) % 5) as f32 * 0.01).collect())
                    .collect();
                let mut views: Vec<&mut [f32]> = slots.iter_mut().map(|s| &mut s[..]).collect();
                rule.step_tensor(&ctx, &mut p, &g, &mut views, &[2.0]);
                (p, slots)
            };
            let (whole, blocked) = (run(false), run(true));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&whole.0), bits(&blocked.0), "{spec}: parameters");
            for (a, b) in whole.1.iter().zip(&blocked.1) {
                assert_eq!(bits(a), bits(b), "{spec}: state");
            }
        }
    }

    /// A rule's fused bfloat16 loop (Adam's) computes the same bits as the generic path that
    /// widens into scratch, calls the f32-state element loop and narrows back: both rounding
    /// modes, two and three buffers, f32 and f64 parameters, with and without the prefetching
    /// blocks, from a unit that does not start at element 0 of its tensor.
    #[test]
    fn fused_bf16_loop_matches_the_scratch_path() {
        fn check<T: Real>(spec: &str, rounding: StateRounding, prefetch: bool, t: u64) {
            let opt = Optimizer::<T>::from_spec(spec).unwrap();
            let rule = &opt.spec().rule;
            let n_slots = rule.slots().len();
            let n = 3 * LOWP_BLOCK + 77;
            let ctx = StepContext {
                t,
                lr: rule.lr(),
                grad_scale: 0.75,
                loss: None,
                grad_norm_sq: 0.0,
                numel: n,
                beta_pow: rule.decays().iter().map(|b| b.powi(t as i32)).collect(),
                prefetch,
            };
            let g: Vec<T> = (0..n)
                .map(|i| T::from_f64(((i * 37 % 101) as f64 - 50.0) * 1e-3))
                .collect();
            let p0: Vec<T> = (0..n)
                .map(|i| T::from_f64(((i % 17) as f64 - 8.0) * 0.1))
                .collect();
            let s0: Vec<Vec<u16>> = (0..n_slots)
                .map(|k| {
                    (0..n)
                        .map(|i| crate::lowp::bf16_nearest(((i + 3 * k) % 11) as f32 * 1e-3))
                        .collect()
                })
                .collect();
            let run = |fused: bool| {
                let mut p = p0.clone();
                let mut s = s0.clone();
                let bufs: Bufs<'_, u16> = s.iter_mut().map(Vec::as_mut_slice).collect();
                let mut unit = Unit {
                    rule,
                    ctx: &ctx,
                    p: &mut p,
                    g: &g,
                    slots: Bufs::new(),
                    n_slots,
                    scalars: &[],
                    lowp: Some(Lowp {
                        slots: bufs,
                        rounding,
                        keys: smallvec::smallvec![0x1234_5678_9abc_def0, 42],
                        offset: 5 * CHUNK as u64,
                    }),
                };
                let mut scratch = vec![T::zero(); LOWP_BLOCK * n_slots];
                if fused {
                    let lowp = unit.lowp.as_mut().unwrap();
                    assert!(rule.step_tensor_bf16(&ctx, unit.p, unit.g, lowp, &[]));
                } else {
                    run_lowp_scratch(rule, &ctx, &mut unit, &mut scratch);
                }
                drop(unit);
                let bits: Vec<u64> = p.iter().map(|x| x.as_f64().to_bits()).collect();
                (bits, s)
            };
            let (fused, scratch) = (run(true), run(false));
            assert_eq!(fused.0, scratch.0, "{spec} {rounding:?} t={t}: parameters");
            assert_eq!(fused.1, scratch.1, "{spec} {rounding:?} t={t}: state");
            assert_ne!(fused.1, s0, "{spec}: the state moved");
        }
        // Every rule with a fused loop, in each of its buffer layouts; t = 1 takes SGD's
        // first-step branch.
        for spec in [
            "adam:lr=0.01,weight_decay=0.1",
            "adam:lr=0.01,amsgrad=true",
            "adamw:lr=0.01",
            "sgd:lr=0.1,momentum=0.9,dampening=0.2,weight_decay=0.01",
            "sgd:lr=0.1,momentum=0.9,nesterov=true",
            "ema-momentum:lr=0.1,beta=0.8,debias=power",
            "lion:lr=0.01,weight_decay=0.1",
            "rmsprop:lr=0.01,weight_decay=0.01",
            "rmsprop:lr=0.01,momentum=0.9",
            "rmsprop:lr=0.01,centered=true",
            "rmsprop:lr=0.01,momentum=0.9,centered=true",
            "adopt:lr=0.01,weight_decay=0.1",
            "adopt:lr=0.01,decoupled_weight_decay=true,weight_decay=0.1,clip=none",
            "adan:lr=0.01,weight_decay=0.1",
        ] {
            for rounding in [StateRounding::Nearest, StateRounding::Stochastic] {
                for prefetch in [false, true] {
                    for t in [1, 4] {
                        check::<f32>(spec, rounding, prefetch, t);
                        check::<f64>(spec, rounding, prefetch, t);
                    }
                }
            }
        }
    }
}
