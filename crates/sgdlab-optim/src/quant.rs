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

/// A sorted table of 256 `f32` values in \[−1, 1\] that a byte indexes.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeBook {
    values: [f32; 256],
    /// For each bucket of [`order_key`]`(y) >> LUT_SHIFT`, the nearest code of the bucket's
    /// smallest `y`: where [`CodeBook::nearest`] starts its search.
    lut: Box<[u8]>,
}

/// The low bits of an [`order_key`] that one bucket of the nearest-code table spans: 2¹⁴
/// buckets, each 1/32 of an octave wide (3 % relative), so that a search from a bucket's
/// start passes at most a few codes.
const LUT_SHIFT: u32 = 18;

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
            lut: Box::new([]),
        };
        book.lut = (0..1u32 << (32 - LUT_SHIFT))
            .map(|k| book.nearest_by_search(from_order_key(k << LUT_SHIFT)))
            .collect();
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
    /// meaningless code). A table over the top bits of `y` gives the nearest code of the
    /// smallest float sharing them, and a short walk up the table finishes: the first code q
    /// with y − c\[q\] ≤ c\[q+1\] − y, which rounding to `f32` keeps monotone in q.
    #[inline]
    pub fn nearest(&self, y: f32) -> u8 {
        let mut q = self.lut[(order_key(y) >> LUT_SHIFT) as usize];
        while q < 255 && y - self.value(q) > self.value(q + 1) - y {
            q += 1;
        }
        q
    }

    /// The code of `y` rounded stochastically with the uniform 32 random bits `r`: the upper
    /// neighbour with probability (y − cₗ)/(cₕ − cₗ).
    #[inline]
    pub fn stochastic(&self, y: f32, r: u32) -> u8 {
        let (lo, hi) = self.bracket(y);
        if lo == hi {
            return lo;
        }
        let (a, b) = (f64::from(self.value(lo)), f64::from(self.value(hi)));
        let p = (f64::from(y) - a) / (b - a);
        if f64::from(r) < p * 4_294_967_296.0 {
            hi
        } else {
            lo
        }
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
    quantize_values(book, x, rounding, first_index, codes)
}

/// [`quantize_block`] over values of any [`Real`] type, each rounded to `f32` first.
#[inline(always)]
pub(crate) fn quantize_values<T: Real>(
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
    // `max` drops NaNs, so they are looked for apart: a NaN times 0 stays NaN, and so does
    // an infinity (which the maximum keeps anyway).
    let (absmax, probe) = x.iter().fold((0.0f32, 0.0f32), |(m, z), v| {
        let v = v.as_f64() as f32;
        (m.max(v.abs()), z + v * 0.0)
    });
    if !absmax.is_finite() || probe.is_nan() {
        codes.fill(book.zero_code());
        return if probe.is_nan() && absmax.is_finite() {
            f32::NAN
        } else {
            absmax
        };
    }
    let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
    match rounding {
        Rounding::Nearest => {
            for (q, v) in codes.iter_mut().zip(x) {
                *q = book.nearest((v.as_f64() as f32) * inv);
            }
        }
        Rounding::Stochastic { key } => {
            for (i, (q, v)) in codes.iter_mut().zip(x).enumerate() {
                let y = (v.as_f64() as f32) * inv;
                *q = book.stochastic(y, counter_bits(key, first_index + i as u64));
            }
        }
    }
    absmax
}

/// Dequantizes one block: `out[i] = c[codes[i]]·absmax`.
pub fn dequantize_block(book: &CodeBook, codes: &[u8], absmax: f32, out: &mut [f32]) {
    assert_eq!(
        codes.len(),
        out.len(),
        "a block and its codes differ in length"
    );
    for (o, &q) in out.iter_mut().zip(codes) {
        *o = book.value(q) * absmax;
    }
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
}
