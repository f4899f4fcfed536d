//! What an update rule is: the [`UpdateRule`] trait that each optimizer's file implements,
//! and [`Keys`], the spec keys its `config!` block derives.
//!
//! Adding an optimizer is one file — its `config!` block (keys, defaults, docs) and its
//! `impl UpdateRule` (validation, state buffers, per-element update) — plus its `pub mod`
//! item and one line in the `registry!` invocation in `lib.rs` (`module::{Type},`),
//! which makes the rule known to specs, checkpoints, the kernels, the lab and bench as a
//! variant of [`Rule`](super::Rule). Nothing else names individual rules.

use super::StepContext;
use super::kernel::Lowp;
use crate::{Real, Result};

/// A rule's decay rates (any number; up to four are kept inline, without allocation).
pub type Decays = smallvec::SmallVec<[f64; 4]>;

/// The spec keys of a rule's configuration (derived by the `config!` macro).
pub trait Keys {
    /// The rule's name in a spec string.
    const NAME: &'static str;
    /// The keys it accepts (besides the [`GLOBAL_KEYS`](crate::GLOBAL_KEYS)).
    const KEYS: &'static [&'static str];
    /// Sets `key` to the value written as `text`.
    fn set_key(&mut self, key: &str, text: &str) -> Result<()>;
    /// `(key, value)` for every value that differs from the default.
    fn changed_keys(&self) -> Vec<(&'static str, String)>;
    /// `(key, value)` for every key, in [`Keys::KEYS`] order, defaults included.
    fn all_keys(&self) -> Vec<(&'static str, String)>;
}

/// An optimizer's update: its configuration, state buffers and the per-element rule.
///
/// The kernel calls [`UpdateRule::step_tensor`] on chunks of each tensor (of at most
/// [`CHUNK`](super::kernel::CHUNK) elements), with the per-step scalars of the
/// [`StepContext`] computed once in `f64`; it must be elementwise (any reduction over a
/// tensor goes in a [`TensorScalars`] capability), and use only IEEE-exact operations so that
/// every SIMD level and thread count gives the same bits.
///
/// The trait is the element-wise core — validation, learning rate, state buffers, decay
/// rates, [`Needs`], [`DecayForm`], the chunk loops — and four named capabilities that a
/// special rule returns and every other leaves at `None`: [`UpdateRule::matrix`] (whole
/// matrices, Muon), [`UpdateRule::averaging`] (an evaluation point other than the
/// parameters, Schedule-Free), [`UpdateRule::tensor_scalars`] (per-tensor scalars,
/// Madam and NAdam) and [`UpdateRule::global`] (scalars from sums over every tensor of a
/// step, Prodigy's d). Transformations of the update (cautious masking,
/// [`crate::transform`]) need only [`UpdateRule::decay_form`].
pub trait UpdateRule: Keys + Clone + std::fmt::Debug + PartialEq + Default + Send + Sync {
    /// Checks every hyper-parameter's range and their combinations.
    fn validate(&self) -> Result<()>;

    /// The learning rate η.
    fn lr(&self) -> f64;

    /// Names of the per-parameter state buffers, PyTorch's where it has them.
    fn slots(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether state buffer `slot` never goes negative (a running average or sum of squares,
    /// a running maximum of magnitudes), so that 8-bit state (`state_dtype=q8`) keeps it in
    /// the unsigned code book, whose 256 codes all lie in \[0, 1\], at twice the signed
    /// book's resolution. By default, the buffers PyTorch's names mark so: `exp_avg_sq`,
    /// `max_exp_avg_sq`, `square_avg`, `sum` and `exp_inf`. A buffer that can go negative
    /// must answer `false`: the unsigned book rounds every negative value to 0.
    fn slot_is_nonnegative(&self, slot: usize) -> bool {
        matches!(
            self.slots().get(slot),
            Some(&("exp_avg_sq" | "max_exp_avg_sq" | "square_avg" | "sum" | "exp_inf"))
        )
    }

    /// The decay rates whose t-th powers the update needs, as many as it has (taken once
    /// per step into [`StepContext::beta_pow`], in this order; a 0 gives the power 0).
    fn decays(&self) -> Decays {
        Decays::new()
    }

    /// The initial value of every state buffer.
    fn initial_state(&self) -> f64 {
        0.0
    }

    /// The shape of state buffer `slot` for a tensor of `shape`: the tensor's (the default,
    /// and every element-wise rule's); a whole-tensor rule may keep others (SOAP's
    /// preconditioner statistics, d×d for each dimension d of a matrix).
    fn slot_shape(&self, _slot: usize, shape: &[usize]) -> Vec<usize> {
        shape.to_vec()
    }

    /// Whether state buffer `slot` starts as a copy of the parameters (Schedule-Free's z and
    /// x, Prodigy's x₀) instead of [`UpdateRule::initial_state`].
    fn starts_at_params(&self, _slot: usize) -> bool {
        false
    }

    /// Whether one step, from any state, moves the parameters by η times a displacement
    /// that does not depend on η: ΔΦ(η) = η·u(state, g). Every rule written
    /// Φ ← Φ − η·u, or with decoupled decay before it, Φ(1 − ηλ) − η·u, is; a rule
    /// whose step is a nonlinear function of η is not: Madam's Φ·exp(−ηĝ) and its clamp,
    /// Schedule-Free's averaging weight c = η²/Σηₛ², Prodigy's estimate that a step's η
    /// moves, SOAP's decay after its update, (Φ − ηu)(1 − ηλ). The audit measures a
    /// linear rule's drift E\[ΔΦ\]/η at η = 1 (exact at any η, however small) and any
    /// other rule's at its own η.
    fn linear_in_lr(&self) -> bool {
        true
    }

    /// What a step must hand the rule besides the gradient ([`Needs`]).
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// The matrix capability: a rule that steps whole matrices at once from their shape
    /// (Muon's orthogonalisation). Such tensors are never cut into chunks.
    fn matrix<T: Real>(&self) -> Option<&dyn MatrixRule<T>> {
        None
    }

    /// The averaging capability: a rule whose parameters are not the point to evaluate
    /// (Schedule-Free trains at y and evaluates the average x).
    fn averaging<T: Real>(&self) -> Option<&dyn AveragingRule<T>> {
        None
    }

    /// The per-tensor capability: scalars kept per tensor, updated from the whole tensor
    /// before its chunks (Madam's clamp bound, NAdam's momentum product).
    fn tensor_scalars<T: Real>(&self) -> Option<&dyn TensorScalars<T>> {
        None
    }

    /// The global capability: scalars that a read-only pass over every tensor of the step
    /// sets before any chunk is updated (Prodigy's estimate d of the distance to the
    /// solution). The scalars are kept, the same, in every tensor's
    /// [`TensorScalars`], which this capability needs too.
    fn global<T: Real>(&self) -> Option<&dyn GlobalRule<T>> {
        None
    }

    /// How the rule's step moves the parameters besides its update, for the transformations
    /// that act on the update alone (cautious masking): see [`DecayForm`]. A rule with
    /// weight decay must say how it applies it; the default is none.
    fn decay_form(&self, _ctx: &StepContext) -> DecayForm {
        DecayForm::NONE
    }

    /// The update of one chunk: parameters `p` in place from gradients `g` and the state
    /// buffers `slots` (in [`UpdateRule::slots`] order), with the tensor's `scalars`.
    fn step_tensor<T: Real>(
        &self,
        ctx: &StepContext,
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        scalars: &[f64],
    );

    /// The update of one chunk whose state is bfloat16 (`state_dtype=bf16`), fused: the
    /// rule's element loop run through [`bf16_elements`](super::kernel::bf16_elements), which
    /// widens each element's state into registers and narrows it back in the same pass.
    /// Returns `false` (the default) when the rule has no fused loop; the kernel then widens
    /// the state into L1-sized scratch blocks, calls [`UpdateRule::step_tensor`] on them and
    /// narrows them back, which computes the same bits with two more passes through L1.
    fn step_tensor_bf16<T: Real>(
        &self,
        _ctx: &StepContext,
        _p: &mut [T],
        _g: &[T],
        _state: &mut Lowp<'_>,
        _scalars: &[f64],
    ) -> bool {
        false
    }
}

/// What a step must hand a rule besides its gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The step's loss (`StepInfo::loss`; `lossprop`).
    pub loss: bool,
    /// The global gradient norm ([`StepContext::grad_norm_sq`]; `normsgd`).
    pub norm: bool,
}

/// A rule that steps whole matrices ([`UpdateRule::matrix`]).
pub trait MatrixRule<T: Real> {
    /// Checks, at the first step, that the rule can step tensor `name` of `shape` (Muon:
    /// matrices only); the error names the tensor.
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()>;

    /// The update of a whole tensor of `shape` (row-major).
    fn step_matrix(
        &self,
        ctx: &StepContext,
        shape: &[usize],
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
    );
}

/// A rule whose parameters are not the point to evaluate ([`UpdateRule::averaging`]).
pub trait AveragingRule<T: Real> {
    /// The state buffer that holds the point to evaluate.
    fn eval_slot(&self) -> usize;

    /// Writes the training point into `p` from the state, exactly as a step leaves it (the
    /// way back from an evaluation swap).
    fn train_point(&self, p: &mut [T], slots: &[&[T]]);
}

/// A rule that keeps scalars per tensor ([`UpdateRule::tensor_scalars`]).
pub trait TensorScalars<T: Real> {
    /// The scalars' names (saved in checkpoints by name).
    fn names(&self) -> &'static [&'static str];

    /// Runs once per tensor and step, before its chunks, with the whole tensor (a reduction,
    /// or a product over steps).
    fn begin(&self, ctx: &StepContext, p: &[T], scalars: &mut [f64]);
}

/// A rule whose step depends on sums over every tensor of the step
/// ([`UpdateRule::global`]): a read-only gather over all chunks (summed per chunk, then in
/// chunk order: the same bits for any thread count), then one settlement that updates the
/// optimizer-wide scalars and gives the values every chunk reads
/// ([`StepContext::global`]).
pub trait GlobalRule<T: Real>: Sync {
    /// How many sums the gather adds up.
    fn sums(&self) -> usize;

    /// The keys whose values every parameter group must share (the scalars are
    /// optimizer-wide).
    fn shared_keys(&self) -> &'static [&'static str];

    /// Adds one chunk's contributions to `sums`, from its parameters, gradient and state
    /// (read only: nothing is written before every sum is known). `ctx` is the tensor's
    /// group's, whose [`StepContext::global`] holds one value during the gather: the step's
    /// largest learning rate over the groups; `scalars` are the tensor's.
    fn gather(
        &self,
        ctx: &StepContext,
        p: &[T],
        g: &[T],
        slots: &[&[T]],
        scalars: &[f64],
        sums: &mut [f64],
    );

    /// From the sums over every tensor and the step's largest learning rate over the groups,
    /// updates the kept `scalars` (then copied to every tensor) and returns the values the
    /// chunks read this step ([`StepContext::global`]).
    fn settle(&self, lr: f64, scalars: &mut [f64], sums: &[f64]) -> Decays;
}

/// How an element-wise rule's step decays the parameters: it moves them as
/// p′ = s p − c u, with u the rule's update, c > 0 the same for a whole tensor (the
/// learning rate, for most rules) and s the decoupled decay's shrink; and the gradient its
/// update follows is g′ = γg + λp, with γ > 0 the step's gradient scale
/// and λ the coupled (L2) decay. From p, p′ and these, a transformation recovers
/// c u = s p − p′ and g′ for any rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecayForm {
    /// s: the factor on p of a decoupled decay (1 − ηλ for AdamW), 1 if none.
    pub shrink: f64,
    /// λ: the coupled decay added to the gradient, 0 if none.
    pub l2: f64,
}

impl DecayForm {
    /// No weight decay.
    pub const NONE: DecayForm = DecayForm {
        shrink: 1.0,
        l2: 0.0,
    };

    /// L2 decay: λp added to the gradient.
    pub fn coupled(weight_decay: f64) -> Self {
        DecayForm {
            shrink: 1.0,
            l2: weight_decay,
        }
    }

    /// Decoupled decay p ← (1 − ηλ) p beside the update.
    pub fn decoupled(lr: f64, weight_decay: f64) -> Self {
        DecayForm {
            shrink: 1.0 - lr * weight_decay,
            l2: 0.0,
        }
    }

    /// One of the two, as a rule's `decoupled` flag says.
    pub fn either(decoupled: bool, lr: f64, weight_decay: f64) -> Self {
        if decoupled {
            Self::decoupled(lr, weight_decay)
        } else {
            Self::coupled(weight_decay)
        }
    }
}

/// The two step methods of a rule whose element loop serves both state storages through an
/// inherent `fn step_with<T: Real>(&self, ctx: &StepContext, p: &mut [T], g: &[T], state:
/// kernel::State<'_, '_, T>)`: [`UpdateRule::step_tensor`] hands it the plain buffers,
/// [`UpdateRule::step_tensor_bf16`] the bfloat16 ones (the fused loop).
macro_rules! fused_steps {
    () => {
        #[inline(always)]
        fn step_tensor<T: $crate::Real>(
            &self,
            ctx: &$crate::StepContext,
            p: &mut [T],
            g: &[T],
            slots: &mut [&mut [T]],
            _scalars: &[f64],
        ) {
            self.step_with(ctx, p, g, $crate::kernel::State::Plain(slots));
        }

        #[inline(always)]
        fn step_tensor_bf16<T: $crate::Real>(
            &self,
            ctx: &$crate::StepContext,
            p: &mut [T],
            g: &[T],
            state: &mut $crate::kernel::Lowp<'_>,
            _scalars: &[f64],
        ) -> bool {
            self.step_with(ctx, p, g, $crate::kernel::State::Bf16(state));
            true
        }
    };
}
pub(crate) use fused_steps;
