//! The step pipeline: validate the views, one deterministic pre-pass (finiteness, the
//! gradient norm), the per-step scalars, then one fused pass per tensor (the kernel).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::rule::DecayForm;
use crate::transform::{self, Cautious};
use crate::{
    Error, GradRef, MAX_STEPS, Optimizer, ParamMut, Real, Result, Rule, Tensor,
    checks::norm_overflow, kernel, optimizer::QuantState, optimizer::TensorState,
};

/// Clips gradients to a global norm, as `torch.nn.utils.clip_grad_norm_`: with
/// ‖g‖ the 2-norm over all of them, multiplies every element by
/// c = C/(‖g‖ + 10⁻⁶) when c < 1, and returns ‖g‖ (before
/// clipping). The norm is summed in a fixed order (deterministic for any thread count).
///
/// Errors, changing nothing, on a NaN or infinite element, on finite elements whose squared
/// norm overflows `f64` ([`Error::Overflow`]: PyTorch would scale them by 0), or on an invalid
/// `max_norm`.
pub fn clip_grad_norm<T: Real>(grads: &mut [&mut [T]], max_norm: f64) -> Result<f64> {
    crate::spec::check::positive("max_norm", max_norm)?;
    let views: Vec<&[T]> = grads.iter().map(|g| &**g).collect();
    let norm_sq = kernel::reduce(&views, true).map_err(|(t, index, value)| Error::NonFinite {
        what: format!("gradient {t}"),
        index,
        value,
    })?;
    if !norm_sq.is_finite() {
        let names: Vec<String> = (0..views.len()).map(|t| format!("gradient {t}")).collect();
        return Err(norm_overflow(
            names.iter().map(String::as_str).zip(views.iter().copied()),
        ));
    }
    let norm = norm_sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = T::from_f64(coef);
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x = *x * c;
            }
        }
    }
    Ok(norm)
}

/// What a step needs to know besides the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// The loss at this step (required by `lossprop`, ignored by the others).
    pub loss: Option<f64>,
    /// Multiplier s ≥ 0 of the configured learning rate (a schedule): the step uses
    /// sη.
    pub lr_scale: f64,
    /// Gradient accumulation: the gradients passed are *sums* over this many micro-batches
    /// (k ≥ 1), and the step uses their mean g/k (applied inside the fused pass, as a
    /// factor 1/k: no extra pass or copy). Clipping and `normsgd` see the mean.
    pub micro_batches: u32,
    /// The whole model's sums, when this optimizer steps one part of it (a process of
    /// sharded data-parallel training): the step takes them instead of its own pre-pass
    /// ([`Totals`]). `None`: the tensors passed are the whole model.
    pub totals: Option<Totals>,
}

impl Default for StepInfo {
    fn default() -> Self {
        Self {
            loss: None,
            lr_scale: 1.0,
            micro_batches: 1,
            totals: None,
        }
    }
}

/// The whole model's part of a step that no process sees alone, when each process steps one
/// part of the model (FSDP's shards, ZeRO's partitions): the squared gradient norm
/// $\lVert g\rVert^2 = \sum_r \sum_{i \in r} g_i^2$, the size $d = \sum_r d_r$ and the
/// number of parts with a non-finite gradient.
///
/// Each process computes its part with [`Optimizer::local_totals`], the caller sums the parts
/// over the processes (an all-reduce, or `+` in an order it fixes), and every
/// process steps with the sums in [`StepInfo::totals`]: all clip by the same global norm,
/// `normsgd` divides by the same norm and size, and all skip (or refuse) the same steps.
/// Rules that read a whole tensor (Muon's matrices, Madam's scale, cautious masking's
/// count) still read only the part they are given.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// $\sum g^2$ over the part's gradients, in `f64` (0 when the optimizer needs no
    /// norm: no clipping, no `normsgd`, no Muon).
    pub norm_sq: f64,
    /// The number of parts whose gradient holds a NaN or an infinity (0 or 1 for one part;
    /// only counted when the optimizer checks gradients or needs the norm).
    pub nonfinite: u64,
    /// The number of parameters.
    pub numel: u64,
}

impl std::ops::Add for Totals {
    type Output = Totals;

    /// The sums of two parts.
    fn add(self, other: Totals) -> Totals {
        Totals {
            norm_sq: self.norm_sq + other.norm_sq,
            nonfinite: self.nonfinite + other.nonfinite,
            numel: self.numel + other.numel,
        }
    }
}

impl StepInfo {
    /// A step with this loss and no schedule.
    pub fn with_loss(loss: f64) -> Self {
        Self {
            loss: Some(loss),
            ..Self::default()
        }
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Applied or skipped.
    pub outcome: StepOutcome,
    /// The learning rate the update used, sη of the optimizer's own spec (group 0;
    /// other groups scale their own η by the same s).
    pub lr: f64,
    /// The global 2-norm of the (mean) gradient before clipping, when the step computed it
    /// (with `clip_norm`, or for `normsgd`).
    pub grad_norm: Option<f64>,
}

impl StepReport {
    /// Whether the update was applied.
    pub fn applied(&self) -> bool {
        self.outcome == StepOutcome::Applied
    }
}

/// Whether a step changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The update was applied.
    Applied,
    /// The gradient was not finite and `skip_nonfinite=true`: nothing changed but the count
    /// of skipped steps.
    Skipped,
}

/// Per-step scalars shared by every tensor of a step, computed once in `f64`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StepContext {
    /// This step's number, counting from 1.
    pub t: u64,
    /// The learning rate of this step, sη.
    pub lr: f64,
    /// The gradient clipping factor (1 without clipping).
    pub grad_scale: f64,
    /// The step's loss, if given.
    pub loss: Option<f64>,
    /// ‖g‖² over all tensors, after clipping (computed only when `clip_norm`
    /// or `normsgd` needs it; 0 otherwise).
    pub grad_norm_sq: f64,
    /// Number of parameters over all tensors.
    pub numel: usize,
    /// βᵢᵗ for the rule's decay rates ([`Rule::decays`]), taken once per step.
    pub beta_pow: crate::rule::Decays,
    /// Whether element loops prefetch ahead (`kernel::blocks`): for steps whose working set
    /// is at least 32 MiB.
    pub prefetch: bool,
    /// The step's values of a rule with the global capability (what
    /// [`GlobalRule::settle`](crate::rule::GlobalRule::settle) returns; Prodigy's d before and
    /// after the step); empty for every other rule.
    pub global: crate::rule::Decays,
}

impl<T: Real> Optimizer<T> {
    /// Whether a step needs the global squared norm: clipping, `normsgd` (the global norm)
    /// and the whole-tensor rules (Muon normalises each matrix); finite gradients whose
    /// squares overflow would give them a zero step, so the step refuses them like a NaN.
    fn needs_norm(&self) -> bool {
        self.spec.clip_norm.is_some()
            || self
                .all_specs()
                .any(|s| s.rule.needs_norm() || s.rule.whole_tensor())
    }

    /// The pre-pass over this step's gradients: $\sum g^2$ (when `norm`), or the error
    /// naming the first non-finite element (or the norm's overflow).
    fn prepass(&self, grads: &[GradRef<'_, T>], norm: bool) -> Result<f64> {
        let slices: Vec<&[T]> = grads.iter().map(|g| g.data).collect();
        match kernel::reduce(&slices, norm) {
            Ok(sum) if sum.is_finite() => Ok(sum),
            Ok(_) => Err(norm_overflow(grads.iter().map(|g| (&*g.name, g.data)))),
            Err((t, index, value)) => Err(Error::NonFinite {
                what: format!("gradient of {}", grads[t].name),
                index,
                value,
            }),
        }
    }

    /// This process's part of a distributed step's [`Totals`]: the squared norm of `grads`
    /// (when the optimizer needs it), whether they hold a non-finite element (when it
    /// checks, or needs the norm) and their size. Deterministic for any thread count, as the
    /// step's own pre-pass.
    pub fn local_totals(&self, grads: &[&[T]]) -> Totals {
        let need_norm = self.needs_norm();
        let numel = grads.iter().map(|g| g.len() as u64).sum();
        if !(self.spec.check_finite || need_norm) {
            return Totals {
                norm_sq: 0.0,
                nonfinite: 0,
                numel,
            };
        }
        crate::threads::install(|| match kernel::reduce(grads, need_norm) {
            Ok(sum) => Totals {
                norm_sq: sum,
                nonfinite: 0,
                numel,
            },
            Err(_) => Totals {
                norm_sq: f64::NAN,
                nonfinite: 1,
                numel,
            },
        })
    }

    /// One step: updates `params` in place from `grads` (same names and shapes).
    ///
    /// Errors, leaving parameters and state untouched, on a shape or name mismatch (also
    /// against the tensors of earlier steps), a non-finite gradient or loss (unless
    /// `skip_nonfinite=true`, which reports [`StepOutcome::Skipped`], or
    /// `check_finite=false`, which does not look), a missing loss for `lossprop`, or an
    /// invalid `lr_scale` or `micro_batches`.
    pub fn step(
        &mut self,
        params: &mut [Tensor<T>],
        grads: &[Tensor<T>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        let mut p: Vec<ParamMut<'_, T>> = params.iter_mut().map(ParamMut::from).collect();
        let g: Vec<GradRef<'_, T>> = grads.iter().map(GradRef::from).collect();
        self.step_views(&mut p, &g, info)
    }

    /// [`Optimizer::step`] over tensors the caller owns ([`ParamMut`], [`GradRef`]): the same
    /// fused kernels, no copy. An optimizer with `master_weights=true` refuses it: its
    /// parameters are bfloat16 ([`Optimizer::step_bf16`]).
    pub fn step_views(
        &mut self,
        params: &mut [ParamMut<'_, T>],
        grads: &[GradRef<'_, T>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        if self.spec.master_weights {
            return Err(Error::Unsupported(format!(
                "a step on {} parameters with master_weights=true (the master copy is of \
                 bfloat16 parameters): step them with step_bf16",
                T::NAME
            )));
        }
        crate::threads::install(|| self.step_unchecked(params, grads, info))
    }

    /// [`Optimizer::step_views`] without the `master_weights` check: the step itself, which
    /// [`Optimizer::step_bf16`] runs on the master copy.
    pub(crate) fn step_unchecked(
        &mut self,
        params: &mut [ParamMut<'_, T>],
        grads: &[GradRef<'_, T>],
        info: &StepInfo,
    ) -> Result<StepReport> {
        self.check_layout(params, grads)?;
        if self.eval_mode {
            return Err(Error::Unsupported(
                "a step in eval mode (the parameters hold the evaluation point): call \
                 train_mode first"
                    .to_string(),
            ));
        }
        if !(info.lr_scale.is_finite() && info.lr_scale >= 0.0) {
            return Err(Error::invalid(
                "lr_scale",
                info.lr_scale,
                "must be a finite number >= 0",
            ));
        }
        if info.micro_batches == 0 {
            return Err(Error::invalid("micro_batches", 0, "must be at least 1"));
        }
        if self.all_specs().any(|s| s.rule.needs_loss()) && info.loss.is_none() {
            return Err(Error::MissingLoss {
                optimizer: self.describe(),
            });
        }
        // The first step fixes each tensor's group; a group that matches nothing is an error
        // before anything else. The state is allocated once the step is known to go ahead.
        let first_groups = match self.layout {
            None => Some(self.assign_groups(params)?),
            Some(_) => None,
        };

        // Pre-pass over all tensors: finiteness and the squared norm, deterministically.
        // With check_finite=false the pass runs only when a norm is needed (and then it
        // still reports what it finds: a NaN norm would poison every parameter).
        let check = self.spec.check_finite;
        let mut nonfinite =
            info.loss
                .filter(|l| check && !l.is_finite())
                .map(|loss| Error::NonFinite {
                    what: "loss".to_string(),
                    index: 0,
                    value: loss,
                });
        let mut norm_sq = 0.0;
        let need_norm = self.needs_norm();
        if nonfinite.is_none() && (check || need_norm) {
            let totals = info
                .totals
                .filter(|t| t.nonfinite == 0 && t.norm_sq.is_finite());
            match totals {
                Some(t) => norm_sq = t.norm_sq,
                None => match self.prepass(grads, need_norm) {
                    Ok(sum) => match info.totals {
                        // This part is finite and another is not.
                        Some(t) => nonfinite = Some(elsewhere(t)),
                        None => norm_sq = sum,
                    },
                    Err(e) => nonfinite = Some(e),
                },
            }
        }
        if self.step >= MAX_STEPS || self.skipped >= MAX_STEPS {
            return Err(Error::invalid(
                "step count",
                format!("{} (applied), {} (skipped)", self.step, self.skipped),
                format!("an optimizer takes at most {MAX_STEPS} steps (2^53, counted exactly)"),
            ));
        }
        if let Some(name) = self.schedule.detached() {
            return Err(Error::Unsupported(format!(
                "the custom schedule `{name}` was not saved with the optimizer: attach it again \
                 with set_schedule before stepping"
            )));
        }
        let factor = self.schedule.factor(self.step + self.skipped);
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(Error::invalid(
                format!(
                    "schedule {} at step {}",
                    self.schedule,
                    self.step + self.skipped
                ),
                factor,
                "must give a finite factor >= 0",
            ));
        }
        let lr = self.spec.rule.lr() * (factor * info.lr_scale);
        if let Some(err) = nonfinite {
            if self.spec.skip_nonfinite {
                self.skipped += 1;
                return Ok(StepReport {
                    outcome: StepOutcome::Skipped,
                    lr,
                    grad_norm: None,
                });
            }
            return Err(err);
        }
        // The mean of k accumulated micro-batches: g/k, as the factor 1/k (exactly 1 for k = 1).
        let mean = 1.0 / f64::from(info.micro_batches);
        let norm_sq = norm_sq * mean * mean;
        let clip = match self.spec.clip_norm {
            Some(max_norm) => (max_norm / (norm_sq.sqrt() + 1e-6)).min(1.0),
            None => 1.0,
        };
        let grad_scale = mean * clip;

        let used: Vec<usize> = match &first_groups {
            Some(groups) => groups.clone(),
            None => self.tensors.iter().map(|t| t.group).collect(),
        };
        let global = self.is_global(&used);
        if global {
            self.check_global(info, &used)?;
        }
        if let Some(groups) = first_groups {
            self.allocate(params, groups);
        }
        self.step += 1;
        let numel: usize = match info.totals {
            Some(t) => usize::try_from(t.numel).unwrap_or(usize::MAX),
            None => params.iter().map(|p| p.data.len()).sum(),
        };
        let prefetch = self.prefetches(params);
        // One context per group: its rule's learning rate and decay powers; the gradient
        // scale, norm and size are global.
        let mut contexts: Vec<StepContext> = self
            .all_specs()
            .map(|spec| StepContext {
                t: self.step,
                lr: spec.rule.lr() * (factor * info.lr_scale),
                grad_scale,
                loss: info.loss,
                grad_norm_sq: norm_sq * clip * clip,
                numel,
                beta_pow: spec
                    .rule
                    .decays()
                    .into_iter()
                    .map(|b| {
                        if b == 0.0 {
                            0.0
                        } else {
                            b.powf(self.step as f64)
                        }
                    })
                    .collect(),
                prefetch,
                global: crate::rule::Decays::new(),
            })
            .collect();
        if global {
            self.settle_global(params, grads, &mut contexts);
        }
        let rules: Vec<&Rule> = std::iter::once(&self.spec.rule)
            .chain(self.group_specs.iter().map(|s| &s.rule))
            .collect();
        let report = StepReport {
            outcome: StepOutcome::Applied,
            lr,
            grad_norm: need_norm.then(|| norm_sq.sqrt()),
        };
        for (p, state) in params.iter().zip(&mut self.tensors) {
            rules[state.group].begin_tensor(&contexts[state.group], p.data, &mut state.scalars);
        }
        // Cautious masking (`transform`): each group's decay form where it is on; the copy of
        // the parameters it needs, one scratch buffer for all its tensors; one count each.
        let forms: Vec<Option<DecayForm>> = self
            .all_specs()
            .zip(&contexts)
            .map(|(spec, ctx)| spec.cautious.then(|| spec.rule.decay_form(ctx)))
            .collect();
        let masked = |state: &TensorState<T>| forms[state.group].is_some();
        let cautious_len: usize = params
            .iter()
            .zip(&self.tensors)
            .filter(|(_, s)| masked(s))
            .map(|(p, _)| p.data.len())
            .sum();
        if self.scratch.0.len() < cautious_len {
            self.scratch.0.resize(cautious_len, T::zero());
        }
        let kept: Vec<AtomicU64> = if cautious_len > 0 {
            params.iter().map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        };
        let mut scratch_rest: &mut [T] = &mut self.scratch.0[..cautious_len];
        let gs = T::from_f64(grad_scale);
        let mut cautious_of = |t: usize, state: &TensorState<T>, len: usize| {
            forms[state.group].map(|form| {
                let (copy, rest) = std::mem::take(&mut scratch_rest).split_at_mut(len);
                scratch_rest = rest;
                Cautious {
                    copy,
                    shrink: T::from_f64(form.shrink),
                    l2: T::from_f64(form.l2),
                    grad_scale: gs,
                    kept: &kept[t],
                }
            })
        };
        // Whole-tensor rules (Muon) step each matrix at once, with threads inside.
        for ((p, g), state) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
            let rule = rules[state.group];
            if rule.whole_tensor() {
                let mut slots: Vec<&mut [T]> =
                    state.slots.iter_mut().map(Vec::as_mut_slice).collect();
                let ctx = &contexts[state.group];
                rule.step_whole(ctx, &p.shape, p.data, g.data, &mut slots);
            }
        }
        // bfloat16 state: the stochastic-rounding streams of this step (seed, step, tensor,
        // pair of buffers); the element's index in its tensor is the stream's counter, and
        // buffers 2k and 2k + 1 take the low and high halves of stream k's word.
        let (sr_seed, rounding, step) = (self.spec.sr_seed, self.spec.rounding, self.step);
        let keys = |tensor: usize, n_slots: usize| -> kernel::Keys {
            (0..n_slots.div_ceil(2) as u64)
                .map(|k| crate::lowp::stream_key(sr_seed, step, tensor as u64, k))
                .collect()
        };
        // 8-bit state: one stream per buffer (seed, step, tensor, FIRST_STREAM + buffer).
        let quant_keys = |tensor: usize, n_slots: usize| -> kernel::Keys {
            (0..n_slots as u64)
                .map(|k| {
                    crate::lowp::stream_key(sr_seed, step, tensor as u64, kernel::FIRST_STREAM + k)
                })
                .collect()
        };
        let block_size = self.spec.block_size;
        if kernel::is_small(numel) {
            for (t, ((p, g), state)) in params
                .iter_mut()
                .zip(grads)
                .zip(&mut self.tensors)
                .enumerate()
            {
                let cautious = cautious_of(t, state, p.data.len());
                let TensorState {
                    group,
                    slots,
                    scalars,
                    lowp,
                    quant,
                    ..
                } = state;
                let (rule, ctx) = (rules[*group], &contexts[*group]);
                if !rule.whole_tensor() {
                    let n_lowp = lowp.len();
                    let lowp = (n_lowp > 0).then(|| kernel::Lowp {
                        slots: kernel::bufs(lowp.iter_mut().map(Vec::as_mut_slice)),
                        rounding,
                        keys: keys(t, n_lowp),
                        offset: 0,
                    });
                    let quant = (!quant.is_empty()).then(|| kernel::Quant {
                        keys: quant_keys(t, quant.len()),
                        slots: quant.iter_mut().map(QuantState::slot).collect(),
                        rounding,
                        offset: 0,
                        block: block_size,
                    });
                    // The whole tensor as one unit, on the calling thread (no allocation).
                    let mut unit = kernel::Unit {
                        rule,
                        ctx,
                        p: p.data,
                        g: g.data,
                        slots: kernel::bufs(slots.iter_mut().map(Vec::as_mut_slice)),
                        n_slots: rule.slots().len(),
                        scalars,
                        lowp,
                        quant,
                        cautious,
                    };
                    kernel::run_one(kernel::SimdLevel::current(), &mut unit);
                }
            }
            self.finish_cautious(params, &forms, &kept);
            return Ok(report);
        }
        let mut units = Vec::with_capacity(numel / kernel::CHUNK + params.len());
        for (t, ((p, g), state)) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.tensors)
            .enumerate()
        {
            let mut cautious = cautious_of(t, state, p.data.len());
            let TensorState {
                group,
                slots,
                scalars,
                lowp,
                quant,
                ..
            } = state;
            let (rule, ctx) = (rules[*group], &contexts[*group]);
            if rule.whole_tensor() {
                continue;
            }
            let is_quant = !quant.is_empty();
            let tensor_quant_keys = quant_keys(t, quant.len());
            let mut rest_quant: smallvec::SmallVec<[kernel::QuantSlot<'_>; 4]> =
                quant.iter_mut().map(QuantState::slot).collect();
            let n_slots = rule.slots().len();
            let is_lowp = !lowp.is_empty();
            let tensor_keys = keys(t, lowp.len());
            // The state buffers not yet cut into units (no allocation per tensor: a step may
            // have many thousands of small ones).
            let mut rest = kernel::bufs(slots.iter_mut().map(Vec::as_mut_slice));
            let mut rest_lowp = kernel::bufs(lowp.iter_mut().map(Vec::as_mut_slice));
            let mut offset = 0u64;
            for (p, g) in p
                .data
                .chunks_mut(kernel::CHUNK)
                .zip(g.data.chunks(kernel::CHUNK))
            {
                let len = p.len();
                let unit_cautious = cautious.as_mut().map(|c| {
                    let (copy, rest) = std::mem::take(&mut c.copy).split_at_mut(len);
                    c.copy = rest;
                    Cautious { copy, ..*c }
                });
                let unit_slots = kernel::bufs(rest.iter_mut().map(|r| {
                    let (head, tail) = std::mem::take(r).split_at_mut(len);
                    *r = tail;
                    head
                }));
                let unit_lowp = kernel::bufs(rest_lowp.iter_mut().map(|r| {
                    let (head, tail) = std::mem::take(r).split_at_mut(len);
                    *r = tail;
                    head
                }));
                // A unit's blocks: its length over the block size, the last one ragged.
                let unit_quant: smallvec::SmallVec<[kernel::QuantSlot<'_>; 4]> = rest_quant
                    .iter_mut()
                    .map(|r| {
                        let (codes, codes_tail) = std::mem::take(&mut r.codes).split_at_mut(len);
                        let (absmax, absmax_tail) =
                            std::mem::take(&mut r.absmax).split_at_mut(len.div_ceil(block_size));
                        r.codes = codes_tail;
                        r.absmax = absmax_tail;
                        kernel::QuantSlot {
                            codes,
                            absmax,
                            book: r.book,
                            nonnegative: r.nonnegative,
                        }
                    })
                    .collect();
                units.push(kernel::Unit {
                    rule,
                    ctx,
                    p,
                    g,
                    slots: unit_slots,
                    n_slots,
                    scalars,
                    lowp: is_lowp.then_some(kernel::Lowp {
                        slots: unit_lowp,
                        rounding,
                        keys: tensor_keys.clone(),
                        offset,
                    }),
                    quant: is_quant.then(|| kernel::Quant {
                        slots: unit_quant,
                        rounding,
                        keys: tensor_quant_keys.clone(),
                        offset,
                        block: block_size,
                    }),
                    cautious: unit_cautious,
                });
                offset += len as u64;
            }
        }
        kernel::run_units(prefetch, units);
        self.finish_cautious(params, &forms, &kept);
        Ok(report)
    }

    /// The second pass of cautious masking, once every chunk of a tensor is counted
    /// ([`transform::finish`]).
    fn finish_cautious(
        &self,
        params: &mut [ParamMut<'_, T>],
        forms: &[Option<DecayForm>],
        kept: &[AtomicU64],
    ) {
        let mut offset = 0;
        for (t, (p, state)) in params.iter_mut().zip(&self.tensors).enumerate() {
            if let Some(form) = forms[state.group] {
                let n = p.data.len();
                let update = &self.scratch.0[offset..offset + n];
                transform::finish(p.data, update, form, kept[t].load(Ordering::Relaxed));
                offset += n;
            }
        }
    }
}

/// The working set of a step, which decides whether the element loops prefetch.
impl<T: Real> Optimizer<T> {
    /// The working set of a step in bytes: parameters, gradient and state buffers at their
    /// element sizes, Σ\_tensors n ((2 + k) b\_T + 2 k₁₆) for n
    /// elements, k state buffers of b\_T-byte elements and k₁₆ bfloat16 ones. (The
    /// master copy of bfloat16 parameters is `params` itself when it is stepped.)
    pub(crate) fn working_set_bytes(&self, params: &[ParamMut<'_, T>]) -> usize {
        params
            .iter()
            .zip(&self.tensors)
            .map(|(p, s)| {
                p.data.len() * ((2 + s.slots.len()) * T::BYTES + 2 * s.lowp.len() + s.quant.len())
            })
            .sum()
    }

    /// Whether the element loops prefetch ahead: from a working set of
    /// [`kernel::PREFETCH_MIN_BYTES`] on, where the arrays stream from memory.
    pub(crate) fn prefetches(&self, params: &[ParamMut<'_, T>]) -> bool {
        self.working_set_bytes(params) >= kernel::PREFETCH_MIN_BYTES
    }
}

/// The error of a distributed step whose own part is finite while the sums are not.
fn elsewhere(t: Totals) -> Error {
    if t.nonfinite > 0 {
        Error::NonFiniteElsewhere { parts: t.nonfinite }
    } else {
        Error::Overflow {
            what: "the squared 2-norm of the gradients over every process".to_string(),
            reason: format!(
                "the parts' sum is {}: clipping, normsgd and Muon would divide by an infinite \
                 norm and step by zero: scale the loss down",
                t.norm_sq
            ),
        }
    }
}
