//! Parameter groups: tensors chosen by name patterns that step with other hyper-parameters, or
//! another rule, inside one optimizer (one state, one checkpoint, one global clipping and
//! finiteness check).
//!
//! A group is written `PATTERNS:KEY=VALUE,...`: comma-separated glob patterns (`*` any run of
//! characters, `?` one character) matched against tensor names, then the keys it overrides in
//! the optimizer's spec — or `rule=NAME` first, to step those tensors with another optimizer
//! (its defaults, then the keys). A tensor belongs to the first group with a matching pattern;
//! the rest follow the optimizer's own spec.
//!
//! ```
//! use sgdlab_optim::{GroupSpec, Optimizer, StepInfo, Tensor};
//!
//! // AdamW, with no weight decay for biases and norms, and Lion for the embedding.
//! let mut opt = Optimizer::<f64>::with_groups(
//!     "adamw:lr=1e-3".parse()?,
//!     vec!["*.bias,*norm*:weight_decay=0".parse()?, "embed.*:rule=lion,lr=1e-4".parse()?],
//! )?;
//! let mut params = vec![
//!     Tensor::vector("embed.weight", vec![1.0, 2.0]),
//!     Tensor::vector("fc.weight", vec![1.0, 2.0]),
//!     Tensor::vector("fc.bias", vec![1.0]),
//! ];
//! let grads: Vec<_> = params.iter().map(|p| Tensor::vector(p.name(), vec![0.5; p.len()])).collect();
//! opt.step(&mut params, &grads, &StepInfo::default())?;
//! assert_eq!(opt.group_of(2), Some(1)); // fc.bias: the first group
//! assert_eq!(opt.spec_of(2).to_string(), "adamw:weight_decay=0");
//! # Ok::<(), sgdlab_optim::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use super::OptimizerSpec;
use crate::{Error, Result};

/// One parameter group: which tensors (name patterns) and how they step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Glob patterns; a tensor whose name matches any of them belongs to the group.
    pub patterns: Vec<String>,
    /// Another rule for the group (`rule=NAME`), or `None` for the optimizer's own.
    pub rule: Option<String>,
    /// Keys overridden, in order, with their values as written.
    pub keys: Vec<(String, String)>,
}

impl GroupSpec {
    /// Whether `name` matches one of the group's patterns.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob(p, name))
    }

    /// The group's spec over the optimizer's `base` spec: `base` (or the defaults of
    /// `rule`, with `base`'s global keys) with the group's keys set. Errors name the group.
    pub fn resolve(&self, base: &OptimizerSpec) -> Result<OptimizerSpec> {
        let context = |e: Error| Error::invalid(format!("group `{self}`"), self, e.to_string());
        let mut spec = match &self.rule {
            Some(name) => {
                let mut s: OptimizerSpec = name.parse().map_err(context)?;
                s.clip_norm = base.clip_norm;
                s.state_dtype = base.state_dtype;
                s.rounding = base.rounding;
                s.sr_seed = base.sr_seed;
                s.master_weights = base.master_weights;
                s.skip_nonfinite = base.skip_nonfinite;
                s.check_finite = base.check_finite;
                s.cautious = base.cautious;
                s
            }
            None => base.clone(),
        };
        for (k, v) in &self.keys {
            spec.set(k, v).map_err(context)?;
        }
        // The base's global keys may not suit the group's rule (bf16 state and Muon).
        spec.validate().map_err(context)?;
        Ok(spec)
    }

    /// Whether the group sets `key` itself (so that a change of the optimizer's own value
    /// does not reach it); a group with its own rule sets every key.
    pub fn overrides(&self, key: &str) -> bool {
        self.rule.is_some() || self.keys.iter().any(|(k, _)| k == key)
    }
}

impl FromStr for GroupSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("parameter group", text, why);
        let (patterns, keys) = text
            .split_once(':')
            .ok_or_else(|| bad("must be PATTERNS:KEY=VALUE,..., e.g. *.bias:weight_decay=0"))?;
        let patterns: Vec<String> = patterns.split(',').map(|p| p.trim().to_string()).collect();
        if patterns.iter().any(String::is_empty) {
            return Err(bad("has an empty name pattern"));
        }
        let mut rule = None;
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (i, item) in keys.split(',').enumerate() {
            let (k, v) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| bad("each override must be KEY=VALUE"))?;
            if k == "rule" {
                if i != 0 {
                    return Err(bad("`rule=NAME` must come first"));
                }
                rule = Some(v.to_string());
            } else if crate::keys::is_optimizer_wide(k) {
                return Err(Error::invalid(
                    k,
                    v,
                    "applies to the whole optimizer (clipping, the finiteness check and the \
                     state's type are global): set it on the optimizer's spec, not in a group",
                ));
            } else if pairs.iter().any(|(seen, _)| seen == k) {
                return Err(bad(&format!("sets `{k}` twice")));
            } else {
                pairs.push((k.to_string(), v.to_string()));
            }
        }
        if rule.is_none() && pairs.is_empty() {
            return Err(bad("overrides nothing"));
        }
        Ok(Self {
            patterns,
            rule,
            keys: pairs,
        })
    }
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.patterns.join(","))?;
        let mut items: Vec<String> = self.rule.iter().map(|r| format!("rule={r}")).collect();
        items.extend(self.keys.iter().map(|(k, v)| format!("{k}={v}")));
        f.write_str(&items.join(","))
    }
}

/// Glob matching of a whole name: `*` matches any run of characters (also none), `?` one
/// character, anything else itself. (Hand-written rather than the `globset` crate: names are
/// short, only these two wildcards are needed, and `globset` would bring in `regex`.)
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy matching with backtracking to the last star: O(|p|·|n|) at worst.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        // A `*` is a wildcard first, even facing a `*` in the name.
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*.bias", "layer0.bias", true),
            ("*.bias", "layer0.bias2", false),
            ("*norm*", "block.layernorm.weight", true),
            ("layer?.weight", "layer1.weight", true),
            ("layer?.weight", "layer10.weight", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn group_specs_parse_resolve_and_print() {
        let g: GroupSpec = "*.bias, *norm* : weight_decay=0".parse().unwrap();
        assert_eq!(g.to_string(), "*.bias,*norm*:weight_decay=0");
        assert!(g.matches("x.bias") && g.matches("ln_norm.w") && !g.matches("x.weight"));
        let base: OptimizerSpec = "adamw:lr=0.01,clip_norm=1".parse().unwrap();
        assert_eq!(
            g.resolve(&base).unwrap().to_string(),
            "adamw:lr=0.01,weight_decay=0,clip_norm=1"
        );
        let other: GroupSpec = "emb.*:rule=lion,lr=3e-4".parse().unwrap();
        assert_eq!(
            other.resolve(&base).unwrap().to_string(),
            "lion:lr=0.0003,clip_norm=1"
        );
        assert!(
            other.overrides("weight_decay") && g.overrides("weight_decay") && !g.overrides("lr")
        );
        assert_eq!(other.to_string().parse::<GroupSpec>().unwrap(), other);
        for bad in [
            "*.bias",
            "*.bias:",
            ":lr=1",
            "a,,b:lr=1",
            "a:lr",
            "a:lr=",
            "a:=1",
            "a: = ",
            "a:lr=1,lr=2",
            "a:lr=1,rule=sgd",
            "a:clip_norm=1",
        ] {
            assert!(bad.parse::<GroupSpec>().is_err(), "{bad}");
        }
        let err = "a:beta1=3"
            .parse::<GroupSpec>()
            .unwrap()
            .resolve(&base)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group `a:beta1=3`") && err.contains("beta1"),
            "{err}"
        );
        assert!(
            "a:momentum=0.9"
                .parse::<GroupSpec>()
                .unwrap()
                .resolve(&base)
                .is_err()
        );
    }

    /// `glob` against the definition read as a recursion (`*` matches nothing or eats one
    /// character and stays, `?` eats one, a letter eats itself), on every pattern over
    /// `{a, b, ?, *}` up to 5 characters and every name over `{a, b}` up to 5 or over
    /// `{a, b, *, ?}` up to 4 (a name may hold the wildcard characters, which then match only
    /// as wildcards: `*?` matches `a*`): 1,365 × 373 pairs, which cover every backtracking
    /// path of the greedy matcher.
    #[test]
    fn glob_matches_the_recursive_definition_exhaustively() {
        fn reference(p: &[char], n: &[char]) -> bool {
            match p.split_first() {
                None => n.is_empty(),
                Some(('*', rest)) => reference(rest, n) || (!n.is_empty() && reference(p, &n[1..])),
                Some(('?', rest)) => !n.is_empty() && reference(rest, &n[1..]),
                Some((c, rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
            }
        }
        fn words(alphabet: &[char], max: usize) -> Vec<String> {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let patterns = words(&['a', 'b', '?', '*'], 5);
        let mut names = words(&['a', 'b'], 5);
        names.extend(
            words(&['a', 'b', '*', '?'], 4)
                .into_iter()
                .filter(|n| n.contains(['*', '?'])),
        );
        assert_eq!((patterns.len(), names.len()), (1365, 373));
        assert!(glob("*?", "a*") && glob("a*", "a*?") && !glob("a?", "a"));
        let mut matched = 0;
        for p in &patterns {
            let pc: Vec<char> = p.chars().collect();
            for n in &names {
                let want = reference(&pc, &n.chars().collect::<Vec<_>>());
                assert_eq!(glob(p, n), want, "{p:?} vs {n:?}");
                matched += usize::from(want);
            }
        }
        assert!(matched > 10_000 && matched < 1365 * 373 / 2, "{matched}");
    }
}
