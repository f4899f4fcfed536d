//! The element loop over parameters, gradient and state, blocked and prefetching when the
//! step streams from memory.

use crate::Real;

/// Bytes of each array per block of the prefetching element loop (a multiple of 64, so that
/// blocks start on cache lines when the arrays do).
pub(crate) const BLOCK_BYTES: usize = 512;

/// How far ahead of the block being computed the next lines are prefetched, in bytes, by
/// default (Intel Xeons; [`prefetch_policy`] chooses per CPU).
pub(crate) const AHEAD_BYTES: usize = 1024;

/// The software prefetch of the streaming element loops: into which cache, and how far
/// ahead of the block being computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefetch {
    /// The cache the lines are brought into; `None`: no software prefetch (the hardware
    /// prefetchers alone).
    pub level: Option<PrefetchLevel>,
    /// How far ahead, in bytes of each array.
    pub ahead_bytes: usize,
}

/// The cache a software prefetch fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchLevel {
    /// L1 and every level below (`prefetcht0`).
    L1,
    /// L2 and below (`prefetcht1`).
    L2,
}

static PREFETCH: std::sync::OnceLock<Prefetch> = std::sync::OnceLock::new();

/// The prefetch of this process: `SGDLAB_PREFETCH` (`off`, `l1:BYTES` or `l2:BYTES`) when
/// set, else the one measured best for the CPU's vendor.
pub fn prefetch_policy() -> Prefetch {
    *PREFETCH.get_or_init(|| {
        std::env::var("SGDLAB_PREFETCH")
            .ok()
            .and_then(|v| parse_prefetch(&v))
            .unwrap_or_else(default_prefetch)
    })
}

/// `off`, `l1:BYTES` or `l2:BYTES`.
pub(crate) fn parse_prefetch(text: &str) -> Option<Prefetch> {
    if text == "off" {
        return Some(Prefetch {
            level: None,
            ahead_bytes: 0,
        });
    }
    let (level, bytes) = text.split_once(':')?;
    let level = match level {
        "l1" => PrefetchLevel::L1,
        "l2" => PrefetchLevel::L2,
        _ => return None,
    };
    let ahead_bytes = bytes.parse().ok().filter(|b| b % 64 == 0)?;
    Some(Prefetch {
        level: Some(level),
        ahead_bytes,
    })
}

/// The default for this CPU: L1, [`AHEAD_BYTES`] ahead (measured on Intel Xeons); none on
/// AMD's Zen 3 and Zen 4, whose hardware prefetchers do better alone (a Zen 4 EPYC, 10M
/// parameters: Adam 1.2x, SGD with momentum 1.25x faster without, one thread; the same or
/// better with two).
pub(crate) fn default_prefetch() -> Prefetch {
    if super::simd::cpu().zen_avx512_halves {
        return Prefetch {
            level: None,
            ahead_bytes: 0,
        };
    }
    Prefetch {
        level: Some(PrefetchLevel::L1),
        ahead_bytes: AHEAD_BYTES,
    }
}

/// Runs `body` over `p`, `g` and the state buffers `slots` (all of one length), block by
/// block when `prefetch` is set, issuing a software prefetch for each cache line
/// [`AHEAD_BYTES`] ahead of the block in every array before computing it.
///
/// A streaming step's speed is bounded by how many cache misses each core keeps in flight.
/// On Intel Xeons, software prefetches into L1, 1 KiB ahead in each of the 2–5 arrays, start
/// them earlier than the hardware prefetcher alone does: 7–23% faster on 10M-parameter steps
/// (2 threads, AVX-512; the distance from a sweep of 128 B–2 KiB blocks and 512 B–16 KiB
/// distances). On AMD's Zen 3/4 they slow it down ([`prefetch_policy`]). The blocks change
/// only where the loop pauses to prefetch, not what is computed, so results are the same bits
/// either way.
#[inline(always)]
pub(crate) fn blocks<T: Real, const S: usize>(
    prefetch: bool,
    p: &mut [T],
    g: &[T],
    slots: [&mut [T]; S],
    mut body: impl FnMut(&mut [T], &[T], [&mut [T]; S]),
) {
    blocks_with(prefetch, p, g, slots, &mut ClosureBody(&mut body));
}

/// The element loop of one block, as a type: [`blocks_with`] calls its `run`, which the
/// implementation marks `#[inline(always)]`, so that the loop is compiled into each SIMD copy
/// of the kernel however large it is. (A closure is one function shared by the baseline,
/// AVX2 and AVX-512 copies, inlined into them only while the compiler finds it small enough:
/// a loop over four state buffers is not.)
pub(crate) trait BlockBody<T, const S: usize> {
    /// Runs the loop over one block of parameters, gradient and state.
    fn run(&mut self, p: &mut [T], g: &[T], slots: [&mut [T]; S]);
}

/// A closure as a [`BlockBody`].
struct ClosureBody<'f, F>(&'f mut F);

impl<T, const S: usize, F: FnMut(&mut [T], &[T], [&mut [T]; S])> BlockBody<T, S>
    for ClosureBody<'_, F>
{
    #[inline(always)]
    fn run(&mut self, p: &mut [T], g: &[T], slots: [&mut [T]; S]) {
        (self.0)(p, g, slots)
    }
}

/// [`blocks`] with the loop given as a [`BlockBody`].
#[inline(always)]
pub(crate) fn blocks_with<T: Real, const S: usize>(
    prefetch: bool,
    p: &mut [T],
    g: &[T],
    mut slots: [&mut [T]; S],
    body: &mut impl BlockBody<T, S>,
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
    let policy = prefetch_policy();
    let level = if prefetch { policy.level } else { None };
    let ahead = policy.ahead_bytes / std::mem::size_of::<T>();
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
        body.run(
            &mut p[start..end],
            &g[start..end],
            slots.each_mut().map(|s| &mut s[start..end]),
        );
        start = end;
    }
}

/// Asks the CPU to bring every cache line of `xs` into the cache `level` (x86-64; nothing
/// elsewhere).
#[inline(always)]
pub(crate) fn prefetch_lines_to<T>(level: PrefetchLevel, xs: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1};
        match level {
            PrefetchLevel::L1 => prefetch_hinted::<_MM_HINT_T0, T>(xs),
            PrefetchLevel::L2 => prefetch_hinted::<_MM_HINT_T1, T>(xs),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (level, xs);
}

/// Every cache line of `xs` prefetched with the hint `HINT` (`_MM_HINT_T0`: L1,
/// `_MM_HINT_T1`: L2).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hinted<const HINT: i32, T>(xs: &[T]) {
    use std::arch::x86_64::_mm_prefetch;
    let base = xs.as_ptr().cast::<i8>();
    let bytes = std::mem::size_of_val(xs);
    let mut offset = 0;
    while offset < bytes {
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is a hint that never
        // dereferences, faults or changes a value (the address is inside `xs` anyway).
        unsafe { _mm_prefetch::<HINT>(base.wrapping_add(offset)) };
        offset += 64;
    }
}
