//! The lab from Python: `verify` and `audit` as the JSON text of the CLI's `--json`.

use crate::SgdlabError;
use crate::guarded;
use crate::lib_err;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use sgdlab::lab::audit::{Stepper, Subject};
use sgdlab::optim::OptimizerSpec;

/// Keeps the first Python exception a foreign optimizer raised (the audit re-raises it as
/// it was) and returns an error naming it.
fn keep(raised: &RefCell<Option<PyErr>>, e: PyErr) -> sgdlab::Error {
    let message = e.to_string();
    raised.borrow_mut().get_or_insert(e);
    sgdlab::Error::Unsupported(message)
}

/// A foreign optimizer from Python: an object with `lr`, `step(params, grad, loss,
/// lr_scale) -> params`, `save()` and `restore()` (`sgdlab.audit` builds one around a
/// `torch.optim.Optimizer`).
struct PyStepper {
    object: Py<PyAny>,
    lr: f64,
    raised: Rc<RefCell<Option<PyErr>>>,
}

impl PyStepper {
    fn call(&self, method: &str) -> sgdlab::Result<()> {
        Python::attach(|py| self.object.call_method0(py, method).map(drop))
            .map_err(|e| keep(&self.raised, e))
    }
}

impl Stepper for PyStepper {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn step(
        &mut self,
        params: &mut [f64],
        grad: &[f64],
        loss: f64,
        lr_scale: f64,
    ) -> sgdlab::Result<()> {
        Python::attach(|py| -> PyResult<()> {
            let p = PyArray1::from_slice(py, params);
            let g = PyArray1::from_slice(py, grad);
            let out = self
                .object
                .call_method1(py, "step", (p, g, loss, lr_scale))?;
            let out = out.bind(py).cast::<PyArray1<f64>>().map_err(|_| {
                PyTypeError::new_err("a foreign optimizer's step must return a float64 array")
            })?;
            let out = out.readonly();
            let values = out.as_slice()?;
            if values.len() != params.len() {
                return Err(PyValueError::new_err(format!(
                    "a foreign optimizer's step returned {} values for {} parameters",
                    values.len(),
                    params.len()
                )));
            }
            params.copy_from_slice(values);
            Ok(())
        })
        .map_err(|e| keep(&self.raised, e))
    }

    fn save(&mut self) -> sgdlab::Result<()> {
        self.call("save")
    }

    fn restore(&mut self) -> sgdlab::Result<()> {
        self.call("restore")
    }
}

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
    opts: Vec<Bound<'_, PyAny>>,
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
        // A spec string, or a foreign optimizer as `(name, make)`: `make(dim)` builds an object
        // with `lr`, `step(params, grad, loss, lr_scale)`, `save()` and `restore()`.
        let raised: Rc<RefCell<Option<PyErr>>> = Rc::default();
        let mut subjects = Vec::with_capacity(opts.len());
        let mut foreign = false;
        let dim = model.model().dim();
        for opt in &opts {
            if let Ok(text) = opt.extract::<String>() {
                subjects.push(Subject::Spec(
                    text.parse::<OptimizerSpec>().map_err(lib_err)?,
                ));
            } else {
                let (name, make): (String, Py<PyAny>) = opt.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "an audited optimizer is a spec string or a (name, make) pair",
                    )
                })?;
                foreign = true;
                let raised = raised.clone();
                subjects.push(Subject::Stepper {
                    name,
                    make: Box::new(move || -> sgdlab::Result<Box<dyn Stepper>> {
                        Python::attach(|py| {
                            let object = make.call1(py, (dim,))?;
                            let lr: f64 = object.getattr(py, "lr")?.extract(py)?;
                            Ok(Box::new(PyStepper {
                                object,
                                lr,
                                raised: raised.clone(),
                            }) as Box<dyn Stepper>)
                        })
                        .map_err(|e: PyErr| keep(&raised, e))
                    }),
                });
            }
        }
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
        let report = if foreign {
            // A foreign optimizer steps in Python: the audit keeps the interpreter.
            sgdlab::lab::audit::audit_subjects(&model, subjects, &options)
        } else {
            let specs: Vec<OptimizerSpec> = subjects
                .into_iter()
                .filter_map(|s| match s {
                    Subject::Spec(spec) => Some(spec),
                    Subject::Stepper { .. } => None,
                })
                .collect();
            py.detach(|| sgdlab::lab::audit::audit(&model, &specs, &options))
        };
        let report =
            report.map_err(|e| raised.borrow_mut().take().unwrap_or_else(|| lib_err(e)))?;
        serde_json::to_string_pretty(&report).map_err(|e| SgdlabError::new_err(e.to_string()))
    })
}
