//! The lab from Python: `verify` and `audit` as the JSON text of the CLI's `--json`.

use crate::SgdlabError;
use crate::guarded;
use crate::lib_err;

use std::path::PathBuf;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use sgdlab::optim::OptimizerSpec;

/// `sgdlab verify` as JSON text (the `--json` file's contents).
#[pyfunction]
#[pyo3(signature = (problems, quick, seed))]
pub(crate) fn verify_json(
    py: Python<'_>,
    problems: Vec<u8>,
    quick: bool,
    seed: Option<u64>,
) -> PyResult<String> {
    guarded("verify_json", || {
        let mut options = sgdlab::lab::claims::VerifyOptions {
            quick,
            ..Default::default()
        };
        if let Some(seed) = seed {
            options.seed = seed;
        }
        let report = py
            .detach(|| sgdlab::lab::claims::verify(&problems, &options))
            .map_err(lib_err)?;
        serde_json::to_string_pretty(&report).map_err(|e| SgdlabError::new_err(e.to_string()))
    })
}

/// `sgdlab audit` as JSON text, on a CSV file (`path`) or the rows of a 2-D float64 array
/// (`rows`; the last column is the target, except for `points`).
#[pyfunction]
#[pyo3(signature = (path, rows, model, opts, bias, loss_unit, steps, burn_in, seed))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit_json(
    py: Python<'_>,
    path: Option<PathBuf>,
    rows: Option<numpy::PyReadonlyArray2<'_, f64>>,
    model: &str,
    opts: Vec<String>,
    bias: bool,
    loss_unit: &str,
    steps: Option<usize>,
    burn_in: Option<usize>,
    seed: Option<u64>,
) -> PyResult<String> {
    guarded("audit_json", || {
        use sgdlab::lab::audit::{AuditModel, SimulationOptions};
        let has_target = model != "points";
        let data = match (path, rows) {
            (Some(path), None) => sgdlab::data::read_csv(&path, has_target).map_err(lib_err)?,
            (None, Some(rows)) => {
                let array = rows.as_array();
                let (n, cols) = array.dim();
                let d = if has_target {
                    cols.saturating_sub(1)
                } else {
                    cols
                };
                if d == 0 || n == 0 {
                    return Err(PyValueError::new_err(format!(
                        "the data array is {n}×{cols}: it needs rows, and at least one feature column{}",
                        if has_target {
                            " besides the target (the last column)"
                        } else {
                            ""
                        }
                    )));
                }
                let mut features = Vec::with_capacity(n * d);
                let mut targets = Vec::with_capacity(n);
                for row in array.rows() {
                    features.extend(row.iter().take(d));
                    if has_target {
                        targets.push(row[cols - 1]);
                    }
                }
                sgdlab::data::Dataset::new(features, has_target.then_some(targets), d)
                    .map_err(lib_err)?
            }
            _ => {
                return Err(PyTypeError::new_err(
                    "audit needs a CSV path or a 2-D array",
                ));
            }
        };
        let unit = loss_unit.parse().map_err(lib_err)?;
        let model = AuditModel::build(model, data, bias, unit).map_err(lib_err)?;
        let specs = opts
            .iter()
            .map(|s| s.parse::<OptimizerSpec>())
            .collect::<sgdlab::Result<Vec<_>>>()
            .map_err(lib_err)?;
        let mut options = SimulationOptions::default();
        if let Some(steps) = steps {
            options.steps = steps;
        }
        if let Some(burn_in) = burn_in {
            options.burn_in = burn_in;
        }
        if let Some(seed) = seed {
            options.seed = seed;
        }
        let report = py
            .detach(|| sgdlab::lab::audit::audit(&model, &specs, &options))
            .map_err(lib_err)?;
        serde_json::to_string_pretty(&report).map_err(|e| SgdlabError::new_err(e.to_string()))
    })
}
