//! The registry of update rules: the one place that names every optimizer.
//!
//! [`registry!`] takes one line per rule module, `module::{Type, ...}`, and declares the
//! [`Rule`](super::Rule) enum with a variant per configuration type, [`NAMES`](super::NAMES),
//! and every method of `Rule` as a dispatch to the type's [`UpdateRule`](super::UpdateRule)
//! implementation. Adding an optimizer is its file, its `pub mod` item and its line in the
//! invocation, both in `lib.rs`. The macro does not declare the modules itself: rustfmt
//! and cargo-mutants find source files only through `mod` items written in the source, so a
//! macro-declared module would be silently left unformatted and unmutated.

/// Declares the [`Rule`](super::Rule) enum, [`NAMES`](super::NAMES) and
/// `Rule`'s dispatching methods from one line per module: `module::{Type, ...}`, each `Type`
/// a configuration implementing [`UpdateRule`](super::UpdateRule) whose variant takes its name.
macro_rules! registry {
    ($( $module:ident::{ $( $variant:ident ),+ $(,)? } ),* $(,)?) => {
        /// The update rule of an optimizer, with its hyper-parameters: one variant per
        /// optimizer, each a configuration implementing [`UpdateRule`].
        #[derive(Clone, Debug, PartialEq)]
        pub enum Rule {
            $( $(
                #[doc = concat!("The rule of [`", stringify!($module), "::", stringify!($variant), "`].")]
                $variant($module::$variant),
            )+ )*
        }

        /// The optimizer names a spec may start with.
        pub const NAMES: &[&str] = &[$( $( <$module::$variant as Keys>::NAME, )+ )*];

        impl Rule {
            /// The rule's name in a spec string.
            pub fn name(&self) -> &'static str {
                match self { $( $( Rule::$variant(_) => <$module::$variant as Keys>::NAME, )+ )* }
            }

            /// The keys the rule accepts (besides the [`GLOBAL_KEYS`](crate::GLOBAL_KEYS)).
            pub fn keys(&self) -> &'static [&'static str] {
                match self { $( $( Rule::$variant(_) => <$module::$variant as Keys>::KEYS, )+ )* }
            }

            /// The rule with all defaults for `name`.
            pub fn default_for(name: &str) -> Result<Self> {
                $( $( if name == <$module::$variant as Keys>::NAME {
                    return Ok(Rule::$variant(<$module::$variant>::default()));
                } )+ )*
                Err(Error::invalid(
                    "optimizer",
                    name,
                    format!("unknown optimizer; known: {}", NAMES.join(", ")),
                ))
            }

            fn set(&mut self, key: &str, text: &str) -> Result<()> {
                match self { $( $( Rule::$variant(c) => c.set_key(key, text), )+ )* }
            }

            fn non_default_pairs(&self) -> Vec<(&'static str, String)> {
                match self { $( $( Rule::$variant(c) => c.changed_keys(), )+ )* }
            }

            /// Every key of the rule with its value as spec text (defaults included), in the
            /// order of [`Rule::keys`].
            pub fn values(&self) -> Vec<(&'static str, String)> {
                match self { $( $( Rule::$variant(c) => c.all_keys(), )+ )* }
            }

            /// Checks every hyper-parameter's range and their combinations.
            pub fn validate(&self) -> Result<()> {
                match self { $( $( Rule::$variant(c) => c.validate(), )+ )* }
            }

            /// The decay rates whose t-th powers the update needs, taken once per step
            /// (`powf` costs more than a small tensor's loop).
            pub fn decays(&self) -> $crate::rule::Decays {
                match self { $( $( Rule::$variant(c) => c.decays(), )+ )* }
            }

            /// The learning rate.
            pub fn lr(&self) -> f64 {
                match self { $( $( Rule::$variant(c) => c.lr(), )+ )* }
            }

            /// Names of the per-parameter state buffers.
            pub fn slots(&self) -> &'static [&'static str] {
                match self { $( $( Rule::$variant(c) => c.slots(), )+ )* }
            }

            /// Whether state buffer `slot` never goes negative ([`UpdateRule::slot_is_nonnegative`]).
            pub fn slot_is_nonnegative(&self, slot: usize) -> bool {
                match self { $( $( Rule::$variant(c) => c.slot_is_nonnegative(slot), )+ )* }
            }

            /// The matrix capability ([`UpdateRule::matrix`]).
            pub(crate) fn matrix<T: crate::Real>(&self) -> Option<&dyn crate::rule::MatrixRule<T>> {
                match self { $( $( Rule::$variant(c) => c.matrix::<T>(), )+ )* }
            }

            /// The averaging capability ([`UpdateRule::averaging`]).
            pub(crate) fn averaging<T: crate::Real>(&self) -> Option<&dyn crate::rule::AveragingRule<T>> {
                match self { $( $( Rule::$variant(c) => c.averaging::<T>(), )+ )* }
            }

            /// The per-tensor capability ([`UpdateRule::tensor_scalars`]).
            pub(crate) fn scalars_of<T: crate::Real>(&self) -> Option<&dyn crate::rule::TensorScalars<T>> {
                match self { $( $( Rule::$variant(c) => c.tensor_scalars::<T>(), )+ )* }
            }

            /// The global capability ([`UpdateRule::global`]).
            pub(crate) fn global<T: crate::Real>(&self) -> Option<&dyn crate::rule::GlobalRule<T>> {
                match self { $( $( Rule::$variant(c) => c.global::<T>(), )+ )* }
            }

            /// What a step must hand the rule ([`Needs`](crate::rule::Needs)).
            pub fn needs(&self) -> crate::rule::Needs {
                match self { $( $( Rule::$variant(c) => c.needs(), )+ )* }
            }

            /// Names of the scalars kept per tensor.
            pub fn tensor_scalars(&self) -> &'static [&'static str] {
                self.scalars_of::<f64>().map_or(&[], |c| c.names())
            }

            /// The initial value of every state buffer.
            pub(crate) fn initial_state(&self) -> f64 {
                match self { $( $( Rule::$variant(c) => c.initial_state(), )+ )* }
            }

            /// The shape of state buffer `slot` for a tensor of `shape` ([`UpdateRule::slot_shape`]).
            pub fn slot_shape(&self, slot: usize, shape: &[usize]) -> Vec<usize> {
                match self { $( $( Rule::$variant(c) => c.slot_shape(slot, shape), )+ )* }
            }

            /// Whether state buffer `slot` starts as a copy of the parameters.
            pub fn slot_starts_at_params(&self, slot: usize) -> bool {
                match self { $( $( Rule::$variant(c) => c.starts_at_params(slot), )+ )* }
            }

            /// Whether a step's displacement is η times one that does not depend on η
            /// ([`UpdateRule::linear_in_lr`]).
            pub fn linear_in_lr(&self) -> bool {
                match self { $( $( Rule::$variant(c) => c.linear_in_lr(), )+ )* }
            }

            /// Whether the rule keeps optimizer-wide scalars set from sums over every tensor
            /// ([`UpdateRule::global`]: Prodigy's estimate d).
            pub fn is_global(&self) -> bool {
                self.global::<f64>().is_some()
            }

            /// Whether the rule steps whole tensors (by shape) instead of chunks.
            pub fn whole_tensor(&self) -> bool {
                self.matrix::<f64>().is_some()
            }

            /// Checks that the rule can step tensor `name` of `shape`.
            pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
                self.matrix::<f64>().map_or(Ok(()), |m| m.check_shape(name, shape))
            }

            /// Steps a whole matrix, for a rule with the matrix capability.
            pub(crate) fn step_whole<T: crate::Real>(
                &self,
                ctx: &StepContext,
                shape: &[usize],
                p: &mut [T],
                g: &[T],
                slots: &mut [&mut [T]],
            ) {
                if let Some(m) = self.matrix::<T>() {
                    m.step_matrix(ctx, shape, p, g, slots);
                }
            }

            /// The state buffer holding the point to evaluate, if not the parameters.
            pub fn eval_slot(&self) -> Option<usize> {
                self.averaging::<f64>().map(|a| a.eval_slot())
            }

            pub(crate) fn train_point<T: crate::Real>(&self, p: &mut [T], slots: &[&[T]]) {
                if let Some(a) = self.averaging::<T>() {
                    a.train_point(p, slots);
                }
            }

            /// Whether a step needs the loss.
            pub fn needs_loss(&self) -> bool {
                self.needs().loss
            }

            /// How the rule decays the parameters besides its update ([`DecayForm`](crate::rule::DecayForm)).
            pub(crate) fn decay_form(&self, ctx: &StepContext) -> crate::rule::DecayForm {
                match self { $( $( Rule::$variant(c) => c.decay_form(ctx), )+ )* }
            }

            /// Whether a step needs the global gradient norm.
            pub fn needs_norm(&self) -> bool {
                self.needs().norm
            }

            /// The per-tensor scalars' update before a tensor's chunks, for rules that keep
            /// them.
            pub(crate) fn begin_tensor<T: crate::Real>(
                &self,
                ctx: &StepContext,
                p: &[T],
                scalars: &mut [f64],
            ) {
                if let Some(c) = self.scalars_of::<T>() {
                    c.begin(ctx, p, scalars);
                }
            }

            /// One chunk's update (the tests' way in; steps go through
            /// [`Rule::dispatch_unit`]).
            #[cfg(test)]
            pub(crate) fn step_tensor<T: crate::Real>(
                &self,
                ctx: &StepContext,
                p: &mut [T],
                g: &[T],
                slots: &mut [&mut [T]],
                scalars: &[f64],
            ) {
                match self { $( $( Rule::$variant(c) => c.step_tensor(ctx, p, g, slots, scalars), )+ )* }
            }

            /// Runs a work unit at `level` through this rule's own SIMD copy of the kernel
            /// ([`kernel::dispatch`]).
            #[inline]
            pub(crate) fn dispatch_unit<T: crate::Real>(
                &self,
                level: kernel::SimdLevel,
                ctx: &StepContext,
                u: &mut kernel::Unit<'_, T>,
            ) {
                match self { $( $( Rule::$variant(c) => kernel::dispatch(level, c, ctx, u), )+ )* }
            }

            /// Runs a work unit with bfloat16 state at `level` through this rule's own SIMD
            /// copy ([`kernel::dispatch_lowp`]).
            #[inline]
            pub(crate) fn dispatch_lowp_unit<T: crate::Real>(
                &self,
                level: kernel::SimdLevel,
                ctx: &StepContext,
                u: &mut kernel::Unit<'_, T>,
                scratch: &mut [T],
            ) {
                match self {
                    $( $( Rule::$variant(c) => kernel::dispatch_lowp(level, c, ctx, u, scratch), )+ )*
                }
            }

            /// Runs a work unit with 8-bit state at `level` through this rule's own SIMD copy
            /// ([`kernel::dispatch_quant`]).
            #[inline]
            pub(crate) fn dispatch_quant_unit<T: crate::Real>(
                &self,
                level: kernel::SimdLevel,
                ctx: &StepContext,
                u: &mut kernel::Unit<'_, T>,
                scratch: &mut [T],
            ) {
                match self {
                    $( $( Rule::$variant(c) => kernel::dispatch_quant(level, c, ctx, u, scratch), )+ )*
                }
            }

            /// The bfloat16 scratch path of [`kernel::run_lowp_scratch`] for this rule (tests).
            #[cfg(test)]
            pub(crate) fn run_lowp_scratch<T: crate::Real>(
                &self,
                ctx: &StepContext,
                u: &mut kernel::Unit<'_, T>,
                scratch: &mut [T],
            ) {
                match self {
                    $( $( Rule::$variant(c) => kernel::run_lowp_scratch(c, ctx, u, scratch), )+ )*
                }
            }

            /// One chunk's update with bfloat16 state through the rule's fused loop; `false`
            /// when it has none (the tests' way in).
            #[cfg(test)]
            pub(crate) fn step_tensor_bf16<T: crate::Real>(
                &self,
                ctx: &StepContext,
                p: &mut [T],
                g: &[T],
                state: &mut kernel::Lowp<'_>,
                scalars: &[f64],
            ) -> bool {
                match self { $( $( Rule::$variant(c) => c.step_tensor_bf16(ctx, p, g, state, scalars), )+ )* }
            }
        }
        };
}
