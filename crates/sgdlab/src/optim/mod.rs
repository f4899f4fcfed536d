//! Optimizers: every update rule of the problem set and the ones people use, with PyTorch's
//! names and semantics, checkpoint/resume, and errors instead of silent NaNs.
//!
//! ```
//! use sgdlab::optim::{Optimizer, StepInfo, Tensor};
//!
//! let mut params = vec![Tensor::vector("w", vec![1.0f64, -2.0])];
//! let grads = vec![Tensor::vector("w", vec![0.5, 0.5])];
//! let mut opt = Optimizer::<f64>::from_spec("sgd:lr=0.1,momentum=0.9")?;
//! opt.step(&mut params, &grads, &StepInfo::default())?;
//! assert_eq!(params[0].data(), &[0.95, -2.05]);
//! # Ok::<(), sgdlab::Error>(())
//! ```
//!
//! Each optimizer's mathematics lives in one place, its module's `step_tensor`, a single pass
//! over the tensor's parameters, gradients and state with per-step scalars (bias corrections,
//! learning rate) computed once in `f64`. Quantities over all tensors (the gradient norm for
//! `clip_norm` and `normsgd`) and the finiteness check come from one deterministic pre-pass.

pub(crate) mod checkpoint;
pub mod group;
pub mod kernel;
mod mixed;
#[macro_use]
mod registry;
pub mod rule;
pub mod schedule;
pub mod spec;

// The registry: one line per optimizer module (its file in this directory), naming the
// configuration types that become `Rule`'s variants. Nothing else names individual rules.
registry! {
    sgd::{Sgd, EmaMomentum},
    adam::{Adam, AdamW},
    rmsprop::{Rmsprop},
    adagrad::{Adagrad},
    lion::{Lion},
    madam::{Madam},
    rules::{NormSgd, Multiplicative, LossProp},
    adamax::{Adamax},
    nadam::{Nadam},
    radam::{Radam},
    ademamix::{Ademamix},
    muon::{Muon},
    schedulefree::{SfSgd, SfAdamW},
}

pub use checkpoint::{StateDict, stored_dtype};
pub use group::GroupSpec;
pub use rule::{Keys, UpdateRule};
pub use schedule::Schedule;
pub use spec::{Debias, OptimizerSpec, StateDtype, StateRounding};

use crate::error::check_len;
use crate::{Error, Real, Result};

/// A named, shaped, contiguous tensor of parameters or gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<T>,
}

impl<T: Real> Tensor<T> {
    /// A tensor of the given shape; errors unless the shape's product is `data.len()`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let name = name.into();
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        check_len(
            &format!("tensor {name} of shape {shape:?}"),
            numel.unwrap_or(usize::MAX),
            data.len(),
        )?;
        Ok(Self { name, shape, data })
    }

    /// A one-dimensional tensor.
    pub fn vector(name: impl Into<String>, data: Vec<T>) -> Self {
        Self {
            name: name.into(),
            shape: vec![data.len()],
            data,
        }
    }

    /// A tensor of zeros shaped like `self`, with the same name.
    pub fn zeros_like(&self) -> Self {
        Self {
            name: self.name.clone(),
            shape: self.shape.clone(),
            data: vec![T::zero(); self.data.len()],
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl<'a, T: Real> From<&'a mut Tensor<T>> for ParamMut<'a, T> {
    fn from(t: &'a mut Tensor<T>) -> Self {
        ParamMut {
            name: &t.name,
            shape: std::borrow::Cow::Borrowed(&t.shape),
            data: &mut t.data,
        }
    }
}

impl<'a, T: Real> From<&'a Tensor<T>> for GradRef<'a, T> {
    fn from(t: &'a Tensor<T>) -> Self {
        GradRef {
            name: &t.name,
            shape: std::borrow::Cow::Borrowed(&t.shape),
            data: &t.data,
        }
    }
}

/// A parameter tensor that the caller owns, borrowed for one step: a name, a shape and the
/// elements (row-major), updated in place with no copy. `ParamMut<'_, u16>` holds bfloat16
/// parameters (their bits) for [`Optimizer::step_bf16`].
///
/// ```
/// use sgdlab::optim::{GradRef, Optimizer, ParamMut, StepInfo};
///
/// let (mut w, mut b) = (vec![1.0f32, 2.0], vec![0.5f32]);
/// let (gw, gb) = (vec![0.1f32, -0.1], vec![1.0f32]);
/// let mut opt = Optimizer::<f32>::from_spec("sgd:lr=0.5")?;
/// opt.step_views(
///     &mut [ParamMut::vector("w", &mut w), ParamMut::vector("b", &mut b)],
///     &[GradRef::vector("w", &gw), GradRef::vector("b", &gb)],
///     &StepInfo::default(),
/// )?;
/// assert_eq!((w, b), (vec![0.95, 2.05], vec![0.0]));
/// # Ok::<(), sgdlab::Error>(())
/// ```
#[derive(Debug)]
pub struct ParamMut<'a, T> {
    name: &'a str,
    shape: std::borrow::Cow<'a, [usize]>,
    data: &'a mut [T],
}

impl<'a, T> ParamMut<'a, T> {
    /// A view of `data` as a tensor of `shape`; errors unless the shape's product is
    /// `data.len()`.
    pub fn new(name: &'a str, shape: &'a [usize], data: &'a mut [T]) -> Result<Self> {
        check_shape(name, shape, data.len())?;
        Ok(Self {
            name,
            shape: std::borrow::Cow::Borrowed(shape),
            data,
        })
    }

    /// A view of `data` as a one-dimensional tensor.
    pub fn vector(name: &'a str, data: &'a mut [T]) -> Self {
        Self {
            name,
            shape: std::borrow::Cow::Owned(vec![data.len()]),
            data,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &[T] {
        self.data
    }
}

/// A gradient tensor that the caller owns, borrowed (read-only) for one step
/// (`GradRef<'_, u16>`: bfloat16 bits, for [`Optimizer::step_bf16`]).
#[derive(Clone, Debug)]
pub struct GradRef<'a, T> {
    name: &'a str,
    shape: std::borrow::Cow<'a, [usize]>,
    data: &'a [T],
}

impl<'a, T> GradRef<'a, T> {
    /// A view of `data` as a tensor of `shape`; errors unless the shape's product is
    /// `data.len()`.
    pub fn new(name: &'a str, shape: &'a [usize], data: &'a [T]) -> Result<Self> {
        check_shape(name, shape, data.len())?;
        Ok(Self {
            name,
            shape: std::borrow::Cow::Borrowed(shape),
            data,
        })
    }

    /// A view of `data` as a one-dimensional tensor.
    pub fn vector(name: &'a str, data: &'a [T]) -> Self {
        Self {
            name,
            shape: std::borrow::Cow::Owned(vec![data.len()]),
            data,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &[T] {
        self.data
    }
}

fn check_shape(name: &str, shape: &[usize], len: usize) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    check_len(
        &format!("tensor {name} of shape {shape:?}"),
        numel.unwrap_or(usize::MAX),
        len,
    )
}

/// Clips gradients to a global norm, as `torch.nn.utils.clip_grad_norm_`: with
/// $\lVert g\rVert$ the 2-norm over all of them, multiplies every element by
/// $c = C/(\lVert g\rVert + 10^{-6})$ when $c < 1$, and returns $\lVert g\rVert$ (before
/// clipping). The norm is summed in a fixed order (deterministic for any thread count).
///
/// Errors, changing nothing, on a NaN or infinite element or an invalid `max_norm`.
pub fn clip_grad_norm<T: Real>(grads: &mut [&mut [T]], max_norm: f64) -> Result<f64> {
    spec::check::positive("max_norm", max_norm)?;
    let views: Vec<&[T]> = grads.iter().map(|g| &**g).collect();
    let norm = kernel::reduce(&views, true)
        .map_err(|(t, index, value)| Error::NonFinite {
            what: format!("gradient {t}"),
            index,
            value,
        })?
        .sqrt();
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
    /// Multiplier $s \ge 0$ of the configured learning rate (a schedule): the step uses
    /// $s\eta$.
    pub lr_scale: f64,
    /// Gradient accumulation: the gradients passed are *sums* over this many micro-batches
    /// ($k \ge 1$), and the step uses their mean $g/k$ (applied inside the fused pass, as a
    /// factor $1/k$: no extra pass or copy). Clipping and `normsgd` see the mean.
    pub micro_batches: u32,
}

impl Default for StepInfo {
    fn default() -> Self {
        Self {
            loss: None,
            lr_scale: 1.0,
            micro_batches: 1,
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
    /// The learning rate the update used, $s\eta$ of the optimizer's own spec (group 0;
    /// other groups scale their own $\eta$ by the same $s$).
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
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct StepContext {
    /// This step's number, counting from 1.
    pub t: u64,
    /// The learning rate of this step, $s\eta$.
    pub lr: f64,
    /// The gradient clipping factor (1 without clipping).
    pub grad_scale: f64,
    /// The step's loss, if given.
    pub loss: Option<f64>,
    /// $\lVert g \rVert^2$ over all tensors, after clipping (computed only when `clip_norm`
    /// or `normsgd` needs it; 0 otherwise).
    pub grad_norm_sq: f64,
    /// Number of parameters over all tensors.
    pub numel: usize,
    /// $\beta_i^t$ for the rule's decay rates ([`Rule::decays`]), taken once per step.
    pub beta_pow: [f64; 2],
    /// Whether element loops prefetch ahead (`kernel::blocks`): for steps whose working set
    /// is at least 32 MiB.
    pub prefetch: bool,
}

/// An optimizer: a validated spec and its state.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer<T: Real> {
    spec: OptimizerSpec,
    /// Applied steps.
    step: u64,
    /// Steps skipped for non-finite gradients.
    skipped: u64,
    /// Names and shapes of the parameter tensors, fixed by the first step.
    layout: Option<Vec<(String, Vec<usize>)>>,
    /// State of each parameter tensor, in parameter order (empty before the first step).
    tensors: Vec<TensorState<T>>,
    /// The learning-rate schedule; its position is `step + skipped`.
    schedule: Schedule,
    /// Parameter groups, in the order their patterns are tried.
    groups: Vec<GroupSpec>,
    /// Each group's spec, resolved over `spec` (same order as `groups`).
    group_specs: Vec<OptimizerSpec>,
    /// Whether the parameters hold the evaluation point ([`Optimizer::eval_mode`]).
    eval_mode: bool,
}

/// The optimizer state of one parameter tensor.
#[derive(Clone, Debug, PartialEq)]
struct TensorState<T> {
    /// The tensor's group: 0 for the optimizer's own spec, $k$ for `groups[k - 1]`.
    group: usize,
    /// One buffer per slot name, each as long as the tensor.
    slots: Vec<Vec<T>>,
    /// Scalar state per tensor (Madam's clamp bound).
    scalars: Vec<f64>,
    /// The state buffers in bfloat16 (`state_dtype=bf16`; `slots` is then empty).
    lowp: Vec<Vec<u16>>,
    /// The exact copy of bfloat16 parameters (`master_weights=true`), empty otherwise.
    master: Vec<T>,
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
        })
    }

    /// An optimizer whose tensors are split into parameter `groups` (see [`group`]): a tensor
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
    /// $k \ge 1$ for `groups()[k - 1]`.
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
    fn all_specs(&self) -> impl Iterator<Item = &OptimizerSpec> {
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

    /// Attaches a learning-rate schedule: step $t$ (counting steps taken, applied or skipped)
    /// uses $s_t\eta$. Its position is the optimizer's step count, so it is saved and resumed
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

    /// The learning rate the next step will use: $s_t\eta$ (times any
    /// [`StepInfo::lr_scale`]).
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
            if group::GLOBAL_KEYS.contains(key) {
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

    /// Sets the base learning rate $\eta$ (a schedule still multiplies it).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.set("lr", lr)
    }

    /// Replaces the spec by `spec` (the groups follow it), keeping the state.
    fn replace_spec(&mut self, spec: OptimizerSpec) -> Result<()> {
        self.replace_specs(spec, self.groups.clone())
    }

    /// Replaces the spec and the groups, keeping the state; refused unless every group keeps
    /// its rule and the same state buffers. On error nothing changes.
    fn replace_specs(&mut self, spec: OptimizerSpec, groups: Vec<GroupSpec>) -> Result<()> {
        spec.validate()?;
        let mut next = vec![spec.clone()];
        for g in &groups {
            next.push(g.resolve(&spec)?);
        }
        for (now, new) in self.all_specs().zip(&next) {
            if new.name() != now.name()
                || slots_of(new) != slots_of(now)
                || scalars_of(new) != scalars_of(now)
                || (new.state_dtype == StateDtype::Bf16) != (now.state_dtype == StateDtype::Bf16)
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

    /// The state buffer `slot` of tensor `tensor` in `f64` (exact), whatever type it is kept
    /// in.
    pub fn state_values(&self, slot: &str, tensor: usize) -> Option<Vec<f64>> {
        match self.state(slot, tensor) {
            Some(s) => Some(s.iter().map(|x| x.as_f64()).collect()),
            None => self.state_bf16(slot, tensor).map(|b| {
                b.iter()
                    .map(|&x| f64::from(crate::lowp::bf16_to_f32(x)))
                    .collect()
            }),
        }
    }

    /// The point to evaluate (and to ship) for tensor `tensor` when it is not the
    /// parameters: Schedule-Free's average $x_t$ (the parameters hold $y_t$, where gradients
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
    /// `optimizer.eval()`): Schedule-Free tensors get $x_t$; other rules' tensors are left
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
    /// (`optimizer.train()`): Schedule-Free's $y_t = \beta x_t + (1-\beta) z_t$, computed
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

/// A buffer of `n` elements `f(i)`, backed by transparent huge pages where the system offers
/// them on request (Linux with THP in `madvise` mode, the common default): the kernel is
/// asked before the first write, so that the pages are faulted in 2 MiB at a time. A step
/// streams every state buffer once, and 4 KiB pages add TLB misses to it: on the development
/// VM the same 10M-parameter Adam step ran 1.15× faster on numpy's arrays (which numpy backs
/// this way) than on torch's, and `bench --serve` went from 10.2 to 9.2 ms with its state so
/// backed (`bench/compare_python.py`, a noisy shared machine). Results are unaffected.
fn huge_filled<E: Copy>(n: usize, f: impl Fn(usize) -> E) -> Vec<E> {
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

/// `state_dtype=f32`/`f64` must name the parameters' type (bf16 and `param` go with any).
fn check_state_dtype<T: Real>(spec: &OptimizerSpec) -> Result<()> {
    let named = match spec.state_dtype {
        StateDtype::F32 => "f32",
        StateDtype::F64 => "f64",
        StateDtype::Param | StateDtype::Bf16 => return Ok(()),
    };
    if named != T::NAME {
        return Err(Error::invalid(
            "state_dtype",
            named,
            format!(
                "the parameters are {}: the state is kept in their type or in bf16",
                T::NAME
            ),
        ));
    }
    Ok(())
}

/// The state buffers of a rule, PyTorch's names where it has them.
fn slots_of(spec: &OptimizerSpec) -> &'static [&'static str] {
    spec.rule.slots()
}

/// The scalar state per tensor of a rule (Madam's clamp bound).
fn scalars_of(spec: &OptimizerSpec) -> &'static [&'static str] {
    spec.rule.tensor_scalars()
}

impl<T: Real> Optimizer<T> {
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
        self.step_unchecked(params, grads, info)
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
        let need_norm =
            self.spec.clip_norm.is_some() || self.all_specs().any(|s| s.rule.needs_norm());
        if nonfinite.is_none() && (check || need_norm) {
            let slices: Vec<&[T]> = grads.iter().map(|g| g.data).collect();
            match kernel::reduce(&slices, need_norm) {
                Ok(sum) => norm_sq = sum,
                Err((t, index, value)) => {
                    nonfinite = Some(Error::NonFinite {
                        what: format!("gradient of {}", grads[t].name),
                        index,
                        value,
                    });
                }
            }
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

        if let Some(groups) = first_groups {
            self.allocate(params, groups);
        }
        self.step += 1;
        let numel: usize = params.iter().map(|p| p.data.len()).sum();
        let state_bytes: usize = params
            .iter()
            .zip(&self.tensors)
            .map(|(p, s)| p.data.len() * ((2 + s.slots.len()) * T::BYTES + 2 * s.lowp.len()))
            .sum();
        let prefetch = state_bytes >= kernel::PREFETCH_MIN_BYTES;
        // One context per group: its rule's learning rate and decay powers; the gradient
        // scale, norm and size are global.
        let contexts: Vec<StepContext> = self
            .all_specs()
            .map(|spec| StepContext {
                t: self.step,
                lr: spec.rule.lr() * (factor * info.lr_scale),
                grad_scale,
                loss: info.loss,
                grad_norm_sq: norm_sq * clip * clip,
                numel,
                beta_pow: spec.rule.decays().map(|b| {
                    if b == 0.0 {
                        0.0
                    } else {
                        b.powf(self.step as f64)
                    }
                }),
                prefetch,
            })
            .collect();
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
        // Whole-tensor rules (Muon) step each matrix at once, with threads inside.
        for ((p, g), state) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
            let rule = rules[state.group];
            if rule.whole_tensor() {
                let mut slots: Vec<&mut [T]> =
                    state.slots.iter_mut().map(Vec::as_mut_slice).collect();
                let ctx = &contexts[state.group];
                rule.step_whole(ctx, &p.shape, p.data, g.data, &mut slots, &state.scalars);
            }
        }
        // bfloat16 state: the stochastic-rounding streams of this step (seed, step, tensor,
        // pair of buffers); the element's index in its tensor is the stream's counter, and
        // buffers 2k and 2k + 1 take the low and high halves of stream k's word.
        let (sr_seed, rounding, step) = (self.spec.sr_seed, self.spec.rounding, self.step);
        let keys = |tensor: usize| -> [u64; 2] {
            std::array::from_fn(|k| crate::lowp::stream_key(sr_seed, step, tensor as u64, k as u64))
        };
        if kernel::is_small(numel) {
            for (t, ((p, g), state)) in params
                .iter_mut()
                .zip(grads)
                .zip(&mut self.tensors)
                .enumerate()
            {
                let TensorState {
                    group,
                    slots,
                    scalars,
                    lowp,
                    ..
                } = state;
                let (rule, ctx) = (rules[*group], &contexts[*group]);
                if !rule.whole_tensor() {
                    let lowp = (!lowp.is_empty()).then(|| {
                        let mut bufs: [&mut [u16]; 3] = [&mut [], &mut [], &mut []];
                        for (b, l) in bufs.iter_mut().zip(lowp.iter_mut()) {
                            *b = l.as_mut_slice();
                        }
                        kernel::Lowp {
                            slots: bufs,
                            rounding,
                            keys: keys(t),
                            offset: 0,
                        }
                    });
                    kernel::run_tensor(rule, ctx, p.data, g.data, slots, scalars, lowp);
                }
            }
            return Ok(report);
        }
        let mut units = Vec::with_capacity(numel / kernel::CHUNK + params.len());
        for (t, ((p, g), state)) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.tensors)
            .enumerate()
        {
            let TensorState {
                group,
                slots,
                scalars,
                lowp,
                ..
            } = state;
            let (rule, ctx) = (rules[*group], &contexts[*group]);
            if rule.whole_tensor() {
                continue;
            }
            let n_slots = rule.slots().len();
            let is_lowp = !lowp.is_empty();
            let tensor_keys = keys(t);
            // The state buffers not yet cut into units (no allocation per tensor: a step may
            // have many thousands of small ones).
            let mut rest: [&mut [T]; 3] = [&mut [], &mut [], &mut []];
            for (r, s) in rest.iter_mut().zip(slots.iter_mut()) {
                *r = s.as_mut_slice();
            }
            let mut rest_lowp: [&mut [u16]; 3] = [&mut [], &mut [], &mut []];
            for (r, s) in rest_lowp.iter_mut().zip(lowp.iter_mut()) {
                *r = s.as_mut_slice();
            }
            let mut offset = 0u64;
            for (p, g) in p
                .data
                .chunks_mut(kernel::CHUNK)
                .zip(g.data.chunks(kernel::CHUNK))
            {
                let len = p.len();
                let mut unit_slots: [&mut [T]; 3] = [&mut [], &mut [], &mut []];
                let mut unit_lowp: [&mut [u16]; 3] = [&mut [], &mut [], &mut []];
                if is_lowp {
                    for (slot, r) in unit_lowp.iter_mut().zip(rest_lowp.iter_mut()).take(n_slots) {
                        let (head, tail) = std::mem::take(r).split_at_mut(len);
                        *slot = head;
                        *r = tail;
                    }
                } else {
                    for (slot, r) in unit_slots.iter_mut().zip(rest.iter_mut()).take(n_slots) {
                        let (head, tail) = std::mem::take(r).split_at_mut(len);
                        *slot = head;
                        *r = tail;
                    }
                }
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
                        keys: tensor_keys,
                        offset,
                    }),
                });
                offset += len as u64;
            }
        }
        kernel::run_units(prefetch, units);
        Ok(report)
    }

    /// The group of each tensor, by name; errors if a group matches no tensor.
    fn assign_groups(&self, params: &[ParamMut<'_, T>]) -> Result<Vec<usize>> {
        let groups: Vec<usize> = params
            .iter()
            .map(|p| {
                self.groups
                    .iter()
                    .position(|g| g.matches(p.name))
                    .map_or(0, |k| k + 1)
            })
            .collect();
        for (p, &group) in params.iter().zip(&groups) {
            let spec = self.group_spec(group).unwrap_or(&self.spec);
            spec.rule.check_shape(p.name, &p.shape)?;
        }
        for (k, g) in self.groups.iter().enumerate() {
            if !groups.contains(&(k + 1)) {
                return Err(Error::invalid(
                    "parameter group",
                    g,
                    format!(
                        "matches no parameter tensor (names: {}); check its patterns",
                        names(params.iter().map(|p| p.name))
                    ),
                ));
            }
        }
        Ok(groups)
    }

    /// Creates the state buffers for `params` (at the first step), by each tensor's group
    /// (from [`Optimizer::assign_groups`]).
    fn allocate(&mut self, params: &[ParamMut<'_, T>], groups: Vec<usize>) {
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
            let (slots, lowp) = if spec.state_dtype == StateDtype::Bf16 {
                // Rules whose buffers start at the parameters refuse bf16 (validate).
                let b = crate::lowp::bf16_nearest(init.to_f32_for_bf16());
                let lowp = (0..n).map(|_| huge_filled(p.data.len(), |_| b)).collect();
                (Vec::new(), lowp)
            } else {
                let slots = (0..n)
                    .map(|slot| match spec.rule.slot_starts_at_params(slot) {
                        true => huge_filled(p.data.len(), |i| p.data[i]),
                        false => huge_filled(p.data.len(), |_| init),
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
            });
        }
        self.tensors = tensors;
    }

    fn check_layout(&self, params: &[ParamMut<'_, T>], grads: &[GradRef<'_, T>]) -> Result<()> {
        check_len(
            "gradient tensors (one per parameter tensor)",
            params.len(),
            grads.len(),
        )?;
        for (p, g) in params.iter().zip(grads) {
            if p.name != g.name {
                return Err(Error::NameMismatch {
                    what: "gradients passed with the parameters, in order".to_string(),
                    expected: p.name.to_string(),
                    got: g.name.to_string(),
                });
            }
            if p.shape != g.shape {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "gradient of {} is {:?}, the parameter {:?}",
                        p.name, g.shape, p.shape
                    ),
                    expected: p.data.len(),
                    got: g.data.len(),
                });
            }
        }
        self.check_params(params)
    }

    /// Checks `params` against the names and shapes of the first step (if any).
    fn check_params(&self, params: &[ParamMut<'_, T>]) -> Result<()> {
        if let Some(layout) = &self.layout {
            if layout.len() != params.len() {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "parameter tensors: the optimizer's state is for {} tensors ({}), this \
                         step passes {}",
                        layout.len(),
                        names(layout.iter().map(|(n, _)| n.as_str())),
                        params.len()
                    ),
                    expected: layout.len(),
                    got: params.len(),
                });
            }
            for ((name, shape), p) in layout.iter().zip(params) {
                if name != p.name {
                    return Err(Error::NameMismatch {
                        what: "parameters, in the order of the optimizer's first step".to_string(),
                        expected: name.clone(),
                        got: p.name.to_string(),
                    });
                }
                if **shape != *p.shape {
                    return Err(Error::ShapeMismatch {
                        what: format!(
                            "parameter {} {:?}: the optimizer's state is for {} {:?}",
                            p.name, p.shape, name, shape
                        ),
                        expected: shape.iter().product(),
                        got: p.data.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Up to five names, quoted: `` `a`, `b`, ... ``.
fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.collect();
    let mut s = all
        .iter()
        .take(5)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > 5 {
        s.push_str(", ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(x: Vec<f64>) -> Vec<Tensor<f64>> {
        vec![Tensor::vector("p", x)]
    }

    #[test]
    fn sgd_by_hand() {
        let mut p = one(vec![1.0, 2.0]);
        let g = one(vec![1.0, -1.0]);
        let mut opt = Optimizer::from_spec("sgd:lr=0.5").unwrap();
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        assert_eq!(p[0].data(), &[0.5, 2.5]);
    }

    #[test]
    fn nonfinite_gradient_is_an_error_and_changes_nothing() {
        let mut p = one(vec![1.0, 2.0]);
        let mut opt = Optimizer::from_spec("adam:lr=0.1").unwrap();
        opt.step(&mut p, &one(vec![1.0, 1.0]), &StepInfo::default())
            .unwrap();
        let before = (p.clone(), opt.clone());
        let err = opt
            .step(&mut p, &one(vec![1.0, f64::NAN]), &StepInfo::default())
            .unwrap_err();
        assert!(err.to_string().contains("gradient of p"), "{err}");
        assert_eq!((p, opt), before);
    }

    #[test]
    fn skip_nonfinite_counts_and_changes_nothing_else() {
        let mut p = one(vec![1.0]);
        let mut opt = Optimizer::from_spec("adam:lr=0.1,skip_nonfinite=true").unwrap();
        let out = opt
            .step(&mut p, &one(vec![f64::INFINITY]), &StepInfo::default())
            .unwrap();
        assert_eq!(out.outcome, StepOutcome::Skipped);
        assert_eq!((opt.steps(), opt.skipped(), p[0].data()[0]), (0, 1, 1.0));
    }

    #[test]
    fn shape_and_name_mismatches_are_errors() {
        let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
        let mut p = one(vec![1.0, 2.0]);
        assert!(
            opt.step(&mut p, &one(vec![1.0]), &StepInfo::default())
                .is_err()
        );
        let renamed = vec![Tensor::vector("q", vec![1.0, 2.0])];
        assert!(opt.step(&mut p, &renamed, &StepInfo::default()).is_err());
        opt.step(&mut p, &one(vec![1.0, 1.0]), &StepInfo::default())
            .unwrap();
        let mut bigger = one(vec![1.0, 2.0, 3.0]);
        let err = opt
            .step(&mut bigger, &one(vec![0.0; 3]), &StepInfo::default())
            .unwrap_err();
        assert!(err.to_string().contains("state is for"), "{err}");
        assert!(Tensor::new("t", vec![2, 2], vec![1.0f64; 3]).is_err());
    }

    #[test]
    fn lossprop_needs_a_finite_loss() {
        let mut opt = Optimizer::<f64>::from_spec("lossprop:lr=0.1").unwrap();
        let mut p = one(vec![1.0]);
        let g = one(vec![2.0]);
        assert!(matches!(
            opt.step(&mut p, &g, &StepInfo::default()),
            Err(Error::MissingLoss { .. })
        ));
        assert!(
            opt.step(&mut p, &g, &StepInfo::with_loss(f64::NAN))
                .is_err()
        );
        opt.step(&mut p, &g, &StepInfo::with_loss(3.0)).unwrap();
        assert!((p[0].data()[0] - (1.0 - 0.1 * 3.0 * 2.0)).abs() < 1e-15);
    }

    #[test]
    fn check_finite_false_skips_the_check() {
        let mut p = one(vec![1.0]);
        let mut opt = Optimizer::from_spec("sgd:lr=0.1,check_finite=false").unwrap();
        let out = opt.step(&mut p, &one(vec![f64::NAN]), &StepInfo::default());
        assert_eq!(out.unwrap().outcome, StepOutcome::Applied);
        assert!(p[0].data()[0].is_nan());
    }

    #[test]
    fn clip_norm_scales_the_gradient() {
        let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1,clip_norm=1").unwrap();
        let mut p = one(vec![0.0, 0.0]);
        opt.step(&mut p, &one(vec![3.0, 4.0]), &StepInfo::default())
            .unwrap();
        let norm = p[0].data().iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 5.0 / (5.0 + 1e-6)).abs() < 1e-12);
    }

    #[test]
    fn normsgd_uses_the_global_norm() {
        // Two tensors: g = (3) and (4); ‖g‖² = 25, d = 2, eps = 0.5: step g/sqrt(13).
        let mut opt = Optimizer::<f64>::from_spec("normsgd:lr=1,eps=0.5").unwrap();
        let mut p = vec![
            Tensor::vector("a", vec![0.0]),
            Tensor::vector("b", vec![0.0]),
        ];
        let g = vec![
            Tensor::vector("a", vec![3.0]),
            Tensor::vector("b", vec![4.0]),
        ];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let s = 13.0f64.sqrt();
        assert!((p[0].data()[0] + 3.0 / s).abs() < 1e-15);
        assert!((p[1].data()[0] + 4.0 / s).abs() < 1e-15);
    }

    #[test]
    fn borrowed_views_step_exactly_like_owned_tensors() {
        let spec = "adamw:lr=0.01,clip_norm=0.5";
        let (mut owned, mut opt_a) = (
            vec![
                Tensor::new("w", vec![2, 3], (0..6).map(|i| i as f32 * 0.1).collect()).unwrap(),
                Tensor::vector("b", vec![0.5f32, -0.5]),
            ],
            Optimizer::<f32>::from_spec(spec).unwrap(),
        );
        let (mut w, mut b): (Vec<f32>, Vec<f32>) =
            (owned[0].data().to_vec(), owned[1].data().to_vec());
        let mut opt_b = Optimizer::<f32>::from_spec(spec).unwrap();
        let shape = [2usize, 3];
        for step in 0..5 {
            let gw: Vec<f32> = (0..6).map(|i| ((i + step) % 4) as f32 - 1.5).collect();
            let gb = vec![0.25f32 * step as f32, -1.0];
            let grads = vec![
                Tensor::new("w", vec![2, 3], gw.clone()).unwrap(),
                Tensor::vector("b", gb.clone()),
            ];
            let a = opt_a
                .step(&mut owned, &grads, &StepInfo::default())
                .unwrap();
            let r = opt_b
                .step_views(
                    &mut [
                        ParamMut::new("w", &shape, &mut w).unwrap(),
                        ParamMut::vector("b", &mut b),
                    ],
                    &[
                        GradRef::new("w", &shape, &gw).unwrap(),
                        GradRef::vector("b", &gb),
                    ],
                    &StepInfo::default(),
                )
                .unwrap();
            assert_eq!(a, r);
            assert!(r.grad_norm.unwrap() > 0.0 && r.lr == 0.01);
        }
        assert_eq!((owned[0].data(), owned[1].data()), (&w[..], &b[..]));
        assert_eq!(opt_a, opt_b);
        assert!(ParamMut::new("w", &shape, &mut [0.0f32; 5]).is_err());
    }

    #[test]
    fn name_mismatches_name_the_tensors() {
        let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
        let (mut a, mut b) = (vec![1.0, 2.0], vec![3.0, 4.0]);
        let g = [1.0, 1.0];
        let err = opt
            .step_views(
                &mut [ParamMut::vector("w", &mut a)],
                &[GradRef::vector("bias", &g)],
                &StepInfo::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("name mismatch") && err.contains("`w`") && err.contains("`bias`"),
            "{err}"
        );
        opt.step_views(
            &mut [ParamMut::vector("w", &mut a)],
            &[GradRef::vector("w", &g)],
            &StepInfo::default(),
        )
        .unwrap();
        let err = opt
            .step_views(
                &mut [ParamMut::vector("v", &mut b)],
                &[GradRef::vector("v", &g)],
                &StepInfo::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected `w`, got `v`"), "{err}");
    }

    #[test]
    fn accumulated_micro_batches_step_with_their_mean() {
        // Sum of 4 micro-batch gradients with micro_batches = 4 equals one step on the mean
        // (exactly, for a power of two).
        let micro = [[1.0f64, -2.0], [0.5, 0.5], [3.0, 1.0], [-0.5, 2.5]];
        let sum: Vec<f64> = (0..2).map(|j| micro.iter().map(|g| g[j]).sum()).collect();
        let mean: Vec<f64> = sum.iter().map(|s| s / 4.0).collect();
        for spec in [
            "adam:lr=0.1",
            "sgd:lr=0.1,momentum=0.9,clip_norm=0.3",
            "normsgd:lr=0.1,eps=1",
        ] {
            let mut a = Optimizer::<f64>::from_spec(spec).unwrap();
            let mut b = a.clone();
            let (mut pa, mut pb) = (one(vec![1.0, 1.0]), one(vec![1.0, 1.0]));
            let info = StepInfo {
                micro_batches: 4,
                ..StepInfo::default()
            };
            let ra = a.step(&mut pa, &one(sum.clone()), &info).unwrap();
            let rb = b
                .step(&mut pb, &one(mean.clone()), &StepInfo::default())
                .unwrap();
            assert_eq!((pa, a), (pb, b), "{spec}");
            assert_eq!(ra, rb);
        }
        let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
        let info = StepInfo {
            micro_batches: 0,
            ..StepInfo::default()
        };
        assert!(
            opt.step(&mut one(vec![0.0]), &one(vec![1.0]), &info)
                .is_err()
        );
    }

    #[test]
    fn clip_grad_norm_is_pytorchs() {
        let (mut a, mut b) = (vec![3.0f64], vec![4.0f64]);
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
        assert_eq!(norm, 5.0);
        let c = 1.0 / (5.0 + 1e-6);
        assert_eq!((a[0], b[0]), (3.0 * c, 4.0 * c));
        // Below the bound nothing changes; non-finite is an error that changes nothing.
        let mut small = vec![0.1f32, 0.2];
        assert!((clip_grad_norm(&mut [&mut small], 1.0).unwrap() - 0.05f64.sqrt()).abs() < 1e-7);
        assert_eq!(small, [0.1, 0.2]);
        let mut bad = vec![1.0f32, f32::NAN];
        assert!(clip_grad_norm(&mut [&mut bad], 1.0).is_err());
        assert!(clip_grad_norm(&mut [&mut small], 0.0).is_err());
        assert_eq!(small, [0.1, 0.2]);
    }

    #[test]
    fn hyper_parameters_change_mid_run_and_keep_the_state() {
        let mut a = Optimizer::<f64>::from_spec("adamw:lr=0.1").unwrap();
        let mut p = one(vec![1.0, -1.0]);
        a.step(&mut p, &one(vec![0.5, 0.5]), &StepInfo::default())
            .unwrap();
        let moments = a.state("exp_avg", 0).unwrap().to_vec();
        a.set_lr(0.05).unwrap();
        a.set("weight_decay", 0.0).unwrap();
        assert_eq!(a.spec().to_string(), "adamw:lr=0.05,weight_decay=0");
        assert_eq!(
            (a.steps(), a.state("exp_avg", 0).unwrap()),
            (1, &moments[..])
        );
        // The next step equals one of a fresh optimizer with the new values and the old state.
        let mut b = a.clone();
        let r = a
            .step(&mut p.clone(), &one(vec![0.5, 0.5]), &StepInfo::default())
            .unwrap();
        assert_eq!(r.lr, 0.05);
        // Refused: invalid values, changes of the state's shape, unknown keys; nothing changes.
        for (k, v) in [
            ("lr", "-1"),
            ("amsgrad", "true"),
            ("nope", "1"),
            ("beta1", "x"),
        ] {
            assert!(b.set(k, v).is_err(), "{k}={v}");
        }
        assert_eq!(b.spec().to_string(), "adamw:lr=0.05,weight_decay=0");
        let mut sgd = Optimizer::<f64>::from_spec("sgd:momentum=0.9").unwrap();
        assert!(sgd.set("nesterov", true).is_ok());
        assert!(sgd.set("momentum", 0).is_err(), "drops the momentum buffer");
    }

    #[test]
    fn an_attached_schedule_sets_every_steps_lr_and_is_saved() {
        let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1").unwrap();
        opt.set_schedule("seq[warmup:2;exp:0.5]@2".parse().unwrap())
            .unwrap();
        let mut p = one(vec![0.0]);
        let mut lrs = Vec::new();
        for _ in 0..3 {
            lrs.push(opt.current_lr());
            lrs.push(
                opt.step(&mut p, &one(vec![1.0]), &StepInfo::default())
                    .unwrap()
                    .lr,
            );
        }
        assert_eq!(lrs, [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(p[0].data()[0], -2.5);
        let back = Optimizer::<f64>::from_bytes(&opt.to_bytes().unwrap()).unwrap();
        assert_eq!(back, opt);
        assert_eq!(back.current_lr(), 0.5);
        // A custom schedule must be attached again after loading.
        opt.set_schedule(Schedule::custom("third", |_| 1.0 / 3.0))
            .unwrap();
        let mut back = Optimizer::<f64>::from_bytes(&opt.to_bytes().unwrap()).unwrap();
        let err = back
            .step(&mut p, &one(vec![1.0]), &StepInfo::default())
            .unwrap_err();
        assert!(err.to_string().contains("`third`"), "{err}");
        back.set_schedule(Schedule::custom("third", |_| 1.0 / 3.0))
            .unwrap();
        assert_eq!(
            back.step(&mut p, &one(vec![1.0]), &StepInfo::default())
                .unwrap()
                .lr,
            1.0 / 3.0
        );
        let mut bad = Optimizer::<f64>::from_spec("sgd").unwrap();
        bad.set_schedule(Schedule::custom("neg", |_| -1.0)).unwrap();
        assert!(
            bad.step(&mut one(vec![0.0]), &one(vec![1.0]), &StepInfo::default())
                .is_err()
        );
    }

    #[test]
    fn lr_scale_is_validated_and_applied() {
        let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1").unwrap();
        let mut p = one(vec![0.0]);
        let info = StepInfo {
            lr_scale: -1.0,
            ..StepInfo::default()
        };
        assert!(opt.step(&mut p, &one(vec![1.0]), &info).is_err());
        let info = StepInfo {
            lr_scale: 0.25,
            ..StepInfo::default()
        };
        opt.step(&mut p, &one(vec![1.0]), &info).unwrap();
        assert_eq!(p[0].data()[0], -0.25);
    }
}
