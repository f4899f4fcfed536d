//! The global pass of a step, for rules with the global capability
//! ([`GlobalRule`](crate::rule::GlobalRule), Prodigy): the checks that every parameter group
//! can share its scalars, the read-only gather over every chunk (summed per chunk, then in
//! chunk order: the same bits for any thread count), and the settlement that sets the
//! scalars in every tensor and the values the chunks read.

use rayon::prelude::*;

use crate::kernel::{CHUNK, PARALLEL_MIN};
use crate::{Error, GradRef, Optimizer, ParamMut, Real, Result, StepContext, StepInfo};

impl<T: Real> Optimizer<T> {
    /// Whether a spec that steps some tensor (`used`: each tensor's group) has the global
    /// capability.
    pub(crate) fn is_global(&self, used: &[usize]) -> bool {
        self.all_specs()
            .enumerate()
            .any(|(g, s)| used.contains(&g) && s.rule.global::<T>().is_some())
    }

    /// Refuses, before anything is written, what a global rule cannot do: groups with
    /// another rule or other values of its shared keys, a group learning rate that is
    /// neither the largest nor 0 (the reference's rule), and a step of one part of a
    /// distributed model (its sums would be this part's alone). `used` lists the group of
    /// every tensor (a spec that steps no tensor is not compared).
    pub(crate) fn check_global(&self, info: &StepInfo, used: &[usize]) -> Result<()> {
        let in_use = |g: usize| used.contains(&g);
        let specs = || {
            self.all_specs()
                .enumerate()
                .filter(move |(g, _)| in_use(*g))
        };
        let Some((_, first)) = specs().next() else {
            return Ok(());
        };
        let own = &first.rule;
        let Some(global) = own.global::<T>() else {
            return Err(Error::Unsupported(format!(
                "parameter groups stepped by {} beside {}: its estimate is shared by every \
                 parameter, so every group must use it",
                specs()
                    .find(|(_, s)| s.rule.global::<T>().is_some())
                    .map_or("", |(_, s)| s.rule.name()),
                own.name()
            )));
        };
        let values = own.values();
        let shared = |vals: &[(&'static str, String)], key: &str| {
            vals.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        let lr_max = specs().map(|(_, s)| s.rule.lr()).fold(0.0, f64::max);
        for (g, spec) in specs() {
            if spec.rule.name() != own.name() {
                return Err(Error::Unsupported(format!(
                    "parameter group {g} steps with {} beside {}: its estimate is shared by \
                     every parameter, so every group must use it",
                    spec.rule.name(),
                    own.name()
                )));
            }
            let theirs = spec.rule.values();
            for key in global.shared_keys() {
                if shared(&theirs, key) != shared(&values, key) {
                    return Err(Error::invalid(
                        format!("{key} of parameter group {g}"),
                        shared(&theirs, key).unwrap_or_default(),
                        format!(
                            "must equal the other groups' ({}): {}'s estimate is shared by every \
                             group",
                            shared(&values, key).unwrap_or_default(),
                            own.name()
                        ),
                    ));
                }
            }
            let lr = spec.rule.lr();
            if lr != lr_max && lr != 0.0 {
                return Err(Error::invalid(
                    format!("lr of parameter group {g}"),
                    lr,
                    format!(
                        "must be the largest group's ({lr_max}) or 0: {} scales one estimated \
                         step for every group",
                        own.name()
                    ),
                ));
            }
        }
        if info.totals.is_some() {
            return Err(Error::Unsupported(format!(
                "a step of one part of a distributed model with {}: its estimate sums over \
                 every parameter, which a part does not hold",
                own.name()
            )));
        }
        Ok(())
    }

    /// The gather and the settlement: sets the kept scalars of every tensor and each
    /// context's [`StepContext::global`]. The state must be allocated.
    pub(crate) fn settle_global(
        &mut self,
        params: &[ParamMut<'_, T>],
        grads: &[GradRef<'_, T>],
        contexts: &mut [StepContext],
    ) {
        let used: Vec<usize> = self.tensors.iter().map(|t| t.group).collect();
        let lr = contexts
            .iter()
            .enumerate()
            .filter(|(g, _)| used.contains(g))
            .map(|(_, c)| c.lr)
            .fold(0.0, f64::max);
        for c in contexts.iter_mut() {
            c.global = smallvec::smallvec![lr];
        }
        let Some(&first) = used.first() else {
            return;
        };
        let rules: Vec<_> = self.all_specs().map(|s| s.rule.global::<T>()).collect();
        let own = rules[first].expect("checked by check_global");
        let n_sums = own.sums();
        // One item per chunk of every tensor, in order.
        let items: Vec<(usize, usize, usize)> = params
            .iter()
            .enumerate()
            .flat_map(|(t, p)| {
                let n = p.data.len();
                (0..n.div_ceil(CHUNK)).map(move |c| (t, c * CHUNK, ((c + 1) * CHUNK).min(n)))
            })
            .collect();
        let tensors = &self.tensors;
        let ctx = &*contexts;
        let partial = |&(t, lo, hi): &(usize, usize, usize)| {
            let state = &tensors[t];
            let slots: smallvec::SmallVec<[&[T]; 4]> =
                state.slots.iter().map(|s| &s[lo..hi]).collect();
            let mut sums = smallvec::SmallVec::<[f64; 4]>::from_elem(0.0, n_sums);
            rules[state.group].expect("checked by check_global").gather(
                &ctx[state.group],
                &params[t].data[lo..hi],
                &grads[t].data[lo..hi],
                &slots,
                &state.scalars,
                &mut sums,
            );
            sums
        };
        let total: usize = params.iter().map(|p| p.data.len()).sum();
        let partials: Vec<smallvec::SmallVec<[f64; 4]>> = if total < PARALLEL_MIN {
            items.iter().map(partial).collect()
        } else {
            items.par_iter().map(partial).collect()
        };
        let mut sums = vec![0.0; n_sums];
        for part in &partials {
            for (s, x) in sums.iter_mut().zip(part) {
                *s += x;
            }
        }
        let mut kept = self
            .tensors
            .first()
            .map(|t| t.scalars.clone())
            .unwrap_or_default();
        let values = own.settle(lr, &mut kept, &sums);
        for t in &mut self.tensors {
            t.scalars.copy_from_slice(&kept);
        }
        for c in contexts.iter_mut() {
            c.global = values.clone();
        }
    }
}
