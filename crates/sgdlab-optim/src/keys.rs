//! The global keys: the spec keys every optimizer accepts whatever its rule, applied around
//! the rule; all but [`cautious`](GlobalKey::group) are shared by its parameter groups.
//!
//! [`GLOBAL_KEYS`] is the one list of them: the spec parser and its error messages,
//! parameter groups (which refuse them), the Python layer (`sgdlab._core.GLOBAL_KEYS`) and
//! the optimizer reference of the docs (checked by a test) all take them from here.

/// A key every optimizer accepts: its name, the values it takes, its default, and what it
/// does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalKey {
    /// The key as written in a spec (`clip_norm`).
    pub name: &'static str,
    /// The values it takes, in words.
    pub values: &'static str,
    /// Its default, as written in a spec.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Whether a parameter group may set its own value (the others apply to the whole
    /// optimizer, and a group inherits them).
    pub group: bool,
}

/// Every global key, in the order specs print them.
pub const GLOBAL_KEYS: &[GlobalKey] = &[
    GlobalKey {
        name: "clip_norm",
        values: "C > 0, or none",
        default: "none",
        doc: "global-norm gradient clipping before the rule: every gradient is scaled by \
              min(1, C/(‖g‖ + 1e-6)), ‖g‖ over all tensors (torch.nn.utils.clip_grad_norm_)",
        group: false,
    },
    GlobalKey {
        name: "skip_nonfinite",
        values: "true | false",
        default: "false",
        doc: "a step whose gradient (or loss) holds a NaN or an infinity is skipped and \
              counted instead of being an error; either way nothing changes",
        group: false,
    },
    GlobalKey {
        name: "check_finite",
        values: "true | false",
        default: "true",
        doc: "check gradients for NaN/Inf in a pre-pass before anything changes; false \
              drops the check, as PyTorch does, for one read of the gradient less per step",
        group: false,
    },
    GlobalKey {
        name: "state_dtype",
        values: "param | f32 | f64 | bf16 | q8",
        default: "param",
        doc: "the element type of the state buffers: the parameters' own (param, or its \
              name), bfloat16, or 8-bit blockwise-quantized (bitsandbytes' dynamic code \
              books, one f32 absmax per block; element-wise rules)",
        group: false,
    },
    GlobalKey {
        name: "rounding",
        values: "stochastic | nearest",
        default: "stochastic",
        doc: "how bfloat16 and 8-bit state (and bfloat16 parameters without master weights) is \
              rounded: unbiased stochastic rounding from counter-based bits, or to nearest",
        group: false,
    },
    GlobalKey {
        name: "block_size",
        values: "a power of two from 16 to 32768",
        default: "256",
        doc: "the elements per block of 8-bit state (state_dtype=q8), each block with its \
              own absmax scale",
        group: false,
    },
    GlobalKey {
        name: "sr_seed",
        values: "an integer ≥ 0",
        default: "0",
        doc: "the seed of stochastic rounding's counter-based bits",
        group: false,
    },
    GlobalKey {
        name: "master_weights",
        values: "true | false",
        default: "false",
        doc: "keep an exact copy of bfloat16 parameters, step it, and round it to nearest \
              into the parameters",
        group: false,
    },
    GlobalKey {
        name: "cautious",
        values: "true | false",
        default: "false",
        doc: "cautious masking (C-AdamW, C-Lion): the coordinates of the rule's update u \
              whose sign disagrees with the gradient's are zeroed and the rest scaled by \
              numel/(count + 1), per tensor, before the learning rate and weight decay; \
              element-wise rules",
        group: true,
    },
];

/// Whether `key` is a global key.
pub fn is_global(key: &str) -> bool {
    GLOBAL_KEYS.iter().any(|k| k.name == key)
}

/// Whether `key` is a global key that applies to the whole optimizer (a group may not set
/// it).
pub fn is_optimizer_wide(key: &str) -> bool {
    GLOBAL_KEYS.iter().any(|k| k.name == key && !k.group)
}

/// The global keys' names, comma-separated, for messages.
pub fn global_key_names() -> String {
    GLOBAL_KEYS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OptimizerSpec;

    /// Every key of the table is one the spec parser takes, at its default (which leaves a
    /// spec unchanged) and in the spec grammar; an unknown key's error lists them all.
    #[test]
    fn the_table_is_what_the_parser_takes() {
        for key in GLOBAL_KEYS {
            let base: OptimizerSpec = "adamw:lr=0.01".parse().unwrap();
            let text = if key.default == "none" {
                format!("adamw:lr=0.01,{}=none", key.name)
            } else {
                format!("adamw:lr=0.01,{}={}", key.name, key.default)
            };
            let parsed: OptimizerSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, base, "{} at its default changes the spec", key.name);
            let mut set = base.clone();
            set.set(key.name, key.default).unwrap();
            assert_eq!(set, base);
            assert!(is_global(key.name));
        }
        assert!(!is_global("lr"));
        let err = "adamw:nope=1"
            .parse::<OptimizerSpec>()
            .unwrap_err()
            .to_string();
        for key in GLOBAL_KEYS {
            assert!(err.contains(key.name), "{err} lacks {}", key.name);
        }
        let group = "*.bias:clip_norm=1"
            .parse::<crate::GroupSpec>()
            .unwrap_err();
        assert!(group.to_string().contains("whole optimizer"), "{group}");
    }
}
