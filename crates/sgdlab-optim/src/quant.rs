//! Blockwise dynamic 8-bit quantization: bitsandbytes' code books and block layout.
//!
//! A tensor is cut into blocks of [`BLOCK_SIZE`] consecutive elements (the last one may be
//! shorter). Each block keeps one `f32` scale, its absolute maximum a = maxᵢ |xᵢ|, and one byte
//! per element: the index of the code-book value nearest to xᵢ/a. Dequantization is
//! x̂ᵢ = c\[qᵢ\]·a. Both books hold 1, so a block's largest element is exact when it is
//! positive; the signed book's most negative value is −0.993, so a negative one comes back
//! 0.7 % short.
//!
//! The **dynamic code book** ([`CodeBook::dynamic`]; Dettmers, "8-bit approximations for
//! parallelism in deep learning", 2016) spends one bit on the sign (signed book) and splits the
//! other seven into a decimal exponent and a linear fraction: for k = 0…6 it holds the
//! midpoints of 2ᵏ (signed) or 2ᵏ⁺¹ (unsigned) equal intervals of \[0.1, 1\], scaled by
//! 10ᵏ⁻⁶, with their negatives in the signed book, and 0 and 1. The smallest positive value is
//! 5.5·10⁻⁷ (signed) or 3.25·10⁻⁷ (unsigned); the spacing relative to the value is 1.4 %
//! (signed; unsigned 0.7 %) just below 1, 3 % (1.5 %) just below 0.1, and grows with each
//! decade down to a factor of about 6 at the bottom: a block's large elements keep about six
//! significant bits, its elements 10⁻⁶ of the absmax hardly one. The values are computed
//! here in `f32` exactly as bitsandbytes' `create_dynamic_map` computes them with torch
//! (its `linspace` is a fused multiply-add from the nearer end), and equal its tables bit
//! for bit.
//!
//! Rounding to a code is either to the nearest value or stochastic ([`Rounding`]): up to the
//! next value with probability (y − cₗ)/(cₕ − cₗ) for y between the neighbours cₗ ≤ y ≤ cₕ,
//! so that E\[c\[q\]\] = y within the table's range and the error variance is
//! (cₕ − y)(y − cₗ), from the counter-based
//! bits the bfloat16 state uses ([`crate::lowp::counter_bits`]): the same bits for any
//! thread count.

use crate::Real;
use crate::lowp::{Rounding, counter_bits};
use std::sync::LazyLock;

/// The elements per block, as bitsandbytes' 8-bit optimizers use.
pub const BLOCK_SIZE: usize = 256;

/// A sorted table of 256 `f32` values in \[−1, 1\] that a byte indexes, with the tables
/// that find a value's code without a search.
///
/// The lookups cut \[−1, 1\] into buckets: for each sign, the 24 octaves
/// \[2⁻²³, 1) in 128 equal parts each, |y| below 2⁻²³ into the first and 1 into one of its own
/// (y beyond ±1 as ±1). A bucket is narrower than the gap between any two neighbouring codes
/// (its width is at most 0.56 of the gap; checked when the book is built), so it holds at
/// most one code and one rounding threshold: a code is the bucket's first code plus one
/// comparison, branch-free.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeBook {
    values: [f32; 256],
    /// `thresholds[q]`: the largest `f32` whose nearest code is q or lower (+∞ for 255).
    thresholds: [f32; 256],
    /// `1/(values[q + 1] − values[q])` in `f32` (0 for 255).
    inv_gap: [f32; 256],
    /// For each [`bucket`], the nearest code, as a `step_entry`.
    near: Box<[u32]>,
    /// For each [`bucket`], the largest code at or below the value (0 below −0.993), as a
    /// `step_entry`.
    floor: Box<[u32]>,
}

/// A bucket's lookup entry: `code << 16 | last`. A bucket holds the 2¹⁶ floats of one sign
/// whose magnitudes share their top bits; the low 16 bits of a magnitude are its offset in the
/// bucket. `code` is the answer at offset 0 (the smallest magnitude) and stays the answer up
/// to offset `last` (0xFFFF: the whole bucket); past it the answer is the next code away from
/// zero, `code + 1` for a positive value, `code − 1` for a negative one. One load and one
/// comparison, since a bucket holds at most one change of answer. Found for the lookup `f`
/// by bisection over the bucket's offsets.
fn step_entry(k: u32, f: &impl Fn(f32) -> u8) -> u32 {
    let (negative, b) = if k < PER_SIGN {
        (false, k)
    } else {
        (true, k - PER_SIGN)
    };
    let start = LOW_BITS + (b << (23 - BUCKET_BITS));
    let at = |offset: u32| {
        let y = f32::from_bits(start + offset);
        if negative { -y } else { y }
    };
    // (1.0's bucket holds 1.0 alone, its offset always 0: the floats past it, which the
    // clamp never looks up, answer as 1.0 does.)
    let code = f(at(0));
    let last = if f(at(OFFSET_MASK)) == code {
        OFFSET_MASK
    } else {
        // f(at(lo)) = code, f(at(hi)) ≠ code.
        let (mut lo, mut hi) = (0, OFFSET_MASK);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if f(at(mid)) == code {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        debug_assert_eq!(
            i32::from(f(at(hi))) - i32::from(code),
            if negative { -1 } else { 1 }
        );
        lo
    };
    (u32::from(code) << 16) | last
}

/// The low bits of a magnitude: its offset in its bucket.
const OFFSET_MASK: u32 = (1 << (23 - BUCKET_BITS)) - 1;

/// The answer of a bucket's [`step_entry`] `e` for `y` (its bits), its clamped magnitude `a`.
#[inline(always)]
fn step_code(e: u32, bits: u32, a: u32) -> u32 {
    // +1 for a positive y, −1 (all ones) for a negative one, where the offset passes `last`.
    let away = 1 | ((bits as i32) >> 31) as u32;
    let past = u32::from((a & OFFSET_MASK) > (e & OFFSET_MASK)).wrapping_neg();
    (e >> 16).wrapping_add(away & past)
}

/// Mantissa bits that a bucket keeps: 128 buckets an octave.
const BUCKET_BITS: u32 = 7;
/// The bits of 2⁻²³, the start of the first bucket (smaller magnitudes share it).
const LOW_BITS: u32 = (127 - 23) << 23;
/// The bits of 1.0, the last bucket (larger magnitudes share it).
const ONE_BITS: u32 = 127 << 23;
/// Buckets per sign: 24 octaves of 128, and 1.0's.
const PER_SIGN: u32 = ((ONE_BITS - LOW_BITS) >> (23 - BUCKET_BITS)) + 1;

/// The bucket of `y` and its clamped magnitude: the magnitude clamped to \[2⁻²³, 1\], cut
/// to 7 mantissa bits, positives first, then negatives (a NaN falls somewhere; its block is
/// handled apart).
#[inline(always)]
fn bucket(y: f32) -> (usize, u32) {
    let bits = y.to_bits();
    let a = (bits & 0x7FFF_FFFF).clamp(LOW_BITS, ONE_BITS);
    (
        (((a - LOW_BITS) >> (23 - BUCKET_BITS)) + (bits >> 31) * PER_SIGN) as usize,
        a,
    )
}

/// The magnitudes of bucket `b` of one sign: its first and last `f32`.
fn bucket_bounds(b: u32) -> (f32, f32) {
    let lo = LOW_BITS + (b << (23 - BUCKET_BITS));
    let hi = (lo + (1 << (23 - BUCKET_BITS)) - 1).min(ONE_BITS);
    (f32::from_bits(lo), f32::from_bits(hi))
}

/// A key that orders floats as numbers do: `x < y` ⇒ `order_key(x) ≤ order_key(y)` (−0 and +0
/// are next to each other; NaNs lie beyond the infinities).
#[inline(always)]
fn order_key(y: f32) -> u32 {
    let bits = y.to_bits();
    if bits >> 31 == 0 {
        bits | 0x8000_0000
    } else {
        !bits
    }
}

/// The float whose [`order_key`] is `key`.
fn from_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 {
        key & 0x7FFF_FFFF
    } else {
        !key
    })
}

/// torch's `linspace(0.1, 1, n)` in `f32`: step (1 − 0.1)/(n − 1), element i a fused
/// multiply-add from the start for the first half and from the end for the rest.
fn linspace_tenth_to_one(n: usize) -> Vec<f32> {
    let (start, end) = (0.1f32, 1.0f32);
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

impl CodeBook {
    /// bitsandbytes' dynamic code book, `create_dynamic_map(signed)` with 7 exponent bits of 8:
    /// signed for a first moment, unsigned (all ≥ 0, twice the fraction steps) for a second.
    pub fn dynamic(signed: bool) -> Self {
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..7 {
            let n = if signed {
                (1 << i) + 1
            } else {
                (1 << (i + 1)) + 1
            };
            let bounds = linspace_tenth_to_one(n);
            let means: Vec<f32> = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
            let scale = 10f64.powi(i - 6) as f32;
            data.extend(means.iter().map(|&m| scale * m));
            if signed {
                data.extend(means.iter().map(|&m| -scale * m));
            }
        }
        data.extend([0.0, 1.0]);
        debug_assert_eq!(data.len(), 256);
        data.sort_by(f32::total_cmp);
        let mut values = [0.0; 256];
        values.copy_from_slice(&data);
        let mut book = Self {
            values,
            thresholds: [f32::INFINITY; 256],
            inv_gap: [0.0; 256],
            near: Box::new([]),
            floor: Box::new([]),
        };
        for q in 0..255 {
            let (c, d) = (values[q], values[q + 1]);
            book.inv_gap[q] = 1.0 / (d - c);
            // y − c > d − y is monotone in y (f32 rounding is): the last y in [c, d) for
            // which it fails, by bisection over the floats' order.
            let (mut lo, mut hi) = (order_key(c), order_key(d));
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let y = from_order_key(mid);
                if y - c > d - y {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            book.thresholds[q] = from_order_key(lo);
        }
        book.near = (0..2 * PER_SIGN)
            .map(|k| step_entry(k, &|y| book.nearest_by_search(y)))
            .collect();
        book.floor = (0..2 * PER_SIGN)
            .map(|k| {
                step_entry(k, &|y| {
                    book.values.partition_point(|&c| c <= y).saturating_sub(1) as u8
                })
            })
            .collect();
        // The lookups hold if no bucket spans two codes or two thresholds.
        for k in 0..PER_SIGN {
            let (lo, hi) = bucket_bounds(k);
            for (a, b) in [(lo, hi), (-hi, -lo)] {
                let inside = |t: &f32| a < *t && *t <= b;
                debug_assert!(book.values.iter().filter(|t| inside(t)).count() <= 1);
                debug_assert!(book.thresholds.iter().filter(|t| inside(t)).count() <= 1);
            }
        }
        book
    }

    /// The signed dynamic code book ([`CodeBook::dynamic`]`(true)`), built once.
    pub fn signed() -> &'static CodeBook {
        static BOOK: LazyLock<CodeBook> = LazyLock::new(|| CodeBook::dynamic(true));
        &BOOK
    }

    /// The unsigned dynamic code book ([`CodeBook::dynamic`]`(false)`), built once.
    pub fn unsigned() -> &'static CodeBook {
        static BOOK: LazyLock<CodeBook> = LazyLock::new(|| CodeBook::dynamic(false));
        &BOOK
    }

    /// The book for a buffer: unsigned for one that never goes negative, else signed.
    pub fn for_buffer(nonnegative: bool) -> &'static CodeBook {
        if nonnegative {
            Self::unsigned()
        } else {
            Self::signed()
        }
    }

    /// The code of +0.
    pub fn zero_code(&self) -> u8 {
        self.values.partition_point(|&c| c < 0.0) as u8
    }

    /// The 256 values, ascending.
    pub fn values(&self) -> &[f32; 256] {
        &self.values
    }

    /// The value of code `q`.
    #[inline(always)]
    pub fn value(&self, q: u8) -> f32 {
        self.values[usize::from(q)]
    }

    /// The codes of the neighbours cₗ ≤ y ≤ cₕ of `y` (equal when `y` is a value or outside
    /// the table's range).
    #[inline]
    pub fn bracket(&self, y: f32) -> (u8, u8) {
        let hi = self.values.partition_point(|&c| c < y);
        if hi == 0 {
            (0, 0)
        } else if hi == 256 {
            (255, 255)
        } else if self.values[hi] == y {
            (hi as u8, hi as u8)
        } else {
            ((hi - 1) as u8, hi as u8)
        }
    }

    /// The code of the value nearest to `y` (the lower one on a tie), by binary search.
    fn nearest_by_search(&self, y: f32) -> u8 {
        let (lo, hi) = self.bracket(y);
        if y - self.value(lo) <= self.value(hi) - y {
            lo
        } else {
            hi
        }
    }

    /// The code of the value nearest to `y` (the lower one on a tie; a NaN `y` gives a
    /// meaningless code): the first code of `y`'s bucket, or the next one past its threshold.
    #[inline(always)]
    pub fn nearest(&self, y: f32) -> u8 {
        let (k, a) = bucket(y);
        // SAFETY: `bucket` is below 2·PER_SIGN, the table's length.
        let e = unsafe { *self.near.get_unchecked(k) };
        step_code(e, y.to_bits(), a) as u8
    }

    /// The code of `y` rounded stochastically with the uniform 32 random bits `r`: between
    /// its neighbours cₗ ≤ y < cₕ, the upper with probability p = (y − cₗ)/(cₕ − cₗ), in
    /// `f32` (as (y − cₗ) times the gap's reciprocal), against the top 24 bits of `r`:
    /// up when r/2³² < p to within 2⁻²⁴. A value of the table (p = 0) never moves.
    #[inline(always)]
    pub fn stochastic(&self, y: f32, r: u32) -> u8 {
        let (k, a) = bucket(y);
        // SAFETY: as in `nearest`; `lo` is a code.
        let lo = step_code(unsafe { *self.floor.get_unchecked(k) }, y.to_bits(), a);
        let (c, inv) = unsafe {
            (
                *self.values.get_unchecked(lo as usize),
                *self.inv_gap.get_unchecked(lo as usize),
            )
        };
        let p = (y - c) * inv;
        let u = (r >> 8) as f32 * (1.0 / 16_777_216.0);
        (lo + u32::from(u < p)) as u8
    }
}

/// Quantizes one block `x` into `codes` (same length) and returns its scale
/// a = maxᵢ |xᵢ|; element i draws its stochastic bits at `first_index + i`. An all-zero
/// block has scale 0 and the codes of 0. A block holding a NaN or an infinity has a
/// non-finite scale (NaN, or +∞), so that all of it dequantizes to NaN: a non-finite
/// state never turns into finite numbers.
pub fn quantize_block(
    book: &CodeBook,
    x: &[f32],
    rounding: Rounding,
    first_index: u64,
    codes: &mut [u8],
) -> f32 {
    quantize_values(book, x, rounding, first_index, codes, false)
}

/// [`quantize_block`] over values of any [`Real`] type, each rounded to `f32` first. With
/// `keep_positive`, a positive value that rounds to the code of 0 takes the smallest positive
/// code instead (the second moments' rule, [`keep_positive`]).
#[inline(always)]
pub(crate) fn quantize_values<T: Real>(
    book: &CodeBook,
    x: &[T],
    rounding: Rounding,
    first_index: u64,
    codes: &mut [u8],
    keep_positive: bool,
) -> f32 {
    let absmax = quantize_rounded(book, x, rounding, first_index, codes);
    if keep_positive && absmax.is_finite() {
        crate::quant::keep_positive(book, x, codes);
    }
    absmax
}

/// Raises the code of every positive element of `x` that holds the code of 0 to the smallest
/// positive code: the rule of 8-bit state for buffers that never go negative. Such a buffer
/// divides the step (Adam's √v̂ + ε); a positive second moment stored as 0 beside a first
/// moment that is not turns the step into m̂/ε, the zero-point problem of 8-bit second moments
/// (Li et al., "Memory efficient optimizers with 4-bit states", 2023). The smallest positive
/// code is 3.25·10⁻⁷ of the block's absmax in the unsigned book: a value below it is stored
/// larger, which shortens its step, never lengthens it.
#[inline(always)]
pub fn keep_positive<T: Real>(book: &CodeBook, x: &[T], codes: &mut [u8]) {
    let zero = book.zero_code();
    for (q, v) in codes.iter_mut().zip(x) {
        *q += u8::from(*q == zero && v.as_f64() > 0.0);
    }
}

/// The quantization of [`quantize_values`] before the second moments' rule.
#[inline(always)]
fn quantize_rounded<T: Real>(
    book: &CodeBook,
    x: &[T],
    rounding: Rounding,
    first_index: u64,
    codes: &mut [u8],
) -> f32 {
    assert_eq!(
        x.len(),
        codes.len(),
        "a block and its codes differ in length"
    );
    // The largest magnitude as an integer maximum of the bits without their sign (a
    // vectorised reduction): above the bits of +∞ only NaNs lie, so one maximum finds both.
    let top = x.iter().fold(0u32, |m, v| {
        m.max(((v.as_f64() as f32).to_bits()) & 0x7FFF_FFFF)
    });
    let absmax = f32::from_bits(top);
    if !absmax.is_finite() {
        codes.fill(book.zero_code());
        return absmax;
    }
    // y = x·(1/a); a scale below 2⁻¹²⁶ divides instead (its reciprocal may overflow, and
    // 0·∞ is NaN). An all-zero block gives y = 0.
    let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
    let tiny = absmax > 0.0 && absmax < f32::MIN_POSITIVE;
    let scaled = |v: &T| {
        let v = v.as_f64() as f32;
        if tiny { v / absmax } else { v * inv }
    };
    match rounding {
        #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
        Rounding::Nearest if !tiny && simd::avx512() && as_f32(x).is_some() => {
            let x = as_f32(x).unwrap_or_default();
            // SAFETY: `avx512` checked that the CPU has AVX-512F.
            unsafe { simd::nearest(book, x, inv, codes) }
        }
        Rounding::Nearest => {
            for (q, v) in codes.iter_mut().zip(x) {
                *q = book.nearest(scaled(v));
            }
        }
        #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
        Rounding::Stochastic { key }
            if !tiny
                && simd::avx512()
                && as_f32(x).is_some()
                && (first_index >> 32) == ((first_index + x.len() as u64) >> 32) =>
        {
            let x = as_f32(x).unwrap_or_default();
            // SAFETY: `avx512` checked that the CPU has AVX-512F; the block's counters share
            // their top 32 bits (checked above), as the loop's one `Block` needs.
            unsafe { simd::stochastic(book, x, inv, key, first_index, codes) }
        }
        Rounding::Stochastic { key } => {
            for (i, (q, v)) in codes.iter_mut().zip(x).enumerate() {
                *q = book.stochastic(scaled(v), counter_bits(key, first_index + i as u64));
            }
        }
    }
    absmax
}

/// `x` as `f32`s, when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32<T: Real>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (same type id), so the slice is one of f32s.
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
    })
}

/// `x` as mutable `f32`s, when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32_mut<T: Real>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (same type id), so the slice is one of f32s.
        unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
    })
}

/// Dequantizes one block into values of any [`Real`] type: `out[i] = c[codes[i]]·absmax`,
/// in `f32`, widened exactly.
#[inline(always)]
pub(crate) fn dequantize_values<T: Real>(
    book: &CodeBook,
    codes: &[u8],
    absmax: f32,
    out: &mut [T],
) {
    #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
    if simd::avx512()
        && let Some(out) = as_f32_mut(out)
    {
        // SAFETY: `avx512` checked that the CPU has AVX-512F.
        return unsafe { simd::dequantize(book, codes, absmax, out) };
    }
    for (o, &q) in out.iter_mut().zip(codes) {
        *o = T::from_f64(f64::from(book.value(q) * absmax));
    }
}

/// The 16-lane AVX-512 loops of the lookups: the same operations as the scalar ones (an
/// `f32` multiply, integer bucket arithmetic, table reads as gathers, one comparison), so
/// the same codes and values.
#[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
mod simd {
    use super::{BUCKET_BITS, CodeBook, LOW_BITS, OFFSET_MASK, ONE_BITS, PER_SIGN};
    use std::arch::x86_64::*;

    /// 16 lanes of `step_code`: the entries `e` of the lanes' buckets, the lanes' bits and
    /// clamped magnitudes `a`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn step_code(e: __m512i, bits: __m512i, a: __m512i) -> __m512i {
        let mask = _mm512_set1_epi32(OFFSET_MASK as i32);
        let past = _mm512_cmpgt_epu32_mask(_mm512_and_si512(a, mask), _mm512_and_si512(e, mask));
        let away = _mm512_or_si512(_mm512_set1_epi32(1), _mm512_srai_epi32::<31>(bits));
        let code = _mm512_srli_epi32::<16>(e);
        _mm512_mask_add_epi32(code, past, code, away)
    }

    /// 16 lanes of `bucket`: the buckets and the clamped magnitudes of `bits`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bucket(bits: __m512i) -> (__m512i, __m512i) {
        let a = _mm512_min_epu32(
            _mm512_max_epu32(
                _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF)),
                _mm512_set1_epi32(LOW_BITS as i32),
            ),
            _mm512_set1_epi32(ONE_BITS as i32),
        );
        let b = _mm512_srli_epi32::<{ 23 - BUCKET_BITS }>(_mm512_sub_epi32(
            a,
            _mm512_set1_epi32(LOW_BITS as i32),
        ));
        // The lanes whose sign bit is set.
        let negative = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
        (
            _mm512_mask_add_epi32(b, negative, b, _mm512_set1_epi32(PER_SIGN as i32)),
            a,
        )
    }

    /// Whether the loops may run: the CPU has AVX-512F and the kernels' level is AVX-512.
    #[inline(always)]
    pub(super) fn avx512() -> bool {
        crate::kernel::SimdLevel::current() == crate::kernel::SimdLevel::Avx512
    }

    /// `codes[i] = nearest(x[i]·inv)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn nearest(book: &CodeBook, x: &[f32], inv: f32, codes: &mut [u8]) {
        let n = x.len().min(codes.len());
        let full = n / 16 * 16;
        let inv_v = _mm512_set1_ps(inv);
        let near = book.near.as_ptr().cast::<i32>();
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 ≤ n, within both slices; the gather reads `near` at buckets
            // (below 2·PER_SIGN, its length).
            unsafe {
                let y = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv_v);
                let bits = _mm512_castps_si512(y);
                let (b, a) = bucket(bits);
                let q = step_code(_mm512_i32gather_epi32::<4>(b, near), bits, a);
                _mm_storeu_si128(
                    codes.as_mut_ptr().add(i).cast::<__m128i>(),
                    _mm512_cvtepi32_epi8(q),
                );
            }
            i += 16;
        }
        for (q, &v) in codes[full..n].iter_mut().zip(&x[full..n]) {
            *q = book.nearest(v * inv);
        }
    }

    /// `codes[i] = stochastic(x[i]·inv, counter_bits(key, first + i))`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn stochastic(
        book: &CodeBook,
        x: &[f32],
        inv: f32,
        key: u64,
        first: u64,
        codes: &mut [u8],
    ) {
        let n = x.len().min(codes.len());
        let full = n / 16 * 16;
        let inv_v = _mm512_set1_ps(inv);
        let step = _mm512_set1_epi32(1);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let floor = book.floor.as_ptr().cast::<i32>();
        let (values, inv_gap) = (book.values.as_ptr(), book.inv_gap.as_ptr());
        let mut i = 0;
        while i < full {
            // `counter_bits(key, first + i + lane)`: lowbias32 over the block's 32-bit
            // counters (`lowp::Block`), lane by lane.
            let index = first + i as u64;
            let block = crate::lowp::Block::new(key, index);
            let (xor, add) = block.parts();
            // SAFETY: i + 16 ≤ n, within both slices; the gathers read `floor` at buckets
            // (below 2·PER_SIGN, its length) and the 256-entry tables at codes.
            unsafe {
                let c = _mm512_add_epi32(_mm512_set1_epi32(index as u32 as i32), lanes);
                let mut h = _mm512_add_epi32(
                    _mm512_xor_si512(c, _mm512_set1_epi32(xor as i32)),
                    _mm512_set1_epi32(add as i32),
                );
                h = _mm512_xor_si512(h, _mm512_srli_epi32::<16>(h));
                h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x7FEB_352D));
                h = _mm512_xor_si512(h, _mm512_srli_epi32::<15>(h));
                h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x846C_A68Bu32 as i32));
                h = _mm512_xor_si512(h, _mm512_srli_epi32::<16>(h));
                let u = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(h)),
                    _mm512_set1_ps(1.0 / 16_777_216.0),
                );
                let y = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv_v);
                let bits = _mm512_castps_si512(y);
                let (b, a) = bucket(bits);
                let lo = step_code(_mm512_i32gather_epi32::<4>(b, floor), bits, a);
                let c = _mm512_i32gather_ps::<4>(lo, values);
                let p = _mm512_mul_ps(_mm512_sub_ps(y, c), _mm512_i32gather_ps::<4>(lo, inv_gap));
                let up = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(u, p);
                let q = _mm512_mask_add_epi32(lo, up, lo, step);
                _mm_storeu_si128(
                    codes.as_mut_ptr().add(i).cast::<__m128i>(),
                    _mm512_cvtepi32_epi8(q),
                );
            }
            i += 16;
        }
        for (j, (q, &v)) in codes[full..n].iter_mut().zip(&x[full..n]).enumerate() {
            let r = crate::lowp::counter_bits(key, first + (full + j) as u64);
            *q = book.stochastic(v * inv, r);
        }
    }

    /// `out[i] = c[codes[i]]·a`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dequantize(book: &CodeBook, codes: &[u8], a: f32, out: &mut [f32]) {
        let n = codes.len().min(out.len());
        let full = n / 16 * 16;
        let a_v = _mm512_set1_ps(a);
        let values = book.values.as_ptr();
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 ≤ n, within both slices; the gather reads `values` at codes.
            unsafe {
                let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.as_ptr().add(i).cast()));
                let c = _mm512_i32gather_ps::<4>(q, values);
                _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(c, a_v));
            }
            i += 16;
        }
        for (o, &q) in out[full..n].iter_mut().zip(&codes[full..n]) {
            *o = book.value(q) * a;
        }
    }
}

/// Dequantizes one block: `out[i] = c[codes[i]]·absmax`.
pub fn dequantize_block(book: &CodeBook, codes: &[u8], absmax: f32, out: &mut [f32]) {
    assert_eq!(
        codes.len(),
        out.len(),
        "a block and its codes differ in length"
    );
    dequantize_values(book, codes, absmax, out);
}

/// Quantizes a whole tensor block by block: `codes` has `x.len()` bytes and `absmax`
/// ⌈len/[`BLOCK_SIZE`]⌉ scales.
pub fn quantize(
    book: &CodeBook,
    x: &[f32],
    rounding: Rounding,
    codes: &mut [u8],
    absmax: &mut [f32],
) {
    assert_eq!(
        x.len(),
        codes.len(),
        "a tensor and its codes differ in length"
    );
    assert_eq!(
        absmax.len(),
        x.len().div_ceil(BLOCK_SIZE),
        "one scale per block"
    );
    for (k, ((x, q), a)) in x
        .chunks(BLOCK_SIZE)
        .zip(codes.chunks_mut(BLOCK_SIZE))
        .zip(absmax.iter_mut())
        .enumerate()
    {
        *a = quantize_block(book, x, rounding, (k * BLOCK_SIZE) as u64, q);
    }
}

/// The codes of `values` given their blocks' scales `absmax` (blocks of `block`): for each
/// value, the code q with c\[q\]·a = value exactly (the code of 0 where a is 0 or not
/// finite, whose values are then 0 or NaN). `Err(i)` names the first value that is no
/// c\[q\]·a of its block: what a state dict holding 8-bit state must satisfy.
pub fn encode_exact(
    book: &CodeBook,
    values: &[f32],
    absmax: &[f32],
    block: usize,
) -> std::result::Result<Vec<u8>, usize> {
    let mut codes = Vec::with_capacity(values.len());
    for (k, chunk) in values.chunks(block).enumerate() {
        let a = absmax.get(k).copied().unwrap_or(f32::NAN);
        for (j, &x) in chunk.iter().enumerate() {
            let i = k * block + j;
            if a == 0.0 || !a.is_finite() {
                let expected = book.value(book.zero_code()) * a;
                if x == expected || (x.is_nan() && expected.is_nan()) {
                    codes.push(book.zero_code());
                    continue;
                }
                return Err(i);
            }
            // The nearest code of x/a, or a neighbour: c·a rounds, so the code that gives x
            // back is within one of it.
            let q = book.nearest(x / a);
            let found = [q, q.saturating_sub(1), q.saturating_add(1)]
                .into_iter()
                .find(|&c| book.value(c) * a == x && (x != 0.0 || c == book.zero_code()));
            match found {
                Some(c) => codes.push(c),
                None => return Err(i),
            }
        }
    }
    Ok(codes)
}

/// Dequantizes a whole tensor quantized by [`quantize`].
pub fn dequantize(book: &CodeBook, codes: &[u8], absmax: &[f32], out: &mut [f32]) {
    assert_eq!(
        codes.len(),
        out.len(),
        "a tensor and its codes differ in length"
    );
    assert_eq!(
        absmax.len(),
        codes.len().div_ceil(BLOCK_SIZE),
        "one scale per block"
    );
    for ((q, o), &a) in codes
        .chunks(BLOCK_SIZE)
        .zip(out.chunks_mut(BLOCK_SIZE))
        .zip(absmax)
    {
        dequantize_block(book, q, a, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_key_orders_floats_and_inverts() {
        let xs = [
            f32::NEG_INFINITY,
            -1.0,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            0.5,
            1.0,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{w:?}");
        }
        for x in xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn the_table_search_is_the_binary_search() {
        // Every code's value and its float neighbours, the f32 points around every pair's
        // midpoint, and a log-uniform sweep over (−2, 2) of 2·10⁵ values per book.
        for signed in [true, false] {
            let book = CodeBook::dynamic(signed);
            let mut ys = vec![0.0f32, -0.0, 2.0, -2.0, f32::INFINITY, f32::NEG_INFINITY];
            for w in book.values().windows(2) {
                let mid = (w[0] + w[1]) / 2.0;
                let mut m = mid;
                for _ in 0..3 {
                    m = m.next_down();
                }
                for _ in 0..7 {
                    ys.push(m);
                    m = m.next_up();
                }
                for v in w {
                    ys.extend([*v, v.next_up(), v.next_down()]);
                }
            }
            for i in 0..100_000 {
                let y = 10f32.powf(-8.0 + 8.3 * (i as f32) / 100_000.0);
                ys.extend([y, -y]);
            }
            for y in ys {
                assert_eq!(book.nearest(y), book.nearest_by_search(y), "{y:e} {signed}");
            }
        }
    }

    /// Stochastic rounding picks between the binary search's neighbours: with r = 0 (u = 0)
    /// the upper one unless y is a value, with r = 2³² − 1 the lower one unless y lies
    /// within 2⁻²⁴ of a gap's top; below the table it keeps the first code.
    #[test]
    fn stochastic_rounding_picks_between_the_searched_neighbours() {
        for signed in [true, false] {
            let book = CodeBook::dynamic(signed);
            let mut ys: Vec<f32> = book.values().to_vec();
            for w in book.values().windows(2) {
                ys.extend([w[0].next_up(), (w[0] + w[1]) / 2.0, w[1].next_down()]);
            }
            for i in 0..100_000 {
                let y = 10f32.powf(-8.0 + 8.0 * (i as f32) / 100_000.0);
                ys.extend([y, -y]);
            }
            ys.extend([-1.0, 1.0, 0.0, -0.0]);
            for y in ys {
                let (lo, hi) = book.bracket(y);
                let up = book.stochastic(y, 0);
                let down = book.stochastic(y, u32::MAX);
                if lo == hi || y < book.value(0) {
                    assert_eq!((up, down), (lo, lo), "{y:e} {signed}");
                } else {
                    assert_eq!(up, hi, "{y:e} {signed}");
                    let p = (y - book.value(lo)) / (book.value(hi) - book.value(lo));
                    if p < 0.999 {
                        assert_eq!(down, lo, "{y:e} {signed}");
                    }
                }
            }
        }
    }

    /// A block whose scale is subnormal (its reciprocal overflows) still quantizes: zeros
    /// stay 0 and the largest element is exact.
    #[test]
    fn a_subnormal_scale_quantizes_like_any_other() {
        let book = CodeBook::dynamic(false);
        let x = [0.0f32, 1e-40, 5e-41, 0.0];
        let mut codes = [0u8; 4];
        let a = quantize_block(&book, &x, Rounding::Nearest, 0, &mut codes);
        assert_eq!(a, 1e-40);
        let mut out = [1.0f32; 4];
        dequantize_block(&book, &codes, a, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], 1e-40);
        assert_eq!(out[3], 0.0);
        assert!((out[2] - 5e-41).abs() <= 1e-42, "{}", out[2]);
    }

    /// The AVX-512 loops give the scalar lookups' codes and values, on every code, the floats
    /// around every threshold, a log sweep of both signs and the values past ±1 that a
    /// rounded reciprocal can make (with a ragged tail).
    #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
    #[test]
    fn the_avx512_loops_are_the_scalar_lookups() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for signed in [true, false] {
            let book = CodeBook::dynamic(signed);
            let mut ys: Vec<f32> = book.values().to_vec();
            for &t in &book.thresholds[..255] {
                ys.extend([t, t.next_up(), t.next_down()]);
            }
            for i in 0..50_000 {
                let y = 10f32.powf(-9.0 + 9.0 * (i as f32) / 50_000.0);
                ys.extend([y, -y]);
            }
            ys.extend([
                1.0f32.next_up(),
                (-1.0f32).next_down(),
                0.0,
                -0.0,
                1e-30,
                -1e-30,
            ]);
            ys.push(0.5); // 16k + 5 values: a ragged tail
            let mut simd_codes = vec![0u8; ys.len()];
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { simd::nearest(&book, &ys, 1.0, &mut simd_codes) };
            for (y, &q) in ys.iter().zip(&simd_codes) {
                assert_eq!(q, book.nearest(*y), "{y:e} {signed}");
            }
            // Stochastic rounding: each lane draws its own counter's bits, across a 2³²
            // boundary of the counters' low half too.
            for first in [0u64, 5 << 32, (1 << 32) - 7] {
                let ys = &ys[..if first == (1 << 32) - 7 { 7 } else { ys.len() }];
                let mut simd_codes = vec![0u8; ys.len()];
                // SAFETY: as above.
                unsafe { simd::stochastic(&book, ys, 1.0, 0xDEAD_BEEF, first, &mut simd_codes) };
                for (i, (y, &q)) in ys.iter().zip(&simd_codes).enumerate() {
                    let r = counter_bits(0xDEAD_BEEF, first + i as u64);
                    assert_eq!(q, book.stochastic(*y, r), "{y:e} {signed} {first} {i}");
                }
            }
            let codes: Vec<u8> = (0..=255).cycle().take(1000).collect();
            let mut out = vec![0f32; codes.len()];
            // SAFETY: as above.
            unsafe { simd::dequantize(&book, &codes, 0.37, &mut out) };
            for (&q, &o) in codes.iter().zip(&out) {
                assert_eq!(o.to_bits(), (book.value(q) * 0.37).to_bits());
            }
        }
    }
}
