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
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}
