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
    /// $C \leftarrow A B + \beta C$ (`matrixmultiply`'s `sgemm`/`dgemm` with $\alpha = 1$).
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
    ($ty:ident, $bytes:literal, $gemm:ident) => {
        impl Real for $ty {
            const NAME: &'static str = stringify!($ty);
            const BYTES: usize = $bytes;
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

impl_real!(f32, 4, sgemm);
impl_real!(f64, 8, dgemm);
