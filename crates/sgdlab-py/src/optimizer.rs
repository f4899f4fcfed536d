//! `sgdlab._core.Optimizer`: the library's optimizer of either element type over numpy
//! arrays, its state, checkpoints and pickling.

use crate::SgdlabError;
use crate::arrays::borrow_all;
use crate::arrays::checked_array;
use crate::arrays::collect_arrays;
use crate::arrays::is_array_of;
use crate::arrays::report_dict;
use crate::arrays::step_on_views;
use crate::arrays::swap_typed;
use crate::guarded;
use crate::lib_err;
use crate::specs::value_text;
use crate::state_dict::state_dict_from_py;
use crate::state_dict::state_dict_py;
use crate::state_dict::to_array;

use std::collections::BTreeMap;
use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use sgdlab::Real;
use sgdlab::optim::{GroupSpec, Optimizer, OptimizerSpec, StepInfo, Totals};

use crate::inner::{Dtype, Inner, with_opt};

/// An sgdlab optimizer over numpy arrays: `Optimizer(spec, groups=())`.
///
/// `spec` is any optimizer spec the command line takes (`"adamw:lr=1e-3,weight_decay=0.01"`);
/// `groups` are parameter groups in the CLI's `--group` syntax (`"*.bias:weight_decay=0"`),
/// matched against the names of the arrays stepped.
#[pyclass(module = "sgdlab._core", name = "Optimizer")]
pub(crate) struct PyOptimizer {
    inner: Inner,
}

#[pymethods]
impl PyOptimizer {
    #[new]
    #[pyo3(signature = (spec, groups = Vec::new()))]
    fn new(spec: &str, groups: Vec<String>) -> PyResult<Self> {
        guarded("new", || {
            let spec: OptimizerSpec = spec.parse().map_err(lib_err)?;
            let groups = groups
                .iter()
                .map(|g| g.parse::<GroupSpec>())
                .collect::<sgdlab::Result<Vec<_>>>()
                .map_err(lib_err)?;
            Ok(Self {
                inner: Inner::F64(Optimizer::with_groups(spec, groups).map_err(lib_err)?),
            })
        })
    }

    /// One step: updates every array of `params` in place from `grads` (lists of numpy arrays
    /// in the same order, or dicts by name). Returns `{"applied", "lr", "grad_norm"}`.
    ///
    /// `totals`, when this optimizer steps one part of a model (a process of sharded
    /// data-parallel training), is `(norm_sq, nonfinite, numel)` summed over every process's
    /// `local_totals(grads)`: the step clips, normalises and skips by the whole model's sums.
    #[pyo3(signature = (params, grads, loss = None, *, names = None, lr_scale = 1.0, micro_batches = 1, totals = None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
        loss: Option<f64>,
        names: Option<Vec<String>>,
        lr_scale: f64,
        micro_batches: u32,
        totals: Option<(f64, u64, u64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded("step", || {
            let (names, ps, gs) = collect_arrays(params, grads, names)?;
            let mut dtype = None;
            for (kind, objs) in [("parameter", &ps), ("gradient of", &gs)] {
                for (name, obj) in names.iter().zip(objs.iter()) {
                    let (_, dt) = checked_array(obj, &format!("{kind} `{name}`"))?;
                    match dtype {
                        None => dtype = Some(dt),
                        Some(d) if d != dt => {
                            return Err(PyTypeError::new_err(format!(
                                "{kind} `{name}` is {}, the first array {}: one step takes one dtype",
                                dt.numpy_name(),
                                d.numpy_name()
                            )));
                        }
                        Some(_) => {}
                    }
                }
            }
            let Some(dtype) = dtype else {
                return Err(PyValueError::new_err(
                    "a step needs at least one parameter array",
                ));
            };
            if dtype != self.inner.dtype() {
                if !self.inner.is_fresh() {
                    return Err(PyTypeError::new_err(format!(
                        "the arrays are {}, the optimizer's state {}: it steps the dtype of its first step",
                        dtype.numpy_name(),
                        self.inner.dtype().numpy_name()
                    )));
                }
                self.inner = self.inner.rebuilt(dtype).map_err(lib_err)?;
            }
            let info = StepInfo {
                loss,
                lr_scale,
                micro_batches,
                totals: totals.map(totals_of),
            };
            let report = match &mut self.inner {
                Inner::F32(o) => step_on_views(py, borrow_all(names, &ps, &gs)?, |p, g| {
                    o.step_views(p, g, &info)
                })?,
                Inner::F64(o) => step_on_views(py, borrow_all(names, &ps, &gs)?, |p, g| {
                    o.step_views(p, g, &info)
                })?,
            };
            report_dict(py, &report)
        })
    }

    /// One step on bfloat16 parameters: `params` are `uint16` arrays holding bfloat16 bits
    /// (e.g. `t.view(torch.int16).numpy().view(numpy.uint16)` of a `torch.bfloat16` tensor),
    /// updated in place; `grads` are `uint16` (bfloat16 bits) or `float32` arrays. The step
    /// runs in float32 on the values widened exactly, and the parameters are rounded back:
    /// from a float32 master copy to nearest with `master_weights=true`, else with the spec's
    /// `rounding` (stochastic by default). Returns `{"applied", "lr", "grad_norm"}`.
    /// `totals` as for `step`.
    #[pyo3(signature = (params, grads, loss = None, *, names = None, lr_scale = 1.0, micro_batches = 1, totals = None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn step_bf16<'py>(
        &mut self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
        loss: Option<f64>,
        names: Option<Vec<String>>,
        lr_scale: f64,
        micro_batches: u32,
        totals: Option<(f64, u64, u64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded("step_bf16", || {
            let (names, ps, gs) = collect_arrays(params, grads, names)?;
            if ps.is_empty() {
                return Err(PyValueError::new_err(
                    "a step needs at least one parameter array",
                ));
            }
            for (name, p) in names.iter().zip(&ps) {
                if !is_array_of::<u16>(p) {
                    return Err(PyTypeError::new_err(format!(
                        "parameter `{name}` must be a C-contiguous uint16 numpy array of bfloat16 \
                         bits (step float32/float64 parameters with step)"
                    )));
                }
            }
            let bf16_grads = gs.iter().all(is_array_of::<u16>);
            if !bf16_grads && !gs.iter().all(is_array_of::<f32>) {
                return Err(PyTypeError::new_err(
                    "the gradients of bfloat16 parameters must all be C-contiguous uint16 \
                     (bfloat16 bits) or all float32 numpy arrays",
                ));
            }
            if self.inner.dtype() != Dtype::F32 {
                if !self.inner.is_fresh() {
                    return Err(PyTypeError::new_err(
                        "the optimizer's state is float64: bfloat16 parameters step in float32",
                    ));
                }
                self.inner = self.inner.rebuilt(Dtype::F32).map_err(lib_err)?;
            }
            let info = StepInfo {
                loss,
                lr_scale,
                micro_batches,
                totals: totals.map(totals_of),
            };
            let Inner::F32(o) = &mut self.inner else {
                unreachable!("rebuilt as float32 above");
            };
            let report = if bf16_grads {
                step_on_views(py, borrow_all(names, &ps, &gs)?, |p, g| {
                    o.step_bf16(p, g, &info)
                })?
            } else {
                step_on_views(py, borrow_all(names, &ps, &gs)?, |p, g| {
                    o.step_bf16_params(p, g, &info)
                })?
            };
            report_dict(py, &report)
        })
    }

    /// This process's part of a distributed step's totals, `(norm_sq, nonfinite, numel)`:
    /// Σg² of `grads` in float64 (when the optimizer clips, or its rule needs the norm; else
    /// 0), 1 if they hold a NaN or an infinity (when it checks or needs the norm; else 0),
    /// and their size. Sum the tuples over the processes and pass the sums to `step` as
    /// `totals`. `grads`: float32, float64 or uint16 (bfloat16 bits) arrays.
    fn local_totals(
        &mut self,
        py: Python<'_>,
        grads: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<(f64, u64, u64)> {
        guarded("local_totals", || {
            let mut dtype = None;
            for (i, g) in grads.iter().enumerate() {
                let dt = if is_array_of::<u16>(g) {
                    Dtype::F32
                } else {
                    checked_array(g, &format!("gradient {i}"))?.1
                };
                if dtype.is_some_and(|d| d != dt) {
                    return Err(PyTypeError::new_err(
                        "the gradients mix float32 and float64: one step takes one dtype",
                    ));
                }
                dtype = Some(dt);
            }
            let dtype = dtype.unwrap_or(self.inner.dtype());
            if dtype != self.inner.dtype() && self.inner.is_fresh() {
                self.inner = self.inner.rebuilt(dtype).map_err(lib_err)?;
            }
            let t = match &self.inner {
                Inner::F32(o) => {
                    let mut wide: Vec<Vec<f32>> = Vec::new();
                    let mut held = Vec::new();
                    for g in &grads {
                        if is_array_of::<u16>(g) {
                            let a = g.cast::<PyArrayDyn<u16>>()?.try_readonly()?;
                            wide.push(a.as_slice()?.iter().map(|&b| f32::from_bf16(b)).collect());
                        } else {
                            held.push(typed::<f32>(g, "float32")?);
                        }
                    }
                    let mut slices: Vec<&[f32]> = wide.iter().map(Vec::as_slice).collect();
                    for h in &held {
                        slices.push(h.as_slice()?);
                    }
                    py.detach(|| o.local_totals(&slices))
                }
                Inner::F64(o) => {
                    let held = grads
                        .iter()
                        .map(|g| typed::<f64>(g, "float64"))
                        .collect::<PyResult<Vec<_>>>()?;
                    let slices = held
                        .iter()
                        .map(|h| h.as_slice())
                        .collect::<Result<Vec<_>, _>>()?;
                    py.detach(|| o.local_totals(&slices))
                }
            };
            Ok((t.norm_sq, t.nonfinite, t.numel))
        })
    }

    /// The float32 master copy of tensor `tensor`'s bfloat16 parameters (`master_weights=true`,
    /// after the first step), or None.
    fn master<'py>(&self, py: Python<'py>, tensor: usize) -> Option<Bound<'py, PyArrayDyn<f32>>> {
        match &self.inner {
            Inner::F32(o) => o
                .master(tensor)
                .map(|m| numpy::PyArray1::from_slice(py, m).to_dyn().clone()),
            Inner::F64(_) => None,
        }
    }

    /// Applied steps.
    #[getter]
    fn steps(&self) -> u64 {
        with_opt!(&self.inner, o => o.steps())
    }

    /// Steps skipped for a non-finite gradient (with `skip_nonfinite=true`).
    #[getter]
    fn skipped(&self) -> u64 {
        with_opt!(&self.inner, o => o.skipped())
    }

    /// The spec, as text (the rule and every key that differs from its default).
    #[getter]
    fn spec(&self) -> String {
        with_opt!(&self.inner, o => o.spec().to_string())
    }

    /// The parameter groups, as text.
    #[getter]
    fn groups(&self) -> Vec<String> {
        with_opt!(&self.inner, o => o.groups().iter().map(ToString::to_string).collect())
    }

    /// `"float32"` or `"float64"`: the dtype of the state (set by the first step).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().numpy_name()
    }

    /// The learning rate of the next step (group 0).
    #[getter]
    fn lr(&self) -> f64 {
        with_opt!(&self.inner, o => o.current_lr())
    }

    #[setter]
    fn set_lr(&mut self, lr: f64) -> PyResult<()> {
        guarded("set_lr", || {
            with_opt!(&mut self.inner, o => o.set_lr(lr)).map_err(lib_err)
        })
    }

    /// The learning-rate schedule in the library's grammar (`"seq[warmup:100;cosine:900]@100"`,
    /// lengths in steps); settable. Its position is the optimizer's step count.
    #[getter]
    fn schedule(&self) -> String {
        with_opt!(&self.inner, o => o.schedule().to_string())
    }

    #[setter]
    fn set_schedule(&mut self, text: &str) -> PyResult<()> {
        guarded("schedule", || {
            let schedule: sgdlab::optim::Schedule = text.parse().map_err(lib_err)?;
            with_opt!(&mut self.inner, o => o.set_schedule(schedule.clone())).map_err(lib_err)
        })
    }

    /// Sets a key of the spec (`opt.set("weight_decay", 0.1)`), keeping the state.
    fn set(&mut self, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded("set", || {
            let text = value_text(value)?;
            with_opt!(&mut self.inner, o => o.set(key, text)).map_err(lib_err)
        })
    }

    /// Sets a key for parameter group `group` only (0: the optimizer's own spec).
    fn set_group(&mut self, group: usize, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded("set_group", || {
            let text = value_text(value)?;
            with_opt!(&mut self.inner, o => o.set_group(group, key, text)).map_err(lib_err)
        })
    }

    /// Sets several keys of parameter group `group` at once (`{"lr": 0.1, "nesterov": True}`):
    /// the combination is validated, not each key alone; on error nothing changes.
    fn set_group_keys(&mut self, group: usize, keys: &Bound<'_, PyDict>) -> PyResult<()> {
        guarded("set_group_keys", || {
            let mut pairs = Vec::with_capacity(keys.len());
            for (k, v) in keys.iter() {
                let key: String = k
                    .extract()
                    .map_err(|_| PyTypeError::new_err("hyper-parameter names must be str"))?;
                pairs.push((key, value_text(&v)?));
            }
            let refs: Vec<(&str, String)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            with_opt!(&mut self.inner, o => o.set_group_keys(group, &refs)).map_err(lib_err)
        })
    }

    /// Names and shapes of the tensors, fixed by the first step (`None` before).
    #[getter]
    fn layout(&self) -> Option<Vec<(String, Vec<usize>)>> {
        with_opt!(&self.inner, o => o.layout().map(<[_]>::to_vec))
    }

    /// The index of the parameter group of tensor `tensor` (0: the optimizer's own spec).
    fn group_of(&self, tensor: usize) -> Option<usize> {
        with_opt!(&self.inner, o => o.group_of(tensor))
    }

    /// The state buffer names of tensor `tensor`'s rule (`exp_avg`, ...).
    fn slot_names(&self, tensor: usize) -> Vec<&'static str> {
        with_opt!(&self.inner, o => o.slot_names_of(tensor).to_vec())
    }

    /// A copy of state buffer `slot` of tensor `tensor`, shaped like the tensor (`None` if the
    /// tensor or slot does not exist, e.g. before the first step).
    fn state<'py>(
        &self,
        py: Python<'py>,
        slot: &str,
        tensor: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        guarded("state", || {
            with_opt!(&self.inner, o => {
                // The buffer's own shape (SOAP's statistics are d×d), the tensor's otherwise.
                let shape = o.layout().and_then(|l| l.get(tensor)).map(|(_, s)| {
                    match o.slot_names_of(tensor).iter().position(|&n| n == slot) {
                        Some(k) => o.spec_of(tensor).rule.slot_shape(k, s),
                        None => s.clone(),
                    }
                });
                // bfloat16 state (state_dtype=bf16) is widened, exactly, to the parameters' type.
                let widened;
                let data = match o.state(slot, tensor) {
                    Some(data) => Some(data),
                    None => {
                        // 8-bit state (state_dtype=q8) is dequantized: c[q]·a, an f32.
                        widened = o
                            .state_bf16(slot, tensor)
                            .map(|b| b.iter().map(|&x| Real::from_bf16(x)).collect::<Vec<_>>())
                            .or_else(|| {
                                o.state_q8(slot, tensor)?;
                                let values = o.state_values(slot, tensor)?;
                                Some(values.into_iter().map(Real::from_f64).collect())
                            });
                        widened.as_deref()
                    }
                };
                match (data, shape) {
                    (Some(data), Some(shape)) => Ok(Some(to_array(py, data, &shape)?)),
                    _ => Ok(None),
                }
            })
        })
    }

    /// The per-tensor scalars of tensor `tensor` (NAdam's `mu_product`, Madam's `max`,
    /// Schedule-Free's `lr_max`, `weight_sum`, `ckp1`; empty for the other rules), or `None`
    /// before the first step.
    fn tensor_scalars(&self, tensor: usize) -> Option<Vec<f64>> {
        with_opt!(&self.inner, o => o.tensor_scalars(tensor).map(<[f64]>::to_vec))
    }

    /// A copy of the evaluation point of tensor `tensor`: Schedule-Free's averaged iterate x
    /// (`None` for rules without one, or before the first step).
    fn eval_point<'py>(
        &self,
        py: Python<'py>,
        tensor: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        guarded("eval_point", || {
            with_opt!(&self.inner, o => {
                let shape = o.layout().and_then(|l| l.get(tensor)).map(|(_, s)| s.clone());
                match (o.eval_point(tensor), shape) {
                    (Some(data), Some(shape)) => Ok(Some(to_array(py, data, &shape)?)),
                    _ => Ok(None),
                }
            })
        })
    }

    /// Whether the parameters hold the evaluation point (after `eval_mode`).
    #[getter]
    fn in_eval_mode(&self) -> bool {
        with_opt!(&self.inner, o => o.in_eval_mode())
    }

    /// Swaps the parameters (in place) to the evaluation point (Schedule-Free's x); a no-op
    /// for rules without one. `train_mode` swaps back, bit for bit.
    #[pyo3(signature = (params, *, names = None))]
    fn eval_mode(&mut self, params: &Bound<'_, PyAny>, names: Option<Vec<String>>) -> PyResult<()> {
        guarded("eval_mode", || self.swap(params, names, true))
    }

    /// Swaps the parameters back to the training point after `eval_mode`.
    #[pyo3(signature = (params, *, names = None))]
    fn train_mode(
        &mut self,
        params: &Bound<'_, PyAny>,
        names: Option<Vec<String>>,
    ) -> PyResult<()> {
        guarded("train_mode", || self.swap(params, names, false))
    }

    /// The whole state: `{"metadata": {str: str}, "buffers": {"slot/tensor": ndarray}}` (copies).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guarded(
            "state_dict",
            || with_opt!(&self.inner, o => state_dict_py(py, o)),
        )
    }

    /// Replaces the state by a `state_dict()` (every field checked; on error nothing changes).
    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded("load_state_dict", || {
            let state = state.cast::<PyDict>().map_err(|_| {
                PyTypeError::new_err("a state dict is a dict with `metadata` and `buffers`")
            })?;
            let get = |key: &str| {
                state
                    .get_item(key)?
                    .ok_or_else(|| PyValueError::new_err(format!("the state dict has no `{key}`")))
            };
            let metadata: BTreeMap<String, String> = get("metadata")?.extract().map_err(|_| {
                PyTypeError::new_err("the state dict's metadata must map str to str")
            })?;
            let buffers = get("buffers")?;
            let buffers = buffers
                .cast::<PyDict>()
                .map_err(|_| PyTypeError::new_err("the state dict's buffers must be a dict"))?;
            self.inner = match metadata.get("dtype").map(String::as_str) {
                Some("f32") => Inner::F32(state_dict_from_py(metadata, buffers)?),
                Some("f64") => Inner::F64(state_dict_from_py(metadata, buffers)?),
                other => {
                    return Err(SgdlabError::new_err(format!(
                        "the state dict's dtype is {other:?}, not \"f32\" or \"f64\""
                    )));
                }
            };
            Ok(())
        })
    }

    /// The state as checkpoint bytes (safetensors), as `save` writes them.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        guarded("to_bytes", || {
            let bytes = with_opt!(&self.inner, o => o.to_bytes()).map_err(lib_err)?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// An optimizer from `to_bytes()`'s bytes.
    #[staticmethod]
    fn from_bytes(bytes: &[u8]) -> PyResult<Self> {
        guarded("from_bytes", || {
            Ok(Self {
                inner: Inner::from_bytes(bytes).map_err(lib_err)?,
            })
        })
    }

    /// Saves the state to `path` atomically (a checkpoint file, as the CLI writes).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        guarded("save", || {
            let inner = &self.inner;
            py.detach(|| with_opt!(inner, o => o.save(&path)))
                .map_err(lib_err)
        })
    }

    /// Loads an optimizer saved by `save` (or by `sgdlab train`'s checkpoints).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        guarded("load", || {
            let bytes = py
                .detach(|| {
                    sgdlab::io::read_safetensors_file(&path, u64::MAX, "an optimizer-state file")
                })
                .map_err(|e| {
                    // Bytes that are there but wrong (truncated, corrupt) are sgdlab's finding;
                    // a file that cannot be opened or read is the system's (FileNotFoundError).
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        SgdlabError::new_err(format!("{}: {e}", path.display()))
                    } else {
                        PyErr::from(std::io::Error::new(
                            e.kind(),
                            format!("cannot read {}: {e}", path.display()),
                        ))
                    }
                })?;
            let inner = py
                .detach(|| Inner::from_bytes(&bytes))
                .map_err(|e| SgdlabError::new_err(format!("{}: {e}", path.display())))?;
            Ok(Self { inner })
        })
    }

    /// Pickling (multiprocessing, Ray): the state travels as checkpoint bytes.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        guarded("__reduce__", || {
            let py = slf.py();
            let bytes = slf.borrow().to_bytes(py)?;
            let ctor = py.get_type::<PyOptimizer>().getattr("from_bytes")?;
            PyTuple::new(py, [ctor.into_any(), PyTuple::new(py, [bytes])?.into_any()])
        })
    }

    fn __repr__(&self) -> String {
        with_opt!(&self.inner, o => format!(
            "sgdlab.Optimizer({:?}{}) [{} steps, {}]",
            o.spec().to_string(),
            if o.groups().is_empty() {
                String::new()
            } else {
                format!(", groups={:?}", o.groups().iter().map(ToString::to_string).collect::<Vec<_>>())
            },
            o.steps(),
            self.inner.dtype().numpy_name()
        ))
    }

    fn __copy__(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        self.__copy__()
    }
}

/// The library's totals from the Python tuple `(norm_sq, nonfinite, numel)`.
fn totals_of((norm_sq, nonfinite, numel): (f64, u64, u64)) -> Totals {
    Totals {
        norm_sq,
        nonfinite,
        numel,
    }
}

/// A read-only borrow of `array` as a C-contiguous array of `T`.
fn typed<'py, T: numpy::Element>(
    array: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<numpy::PyReadonlyArrayDyn<'py, T>> {
    if !is_array_of::<T>(array) {
        return Err(PyTypeError::new_err(format!(
            "the gradients of this optimizer's step are C-contiguous {name} arrays"
        )));
    }
    Ok(array.cast::<PyArrayDyn<T>>()?.try_readonly()?)
}

impl PyOptimizer {
    fn swap(
        &mut self,
        params: &Bound<'_, PyAny>,
        names: Option<Vec<String>>,
        to_eval: bool,
    ) -> PyResult<()> {
        let (names, ps) = if let Ok(d) = params.cast::<PyDict>() {
            let mut n = Vec::new();
            let mut p = Vec::new();
            for (k, v) in d.iter() {
                n.push(k.extract::<String>()?);
                p.push(v);
            }
            (n, p)
        } else {
            let p: Vec<Bound<'_, PyAny>> = params.try_iter()?.collect::<PyResult<_>>()?;
            let n = match names {
                Some(n) => n,
                None => (0..p.len()).map(|i| i.to_string()).collect(),
            };
            (n, p)
        };
        match &mut self.inner {
            Inner::F32(o) => swap_typed(o, names, &ps, to_eval),
            Inner::F64(o) => swap_typed(o, names, &ps, to_eval),
        }
    }
}
