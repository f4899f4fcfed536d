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

pub mod adagrad;
pub mod adam;
pub(crate) mod checkpoint;
pub mod kernel;
pub mod lion;
pub mod madam;
pub mod rmsprop;
pub mod rules;
pub mod sgd;
pub mod spec;

pub use spec::{Debias, OptimizerSpec, Rule};

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

/// What a step needs to know besides the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// The loss at this step (required by `lossprop`, ignored by the others).
    pub loss: Option<f64>,
    /// Multiplier $s \ge 0$ of the configured learning rate (a schedule): the step uses
    /// $s\eta$.
    pub lr_scale: f64,
}

impl Default for StepInfo {
    fn default() -> Self {
        Self {
            loss: None,
            lr_scale: 1.0,
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
pub(crate) struct StepContext {
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
    /// Whether element loops prefetch ahead ([`kernel::blocks`]): for steps whose working set
    /// is at least [`kernel::PREFETCH_MIN_BYTES`].
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
}

/// The optimizer state of one parameter tensor.
#[derive(Clone, Debug, PartialEq)]
struct TensorState<T> {
    /// One buffer per slot name, each as long as the tensor.
    slots: Vec<Vec<T>>,
    /// Scalar state per tensor (Madam's clamp bound).
    scalars: Vec<f64>,
}

impl<T: Real> Optimizer<T> {
    /// An optimizer with fresh state.
    pub fn new(spec: OptimizerSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            spec,
            step: 0,
            skipped: 0,
            layout: None,
            tensors: Vec::new(),
        })
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

    /// Names and shapes of the parameter tensors, fixed by the first step (`None` before it).
    pub fn layout(&self) -> Option<&[(String, Vec<usize>)]> {
        self.layout.as_deref()
    }

    /// Names of the per-parameter state buffers, PyTorch's where it has them
    /// (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...).
    pub fn slot_names(&self) -> &'static [&'static str] {
        match &self.spec.rule {
            Rule::Sgd(c) => c.slots(),
            Rule::EmaMomentum(c) => c.slots(),
            Rule::Adam(c) | Rule::AdamW(c) => c.slots(),
            Rule::Rmsprop(c) => c.slots(),
            Rule::Adagrad(c) => c.slots(),
            Rule::Lion(c) => c.slots(),
            Rule::Madam(c) => c.slots(),
            Rule::NormSgd(_) | Rule::Multiplicative(_) | Rule::LossProp(_) => &[],
        }
    }

    /// Whether the rule keeps no state between steps, so that its expected update is a
    /// function of the parameters alone (plain SGD, `normsgd`, `multiplicative`, `lossprop`).
    pub fn is_stateless(&self) -> bool {
        self.slot_names().is_empty() && self.tensor_scalar_names().is_empty()
    }

    fn tensor_scalar_names(&self) -> &'static [&'static str] {
        match &self.spec.rule {
            Rule::Madam(c) => c.tensor_scalars(),
            _ => &[],
        }
    }

    /// The state buffer `slot` of tensor `tensor` (after the first step).
    pub fn state(&self, slot: &str, tensor: usize) -> Option<&[T]> {
        let s = self.slot_names().iter().position(|&n| n == slot)?;
        self.tensors.get(tensor)?.slots.get(s).map(Vec::as_slice)
    }

    /// One step: updates `params` in place from `grads` (same names and shapes).
    ///
    /// Errors, leaving parameters and state untouched, on a shape or name mismatch (also
    /// against the tensors of earlier steps), a non-finite gradient or loss (unless
    /// `skip_nonfinite=true`, which returns [`StepOutcome::Skipped`], or
    /// `check_finite=false`, which does not look), a missing loss for `lossprop`, or an
    /// invalid `lr_scale`.
    pub fn step(
        &mut self,
        params: &mut [Tensor<T>],
        grads: &[Tensor<T>],
        info: &StepInfo,
    ) -> Result<StepOutcome> {
        self.check_layout(params, grads)?;
        if !(info.lr_scale.is_finite() && info.lr_scale >= 0.0) {
            return Err(Error::invalid(
                "lr_scale",
                info.lr_scale,
                "must be a finite number >= 0",
            ));
        }
        if matches!(self.spec.rule, Rule::LossProp(_)) && info.loss.is_none() {
            return Err(Error::MissingLoss {
                optimizer: self.spec.to_string(),
            });
        }

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
        let need_norm = self.spec.clip_norm.is_some() || matches!(self.spec.rule, Rule::NormSgd(_));
        if nonfinite.is_none() && (check || need_norm) {
            match kernel::reduce(grads, need_norm) {
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
        if let Some(err) = nonfinite {
            if self.spec.skip_nonfinite {
                self.skipped += 1;
                return Ok(StepOutcome::Skipped);
            }
            return Err(err);
        }
        let grad_scale = match self.spec.clip_norm {
            Some(max_norm) => (max_norm / (norm_sq.sqrt() + 1e-6)).min(1.0),
            None => 1.0,
        };

        if self.layout.is_none() {
            self.allocate(params);
        }
        self.step += 1;
        let mut ctx = StepContext {
            t: self.step,
            lr: self.spec.rule.lr() * info.lr_scale,
            grad_scale,
            loss: info.loss,
            grad_norm_sq: norm_sq * grad_scale * grad_scale,
            numel: params.iter().map(Tensor::len).sum(),
            beta_pow: self.spec.rule.decays().map(|b| {
                if b == 0.0 {
                    0.0
                } else {
                    b.powf(self.step as f64)
                }
            }),
            prefetch: false,
        };
        let working_set = (2 + self.slot_names().len()) * std::mem::size_of::<T>() * ctx.numel;
        ctx.prefetch = working_set >= kernel::PREFETCH_MIN_BYTES;
        if let Rule::Madam(c) = &self.spec.rule {
            for (p, state) in params.iter().zip(&mut self.tensors) {
                c.begin_tensor(&ctx, &p.data, &mut state.scalars);
            }
        }
        if kernel::is_small(ctx.numel) {
            for ((p, g), state) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
                let TensorState { slots, scalars } = state;
                kernel::run_tensor(&self.spec.rule, &ctx, &mut p.data, &g.data, slots, scalars);
            }
            return Ok(StepOutcome::Applied);
        }
        let mut units = Vec::with_capacity(ctx.numel / kernel::CHUNK + params.len());
        for ((p, g), state) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
            let TensorState { slots, scalars } = state;
            let n_slots = slots.len();
            // The state buffers not yet cut into units (no allocation per tensor: a step may
            // have many thousands of small ones).
            let mut rest: [&mut [T]; 3] = [&mut [], &mut [], &mut []];
            for (r, s) in rest.iter_mut().zip(slots.iter_mut()) {
                *r = s.as_mut_slice();
            }
            for (p, g) in p
                .data
                .chunks_mut(kernel::CHUNK)
                .zip(g.data.chunks(kernel::CHUNK))
            {
                let mut unit_slots: [&mut [T]; 3] = [&mut [], &mut [], &mut []];
                for (slot, r) in unit_slots.iter_mut().zip(rest.iter_mut()).take(n_slots) {
                    let (head, tail) = std::mem::take(r).split_at_mut(p.len());
                    *slot = head;
                    *r = tail;
                }
                units.push(kernel::Unit {
                    p,
                    g,
                    slots: unit_slots,
                    n_slots,
                    scalars,
                });
            }
        }
        kernel::run_units(&self.spec.rule, &ctx, units);
        Ok(StepOutcome::Applied)
    }

    /// Creates the state buffers for `params` (at the first step).
    fn allocate(&mut self, params: &[Tensor<T>]) {
        let init = match &self.spec.rule {
            Rule::Adagrad(c) => T::from_f64(c.initial_value()),
            _ => T::zero(),
        };
        self.layout = Some(
            params
                .iter()
                .map(|p| (p.name.clone(), p.shape.clone()))
                .collect(),
        );
        let (slots, scalars) = (self.slot_names().len(), self.tensor_scalar_names().len());
        self.tensors = params
            .iter()
            .map(|p| TensorState {
                slots: vec![vec![init; p.len()]; slots],
                scalars: vec![0.0; scalars],
            })
            .collect();
    }

    fn check_layout(&self, params: &[Tensor<T>], grads: &[Tensor<T>]) -> Result<()> {
        check_len(
            "gradient tensors (one per parameter tensor)",
            params.len(),
            grads.len(),
        )?;
        for (p, g) in params.iter().zip(grads) {
            if p.name != g.name || p.shape != g.shape {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "gradient {} {:?} for parameter {} {:?}",
                        g.name, g.shape, p.name, p.shape
                    ),
                    expected: p.len(),
                    got: g.len(),
                });
            }
        }
        if let Some(layout) = &self.layout {
            check_len(
                "parameter tensors (as at the optimizer's first step)",
                layout.len(),
                params.len(),
            )?;
            for ((name, shape), p) in layout.iter().zip(params) {
                if *name != p.name || *shape != p.shape {
                    return Err(Error::ShapeMismatch {
                        what: format!(
                            "parameter {} {:?}: the optimizer's state is for {} {:?}",
                            p.name, p.shape, name, shape
                        ),
                        expected: shape.iter().product(),
                        got: p.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Applies `rule` to one chunk of a tensor: the single pass over its parameters, gradient and
/// state buffers (`slots`, in [`Optimizer::slot_names`] order).
#[inline(always)]
fn step_tensor<T: Real>(
    rule: &Rule,
    ctx: &StepContext,
    p: &mut [T],
    g: &[T],
    slots: &mut [&mut [T]],
    scalars: &[f64],
) {
    match rule {
        Rule::Sgd(c) => c.step_tensor(ctx, p, g, slots),
        Rule::EmaMomentum(c) => c.step_tensor(ctx, p, g, slots),
        Rule::Adam(c) => c.step_tensor(false, ctx, p, g, slots),
        Rule::AdamW(c) => c.step_tensor(true, ctx, p, g, slots),
        Rule::Rmsprop(c) => c.step_tensor(ctx, p, g, slots),
        Rule::Adagrad(c) => c.step_tensor(ctx, p, g, slots),
        Rule::Lion(c) => c.step_tensor(ctx, p, g, slots),
        Rule::Madam(c) => c.step_tensor(ctx, p, g, slots, scalars),
        Rule::NormSgd(c) => c.step_tensor(ctx, p, g),
        Rule::Multiplicative(c) => c.step_tensor(ctx, p, g),
        Rule::LossProp(c) => c.step_tensor(ctx, p, g),
    }
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
        assert_eq!(out, StepOutcome::Skipped);
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
        assert_eq!(out.unwrap(), StepOutcome::Applied);
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
