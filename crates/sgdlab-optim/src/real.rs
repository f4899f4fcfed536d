//! The floating-point types sgdlab computes in: `f32` and `f64`.

/// A floating-point element type (`f32` or `f64`).
///
/// Per-tensor scalars (bias corrections, learning rates) are always computed in `f64` and
/// converted once per step with [`Real::from_f64`]; per-element arithmetic runs in `Self`.
pub trait Real:
    num_traits::Float
    + num_traits::FloatConst
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + Default
    + Send
    + Sync
    + 'static
{
    /// Name of the type as users write it (`"f32"`, `"f64"`).
    const NAME: &'static str;
    /// Converts from `f64`, rounding to nearest.
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn as_f64(self) -> f64;
    /// Size in bytes.
    const BYTES: usize;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads a value from exactly [`Real::BYTES`] little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
    /// The value of bfloat16 bits (exact: every bfloat16 is an `f32` and an `f64`).
    fn from_bf16(bits: u16) -> Self;
    /// `self` as the `f32` from which bfloat16 rounding gives the correctly rounded result:
    /// itself for `f32`; round-to-odd for `f64` ([`crate::lowp::f64_to_f32_odd`]).
    fn to_f32_for_bf16(self) -> f32;
    /// Runs `f` on a scratch buffer of `len` elements owned by the calling thread (reused
    /// between calls, never shrunk; its contents on entry are unspecified).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// C ← AB + βC (`matrixmultiply`'s `sgemm`/`dgemm` with α = 1).
    ///
    /// # Safety
    /// As `matrixmultiply::sgemm`: every element addressed by the dimensions and strides must
    /// lie inside valid allocations, and `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_real {
    ($ty:ident, $bytes:literal, $gemm:ident, $to32:expr) => {
        impl Real for $ty {
            const NAME: &'static str = stringify!($ty);
            const BYTES: usize = $bytes;
            #[inline(always)]
            fn from_bf16(bits: u16) -> Self {
                Self::from(crate::lowp::bf16_to_f32(bits))
            }
            #[inline(always)]
            fn to_f32_for_bf16(self) -> f32 {
                let narrow: fn($ty) -> f32 = $to32;
                narrow(self)
            }
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<$ty>> =
                        const { std::cell::RefCell::new(Vec::new()) };
                }
                SCRATCH.with_borrow_mut(|buf| {
                    if buf.len() < len {
                        buf.resize(len, 0.0);
                    }
                    f(&mut buf[..len])
                })
            }
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $ty
            }
            #[inline(always)]
            fn as_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline]
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn read_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; $bytes];
                b.copy_from_slice(bytes);
                $ty::from_le_bytes(b)
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe {
                    matrixmultiply::$gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
                }
            }
        }
    };
}

impl_real!(f32, 4, sgemm, |x| x);
impl_real!(f64, 8, dgemm, crate::lowp::f64_to_f32_odd);
