//! The state buffers: created at the first step, backed by huge pages where the system
//! offers them.

use crate::{
    Optimizer, ParamMut, Real, StateDtype, optimizer::QuantState, optimizer::TensorState,
    optimizer::scalars_of, optimizer::slots_of,
};

/// A buffer of `n` elements `f(i)`, backed by transparent huge pages where the system offers
/// them on request (Linux with THP in `madvise` mode, the common default): the kernel is
/// asked before the first write, so that the pages are faulted in 2 MiB at a time. A step
/// streams every state buffer once, and 4 KiB pages add TLB misses to it: on the development
/// VM the same 10M-parameter Adam step ran 1.15× faster on numpy's arrays (which numpy backs
/// this way) than on torch's, and `bench --serve` went from 10.2 to 9.2 ms with its state so
/// backed (`bench/compare_python.py`, a noisy shared machine). Results are unaffected.
pub(crate) fn huge_filled<E: Copy>(n: usize, f: impl Fn(usize) -> E) -> Vec<E> {
    let mut v: Vec<E> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = n * std::mem::size_of::<E>();
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let aligned = start.next_multiple_of(HUGE);
            let end = (start + bytes) / HUGE * HUGE;
            if end > aligned {
                // SAFETY: the range lies inside `v`'s allocation (rounded inwards to whole
                // huge pages); MADV_HUGEPAGE is advice and changes no contents. A failure
                // (no THP support) is harmless and ignored.
                unsafe {
                    libc::madvise(
                        aligned as *mut libc::c_void,
                        end - aligned,
                        libc::MADV_HUGEPAGE,
                    );
                }
            }
        }
    }
    v.extend((0..n).map(f));
    v
}

impl<T: Real> Optimizer<T> {
    /// Creates the state buffers for `params` (at the first step), by each tensor's group
    /// (from [`Optimizer::assign_groups`]).
    pub(crate) fn allocate(&mut self, params: &[ParamMut<'_, T>], groups: Vec<usize>) {
        self.layout = Some(
            params
                .iter()
                .map(|p| (p.name.to_string(), p.shape.to_vec()))
                .collect(),
        );
        let mut tensors = Vec::with_capacity(params.len());
        for (p, group) in params.iter().zip(groups) {
            let spec = self.group_spec(group).unwrap_or(&self.spec);
            let init = T::from_f64(spec.rule.initial_state());
            let n = slots_of(spec).len();
            let mut quant = Vec::new();
            let (slots, lowp) = if spec.state_dtype == StateDtype::Bf16 {
                // Rules whose buffers start at the parameters refuse bf16 (validate).
                let b = crate::lowp::bf16_nearest(init.to_f32_for_bf16());
                let lowp = (0..n).map(|_| huge_filled(p.data.len(), |_| b)).collect();
                (Vec::new(), lowp)
            } else if spec.state_dtype == StateDtype::Q8 {
                // Every block holds the initial value: it is its own absmax (code 1), or 0.
                let len = p.data.len();
                let block = spec.block_size;
                quant = (0..n)
                    .map(|slot| {
                        let nonnegative = spec.rule.slot_is_nonnegative(slot);
                        let book = crate::quant::CodeBook::for_buffer(nonnegative);
                        let mut one = [0u8; 1];
                        let a = crate::quant::quantize_values(
                            book,
                            &[init],
                            crate::lowp::Rounding::Nearest,
                            0,
                            &mut one,
                            nonnegative,
                        );
                        QuantState {
                            codes: huge_filled(len, |_| one[0]),
                            absmax: vec![a; len.div_ceil(block)],
                            nonnegative,
                        }
                    })
                    .collect();
                (Vec::new(), Vec::new())
            } else {
                let slots = (0..n)
                    .map(|slot| {
                        // A buffer's own size (a whole-tensor rule's statistics are square
                        // matrices), the tensor's for every element-wise rule.
                        let len = spec.rule.slot_shape(slot, &p.shape).iter().product();
                        match spec.rule.slot_starts_at_params(slot) {
                            true => huge_filled(p.data.len(), |i| p.data[i]),
                            false => huge_filled(len, |_| init),
                        }
                    })
                    .collect();
                (slots, Vec::new())
            };
            tensors.push(TensorState {
                group,
                slots,
                scalars: vec![0.0; scalars_of(spec).len()],
                lowp,
                master: Vec::new(),
                quant,
            });
        }
        self.tensors = tensors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `huge_filled` advises the kernel of exactly the whole 2 MiB pages inside the buffer:
    /// the advice splits the mapping there, and `/proc/self/smaps` shows the advised part as
    /// its own mapping with the `hg` (MADV_HUGEPAGE) flag. Skipped where the kernel has no
    /// transparent huge pages.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_filled_advises_the_whole_huge_pages_inside_the_buffer() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            return;
        }
        const HUGE: usize = 2 << 20;
        // The mapping of `addr` in smaps: its bounds and whether it carries the advice.
        let mapping_of = |addr: usize| -> (usize, usize, bool) {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let hex = |s: &str| usize::from_str_radix(s, 16).ok();
            // Each mapping is a header line `start-end perms ...`, then fields, VmFlags last.
            let mut holding = None;
            for line in smaps.lines() {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    if let Some((a, b)) = holding {
                        return (a, b, flags.split_whitespace().any(|f| f == "hg"));
                    }
                } else if let Some((a, b)) = line
                    .split_whitespace()
                    .next()
                    .and_then(|range| range.split_once('-'))
                    .and_then(|(a, b)| Some((hex(a)?, hex(b)?)))
                {
                    holding = (a <= addr && addr < b).then_some((a, b));
                }
            }
            panic!("no mapping holds {addr:#x}");
        };
        let n = (5 * HUGE + 12_345) / 4;
        let v = huge_filled(n, |i| i as f32);
        assert_eq!(v.len(), n);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + 4 * n) / HUGE * HUGE;
        assert!(end - aligned >= 4 * HUGE, "{aligned:#x}..{end:#x}");
        assert_eq!(mapping_of(aligned), (aligned, end, true));
        // Below the first whole huge page: the allocation's own mapping, not advised.
        assert!(!mapping_of(aligned - 1).2);
        // A buffer under 4 MiB is left alone, though a whole huge page lies inside it.
        let small = huge_filled((2 * HUGE - 4) / 4, |_| 0f32);
        let start = small.as_ptr() as usize;
        let inside = start.next_multiple_of(HUGE);
        assert!(inside + HUGE <= start + 4 * small.len());
        assert!(!mapping_of(inside).2);
    }
}
