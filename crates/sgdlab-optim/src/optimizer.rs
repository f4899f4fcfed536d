//! [`Optimizer`]: a validated spec, its parameter groups and schedule, its state, and the
//! configuration API (hyper-parameters mid-run, state access, evaluation mode).

use crate::{Error, GroupSpec, OptimizerSpec, ParamMut, Real, Result, Schedule, StateDtype};

/// An optimizer: a validated spec and its state.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer<T: Real> {
    pub(crate) spec: OptimizerSpec,
    /// Applied steps.
    pub(crate) step: u64,
    /// Steps skipped for non-finite gradients.
    pub(crate) skipped: u64,
    /// Names and shapes of the parameter tensors, fixed by the first step.
    pub(crate) layout: Option<Vec<(String, Vec<usize>)>>,
    /// State of each parameter tensor, in parameter order (empty before the first step).
    pub(crate) tensors: Vec<TensorState<T>>,
    /// The learning-rate schedule; its position is `step + skipped`.
    pub(crate) schedule: Schedule,
    /// Parameter groups, in the order their patterns are tried.
    pub(crate) groups: Vec<GroupSpec>,
    /// Each group's spec, resolved over `spec` (same order as `groups`).
    pub(crate) group_specs: Vec<OptimizerSpec>,
    /// Whether the parameters hold the evaluation point ([`Optimizer::eval_mode`]).
    pub(crate) eval_mode: bool,
    /// The parameters' copy of cautious masking ([`crate::transform`]), kept between steps.
    pub(crate) scratch: crate::transform::Scratch<T>,
    /// bfloat16 gradients widened to `T` ([`Optimizer::step_bf16`]), kept between steps.
    pub(crate) wide_grads: crate::transform::Scratch<Vec<T>>,
    /// bfloat16 parameters widened to `T` (without master weights), kept between steps.
    pub(crate) wide_params: crate::transform::Scratch<Vec<T>>,
}

/// The optimizer state of one parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorState<T> {
    /// The tensor's group: 0 for the optimizer's own spec, k for `groups[k - 1]`.
    pub(crate) group: usize,
    /// One buffer per slot name, each as long as the tensor.
    pub(crate) slots: Vec<Vec<T>>,
    /// Scalar state per tensor (Madam's clamp bound).
    pub(crate) scalars: Vec<f64>,
    /// The state buffers in bfloat16 (`state_dtype=bf16`; `slots` is then empty).
    pub(crate) lowp: Vec<Vec<u16>>,
    /// The exact copy of bfloat16 parameters (`master_weights=true`), empty otherwise.
    pub(crate) master: Vec<T>,
    /// The state buffers in 8 bits (`state_dtype=q8`; `slots` is then empty).
    pub(crate) quant: Vec<QuantState>,
}

/// One state buffer in 8 bits ([`crate::quant`]): a code per element, an absmax per block.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QuantState {
    /// One byte per element: its code in the buffer's book.
    pub(crate) codes: Vec<u8>,
    /// One scale per block of `block_size` elements (the last block may be shorter).
    pub(crate) absmax: Vec<f32>,
    /// Whether the buffer never goes negative and is kept in the unsigned book.
    pub(crate) nonnegative: bool,
}

impl QuantState {
    /// The book the codes index.
    pub(crate) fn book(&self) -> &'static crate::quant::CodeBook {
        crate::quant::CodeBook::for_buffer(self.nonnegative)
    }

    /// The whole buffer as the kernel's view of one unit's 8-bit buffer (cut into units
    /// by the step).
    pub(crate) fn slot(&mut self) -> crate::kernel::QuantSlot<'_> {
        crate::kernel::QuantSlot {
            book: self.book(),
            nonnegative: self.nonnegative,
            codes: &mut self.codes,
            absmax: &mut self.absmax,
        }
    }

    /// The buffer's values, x̂ = c\[q\]·a, in `f32`.
    pub(crate) fn values(&self, block: usize) -> Vec<f32> {
        let values = self.book().values();
        self.codes
            .chunks(block)
            .zip(&self.absmax)
            .flat_map(|(codes, &a)| codes.iter().map(move |&c| values[usize::from(c)] * a))
            .collect()
    }
}

impl<T: Real> Optimizer<T> {
    /// An optimizer with fresh state.
    pub fn new(spec: OptimizerSpec) -> Result<Self> {
        spec.validate()?;
        check_state_dtype::<T>(&spec)?;
        Ok(Self {
            spec,
            step: 0,
            skipped: 0,
            layout: None,
            tensors: Vec::new(),
            schedule: Schedule::Constant,
            groups: Vec::new(),
            group_specs: Vec::new(),
            eval_mode: false,
            scratch: Default::default(),
            wide_grads: Default::default(),
            wide_params: Default::default(),
        })
    }

    /// An optimizer whose tensors are split into parameter `groups` (see [`group`](crate::group)): a tensor
    /// steps with the spec of the first group one of whose patterns matches its name, else
    /// with `spec`. Gradient clipping, the finiteness check and the schedule stay global.
    ///
    /// Errors if a group's keys are invalid for its rule. A group that matches no tensor is
    /// an error at the first step (it is most likely a misspelt pattern).
    pub fn with_groups(spec: OptimizerSpec, groups: Vec<GroupSpec>) -> Result<Self> {
        let mut opt = Self::new(spec)?;
        opt.group_specs = groups
            .iter()
            .map(|g| g.resolve(&opt.spec))
            .collect::<Result<_>>()?;
        opt.groups = groups;
        Ok(opt)
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[GroupSpec] {
        &self.groups
    }

    /// The group of tensor `tensor` (after the first step): 0 for the optimizer's own spec,
    /// k ≥ 1 for `groups()[k - 1]`.
    pub fn group_of(&self, tensor: usize) -> Option<usize> {
        self.tensors.get(tensor).map(|t| t.group)
    }

    /// The spec group `group` steps with (0: the optimizer's own).
    pub fn group_spec(&self, group: usize) -> Option<&OptimizerSpec> {
        match group {
            0 => Some(&self.spec),
            k => self.group_specs.get(k - 1),
        }
    }

    /// The spec tensor `tensor` steps with (the optimizer's own before the first step).
    pub fn spec_of(&self, tensor: usize) -> &OptimizerSpec {
        self.group_of(tensor)
            .and_then(|g| self.group_spec(g))
            .unwrap_or(&self.spec)
    }

    /// Every spec in use: the optimizer's own, then each group's.
    pub(crate) fn all_specs(&self) -> impl Iterator<Item = &OptimizerSpec> {
        std::iter::once(&self.spec).chain(&self.group_specs)
    }

    /// The optimizer's configuration in one line: its spec, then `[group]` for each group.
    pub fn describe(&self) -> String {
        let mut out = self.spec.to_string();
        for g in &self.groups {
            out.push_str(&format!(" [{g}]"));
        }
        out
    }

    /// Parses `spec` (e.g. `"adam:lr=1e-3"`) and builds the optimizer.
    pub fn from_spec(spec: &str) -> Result<Self> {
        Self::new(spec.parse()?)
    }

    /// The spec.
    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// Number of steps applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Number of steps skipped for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Attaches a learning-rate schedule: step t (counting steps taken, applied or skipped)
    /// uses sₜη. Its position is the optimizer's step count, so it is saved and resumed
    /// with the state.
    pub fn set_schedule(&mut self, schedule: Schedule) -> Result<()> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(())
    }

    /// The attached schedule ([`Schedule::Constant`] unless set).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The learning rate the next step will use: sₜη (times any
    /// [`StepInfo::lr_scale`](crate::StepInfo::lr_scale)).
    pub fn current_lr(&self) -> f64 {
        self.spec.rule.lr() * self.schedule.factor(self.step + self.skipped)
    }

    /// Changes one hyper-parameter mid-run, keeping the state (moments, step count); e.g.
    /// `set("weight_decay", 0.0)`. Any key of the spec grammar is accepted; a change that
    /// would change the state's shape (e.g. `amsgrad`, adding a buffer) is refused, as is an
    /// invalid value. On error nothing changes.
    pub fn set(&mut self, key: &str, value: impl ToString) -> Result<()> {
        let mut spec = self.spec.clone();
        spec.set(key, &value.to_string())?;
        self.replace_spec(spec)
    }

    /// Sets `key` for parameter group `group` only (0: the optimizer's own spec, as
    /// [`Optimizer::set`], which also reaches the groups that do not set `key` themselves).
    pub fn set_group(&mut self, group: usize, key: &str, value: impl ToString) -> Result<()> {
        self.set_group_keys(group, &[(key, value.to_string())])
    }

    /// Sets several keys of parameter group `group` at once (0: the optimizer's own spec):
    /// the combination is validated, not each intermediate state (so `nesterov=true` may
    /// arrive with the `momentum` it needs). On error nothing changes.
    pub fn set_group_keys(&mut self, group: usize, keys: &[(&str, String)]) -> Result<()> {
        if group == 0 {
            let mut spec = self.spec.clone();
            for (key, value) in keys {
                spec.set(key, value)?;
            }
            return self.replace_spec(spec);
        }
        let Some(g) = self.groups.get(group - 1) else {
            return Err(Error::invalid(
                "parameter group",
                group,
                format!(
                    "there are {} groups besides the optimizer's own",
                    self.groups.len()
                ),
            ));
        };
        let mut g = g.clone();
        for (key, text) in keys {
            if text.is_empty() || text.contains([',', ';', ':', '=', '[', ']']) {
                return Err(Error::invalid(
                    *key,
                    format!("{text:?}"),
                    "a value is one word of the spec grammar (no , ; : = or brackets)",
                ));
            }
            if crate::keys::is_global(key) {
                return Err(Error::invalid(
                    *key,
                    text,
                    "is global: set it with Optimizer::set",
                ));
            }
            match g.keys.iter_mut().find(|(k, _)| k == key) {
                Some(kv) => kv.1 = text.clone(),
                None => g.keys.push((key.to_string(), text.clone())),
            }
        }
        let mut groups = self.groups.clone();
        groups[group - 1] = g;
        self.replace_specs(self.spec.clone(), groups)
    }

    /// Sets the base learning rate η (a schedule still multiplies it).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.set("lr", lr)
    }

    /// Replaces the spec by `spec` (the groups follow it), keeping the state.
    pub(crate) fn replace_spec(&mut self, spec: OptimizerSpec) -> Result<()> {
        self.replace_specs(spec, self.groups.clone())
    }

    /// Replaces the spec and the groups, keeping the state; refused unless every group keeps
    /// its rule and the same state buffers. On error nothing changes.
    pub(crate) fn replace_specs(
        &mut self,
        spec: OptimizerSpec,
        groups: Vec<GroupSpec>,
    ) -> Result<()> {
        spec.validate()?;
        let mut next = vec![spec.clone()];
        for g in &groups {
            next.push(g.resolve(&spec)?);
        }
        for (now, new) in self.all_specs().zip(&next) {
            if new.name() != now.name()
                || slots_of(new) != slots_of(now)
                || scalars_of(new) != scalars_of(now)
                || storage(new) != storage(now)
            {
                return Err(Error::invalid(
                    "optimizer spec",
                    new,
                    format!(
                        "would change the optimizer's state (`{now}` keeps {:?}, `{new}` would \
                         keep {:?}); start a new optimizer instead",
                        slots_of(now),
                        slots_of(new)
                    ),
                ));
            }
        }
        // A buffer's shape may depend on a hyper-parameter (SOAP's max_precondition_dim).
        if let Some(layout) = &self.layout {
            for ((name, shape), state) in layout.iter().zip(&self.tensors) {
                let (now, new) = (
                    self.group_spec(state.group).unwrap_or(&self.spec),
                    &next[state.group],
                );
                if (0..slots_of(new).len())
                    .any(|k| now.rule.slot_shape(k, shape) != new.rule.slot_shape(k, shape))
                {
                    return Err(Error::invalid(
                        "optimizer spec",
                        new,
                        format!(
                            "would change the shape of tensor `{name}`'s state buffers; start a \
                             new optimizer instead"
                        ),
                    ));
                }
            }
        }
        self.spec = spec;
        self.group_specs = next.split_off(1);
        self.groups = groups;
        Ok(())
    }

    /// Names and shapes of the parameter tensors, fixed by the first step (`None` before it).
    pub fn layout(&self) -> Option<&[(String, Vec<usize>)]> {
        self.layout.as_deref()
    }

    /// Names of the per-parameter state buffers, PyTorch's where it has them
    /// (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...).
    pub fn slot_names(&self) -> &'static [&'static str] {
        slots_of(&self.spec)
    }

    /// The state buffers of tensor `tensor`, by its group's rule.
    pub fn slot_names_of(&self, tensor: usize) -> &'static [&'static str] {
        slots_of(self.spec_of(tensor))
    }

    /// Whether the rule keeps no state between steps, so that its expected update is a
    /// function of the parameters alone (plain SGD, `normsgd`, `multiplicative`, `lossprop`);
    /// with groups, whether every group's rule does.
    pub fn is_stateless(&self) -> bool {
        self.all_specs()
            .all(|s| slots_of(s).is_empty() && scalars_of(s).is_empty())
    }

    /// The state buffer `slot` of tensor `tensor` (after the first step).
    pub fn state(&self, slot: &str, tensor: usize) -> Option<&[T]> {
        let s = self.slot_names_of(tensor).iter().position(|&n| n == slot)?;
        self.tensors.get(tensor)?.slots.get(s).map(Vec::as_slice)
    }

    /// The state buffer `slot` of tensor `tensor` as bfloat16 bits, when the state is kept
    /// in bfloat16 (`state_dtype=bf16`; [`Optimizer::state`] is `None` then).
    pub fn state_bf16(&self, slot: &str, tensor: usize) -> Option<&[u16]> {
        let s = self.slot_names_of(tensor).iter().position(|&n| n == slot)?;
        self.tensors.get(tensor)?.lowp.get(s).map(Vec::as_slice)
    }

    /// The state buffer `slot` of tensor `tensor` in 8 bits, when the state is kept so
    /// (`state_dtype=q8`; [`Optimizer::state`] is `None` then): each element's code in the
    /// buffer's book, and the absmax of each block of `block_size` elements. Its values are
    /// x̂ᵢ = c\[qᵢ\]·a\[⌊i/block_size⌋\] ([`Optimizer::state_values`]); the book is
    /// [`CodeBook::unsigned`](crate::quant::CodeBook::unsigned) for a buffer that never goes
    /// negative ([`Rule::slot_is_nonnegative`](crate::Rule::slot_is_nonnegative)), else
    /// [`CodeBook::signed`](crate::quant::CodeBook::signed).
    pub fn state_q8(&self, slot: &str, tensor: usize) -> Option<(&[u8], &[f32])> {
        let s = self.slot_names_of(tensor).iter().position(|&n| n == slot)?;
        let q = self.tensors.get(tensor)?.quant.get(s)?;
        Some((&q.codes, &q.absmax))
    }

    /// The state buffer `slot` of tensor `tensor` in `f64` (exact), whatever type it is kept
    /// in (8-bit state dequantized: x̂ = c\[q\]·a in `f32`).
    pub fn state_values(&self, slot: &str, tensor: usize) -> Option<Vec<f64>> {
        if let Some(s) = self.state(slot, tensor) {
            return Some(s.iter().map(|x| x.as_f64()).collect());
        }
        if let Some(b) = self.state_bf16(slot, tensor) {
            return Some(
                b.iter()
                    .map(|&x| f64::from(crate::lowp::bf16_to_f32(x)))
                    .collect(),
            );
        }
        let s = self.slot_names_of(tensor).iter().position(|&n| n == slot)?;
        let q = self.tensors.get(tensor)?.quant.get(s)?;
        let block = self.spec_of(tensor).block_size;
        Some(q.values(block).into_iter().map(f64::from).collect())
    }

    /// The per-tensor scalars of tensor `tensor` (after the first step), in the order of its
    /// rule's `Rule::tensor_scalars` names: NAdam's
    /// `mu_product`, Madam's `max`, Schedule-Free's `lr_max`, `weight_sum`, `ckp1`; empty
    /// for the other rules.
    pub fn tensor_scalars(&self, tensor: usize) -> Option<&[f64]> {
        self.tensors.get(tensor).map(|t| t.scalars.as_slice())
    }

    /// The point to evaluate (and to ship) for tensor `tensor` when it is not the
    /// parameters: Schedule-Free's average xₜ (the parameters hold yₜ, where gradients
    /// are taken). `None` for every other rule, and before the first step.
    pub fn eval_point(&self, tensor: usize) -> Option<&[T]> {
        let slot = self.spec_of(tensor).rule.eval_slot()?;
        self.tensors.get(tensor)?.slots.get(slot).map(Vec::as_slice)
    }

    /// Whether the parameters hold the evaluation point ([`Optimizer::eval_mode`]).
    pub fn in_eval_mode(&self) -> bool {
        self.eval_mode
    }

    /// Puts the evaluation point into `params` in place (the `schedulefree` package's
    /// `optimizer.eval()`): Schedule-Free tensors get xₜ; other rules' tensors are left
    /// as they are. Call before evaluating or saving the model; [`Optimizer::train_mode`]
    /// brings back the training point bit for bit. Stepping in eval mode is an error;
    /// calling it twice is a no-op.
    pub fn eval_mode(&mut self, params: &mut [ParamMut<'_, T>]) -> Result<()> {
        self.check_params(params)?;
        if !self.eval_mode {
            for (tensor, (p, state)) in params.iter_mut().zip(&self.tensors).enumerate() {
                if let Some(slot) = self.spec_of(tensor).rule.eval_slot() {
                    p.data.copy_from_slice(&state.slots[slot]);
                }
            }
            self.eval_mode = true;
        }
        Ok(())
    }

    /// Puts the training point back into `params` after [`Optimizer::eval_mode`]
    /// (`optimizer.train()`): Schedule-Free's yₜ = βxₜ + (1 − β)zₜ, computed
    /// from the state exactly as the step computed it. A no-op in train mode.
    pub fn train_mode(&mut self, params: &mut [ParamMut<'_, T>]) -> Result<()> {
        self.check_params(params)?;
        if self.eval_mode {
            for (tensor, (p, state)) in params.iter_mut().zip(&self.tensors).enumerate() {
                let rule = &self.spec_of(tensor).rule;
                if rule.eval_slot().is_some() {
                    let slots: Vec<&[T]> = state.slots.iter().map(Vec::as_slice).collect();
                    rule.train_point(p.data, &slots);
                }
            }
            self.eval_mode = false;
        }
        Ok(())
    }
}

/// How a spec stores its state, as far as its buffers' layout goes: in the parameters' type,
/// in bfloat16, or in 8 bits with blocks of a size.
fn storage(spec: &OptimizerSpec) -> (u8, usize) {
    match spec.state_dtype {
        StateDtype::Param | StateDtype::F32 | StateDtype::F64 => (0, 0),
        StateDtype::Bf16 => (1, 0),
        StateDtype::Q8 => (2, spec.block_size),
    }
}

/// `state_dtype=f32`/`f64` must name the parameters' type (bf16 and `param` go with any).
pub(crate) fn check_state_dtype<T: Real>(spec: &OptimizerSpec) -> Result<()> {
    let named = match spec.state_dtype {
        StateDtype::F32 => "f32",
        StateDtype::F64 => "f64",
        StateDtype::Param | StateDtype::Bf16 | StateDtype::Q8 => return Ok(()),
    };
    if named != T::NAME {
        return Err(Error::invalid(
            "state_dtype",
            named,
            format!(
                "the parameters are {}: the state is kept in their type, in bf16 or in q8",
                T::NAME
            ),
        ));
    }
    Ok(())
}

/// The state buffers of a rule, PyTorch's names where it has them.
pub(crate) fn slots_of(spec: &OptimizerSpec) -> &'static [&'static str] {
    spec.rule.slots()
}

/// The scalar state per tensor of a rule (Madam's clamp bound).
pub(crate) fn scalars_of(spec: &OptimizerSpec) -> &'static [&'static str] {
    spec.rule.tensor_scalars()
}
