//! The arrays of a step, borrowed from Python: checked (type, dtype, contiguity, shapes,
//! names), never overlapping where one is written, then lent to the library as views with
//! the GIL released.

use crate::inner::Dtype;

use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sgdlab::Real;
use sgdlab::optim::{GradRef, Optimizer, ParamMut, StepOutcome};

use crate::{SgdlabError, lib_err};

/// The memory of one array of a step: its address range, whether it is written, and what it
/// is (for the error).
pub(crate) struct Span {
    start: usize,
    end: usize,
    written: bool,
    what: String,
}

/// Refuses arrays whose memory overlaps where one of them is written (a parameter with its
/// own or another tensor's gradient, two parameters): checked by address ranges, whatever
/// Python object owns the memory (two `np.frombuffer` views of one buffer, ctypes, a torch
/// tensor and its `.detach()`), since numpy's own check sees only a common base object.
pub(crate) fn check_no_overlap(mut spans: Vec<Span>) -> PyResult<()> {
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
pub(crate) fn span_of(array: &Bound<'_, PyUntypedArray>) -> (usize, usize) {
    // SAFETY: `as_array_ptr` is the live array object; its `data` is the address of its
    // first element, and a C-contiguous array's elements are `nbytes` consecutive bytes.
    let start = unsafe { (*array.as_array_ptr()).fields.data } as usize;
    let nbytes = array.len() * array.dtype().itemsize();
    (start, start.saturating_add(nbytes))
}

/// The arrays of one step, borrowed from Python and checked: parameters of element type `P`,
/// gradients of `G` (the same but for bfloat16 parameters, whose gradients may be f32).
pub(crate) struct Borrowed<'py, P: numpy::Element, G: numpy::Element = P> {
    names: Vec<String>,
    params: Vec<numpy::PyReadwriteArrayDyn<'py, P>>,
    grads: Vec<numpy::PyReadonlyArrayDyn<'py, G>>,
}

/// The names of a step's tensors, and the parameter and gradient objects in order: from two
/// sequences (names `"0"`, `"1"`, ... unless `names` is given) or two dicts with the same keys.
#[allow(clippy::type_complexity)]
pub(crate) fn collect_arrays<'py>(
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
pub(crate) fn checked_array<'a, 'py>(
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

pub(crate) fn borrow_all<'py, P: numpy::Element, G: numpy::Element>(
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
pub(crate) fn report_dict<'py>(
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
pub(crate) fn step_on_views<'py, P: numpy::Element, G: numpy::Element + Sync>(
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
pub(crate) fn is_array_of<T: numpy::Element>(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast::<PyUntypedArray>()
        .is_ok_and(|a| a.dtype().is_equiv_to(&numpy::dtype::<T>(obj.py())) && a.is_c_contiguous())
}

/// The names and arrays of `eval_mode`/`train_mode` (a list, a dict, or with `names=`).
pub(crate) fn swap_typed<'py, T: Real + numpy::Element>(
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
