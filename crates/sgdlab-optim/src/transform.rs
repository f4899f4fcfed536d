//! Transformations of a rule's update, composed with every element-wise rule in the fused
//! step: the first is cautious masking (`cautious=true`; Liang et al. 2024, "Cautious
//! Optimizers"; pytorch-optimizer's `apply_cautious`).
//!
//! A rule moves each element as p′ = s p − c u ([`DecayForm`]): its update u, a
//! positive factor c (the learning rate), and the decoupled decay's shrink s. The
//! transformation needs no change to the rule: each chunk's parameters are copied, the rule
//! steps the copy to p′, and in the same pass, while the chunk is in cache, the update is
//! recovered as w = c u = s p − p′ (the parameters p are only read). Cautious masking keeps the coordinates
//! whose update agrees in sign with the gradient g′ = γg + λp,
//! mᵢ = \[wᵢg′ᵢ > 0\], counts them (k, an integer sum, so the same whatever the
//! threads), and once the whole tensor is counted sets
//!
//! p ← s p − n/(k + 1) m⊙w,
//!
//! which is the rule's step with its update multiplied by the mask and n/(k + 1) before the
//! learning rate and the decay. The cost is one buffer of the parameters' size (the copy,
//! kept between steps and not saved) and a second pass over the parameters and the copy:
//! 12 bytes per f32 parameter more than the rule's own pass.
//!
//! A coordinate whose update is smaller than half a unit in the last place of its parameter
//! (so that p′ = s p exactly) counts as disagreeing: it does not move either way.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::Real;
use crate::kernel::SimdLevel;
use crate::kernel::multiversion;
use crate::rule::DecayForm;

/// The cautious mask of one chunk: its copy of the parameters, the decay form as the
/// chunk's type, and the tensor's count of kept coordinates.
pub(crate) struct Cautious<'a, T> {
    /// The chunk's copy: the parameters, then the rule's step of them, then the masked
    /// update.
    pub copy: &'a mut [T],
    pub shrink: T,
    pub l2: T,
    pub grad_scale: T,
    /// Kept coordinates of the whole tensor, summed over its chunks.
    pub kept: &'a AtomicU64,
}

impl<'a, T: Real> Cautious<'a, T> {
    /// Before the rule: copies the chunk's parameters `p` and hands back the copy for the
    /// rule to step, keeping `p` for [`Cautious::after`].
    #[inline]
    pub(crate) fn before(&mut self, p: &mut &'a mut [T]) {
        self.copy.copy_from_slice(p);
        std::mem::swap(p, &mut self.copy);
    }

    /// After the rule stepped the copy (handed back in `p`, which becomes the parameters
    /// again): leaves in the copy the masked update m⊙w, w = s p − p′, and counts
    /// the kept coordinates.
    #[inline]
    pub(crate) fn after(&mut self, level: SimdLevel, p: &mut &'a mut [T], g: &[T]) {
        std::mem::swap(p, &mut self.copy);
        let kept = mask(
            level,
            p,
            g,
            self.copy,
            self.shrink,
            self.l2,
            self.grad_scale,
        );
        self.kept.fetch_add(kept, Ordering::Relaxed);
    }
}

/// The mask loop: w = s p − p′ (`stepped` holds p′ and receives m⊙w),
/// m = \[w (γg + λp) > 0\]; returns the count. Counted in `u32` per block of
/// 1024 so that the loop vectorizes.
#[inline(always)]
fn mask_loop<T: Real>(p: &[T], g: &[T], stepped: &mut [T], s: T, l2: T, gs: T) -> u64 {
    let mut kept = 0u64;
    for ((p, g), stepped) in p
        .chunks(1024)
        .zip(g.chunks(1024))
        .zip(stepped.chunks_mut(1024))
    {
        let mut k = 0u32;
        for ((&p, &g), st) in p.iter().zip(g).zip(stepped.iter_mut()) {
            let w = s * p - *st;
            let agree = w * (gs * g + l2 * p) > T::zero();
            k += u32::from(agree);
            *st = if agree { w } else { T::zero() };
        }
        kept += u64::from(k);
    }
    kept
}

multiversion!(fn mask<T: Real>(p: &[T], g: &[T], stepped: &mut [T], s: T, l2: T, gs: T) -> u64 = mask_loop);

/// p ← s p − k u over one block.
#[inline(always)]
fn apply_loop<T: Real>(p: &mut [T], update: &[T], s: T, scale: T) {
    for (p, &u) in p.iter_mut().zip(update) {
        *p = s * *p - scale * u;
    }
}

multiversion!(fn apply<T: Real>(p: &mut [T], update: &[T], s: T, scale: T) = apply_loop);

/// The second pass over one tensor, once every chunk is counted:
/// p ← s p − n/(k + 1) (m⊙w), with the masked update in `update`; in
/// parallel for a large tensor (element-wise, so the same bits whatever the threads).
pub(crate) fn finish<T: Real>(p: &mut [T], update: &[T], form: DecayForm, kept: u64) {
    let n = p.len() as f64;
    let scale = T::from_f64(n / (kept as f64 + 1.0));
    let s = T::from_f64(form.shrink);
    let level = SimdLevel::current();
    if crate::kernel::is_small(p.len()) {
        apply(level, p, update, s, scale);
    } else {
        p.par_chunks_mut(crate::kernel::CHUNK)
            .zip(update.par_chunks(crate::kernel::CHUNK))
            .for_each(|(p, u)| apply(level, p, u, s, scale));
    }
}

/// A buffer kept between steps for a transformation (the parameters' copy of cautious
/// masking): not part of the optimizer's state, so it is neither compared, cloned nor saved.
#[derive(Default)]
pub(crate) struct Scratch<T>(pub Vec<T>);

impl<T> Clone for Scratch<T> {
    fn clone(&self) -> Self {
        Scratch(Vec::new())
    }
}

impl<T> PartialEq for Scratch<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Scratch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} elements)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy kept between steps is scratch: a clone starts without it, it never makes two
    /// optimizers unequal, and it shows only its size.
    #[test]
    fn scratch_is_not_state() {
        let s = Scratch(vec![1.0f32; 3]);
        assert!(s.clone().0.is_empty());
        assert_eq!(s, Scratch(vec![2.0f32; 5]));
        assert_eq!(format!("{s:?}"), "Scratch(3 elements)");
    }
}
