//! Specs from Python: hyper-parameter values as spec text, the rules and their keys, and
//! a spec parsed and validated.

use crate::guarded;
use crate::lib_err;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use sgdlab::optim::OptimizerSpec;

/// A Python value as spec text: booleans as `true`/`false`, floats in shortest round-trip form
/// (so the Rust side reads back the same double), ints and strings as written.
pub(crate) fn value_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = value.cast::<pyo3::types::PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_string());
    }
    if let Ok(i) = value.extract::<i64>() {
        return Ok(i.to_string());
    }
    if let Ok(x) = value.extract::<f64>() {
        return Ok(format!("{x:?}"));
    }
    if let Ok(s) = value.extract::<String>() {
        return Ok(s);
    }
    Err(PyTypeError::new_err(format!(
        "a hyper-parameter value must be a bool, number or str, not {}",
        value.get_type().name()?
    )))
}

/// The keys rule `name` accepts (its own, then the global keys of
/// [`sgdlab::optim::GLOBAL_KEYS`]).
#[pyfunction]
pub(crate) fn rule_keys(name: &str) -> PyResult<Vec<String>> {
    guarded("rule_keys", || {
        let spec = OptimizerSpec::named(name).map_err(lib_err)?;
        let mut keys: Vec<String> = spec.rule.keys().iter().map(|k| k.to_string()).collect();
        keys.extend(
            sgdlab::optim::GLOBAL_KEYS
                .iter()
                .map(|k| k.name.to_string()),
        );
        Ok(keys)
    })
}

/// The names of every optimizer rule.
#[pyfunction]
pub(crate) fn rules() -> Vec<&'static str> {
    sgdlab::optim::spec::NAMES.to_vec()
}

/// `spec` parsed and validated: `(rule name, {key: value text})` for the keys that differ from
/// the rule's defaults, plus the global keys that are set.
#[pyfunction]
pub(crate) fn parse_spec(spec: &str) -> PyResult<(String, Vec<(String, String)>)> {
    guarded("parse_spec", || {
        let spec: OptimizerSpec = spec.parse().map_err(lib_err)?;
        spec.validate().map_err(lib_err)?;
        let text = spec.to_string();
        let keys = match text.split_once(':') {
            Some((_, rest)) => rest
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None => Vec::new(),
        };
        Ok((spec.name().to_string(), keys))
    })
}

/// Every key of `spec`'s rule with its value as spec text, defaults included (the spec
/// parsed and validated): what an implementation of the rule outside the Rust kernels
/// (`sgdlab.torch`'s torch operations) reads.
#[pyfunction]
pub(crate) fn rule_values(spec: &str) -> PyResult<Vec<(String, String)>> {
    guarded("rule_values", || {
        let spec: OptimizerSpec = spec.parse().map_err(lib_err)?;
        spec.validate().map_err(lib_err)?;
        Ok(spec
            .rule
            .values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect())
    })
}

/// Runs the optimizer steps of this process on `n` threads (`n` ≥ 1; 0: rayon's global pool,
/// one per core or `RAYON_NUM_THREADS`). The results do not depend on it.
#[pyfunction]
pub(crate) fn set_num_threads(n: usize) -> PyResult<()> {
    guarded("set_num_threads", || {
        sgdlab::optim::set_num_threads(n).map_err(lib_err)
    })
}

/// The number of threads the next optimizer step uses.
#[pyfunction]
pub(crate) fn get_num_threads() -> usize {
    sgdlab::optim::num_threads()
}
