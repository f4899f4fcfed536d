//! `sgdlab._core`: the Python extension module of the `sgdlab` package.
//!
//! It exposes the Rust library's [`Optimizer`] over numpy arrays (updated in place, zero-copy,
//! with the GIL released during the step), its state (state dicts, checkpoint files, pickling),
//! and the lab (`verify`, `audit`) as JSON text that the Python layer parses. The Python
//! package (`python/sgdlab`) adds `sgdlab.torch` and the documented signatures on top.
//!
//! Every error of the library arrives in Python as `sgdlab.SgdlabError` (a `ValueError`) with
//! the library's message; wrong argument types raise `TypeError`, unreadable files `OSError`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use sgdlab::Real;
use sgdlab::optim::{
    GradRef, GroupSpec, Optimizer, OptimizerSpec, ParamMut, StateDict, StepInfo, StepOutcome,
};

pyo3::create_exception!(
    sgdlab,
    SgdlabError,
    PyValueError,
    "An error reported by sgdlab's Rust core (bad spec, invalid hyper-parameter, non-finite \
     gradient, shape mismatch, corrupt checkpoint, ...), with the library's message."
);

/// The library's error as a Python exception.
fn lib_err(e: sgdlab::Error) -> PyErr {
    SgdlabError::new_err(e.to_string())
}

/// Runs an entry point's body, turning a panic (a bug: every input sgdlab can refuse is
/// refused with an error) into `SgdlabError`, so that no Python caller ever sees pyo3's
/// `PanicException` (a `BaseException`, which `except Exception` does not catch).
fn guarded<R>(what: &str, body: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
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

/// The memory of one array of a step: its address range, whether it is written, and what it
/// is (for the error).
struct Span {
    start: usize,
    end: usize,
    written: bool,
    what: String,
}

/// Refuses arrays whose memory overlaps where one of them is written (a parameter with its
/// own or another tensor's gradient, two parameters): checked by address ranges, whatever
/// Python object owns the memory (two `np.frombuffer` views of one buffer, ctypes, a torch
/// tensor and its `.detach()`), since numpy's own check sees only a common base object.
fn check_no_overlap(mut spans: Vec<Span>) -> PyResult<()> {
    spans.retain(|s| s.end > s.start);
    spans.sort_by_key(|s| s.start);
    // Sweep: the span reaching furthest so far, and the written one reaching furthest.
    let mut furthest: Option<usize> = None;
    let mut furthest_written: Option<usize> = None;
    for (i, s) in spans.iter().enumerate() {
        let clash = |j: Option<usize>| j.filter(|&j| spans[j].end > s.start);
        let other = if s.written {
            clash(furthest)
        } else {
            clash(furthest_written)
        };
        if let Some(j) = other {
            return Err(SgdlabError::new_err(format!(
                "{} and {} share memory: the step writes the parameters in place, so an \
                 overlapping array would be read while it is being changed; pass a copy",
                spans[j].what, s.what
            )));
        }
        if furthest.is_none_or(|j| s.end > spans[j].end) {
            furthest = Some(i);
        }
        if s.written && furthest_written.is_none_or(|j| s.end > spans[j].end) {
            furthest_written = Some(i);
        }
    }
    Ok(())
}

/// The address range of a C-contiguous array.
fn span_of(array: &Bound<'_, PyUntypedArray>) -> (usize, usize) {
    // SAFETY: `as_array_ptr` is the live array object; its `data` is the address of its
    // first element, and a C-contiguous array's elements are `nbytes` consecutive bytes.
    let start = unsafe { (*array.as_array_ptr()).fields.data } as usize;
    let nbytes = array.len() * array.dtype().itemsize();
    (start, start.saturating_add(nbytes))
}

/// An optimizer of either element type. The type is fixed by the first step (or a loaded
/// state); a fresh optimizer is rebuilt for the other type when the first step's arrays
/// need it.
#[derive(Clone)]
enum Inner {
    F32(Optimizer<f32>),
    F64(Optimizer<f64>),
}

macro_rules! with_opt {
    ($inner:expr, $o:ident => $body:expr) => {
        match $inner {
            Inner::F32($o) => $body,
            Inner::F64($o) => $body,
        }
    };
}

/// The element types the kernels step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn of(array: &Bound<'_, PyUntypedArray>) -> Option<Self> {
        let py = array.py();
        let dt = array.dtype();
        if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
            Some(Dtype::F32)
        } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
            Some(Dtype::F64)
        } else {
            None
        }
    }

    fn numpy_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

impl Inner {
    fn dtype(&self) -> Dtype {
        match self {
            Inner::F32(_) => Dtype::F32,
            Inner::F64(_) => Dtype::F64,
        }
    }

    fn is_fresh(&self) -> bool {
        with_opt!(self, o => o.layout().is_none())
    }

    fn spec_and_groups(&self) -> (OptimizerSpec, Vec<GroupSpec>) {
        with_opt!(self, o => (o.spec().clone(), o.groups().to_vec()))
    }

    /// A fresh optimizer of the same spec and groups for `dtype`.
    fn rebuilt(&self, dtype: Dtype) -> sgdlab::Result<Self> {
        let (spec, groups) = self.spec_and_groups();
        Ok(match dtype {
            Dtype::F32 => Inner::F32(Optimizer::with_groups(spec, groups)?),
            Dtype::F64 => Inner::F64(Optimizer::with_groups(spec, groups)?),
        })
    }

    fn from_bytes(bytes: &[u8]) -> sgdlab::Result<Self> {
        Ok(match sgdlab::optim::stored_dtype(bytes)? {
            "f32" => Inner::F32(Optimizer::from_bytes(bytes)?),
            _ => Inner::F64(Optimizer::from_bytes(bytes)?),
        })
    }
}

/// An sgdlab optimizer over numpy arrays: `Optimizer(spec, groups=())`.
///
/// `spec` is any optimizer spec the command line takes (`"adamw:lr=1e-3,weight_decay=0.01"`);
/// `groups` are parameter groups in the CLI's `--group` syntax (`"*.bias:weight_decay=0"`),
/// matched against the names of the arrays stepped.
#[pyclass(module = "sgdlab._core", name = "Optimizer")]
struct PyOptimizer {
    inner: Inner,
}

/// The arrays of one step, borrowed from Python and checked: parameters of element type `P`,
/// gradients of `G` (the same but for bfloat16 parameters, whose gradients may be f32).
struct Borrowed<'py, P: numpy::Element, G: numpy::Element = P> {
    names: Vec<String>,
    params: Vec<numpy::PyReadwriteArrayDyn<'py, P>>,
    grads: Vec<numpy::PyReadonlyArrayDyn<'py, G>>,
}

/// The names of a step's tensors, and the parameter and gradient objects in order: from two
/// sequences (names `"0"`, `"1"`, ... unless `names` is given) or two dicts with the same keys.
#[allow(clippy::type_complexity)]
fn collect_arrays<'py>(
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    names: Option<Vec<String>>,
) -> PyResult<(Vec<String>, Vec<Bound<'py, PyAny>>, Vec<Bound<'py, PyAny>>)> {
    if let Ok(pd) = params.cast::<PyDict>() {
        let gd = grads
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("params is a dict: grads must be a dict too"))?;
        if names.is_some() {
            return Err(PyTypeError::new_err(
                "names= is for sequences; a dict's keys are the names",
            ));
        }
        let mut out_names = Vec::with_capacity(pd.len());
        let mut ps = Vec::with_capacity(pd.len());
        let mut gs = Vec::with_capacity(pd.len());
        for (k, v) in pd.iter() {
            let name: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("parameter names (dict keys) must be str"))?;
            let g = gd.get_item(&k)?.ok_or_else(|| {
                PyValueError::new_err(format!("grads has no entry for parameter `{name}`"))
            })?;
            out_names.push(name);
            ps.push(v);
            gs.push(g);
        }
        if gd.len() != pd.len() {
            return Err(PyValueError::new_err(format!(
                "grads has {} entries, params {}",
                gd.len(),
                pd.len()
            )));
        }
        return Ok((out_names, ps, gs));
    }
    let seq = |obj: &Bound<'py, PyAny>, what: &str| -> PyResult<Vec<Bound<'py, PyAny>>> {
        if obj.cast::<PyUntypedArray>().is_ok() {
            return Err(PyTypeError::new_err(format!(
                "{what} must be a list of arrays (one per tensor), not one array: wrap it as [array]"
            )));
        }
        obj.try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!("{what} must be a list or tuple of numpy arrays"))
            })?
            .collect()
    };
    let ps = seq(params, "params")?;
    let gs = seq(grads, "grads")?;
    if ps.len() != gs.len() {
        return Err(PyValueError::new_err(format!(
            "{} gradients for {} parameters",
            gs.len(),
            ps.len()
        )));
    }
    let names = match names {
        Some(n) if n.len() != ps.len() => {
            return Err(PyValueError::new_err(format!(
                "{} names for {} parameters",
                n.len(),
                ps.len()
            )));
        }
        Some(n) => n,
        None => (0..ps.len()).map(|i| i.to_string()).collect(),
    };
    Ok((names, ps, gs))
}

/// The array behind `obj`, checked to be a numpy array of a kernel dtype and C-contiguous.
fn checked_array<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(&'a Bound<'py, PyUntypedArray>, Dtype)> {
    let array = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "object".into());
        let hint = if ty == "Tensor" {
            " (for torch tensors use sgdlab.torch)"
        } else {
            ""
        };
        PyTypeError::new_err(format!("{what} is a {ty}, not a numpy array{hint}"))
    })?;
    let dtype = Dtype::of(array).ok_or_else(|| {
        let dt = array
            .dtype()
            .str()
            .map(|s| s.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!(
            "{what} has dtype {dt}; sgdlab steps float32 or float64 arrays (native byte order)"
        ))
    })?;
    if !array.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} is not C-contiguous (a strided view or a transpose): the step updates \
             arrays in place and never copies; pass np.ascontiguousarray(...) and keep that array"
        )));
    }
    Ok((array, dtype))
}

fn borrow_all<'py, P: numpy::Element, G: numpy::Element>(
    names: Vec<String>,
    ps: &[Bound<'py, PyAny>],
    gs: &[Bound<'py, PyAny>],
) -> PyResult<Borrowed<'py, P, G>> {
    let mut spans = Vec::with_capacity(ps.len() + gs.len());
    for (kind, objs, written) in [("parameter", ps, true), ("the gradient of", gs, false)] {
        for (name, obj) in names.iter().zip(objs) {
            let array = obj.cast::<PyUntypedArray>()?;
            let (start, end) = span_of(array);
            spans.push(Span {
                start,
                end,
                written,
                what: format!("{kind} `{name}`"),
            });
        }
    }
    check_no_overlap(spans)?;
    let mut params = Vec::with_capacity(ps.len());
    for (name, p) in names.iter().zip(ps) {
        let array = p.cast::<PyArrayDyn<P>>()?;
        let rw = array.try_readwrite().map_err(|e| {
            PyValueError::new_err(format!(
                "parameter `{name}` cannot be updated in place: {e} (read-only arrays, and \
                 one array passed twice, are refused)"
            ))
        })?;
        params.push(rw);
    }
    let mut grads = Vec::with_capacity(gs.len());
    for (name, g) in names.iter().zip(gs) {
        let array = g.cast::<PyArrayDyn<G>>()?;
        let ro = array.try_readonly().map_err(|e| {
            PyValueError::new_err(format!(
                "gradient of `{name}` cannot be read: {e} (it shares memory with a parameter)"
            ))
        })?;
        grads.push(ro);
    }
    Ok(Borrowed {
        names,
        params,
        grads,
    })
}

/// What a step did, as Python sees it.
fn report_dict<'py>(
    py: Python<'py>,
    r: &sgdlab::optim::StepReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("applied", r.outcome == StepOutcome::Applied)?;
    d.set_item("lr", r.lr)?;
    d.set_item("grad_norm", r.grad_norm)?;
    Ok(d)
}

/// Borrows a step's arrays as the library's views (parameters of `P`, gradients of `G`) and
/// runs `run` on them with the GIL released: [`Optimizer::step_views`] for float arrays,
/// [`Optimizer::step_bf16`] / [`Optimizer::step_bf16_params`] for bfloat16 parameters.
fn step_on_views<'py, P: numpy::Element, G: numpy::Element + Sync>(
    py: Python<'py>,
    mut arrays: Borrowed<'py, P, G>,
    run: impl FnOnce(
        &mut [ParamMut<'_, P>],
        &[GradRef<'_, G>],
    ) -> sgdlab::Result<sgdlab::optim::StepReport>
    + Send,
) -> PyResult<sgdlab::optim::StepReport>
where
    for<'a> ParamMut<'a, P>: Send,
{
    let shapes: Vec<Vec<usize>> = arrays.params.iter().map(|a| a.shape().to_vec()).collect();
    let gshapes: Vec<Vec<usize>> = arrays.grads.iter().map(|a| a.shape().to_vec()).collect();
    let mut pviews = Vec::with_capacity(arrays.params.len());
    for ((rw, name), shape) in arrays.params.iter_mut().zip(&arrays.names).zip(&shapes) {
        let data = rw
            .as_slice_mut()
            .map_err(|e| PyValueError::new_err(format!("parameter `{name}`: {e}")))?;
        pviews.push(ParamMut::new(name, shape, data).map_err(lib_err)?);
    }
    let mut gviews = Vec::with_capacity(arrays.grads.len());
    for ((ro, name), shape) in arrays.grads.iter().zip(&arrays.names).zip(&gshapes) {
        let data = ro
            .as_slice()
            .map_err(|e| PyValueError::new_err(format!("gradient of `{name}`: {e}")))?;
        gviews.push(GradRef::new(name, shape, data).map_err(lib_err)?);
    }
    py.detach(|| run(&mut pviews, &gviews)).map_err(lib_err)
}

/// Whether `obj` is a C-contiguous numpy array of dtype `T` (native byte order).
fn is_array_of<T: numpy::Element>(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast::<PyUntypedArray>()
        .is_ok_and(|a| a.dtype().is_equiv_to(&numpy::dtype::<T>(obj.py())) && a.is_c_contiguous())
}

/// The names and arrays of `eval_mode`/`train_mode` (a list, a dict, or with `names=`).
fn swap_typed<'py, T: Real + numpy::Element>(
    opt: &mut Optimizer<T>,
    names: Vec<String>,
    ps: &[Bound<'py, PyAny>],
    to_eval: bool,
) -> PyResult<()> {
    if names.len() != ps.len() {
        return Err(PyValueError::new_err(format!(
            "{} names for {} parameters",
            names.len(),
            ps.len()
        )));
    }
    let mut spans = Vec::with_capacity(ps.len());
    for (name, p) in names.iter().zip(ps) {
        let (array, _) = checked_array(p, &format!("parameter `{name}`"))?;
        let (start, end) = span_of(array);
        spans.push(Span {
            start,
            end,
            written: true,
            what: format!("parameter `{name}`"),
        });
    }
    check_no_overlap(spans)?;
    let mut rws = Vec::with_capacity(ps.len());
    for (name, p) in names.iter().zip(ps) {
        let (_, dt) = checked_array(p, &format!("parameter `{name}`"))?;
        if T::BYTES != if dt == Dtype::F32 { 4 } else { 8 } {
            return Err(PyTypeError::new_err(format!(
                "parameter `{name}` is {}, the optimizer's state {}",
                dt.numpy_name(),
                if T::BYTES == 4 { "float32" } else { "float64" }
            )));
        }
        let array = p.cast::<PyArrayDyn<T>>()?;
        rws.push(array.try_readwrite().map_err(|e| {
            PyValueError::new_err(format!("parameter `{name}` cannot be updated: {e}"))
        })?);
    }
    let shapes: Vec<Vec<usize>> = rws.iter().map(|a| a.shape().to_vec()).collect();
    let mut views = Vec::with_capacity(rws.len());
    for ((rw, name), shape) in rws.iter_mut().zip(&names).zip(&shapes) {
        let data = rw
            .as_slice_mut()
            .map_err(|e| PyValueError::new_err(format!("parameter `{name}`: {e}")))?;
        views.push(ParamMut::new(name, shape, data).map_err(lib_err)?);
    }
    if to_eval {
        opt.eval_mode(&mut views)
    } else {
        opt.train_mode(&mut views)
    }
    .map_err(lib_err)
}

fn state_dict_py<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    opt: &Optimizer<T>,
) -> PyResult<Bound<'py, PyDict>> {
    let sd = opt.state_dict().map_err(lib_err)?;
    let meta = PyDict::new(py);
    for (k, v) in &sd.metadata {
        meta.set_item(k, v)?;
    }
    let buffers = PyDict::new(py);
    for (name, (shape, data)) in sd.buffers {
        let array = numpy::PyArray1::from_vec(py, data).reshape(shape)?;
        buffers.set_item(name, array)?;
    }
    let out = PyDict::new(py);
    out.set_item("metadata", meta)?;
    out.set_item("buffers", buffers)?;
    Ok(out)
}

fn state_dict_from_py<T: Real + numpy::Element>(
    metadata: BTreeMap<String, String>,
    buffers: &Bound<'_, PyDict>,
) -> PyResult<Optimizer<T>> {
    let mut out = BTreeMap::new();
    for (k, v) in buffers.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("state dict buffer names must be str"))?;
        let (array, dt) = checked_array(&v, &format!("state buffer `{name}`"))?;
        if (dt == Dtype::F32) != (T::BYTES == 4) {
            return Err(PyTypeError::new_err(format!(
                "state buffer `{name}` is {}, the state dict's dtype is {}",
                dt.numpy_name(),
                if T::BYTES == 4 { "f32" } else { "f64" }
            )));
        }
        let shape = array.shape().to_vec();
        let typed = v.cast::<PyArrayDyn<T>>()?;
        let data = typed.try_readonly()?.as_slice()?.to_vec();
        out.insert(name, (shape, data));
    }
    Optimizer::from_state_dict(&StateDict {
        metadata,
        buffers: out,
    })
    .map_err(lib_err)
}

fn to_array<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    data: &[T],
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(numpy::PyArray1::from_slice(py, data)
        .reshape(shape.to_vec())?
        .into_any())
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
    #[pyo3(signature = (params, grads, loss = None, *, names = None, lr_scale = 1.0, micro_batches = 1))]
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
    #[pyo3(signature = (params, grads, loss = None, *, names = None, lr_scale = 1.0, micro_batches = 1))]
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
                let shape = o.layout().and_then(|l| l.get(tensor)).map(|(_, s)| s.clone());
                // bfloat16 state (state_dtype=bf16) is widened, exactly, to the parameters' type.
                let widened;
                let data = match o.state(slot, tensor) {
                    Some(data) => Some(data),
                    None => {
                        widened = o.state_bf16(slot, tensor).map(|b| {
                            b.iter().map(|&x| Real::from_bf16(x)).collect::<Vec<_>>()
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

/// A Python value as spec text: booleans as `true`/`false`, floats in shortest round-trip form
/// (so the Rust side reads back the same double), ints and strings as written.
fn value_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
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
fn rule_keys(name: &str) -> PyResult<Vec<String>> {
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
fn rules() -> Vec<&'static str> {
    sgdlab::optim::spec::NAMES.to_vec()
}

/// `spec` parsed and validated: `(rule name, {key: value text})` for the keys that differ from
/// the rule's defaults, plus the global keys that are set.
#[pyfunction]
fn parse_spec(spec: &str) -> PyResult<(String, Vec<(String, String)>)> {
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

/// `sgdlab verify` as JSON text (the `--json` file's contents).
#[pyfunction]
#[pyo3(signature = (problems, quick, seed))]
fn verify_json(
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
fn audit_json(
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
    m.add_function(wrap_pyfunction!(rule_keys, m)?)?;
    m.add_function(wrap_pyfunction!(rules, m)?)?;
    m.add_function(wrap_pyfunction!(parse_spec, m)?)?;
    m.add_function(wrap_pyfunction!(verify_json, m)?)?;
    m.add_function(wrap_pyfunction!(audit_json, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The keys every optimizer takes whatever its rule: the library's one table.
    let global_keys: Vec<&str> = sgdlab::optim::GLOBAL_KEYS.iter().map(|k| k.name).collect();
    m.add(
        "GLOBAL_KEYS",
        pyo3::types::PyTuple::new(m.py(), global_keys)?,
    )?;
    Ok(())
}
