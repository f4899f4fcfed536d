//! Arithmetic whose bits do not depend on how the compiler treats the call.
//!
//! `f64::powi` is an LLVM intrinsic: with arguments the optimizer can see as constants it is
//! folded at compile time to a correctly rounded xⁿ, and otherwise it runs the runtime's
//! repeated squaring, which can differ in the last bit. Whether a call is folded depends on
//! inlining, so the same source can give different bits in two builds (or two crates).
//! [`powi`] is that repeated squaring written out: the same bits whatever the build.

/// xⁿ by repeated squaring (compiler-rt's `__powidf2`, the value `f64::powi` gives at run
/// time): r ← r x for each set bit of |n| from the lowest, squaring x in
/// between, and 1/r for n < 0. The same bits on every build.
pub fn powi(x: f64, n: i32) -> f64 {
    let (mut x, mut k, mut r) = (x, n.unsigned_abs(), 1.0);
    loop {
        if k & 1 == 1 {
            r *= x;
        }
        k >>= 1;
        if k == 0 {
            break;
        }
        x *= x;
    }
    if n < 0 { 1.0 / r } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime's repeated squaring, bit for bit: 0.99^100 is 0.3660323412732289 by
    /// squaring (the correctly rounded power ends in ...292), and the exact small cases.
    #[test]
    fn powi_is_repeated_squaring() {
        assert_eq!(powi(0.99, 100), 0.3660323412732289);
        assert_ne!(powi(0.99, 100), 0.99f64.powf(100.0));
        assert_eq!(powi(3.0, 0), 1.0);
        assert_eq!(powi(3.0, 5), 243.0);
        assert_eq!(powi(2.0, -3), 0.125);
        assert_eq!(powi(-2.0, 3), -8.0);
        let x = std::hint::black_box(0.999);
        for n in [1, 2, 7, 100, 1000, 65_537, -5] {
            assert_eq!(
                powi(x, n).to_bits(),
                x.powi(std::hint::black_box(n)).to_bits(),
                "{n}"
            );
        }
    }
}
