//! bfloat16: exact conversion, round-to-nearest-even, and stochastic rounding drawn from a
//! counter-based generator.
//!
//! A bfloat16 is the top 16 bits of an `f32` (sign, 8 exponent bits, 7 mantissa bits), so
//! widening is exact and narrowing drops 16 bits:
//!
//! * **nearest** ([`bf16_nearest`]) rounds to the nearest bfloat16, ties to even — an EMA
//!   v ← βv + (1 − β)x stored this way stops moving once its increment
//!   (1 − β)(x − v) is below half an ulp of v;
//! * **stochastic** ([`bf16_stochastic`]) rounds up with probability equal to the dropped
//!   fraction of an ulp, P(↑) = r/2¹⁶ for the dropped bits r, so that
//!   E\[round(x)\] = x exactly (for x within the finite range), with variance
//!   u²f(1 − f) for ulp u and fraction f.
//!
//! The random bits of stochastic rounding come from [`counter_bits`]: a hash of a key
//! (seed, step, tensor, pair of state buffers; [`stream_key`]) and the element's index, each of
//! the pair taking one half of the 32-bit word ([`half_word`]), so that every element's
//! draw is fixed by where it is, not by which thread computes it or in which order — the
//! same bits for any thread count, and across a resume.

/// The bfloat16 bits of `x` rounded to nearest, ties to even. NaN stays NaN (quiet);
/// values beyond the largest bfloat16 round to infinity as IEEE rounding does. Branch-free,
/// so that loops over it vectorise.
#[inline(always)]
pub fn bf16_nearest(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
    // Selected before the one shift that both sides need (a vector loop shifts once).
    let quiet_nan = bits | 0x0040_0000;
    ((if x.is_nan() { quiet_nan } else { rounded }) >> 16) as u16
}

/// The bfloat16 bits of `x` rounded stochastically with the 16 random bits `r` (the low half
/// of a uniform `u32`): up (away from zero) when the 16 dropped bits plus `r` carry, i.e.
/// with probability (dropped bits)/2¹⁶. NaN stays NaN (quiet); infinities stay
/// infinite. Branch-free, so that loops over it vectorise.
#[inline(always)]
pub fn bf16_stochastic(x: f32, r: u32) -> u16 {
    let bits = x.to_bits();
    // Infinities have 16 zero low bits, so adding r < 2^16 leaves them infinite.
    let rounded = bits.wrapping_add(r & 0xFFFF);
    // A NaN could carry into its sign (0x7FFF_FFFF + 1) or, with its payload only in the
    // dropped bits, truncate to infinity: it keeps its top bits, made quiet. (Selected in
    // 32 bits, then shifted and narrowed once: one shift and one pack per vector.)
    let quiet_nan = bits | 0x0040_0000;
    ((if x.is_nan() { quiet_nan } else { rounded }) >> 16) as u16
}

/// The `f32` value of bfloat16 bits (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `x` narrowed to `f32` with round-to-odd (truncate toward zero, then set the last bit if
/// anything was dropped): rounding that result to bfloat16 gives the correctly rounded
/// bfloat16 of `x`, as `f32` keeps 16 more bits than bfloat16 needs.
#[inline(always)]
pub fn f64_to_f32_odd(x: f64) -> f32 {
    let f = x as f32;
    if !f.is_finite() || f64::from(f) == x {
        return f;
    }
    // `f` is the nearest f32; step toward zero if it rounded away from it.
    let t = if f64::from(f).abs() > x.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    };
    f32::from_bits(t.to_bits() | 1)
}

/// The 32 random bits of element `index` in the stream `key` (from [`stream_key`]): the
/// `lowbias32` integer hash (Wellons) of the key and index, a bijection of the index for
/// each key. Cheap enough to run per element inside a vectorised loop ([`Block`]).
#[inline(always)]
pub fn counter_bits(key: u64, index: u64) -> u32 {
    Block::new(key, index).bits(index as u32)
}

/// A stream's random bits for the indices of one block of 2³² (those sharing
/// `index >> 32`), with only 32-bit arithmetic left per element: what a vectorised loop over
/// a chunk of a tensor needs. `Block::new(key, i).bits(i as u32) == counter_bits(key, i)`.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    xor: u32,
    add: u32,
}

impl Block {
    /// The block of `index` in stream `key`.
    #[inline(always)]
    pub fn new(key: u64, index: u64) -> Self {
        Self {
            xor: (key as u32) ^ ((index >> 32) as u32).wrapping_mul(0x9E37_79B9),
            add: (key >> 32) as u32,
        }
    }

    /// The block's two words: what the counter is xored with, then added to, before the
    /// hash ([`Block::bits`]); for loops that hash many counters at once.
    #[inline(always)]
    pub fn parts(self) -> (u32, u32) {
        (self.xor, self.add)
    }

    /// The bits of the element whose index has low half `index32`.
    #[inline(always)]
    pub fn bits(self, index32: u32) -> u32 {
        let mut x = (index32 ^ self.xor).wrapping_add(self.add);
        x ^= x >> 16;
        x = x.wrapping_mul(0x7FEB_352D);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846C_A68B);
        x ^= x >> 16;
        x
    }
}

/// The 16 random bits that buffer `buffer` takes from a stream's 32-bit `word`: the low half
/// for even buffers, the high half for odd ones (in the low 16 bits of the result, which
/// [`bf16_stochastic`] reads). Two state buffers of an element share one hash this way, half
/// the cost of hashing each; the halves of `lowbias32`'s output are each uniform.
#[inline(always)]
pub fn half_word(word: u32, buffer: usize) -> u32 {
    word >> (16 * (buffer & 1))
}

/// The key of one stream of stochastic rounding: SplitMix64 over the seed, the step, the
/// tensor and the stream within the tensor (`stream`: the optimizer uses one per pair of state
/// buffers), so that streams of different steps, tensors and pairs are unrelated.
pub fn stream_key(seed: u64, step: u64, tensor: u64, stream: u64) -> u64 {
    let mut h = splitmix(seed);
    for v in [step, tensor, stream] {
        h = splitmix(h ^ v);
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How a value is narrowed to bfloat16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest, ties to even.
    Nearest,
    /// Stochastic rounding with the random bits of a [`stream_key`] stream.
    Stochastic {
        /// The stream's key.
        key: u64,
    },
}

impl Rounding {
    /// `x` as bfloat16 bits, element `index` of the stream.
    #[inline(always)]
    pub fn round(self, x: f32, index: u64) -> u16 {
        match self {
            Rounding::Nearest => bf16_nearest(x),
            Rounding::Stochastic { key } => bf16_stochastic(x, counter_bits(key, index)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact reference: the two bfloat16 neighbours of `x` and where `x` lies between them,
    /// in f64 arithmetic.
    fn neighbours(x: f32) -> (u16, u16, f64) {
        let lo = (x.to_bits() >> 16) as u16; // truncation toward zero
        let hi = lo + 1;
        let (a, b) = (f64::from(bf16_to_f32(lo)), f64::from(bf16_to_f32(hi)));
        (lo, hi, (f64::from(x) - a) / (b - a))
    }

    #[test]
    fn widening_is_exact_and_narrowing_round_trips_every_bf16() {
        for b in 0..=u16::MAX {
            let x = bf16_to_f32(b);
            if x.is_nan() {
                assert!(bf16_to_f32(bf16_nearest(x)).is_nan());
                continue;
            }
            assert_eq!(bf16_nearest(x), b, "{b:#06x}");
            for r in [0, 1, 0x7FFF, 0xFFFF] {
                assert_eq!(bf16_stochastic(x, r), b, "exact values never move");
            }
            assert_eq!(f64::from(x).to_bits(), f64::from(bf16_to_f32(b)).to_bits());
        }
    }

    #[test]
    fn nearest_matches_an_exact_reference_with_ties_to_even() {
        let mut state = 12345u64;
        for i in 0..200_000u64 {
            state = splitmix(state ^ i);
            let x = f32::from_bits(state as u32);
            if !x.is_finite() || x.abs() >= 3.38e38 {
                continue;
            }
            let (lo, hi, frac) = neighbours(x.abs());
            let want = if frac < 0.5 || (frac == 0.5 && lo % 2 == 0) {
                lo
            } else {
                hi
            };
            let got = bf16_nearest(x.abs());
            assert_eq!(got, want, "{x:e}: frac {frac}");
            assert_eq!(bf16_nearest(-x.abs()), want | 0x8000, "symmetric");
        }
        // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to the even 1.
        assert_eq!(bf16_to_f32(bf16_nearest(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(
            bf16_to_f32(bf16_nearest(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert!(bf16_to_f32(bf16_nearest(f32::MAX)).is_infinite());
    }

    #[test]
    fn stochastic_rounding_keeps_nan_and_infinity() {
        for bits in [
            0x7F80_0001u32,
            0x7FFF_FFFF,
            0xFFFF_FFFF,
            0x7FC0_0000,
            0xFF80_FFFF,
        ] {
            let x = f32::from_bits(bits);
            for r in [0, 1, 0x8000, 0xFFFF, u32::MAX] {
                let b = bf16_stochastic(x, r);
                assert!(bf16_to_f32(b).is_nan(), "{bits:#x} {r:#x}: {b:#x}");
                assert_eq!(b & 0x8000, ((bits >> 16) as u16) & 0x8000, "sign kept");
            }
        }
        for x in [f32::INFINITY, f32::NEG_INFINITY] {
            for r in [0, 1, 0xFFFF, u32::MAX] {
                assert_eq!(bf16_to_f32(bf16_stochastic(x, r)), x);
            }
        }
    }

    #[test]
    fn stochastic_rounding_rounds_up_with_the_dropped_fraction() {
        // Over all 2^16 values of r, the fraction rounded up is exactly the dropped fraction.
        for x in [1.0f32 + 2f32.powi(-10), -3.3, 1e-20, 123.456, 0.1] {
            let (lo, hi, frac) = neighbours(x.abs());
            let ups = (0..=0xFFFFu32)
                .filter(|&r| bf16_stochastic(x.abs(), r) == hi)
                .count();
            let downs = (0..=0xFFFFu32)
                .filter(|&r| bf16_stochastic(x.abs(), r) == lo)
                .count();
            assert_eq!(ups + downs, 65536);
            assert_eq!(ups as f64 / 65536.0, frac, "{x}");
        }
    }

    #[test]
    fn round_to_odd_makes_f64_rounding_correct() {
        let mut state = 99u64;
        for i in 0..100_000u64 {
            state = splitmix(state ^ i);
            let x = f64::from_bits(state);
            if !x.is_finite() || x.abs() > 1e38 || x.abs() < 1e-37 {
                continue;
            }
            let via = bf16_to_f32(bf16_nearest(f64_to_f32_odd(x)));
            // The nearest bfloat16 computed in f64: compare distances to the two neighbours.
            let t = bf16_nearest(x as f32);
            let cand = [t.wrapping_sub(1), t, t.wrapping_add(1)].map(bf16_to_f32);
            let best = cand
                .iter()
                .map(|&c| (f64::from(c) - x).abs())
                .fold(f64::INFINITY, f64::min);
            assert!((f64::from(via) - x).abs() <= best, "{x:e}");
        }
    }

    #[test]
    fn counter_bits_are_a_bijection_per_key_and_look_uniform() {
        let key = stream_key(1, 2, 3, 4);
        let mut seen = std::collections::HashSet::new();
        let mut ones = [0u32; 16];
        for i in 0..65536u64 {
            let r = counter_bits(key, i);
            assert!(seen.insert(r));
            for (b, count) in ones.iter_mut().enumerate() {
                *count += (r >> b) & 1;
            }
        }
        // Each of the low 16 bits is set about half the time (binomial sd 128).
        for count in ones {
            assert!((f64::from(count) - 32768.0).abs() < 6.0 * 128.0, "{count}");
        }
        // The two halves that a pair of buffers takes ([`half_word`]) are each uniform
        // (mean 2^15 - 1/2, sd 2^16/sqrt(12) / sqrt(n)) and uncorrelated with each other.
        let n = 65536.0;
        let halves: Vec<(f64, f64)> = (0..65536u64)
            .map(|i| {
                let w = counter_bits(key, i);
                let h = |b| f64::from(half_word(w, b) & 0xFFFF);
                (h(0), h(1))
            })
            .collect();
        let sd = 65536.0 / 12f64.sqrt();
        for pick in [|h: &(f64, f64)| h.0, |h: &(f64, f64)| h.1] {
            let mean = halves.iter().map(pick).sum::<f64>() / n;
            assert!((mean - 32767.5).abs() < 5.0 * sd / n.sqrt(), "{mean}");
        }
        let corr = halves
            .iter()
            .map(|(a, b)| (a - 32767.5) * (b - 32767.5))
            .sum::<f64>()
            / (n * sd * sd);
        assert!(corr.abs() < 5.0 / n.sqrt(), "{corr}");
        assert_eq!(half_word(0xABCD_1234, 0) & 0xFFFF, 0x1234);
        assert_eq!(half_word(0xABCD_1234, 1), 0xABCD);
        assert_eq!(half_word(0xABCD_1234, 2) & 0xFFFF, 0x1234);
        assert_ne!(stream_key(1, 2, 3, 4), stream_key(1, 2, 3, 5));
        assert_ne!(stream_key(1, 2, 3, 4), stream_key(1, 3, 3, 4));
    }

    /// `counter_bits` is Wellons' `lowbias32` of the index mixed with the key: with key 0 and
    /// an index below 2³² the mixing is the identity, so the published inverse
    /// (`lowbias32_r`, constants `0x43021123`, `0x1d69e2a5`) must give the index back — which
    /// pins every shift and multiplier, where a bijection or uniformity test would pass a
    /// different but still invertible mixer. With a key, the inverse gives the index xor the
    /// key's low half plus its high half, and `Block` agrees with it across a 2³² block.
    #[test]
    fn counter_bits_are_lowbias32_as_published() {
        fn lowbias32_r(mut x: u32) -> u32 {
            x ^= x >> 16;
            x = x.wrapping_mul(0x4302_1123);
            x ^= x >> 15 ^ x >> 30;
            x = x.wrapping_mul(0x1d69_e2a5);
            x ^= x >> 16;
            x
        }
        let mut state = 7u64;
        for i in (0..4096u64).chain([u64::from(u32::MAX)]) {
            assert_eq!(lowbias32_r(counter_bits(0, i)), i as u32, "{i}");
            state = splitmix(state);
            let (key, index) = (state, u64::from(state as u32 ^ 0x5555));
            let mixed = (index as u32 ^ key as u32).wrapping_add((key >> 32) as u32);
            assert_eq!(lowbias32_r(counter_bits(key, index)), mixed);
        }
        assert_eq!(counter_bits(0, 0), 0);
        for i in [(1u64 << 32) - 1, 1 << 32, (1 << 32) + 1, 5 << 32] {
            let key = stream_key(3, 1, 4, 1);
            assert_eq!(Block::new(key, i).bits(i as u32), counter_bits(key, i));
        }
        assert_ne!(
            counter_bits(9, 1 << 32),
            counter_bits(9, 0),
            "the block counts"
        );
    }

    /// `splitmix` is one step of SplitMix64 (Steele, Lea and Flood 2014) from the given state:
    /// the published sequence from seed 1234567 is `splitmix(1234567 + kγ)` for k = 0, 1, 2.
    /// Every `(seed, step, tensor, stream)` of a small grid gets its own key.
    #[test]
    fn splitmix_matches_the_published_sequence_and_keys_are_distinct() {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let published = [
            0x599E_D017_FB08_FC85u64,
            0x2C73_F084_5854_0FA5,
            0x883E_BCE5_A3F2_7C77,
        ];
        for (k, want) in (0u64..).zip(published) {
            assert_eq!(
                splitmix(1234567u64.wrapping_add(k.wrapping_mul(GAMMA))),
                want
            );
        }
        let mut keys = std::collections::HashSet::new();
        for seed in 0..6 {
            for step in 0..6 {
                for tensor in 0..6 {
                    for stream in 0..6 {
                        assert!(keys.insert(stream_key(seed, step, tensor, stream)));
                    }
                }
            }
        }
        assert_eq!(
            stream_key(1, 2, 3, 4),
            splitmix(splitmix(splitmix(splitmix(1) ^ 2) ^ 3) ^ 4)
        );
    }

    /// Round-to-odd by its definition, on values exactly representable in `f32` (returned as
    /// they are), on random `f64`s (the truncation toward zero with its last bit set: odd, and
    /// within one `f32` ulp of `x` on the same side as the truncation), and on the values it
    /// exists for: just above and below a bfloat16 tie, where rounding to the nearest `f32`
    /// first lands on the tie and then rounds the wrong way.
    #[test]
    fn round_to_odd_by_its_definition() {
        let mut state = 5u64;
        for i in 0..100_000u64 {
            state = splitmix(state ^ i);
            let exact = f32::from_bits(state as u32);
            if exact.is_finite() {
                assert_eq!(f64_to_f32_odd(f64::from(exact)).to_bits(), exact.to_bits());
            }
            let x = f64::from_bits(state);
            if !x.is_finite() || x.abs() > 3e38 || x.abs() < 1e-37 || f64::from(x as f32) == x {
                continue;
            }
            let r = f64_to_f32_odd(x);
            assert_eq!(r.to_bits() & 1, 1, "{x:e}: odd");
            // The truncation toward zero: the largest-magnitude f32 not beyond x.
            let near = x as f32;
            let trunc = if f64::from(near).abs() > x.abs() {
                f32::from_bits(near.to_bits() - 1)
            } else {
                near
            };
            assert!(f64::from(trunc).abs() < x.abs(), "{x:e}");
            let want = f32::from_bits(trunc.to_bits() | 1);
            assert_eq!(r.to_bits(), want.to_bits(), "{x:e}");
            let above = f32::from_bits(trunc.to_bits() + 1);
            assert!(
                f64::from(above).abs() > x.abs(),
                "{x:e}: between neighbours"
            );
        }
        let tie = 1.0 + 2f64.powi(-8);
        for (x, want) in [
            (tie + 2f64.powi(-40), 1.0 + 2f32.powi(-7)),
            (tie - 2f64.powi(-40), 1.0),
            (-(tie + 2f64.powi(-40)), -(1.0 + 2f32.powi(-7))),
        ] {
            assert_eq!(
                x as f32,
                (tie as f32).copysign(x as f32),
                "the trap: lands on the tie"
            );
            assert_eq!(bf16_to_f32(bf16_nearest(f64_to_f32_odd(x))), want, "{x}");
        }
        assert!(f64_to_f32_odd(1e300).is_infinite() && f64_to_f32_odd(f64::NAN).is_nan());
    }

    /// `Rounding::round` is `bf16_nearest`, or `bf16_stochastic` with the element's bits of
    /// the stream.
    #[test]
    fn rounding_dispatches_to_its_mode() {
        let key = stream_key(8, 6, 7, 5);
        for i in 0..1000u64 {
            let x = 1.0 + (i as f32) * 1.37e-4;
            assert_eq!(Rounding::Nearest.round(x, i), bf16_nearest(x));
            let want = bf16_stochastic(x, counter_bits(key, i));
            assert_eq!(Rounding::Stochastic { key }.round(x, i), want);
        }
    }
}
