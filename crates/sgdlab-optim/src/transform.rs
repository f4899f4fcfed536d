//! Transformations of a rule's update, composed with every element-wise rule in the fused
//! step: the first is cautious masking (`cautious=true`; Liang et al. 2024, "Cautious
//! Optimizers"; pytorch-optimizer's `apply_cautious`).
//!
//! A rule moves each element as $p' = s\,p - c\,u$ ([`DecayForm`]): its update $u$, a
//! positive factor $c$ (the learning rate), and the decoupled decay's shrink $s$. The
//! transformation needs no change to the rule: each chunk's parameters are copied aside
//! ($p$) before the rule runs, and after it, in the same pass while the chunk is in cache,
//! the update is recovered as $w = c\,u = s\,p - p'$. Cautious masking keeps the coordinates
//! whose update agrees in sign with the gradient $g' = \gamma g + \lambda p$,
//! $m_i = [w_i g'_i > 0]$, counts them ($k$, an integer sum, so the same whatever the
//! threads), and once the whole tensor is counted sets
//!
//! $$p \leftarrow s\,p - \frac{n}{k + 1}\,m \odot w,$$
//!
//! which is the rule's step with its update multiplied by the mask and $n/(k+1)$ before the
//! learning rate and the decay. The cost is one buffer of the parameters' size (the copy,
//! kept between steps and not saved) and a second pass over the parameters and the copy.
//!
//! A coordinate whose update is smaller than half a unit in the last place of its parameter
//! (so that $p' = s\,p$ exactly) counts as disagreeing: it does not move either way.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::Real;
use crate::rule::DecayForm;

/// The cautious mask of one chunk: the parameters before the rule, the decay form as the
/// chunk's type, and the tensor's count of kept coordinates.
pub(crate) struct Cautious<'a, T> {
    /// The chunk's parameters before the rule's step.
    pub old: &'a mut [T],
    pub shrink: T,
    pub l2: T,
    pub grad_scale: T,
    /// Kept coordinates of the whole tensor, summed over its chunks.
    pub kept: &'a AtomicU64,
}

impl<T: Real> Cautious<'_, T> {
    /// For a chunk about to be stepped: sets its copy of the parameters.
    #[inline]
    pub(crate) fn before(&mut self, p: &[T]) {
        self.old.copy_from_slice(p);
    }

    /// After the rule stepped the chunk to `p`: leaves in `p` the masked update $m \odot w$
    /// and counts the kept coordinates.
    #[inline]
    pub(crate) fn after(&mut self, p: &mut [T], g: &[T]) {
        let (s, l2, gs) = (self.shrink, self.l2, self.grad_scale);
        let mut kept = 0u64;
        for ((p, &g), &old) in p.iter_mut().zip(g).zip(self.old.iter()) {
            let w = s * old - *p;
            let agree = w * (gs * g + l2 * old) > T::zero();
            kept += u64::from(agree);
            *p = if agree { w } else { T::zero() };
        }
        self.kept.fetch_add(kept, Ordering::Relaxed);
    }
}

/// The second pass over one tensor, once every chunk is counted: $p \leftarrow s\,p_{\text{old}}
/// - \frac{n}{k+1}\,p$ (where `p` holds the masked update), in parallel for a large tensor
///   (element-wise, so the same bits whatever the threads).
pub(crate) fn finish<T: Real>(p: &mut [T], old: &[T], form: DecayForm, kept: u64) {
    let n = p.len() as f64;
    let scale = T::from_f64(n / (kept as f64 + 1.0));
    let s = T::from_f64(form.shrink);
    let body = |p: &mut [T], old: &[T]| {
        for (p, &old) in p.iter_mut().zip(old) {
            *p = s * old - scale * *p;
        }
    };
    if crate::kernel::is_small(p.len()) {
        body(p, old);
    } else {
        p.par_chunks_mut(crate::kernel::CHUNK)
            .zip(old.par_chunks(crate::kernel::CHUNK))
            .for_each(|(p, old)| body(p, old));
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
