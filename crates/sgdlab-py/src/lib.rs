//! `sgdlab._core`: the Python extension module of the `sgdlab` package.
//!
//! It exposes the Rust library's [`Optimizer`] over numpy arrays (updated in place, zero-copy,
//! with the GIL released during the step), its state (state dicts, checkpoint files, pickling),
//! and the lab (`verify`, `audit`) as JSON text that the Python layer parses. The Python
//! package (`python/sgdlab`) adds `sgdlab.torch` and the documented signatures on top.
//!
//! Every error of the library arrives in Python as `sgdlab.SgdlabError` (a `ValueError`) with
//! the library's message; wrong argument types raise `TypeError`, unreadable files `OSError`.
//!
//! The rooms: `optimizer.rs` (the `Optimizer` class), `arrays.rs` (borrowing a step's
//! arrays), `state_dict.rs` (state dicts), `specs.rs` (spec text and the rules' keys),
//! `lab.rs` (`verify`, `audit`).

mod arrays;
mod inner;
mod lab;
mod optimizer;
mod specs;
mod state_dict;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::optimizer::PyOptimizer;

pyo3::create_exception!(
    sgdlab,
    SgdlabError,
    PyValueError,
    "An error reported by sgdlab's Rust core (bad spec, invalid hyper-parameter, non-finite \
     gradient, shape mismatch, corrupt checkpoint, ...), with the library's message."
);

/// The library's error as a Python exception.
pub(crate) fn lib_err(e: sgdlab::Error) -> PyErr {
    SgdlabError::new_err(e.to_string())
}

/// Runs an entry point's body, turning a panic (a bug: every input sgdlab can refuse is
/// refused with an error) into `SgdlabError`, so that no Python caller ever sees pyo3's
/// `PanicException` (a `BaseException`, which `except Exception` does not catch).
pub(crate) fn guarded<R>(what: &str, body: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(SgdlabError::new_err(format!(
                "internal error in {what}: {message} (a bug in sgdlab: please report it)"
            )))
        }
    }
}

/// Panics on purpose, inside an entry point's guard: the test suite checks with it that a
/// panic reaches Python as `SgdlabError`, never as pyo3's `PanicException`.
#[pyfunction]
fn _panic_for_tests(message: &str) -> PyResult<()> {
    guarded("_panic_for_tests", || panic!("{message}"))
}

/// The extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyOptimizer>()?;
    m.add("SgdlabError", m.py().get_type::<SgdlabError>())?;
    m.add_function(wrap_pyfunction!(specs::rule_keys, m)?)?;
    m.add_function(wrap_pyfunction!(specs::rules, m)?)?;
    m.add_function(wrap_pyfunction!(specs::parse_spec, m)?)?;
    m.add_function(wrap_pyfunction!(specs::rule_values, m)?)?;
    m.add_function(wrap_pyfunction!(specs::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(specs::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(lab::verify_json, m)?)?;
    m.add_function(wrap_pyfunction!(lab::audit_json, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The keys every optimizer takes whatever its rule: the library's one table.
    let global_keys: Vec<&str> = sgdlab::optim::GLOBAL_KEYS.iter().map(|k| k.name).collect();
    m.add(
        "GLOBAL_KEYS",
        pyo3::types::PyTuple::new(m.py(), global_keys)?,
    )?;
    // Their defaults, as spec text.
    let defaults: Vec<(&str, &str)> = sgdlab::optim::GLOBAL_KEYS
        .iter()
        .map(|k| (k.name, k.default))
        .collect();
    m.add("GLOBAL_DEFAULTS", defaults.into_pyobject(m.py())?)?;
    Ok(())
}
