//! Optimizer specifications: `"adam:lr=1e-3,beta2=0.99"` ⇄ a validated [`OptimizerSpec`].
//!
//! Grammar: `NAME[:KEY=VALUE[,KEY=VALUE]...]`. Keys use PyTorch's names where PyTorch has the
//! optimizer, and every key has a default (PyTorch's where it has one). Two keys work for every
//! optimizer: `clip_norm=C` (global-norm gradient clipping before the rule, as
//! `torch.nn.utils.clip_grad_norm_`) and `skip_nonfinite=true` (skip, and count, a step whose
//! gradient holds a NaN or infinity instead of failing). `check_finite=false` drops the
//! finiteness pre-pass altogether, as PyTorch does: one read of the gradient less per step,
//! but a NaN or infinity then flows into the parameters and state unreported.
//!
//! [`Display`](std::fmt::Display) prints the name and every value that differs from its
//! default, so that `spec.to_string().parse()` gives back the same spec.

use std::fmt;
use std::str::FromStr;

pub use super::{NAMES, Rule};
use crate::{Error, Result};

/// A value that can appear on the right of `key=` in a spec.
pub(crate) trait SpecValue: Sized + PartialEq + Clone {
    /// Parses the text after `key=`.
    fn parse_value(key: &str, text: &str) -> Result<Self>;
    /// Prints the value so that [`SpecValue::parse_value`] reads it back exactly.
    fn show(&self) -> String;
}

impl SpecValue for f64 {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        text.parse::<f64>()
            .map_err(|_| Error::invalid(key, text, "must be a number, e.g. 0.001 or 1e-3"))
    }
    fn show(&self) -> String {
        // `{:?}` is the shortest text that parses back to the same f64.
        let s = format!("{self:?}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    }
}

impl SpecValue for bool {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Error::invalid(key, text, "must be true or false")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl SpecValue for u64 {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        text.parse::<u64>()
            .map_err(|_| Error::invalid(key, text, "must be a whole number >= 0, e.g. 5"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl SpecValue for usize {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        text.parse::<usize>()
            .map_err(|_| Error::invalid(key, text, "must be a whole number >= 0, e.g. 256"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl SpecValue for Option<f64> {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        if text == "none" {
            Ok(None)
        } else {
            f64::parse_value(key, text).map(Some)
        }
    }
    fn show(&self) -> String {
        self.map_or("none".to_string(), |v| v.show())
    }
}

/// How a running average started at zero is corrected for its start-up bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Debias {
    /// No correction: the raw EMA.
    None,
    /// Adam's correction: divide by 1 − βᵗ (PyTorch's behaviour).
    #[default]
    Power,
    /// Problem 4's rate 1/min(t, N) with N = 1/(1 − β): the exact running mean for
    /// t ≤ N, then the EMA.
    Horizon,
}

impl SpecValue for Debias {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        match text {
            "none" => Ok(Debias::None),
            "power" => Ok(Debias::Power),
            "horizon" => Ok(Debias::Horizon),
            _ => Err(Error::invalid(key, text, "must be none, power or horizon")),
        }
    }
    fn show(&self) -> String {
        match self {
            Debias::None => "none",
            Debias::Power => "power",
            Debias::Horizon => "horizon",
        }
        .to_string()
    }
}

/// Declares an optimizer's configuration struct with its keys, defaults and docs, and derives
/// the key parsing and printing used by the spec grammar.
macro_rules! config {
    (
        $(#[$meta:meta])*
        $name:ident ($spec_name:literal) {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The name of this optimizer in a spec string.
            pub const NAME: &'static str = $spec_name;
            /// The keys this optimizer's rule accepts (besides the [`GLOBAL_KEYS`](crate::GLOBAL_KEYS)).
            pub const KEYS: &'static [&'static str] = &[$( stringify!($field) ),*];

            pub(crate) fn set(&mut self, key: &str, text: &str) -> $crate::Result<()> {
                use $crate::spec::SpecValue;
                match key {
                    $( stringify!($field) => self.$field = SpecValue::parse_value(key, text)?, )*
                    _ => return Err($crate::spec::unknown_key(Self::NAME, key, Self::KEYS)),
                }
                Ok(())
            }

            pub(crate) fn non_default_pairs(&self) -> Vec<(&'static str, String)> {
                self.pairs_differing_from(&Self::default())
            }

            pub(crate) fn pairs_differing_from(&self, base: &Self) -> Vec<(&'static str, String)> {
                use $crate::spec::SpecValue;
                let mut out = Vec::new();
                $( if self.$field != base.$field {
                    out.push((stringify!($field), self.$field.show()));
                } )*
                out
            }
        }

        impl $crate::rule::Keys for $name {
            const NAME: &'static str = $spec_name;
            const KEYS: &'static [&'static str] = &[$( stringify!($field) ),*];
            fn set_key(&mut self, key: &str, text: &str) -> $crate::Result<()> {
                self.set(key, text)
            }
            fn changed_keys(&self) -> Vec<(&'static str, String)> {
                self.non_default_pairs()
            }
            fn all_keys(&self) -> Vec<(&'static str, String)> {
                use $crate::spec::SpecValue;
                vec![$( (stringify!($field), self.$field.show()) ),*]
            }
        }
    };
}
pub(crate) use config;

pub(crate) fn unknown_key(optimizer: &str, key: &str, keys: &[&str]) -> Error {
    Error::invalid(
        format!("key `{key}` for {optimizer}"),
        key,
        format!(
            "unknown key; {optimizer} accepts {}, and the global keys {}",
            keys.join(", "),
            crate::keys::global_key_names()
        ),
    )
}

/// Range checks shared by the optimizers' `validate` functions.
pub(crate) mod check {
    use crate::{Error, Result};

    /// `lo <= v` and finite.
    pub fn at_least(key: &str, v: f64, lo: f64) -> Result<()> {
        if v.is_finite() && v >= lo {
            Ok(())
        } else {
            Err(Error::invalid(
                key,
                v,
                format!("must be a finite number >= {lo}"),
            ))
        }
    }

    /// `v > 0` and finite.
    pub fn positive(key: &str, v: f64) -> Result<()> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(Error::invalid(key, v, "must be a finite number > 0"))
        }
    }

    /// `v` in `[0, 1)`.
    pub fn unit_open(key: &str, v: f64) -> Result<()> {
        if v.is_finite() && (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            Err(Error::invalid(key, v, "must lie in [0, 1)"))
        }
    }

    /// `v` in `[0, 1]`.
    pub fn unit_closed(key: &str, v: f64) -> Result<()> {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(Error::invalid(key, v, "must lie in [0, 1]"))
        }
    }
}

/// The element type of the optimizer's state buffers (`state_dtype=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDtype {
    /// The parameters' type (`param`, the default; also written `f32` or `f64`, which must
    /// then be the parameters' type).
    #[default]
    Param,
    /// `f32` state (only for `f32` parameters).
    F32,
    /// `f64` state (only for `f64` parameters).
    F64,
    /// bfloat16 state (`bf16`): 2 bytes per element, widened exactly for the update and
    /// narrowed back with the spec's [`StateRounding`].
    Bf16,
    /// 8-bit blockwise-quantized state (`q8`, [`crate::quant`]): 1 byte per element and one
    /// `f32` scale per block of `block_size`; a buffer that never goes negative (second
    /// moments, [`UpdateRule::slot_is_nonnegative`](crate::UpdateRule::slot_is_nonnegative)) in
    /// the unsigned dynamic code book, any other in the signed one. Each block is dequantized
    /// (x̂ = c\[q\]·a), updated in the parameters' type and requantized with the spec's
    /// [`StateRounding`].
    Q8,
}

impl StateDtype {
    /// Whether the state is narrower than the parameters' type and is stepped through a
    /// conversion: bfloat16 or 8-bit.
    pub fn is_narrow(self) -> bool {
        matches!(self, StateDtype::Bf16 | StateDtype::Q8)
    }

    /// The name in a spec.
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::Param => "param",
            StateDtype::F32 => "f32",
            StateDtype::F64 => "f64",
            StateDtype::Bf16 => "bf16",
            StateDtype::Q8 => "q8",
        }
    }
}

impl SpecValue for StateDtype {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        match text {
            "param" => Ok(StateDtype::Param),
            "f32" => Ok(StateDtype::F32),
            "f64" => Ok(StateDtype::F64),
            "bf16" => Ok(StateDtype::Bf16),
            "q8" => Ok(StateDtype::Q8),
            _ => Err(Error::invalid(
                key,
                text,
                "must be param, f32, f64, bf16 or q8",
            )),
        }
    }
    fn show(&self) -> String {
        self.name().to_string()
    }
}

/// How state narrowed to bfloat16 is rounded (`rounding=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateRounding {
    /// Stochastic rounding (the default): unbiased, from a counter-based generator keyed by
    /// `sr_seed`, the step, the tensor, the buffer and the element (see [`crate::lowp`]).
    #[default]
    Stochastic,
    /// Round to nearest, ties to even.
    Nearest,
}

impl SpecValue for StateRounding {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        match text {
            "stochastic" => Ok(StateRounding::Stochastic),
            "nearest" => Ok(StateRounding::Nearest),
            _ => Err(Error::invalid(key, text, "must be stochastic or nearest")),
        }
    }
    fn show(&self) -> String {
        match self {
            StateRounding::Stochastic => "stochastic",
            StateRounding::Nearest => "nearest",
        }
        .to_string()
    }
}

/// A complete, validated optimizer specification.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSpec {
    /// The update rule and its hyper-parameters.
    pub rule: Rule,
    /// Global-norm gradient clipping: gradients are scaled by
    /// min(1, C/(‖g‖ + 10⁻⁶)) before the rule.
    pub clip_norm: Option<f64>,
    /// Skip (and count) steps whose gradient is not finite, instead of failing.
    pub skip_nonfinite: bool,
    /// Check gradients (and the loss) for NaN/Inf before the step (default). `false` trades
    /// that safety for one pass over memory less.
    pub check_finite: bool,
    /// The element type of the state buffers (`state_dtype=`).
    pub state_dtype: StateDtype,
    /// The rounding of bfloat16 and 8-bit state (`rounding=`).
    pub rounding: StateRounding,
    /// The elements per block of 8-bit state (`block_size=`, with `state_dtype=q8`): a power
    /// of two from 16 to [`CHUNK`](crate::kernel::CHUNK), default
    /// [`BLOCK_SIZE`](crate::quant::BLOCK_SIZE) = 256.
    pub block_size: usize,
    /// The seed of stochastic rounding (`sr_seed=`).
    pub sr_seed: u64,
    /// Keep an exact copy of bfloat16 parameters in the parameters' compute type, step it,
    /// and round it to nearest into the parameters (`master_weights=true`; for
    /// [`Optimizer::step_bf16`](super::Optimizer::step_bf16), which otherwise rounds the
    /// updated parameters with `rounding=`).
    pub master_weights: bool,
    /// Cautious masking of the rule's update (`cautious=true`; element-wise rules): the
    /// coordinates where the update u and the gradient g′ disagree in sign are zeroed and
    /// the rest scaled by n/(c + 1), with c the count kept of the tensor's n.
    pub cautious: bool,
}

impl OptimizerSpec {
    /// A spec for `rule` without clipping or skipping; errors if the rule is invalid.
    pub fn new(rule: Rule) -> Result<Self> {
        rule.validate()?;
        Ok(Self {
            rule,
            clip_norm: None,
            skip_nonfinite: false,
            check_finite: true,
            state_dtype: StateDtype::Param,
            rounding: StateRounding::Stochastic,
            block_size: crate::quant::BLOCK_SIZE,
            sr_seed: 0,
            master_weights: false,
            cautious: false,
        })
    }

    /// The optimizer's name (`adam`, `sgd`, ...).
    pub fn name(&self) -> &'static str {
        self.rule.name()
    }

    /// The spec of optimizer `name` with every default of its spec string (so
    /// `named("adamw")` has `weight_decay = 0.01`, as `"adamw"` does); set keys with
    /// [`OptimizerSpec::with`].
    ///
    /// ```
    /// use sgdlab_optim::OptimizerSpec;
    /// let spec = OptimizerSpec::named("adamw")?.with("lr", 0.01)?.with("amsgrad", true)?;
    /// assert_eq!(spec, "adamw:lr=0.01,amsgrad=true".parse()?);
    /// # Ok::<(), sgdlab_optim::Error>(())
    /// ```
    pub fn named(name: &str) -> Result<Self> {
        Self::new(Rule::default_for(name)?)
    }

    /// Builder form of [`OptimizerSpec::set`]: the spec with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl ToString) -> Result<Self> {
        self.set(key, &value.to_string())?;
        Ok(self)
    }

    /// Sets `key` (any key of the spec grammar: the rule's, or one of the
    /// [`GLOBAL_KEYS`](crate::GLOBAL_KEYS)) to the value written as `value`, and validates the result; on error
    /// the spec is unchanged.
    ///
    /// ```
    /// let mut spec: sgdlab_optim::OptimizerSpec = "adamw:lr=1e-2".parse()?;
    /// spec.set("weight_decay", "0")?;
    /// assert_eq!(spec.to_string(), "adamw:lr=0.01,weight_decay=0");
    /// assert!(spec.set("beta1", "1.5").is_err());
    /// # Ok::<(), sgdlab_optim::Error>(())
    /// ```
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut next = self.clone();
        next.set_unchecked(key, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn set_unchecked(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "clip_norm" => self.clip_norm = SpecValue::parse_value(key, value)?,
            "skip_nonfinite" => self.skip_nonfinite = SpecValue::parse_value(key, value)?,
            "check_finite" => self.check_finite = SpecValue::parse_value(key, value)?,
            "state_dtype" => self.state_dtype = SpecValue::parse_value(key, value)?,
            "rounding" => self.rounding = SpecValue::parse_value(key, value)?,
            "sr_seed" => self.sr_seed = SpecValue::parse_value(key, value)?,
            "block_size" => self.block_size = SpecValue::parse_value(key, value)?,
            "master_weights" => self.master_weights = SpecValue::parse_value(key, value)?,
            "cautious" => self.cautious = SpecValue::parse_value(key, value)?,
            _ => self.rule.set(key, value)?,
        }
        Ok(())
    }

    /// Checks every value, including `clip_norm`.
    pub fn validate(&self) -> Result<()> {
        self.rule.validate()?;
        if let Some(c) = self.clip_norm {
            check::positive("clip_norm", c)?;
        }
        if self.block_size != crate::quant::BLOCK_SIZE {
            if self.state_dtype != StateDtype::Q8 {
                return Err(Error::invalid(
                    "block_size",
                    self.block_size,
                    "sets the blocks of 8-bit state: it needs state_dtype=q8",
                ));
            }
            if !self.block_size.is_power_of_two()
                || !(16..=crate::kernel::CHUNK).contains(&self.block_size)
            {
                return Err(Error::invalid(
                    "block_size",
                    self.block_size,
                    format!(
                        "must be a power of two from 16 to {} (a block never spans two work units)",
                        crate::kernel::CHUNK
                    ),
                ));
            }
        }
        if self.state_dtype.is_narrow() {
            let why = if self.rule.whole_tensor() {
                Some("its Newton–Schulz step runs on whole matrices")
            } else if self.rule.eval_slot().is_some() {
                Some("its averaged point x must stay exact")
            } else if self.rule.global::<f64>().is_some() {
                Some(
                    "its estimate reads the state in a pass over every tensor before the step, in full precision only",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::invalid(
                    "state_dtype",
                    self.state_dtype.name(),
                    format!("is not supported by {} ({why})", self.name()),
                ));
            }
        }
        if self.cautious {
            let why = if self.rule.whole_tensor() {
                Some("its update is a whole matrix's")
            } else if self.rule.eval_slot().is_some() {
                Some("its parameters are an interpolation, not the iterate its update moves")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::invalid(
                    "cautious",
                    true,
                    format!(
                        "is not supported by {} ({why}); it applies to element-wise rules",
                        self.name()
                    ),
                ));
            }
        }
        if self.skip_nonfinite && !self.check_finite {
            return Err(Error::invalid(
                "skip_nonfinite",
                true,
                "needs the finiteness check: it cannot be combined with check_finite=false",
            ));
        }
        Ok(())
    }
}

impl FromStr for OptimizerSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        let (name, rest) = match text.split_once(':') {
            Some((name, rest)) => (name.trim(), Some(rest)),
            None => (text, None),
        };
        if name.is_empty() {
            return Err(Error::invalid(
                "optimizer spec",
                format!("`{text}`"),
                "must start with an optimizer name, e.g. adam:lr=1e-3",
            ));
        }
        let mut spec = OptimizerSpec {
            rule: Rule::default_for(name)?,
            clip_norm: None,
            skip_nonfinite: false,
            check_finite: true,
            state_dtype: StateDtype::Param,
            rounding: StateRounding::Stochastic,
            block_size: crate::quant::BLOCK_SIZE,
            sr_seed: 0,
            master_weights: false,
            cautious: false,
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in rest.into_iter().flat_map(|r| r.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                return Err(Error::invalid(
                    "optimizer spec",
                    format!("`{text}`"),
                    "has an empty key=value item (stray comma?)",
                ));
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(Error::invalid(
                    format!("item `{item}` of {name}"),
                    item,
                    "must be key=value, e.g. lr=0.01",
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                return Err(Error::invalid(key, "(missing)", "needs a value after `=`"));
            }
            if seen.contains(&key) {
                return Err(Error::invalid(key, value, "is given twice"));
            }
            seen.push(key);
            spec.set_unchecked(key, value)?;
        }
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for OptimizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pairs = self.rule.non_default_pairs();
        if let Some(c) = self.clip_norm {
            pairs.push(("clip_norm", c.show()));
        }
        if self.skip_nonfinite {
            pairs.push(("skip_nonfinite", "true".to_string()));
        }
        if !self.check_finite {
            pairs.push(("check_finite", "false".to_string()));
        }
        if self.state_dtype != StateDtype::Param {
            pairs.push(("state_dtype", self.state_dtype.show()));
        }
        if self.rounding != StateRounding::Stochastic {
            pairs.push(("rounding", self.rounding.show()));
        }
        if self.block_size != crate::quant::BLOCK_SIZE {
            pairs.push(("block_size", self.block_size.show()));
        }
        if self.sr_seed != 0 {
            pairs.push(("sr_seed", self.sr_seed.show()));
        }
        if self.master_weights {
            pairs.push(("master_weights", "true".to_string()));
        }
        if self.cautious {
            pairs.push(("cautious", "true".to_string()));
        }
        f.write_str(self.name())?;
        for (i, (k, v)) in pairs.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<OptimizerSpec> {
        s.parse()
    }

    #[test]
    fn defaults_are_pytorchs() {
        let Rule::Adam(a) = parse("adam").unwrap().rule else {
            panic!()
        };
        assert_eq!((a.lr, a.beta1, a.beta2, a.eps), (1e-3, 0.9, 0.999, 1e-8));
        assert_eq!(a.weight_decay, 0.0);
        let Rule::AdamW(w) = parse("adamw").unwrap().rule else {
            panic!()
        };
        assert_eq!(w.weight_decay, 1e-2);
        assert_eq!(
            parse("adamw:weight_decay=0").unwrap().to_string(),
            "adamw:weight_decay=0"
        );
        let Rule::Rmsprop(r) = parse("rmsprop").unwrap().rule else {
            panic!()
        };
        assert_eq!((r.lr, r.alpha, r.eps), (1e-2, 0.99, 1e-8));
        let Rule::Adagrad(g) = parse("adagrad").unwrap().rule else {
            panic!()
        };
        assert_eq!((g.lr, g.eps), (1e-2, 1e-10));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "adam",
            "adam:lr=0.01,beta2=0.99",
            "adamw",
            "adamw:lr=0.01,weight_decay=0.1",
            "adam:amsgrad=true,debias=horizon",
            "sgd:lr=0.02,momentum=0.8,nesterov=true,weight_decay=0.01",
            "sgd:lr=0.1,clip_norm=1,skip_nonfinite=true",
            "adam:lr=0.01,check_finite=false",
            "rmsprop:centered=true,momentum=0.9",
            "adagrad:lr_decay=0.01,initial_accumulator_value=0.1",
            "lion:lr=0.0001,weight_decay=0.1",
            "madam:p_scale=2",
            "adam:state_dtype=bf16",
            "adam:state_dtype=f32",
            "adam:state_dtype=f64",
            "adamw:lr=0.01,state_dtype=bf16,rounding=nearest,sr_seed=7",
            "adam:state_dtype=bf16,master_weights=true",
            "normsgd:eps=1",
            "multiplicative:lr=0.01,eps=0.001",
            "lossprop:lr=0.5",
            "ema-momentum:lr=0.2,beta=0.95,debias=power",
            "adam:lr=1e-8",
        ] {
            let spec = parse(s).unwrap();
            let shown = spec.to_string();
            assert_eq!(parse(&shown).unwrap(), spec, "{s} -> {shown}");
        }
        assert_eq!(
            parse("adam:beta2=0.99,lr=0.01").unwrap().to_string(),
            "adam:lr=0.01,beta2=0.99"
        );
        assert_eq!(parse("adamw").unwrap().to_string(), "adamw");
        // Every global key at its default value is accepted and printed as the default.
        assert_eq!(
            parse("adamw:state_dtype=param,rounding=stochastic,sr_seed=0,clip_norm=none")
                .unwrap()
                .to_string(),
            "adamw"
        );
    }

    /// Every spec value type prints as text that parses back to the same value (what
    /// `Display` and the checkpoints rely on), `none` included for an optional number.
    #[test]
    fn spec_values_round_trip_through_their_text() {
        fn round_trip<V: SpecValue + PartialEq + std::fmt::Debug>(values: &[V], texts: &[&str]) {
            for (v, text) in values.iter().zip(texts) {
                assert_eq!(v.show(), *text);
                assert_eq!(&V::parse_value("key", text).unwrap(), v, "{text}");
            }
        }
        round_trip(&[0.5, 1e-8, 3.0], &["0.5", "1e-8", "3"]);
        round_trip(&[true, false], &["true", "false"]);
        round_trip(&[0u64, 7], &["0", "7"]);
        round_trip(&[None, Some(0.25)], &["none", "0.25"]);
        round_trip(
            &[Debias::None, Debias::Power, Debias::Horizon],
            &["none", "power", "horizon"],
        );
        round_trip(
            &[
                StateDtype::Param,
                StateDtype::F32,
                StateDtype::F64,
                StateDtype::Bf16,
            ],
            &["param", "f32", "f64", "bf16"],
        );
        round_trip(
            &[StateRounding::Stochastic, StateRounding::Nearest],
            &["stochastic", "nearest"],
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("bogus:lr=1", "unknown optimizer"),
            ("adam:lr", "key=value"),
            ("adam:lr=", "needs a value"),
            ("adam:lr=abc", "must be a number"),
            ("adam:lr=-1", "lr"),
            ("adam:beta1=1", "beta1"),
            ("adam:beta2=1.5", "[0, 1)"),
            ("adam:eps=0", "eps"),
            ("adam:momentum=0.9", "unknown key"),
            ("adam:lr=1,lr=2", "twice"),
            ("adam:lr=1,", "empty"),
            ("sgd:nesterov=true", "nesterov"),
            ("sgd:momentum=0.9,nesterov=true,dampening=0.1", "dampening"),
            ("sgd:lr=nan", "lr"),
            ("adam:lr=inf", "finite"),
            ("adam:eps=inf", "finite"),
            ("sgd:clip_norm=inf", "clip_norm"),
            ("sgd:momentum=0.5,dampening=1.5", "[0, 1]"),
            ("sgd:momentum=0.5,dampening=-0.5", "[0, 1]"),
            ("sf-sgd:momentum=0", "(0, 1), exclusive"),
            ("sf-sgd:momentum=1", "(0, 1), exclusive"),
            ("sf-sgd:r=-1", "r"),
            ("sf-adamw:weight_lr_power=-1", "weight_lr_power"),
            ("sf-adamw:beta1=1", "beta1"),
            ("muon:ns_steps=0", "ns_steps"),
            ("muon:ns_steps=100", "between 1 and 99"),
            ("ademamix:alpha=-1", "alpha"),
            ("nadam:momentum_decay=-1", "momentum_decay"),
            ("rmsprop:alpha=1", "alpha"),
            ("adam:amsgrad=yes", "true or false"),
            ("adam:debias=sometimes", "horizon"),
            ("sgd:clip_norm=0", "clip_norm"),
            ("sgd:skip_nonfinite=true,check_finite=false", "check_finite"),
            ("normsgd:eps=0", "eps"),
            ("multiplicative:eps=-1", "eps"),
            ("lossprop:lr=-1", "lr"),
            ("lossprop:lr=nan", "lr"),
            ("adam:state_dtype=half", "bf16"),
            ("adam:rounding=floor", "stochastic or nearest"),
            ("adam:sr_seed=-1", "sr_seed"),
            ("adam:master_weights=yes", "master_weights"),
            ("sf-sgd:state_dtype=bf16", "sf-sgd"),
            (":lr=1", "optimizer name"),
        ];
        for (spec, needle) in cases {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
