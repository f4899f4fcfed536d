//! State dicts between the library and Python: `{"metadata": {...}, "buffers": {...}}`
//! with numpy arrays, copied both ways.

use crate::arrays::checked_array;
use crate::inner::Dtype;
use crate::lib_err;

use std::collections::BTreeMap;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sgdlab::Real;
use sgdlab::optim::{Optimizer, StateDict};

pub(crate) fn state_dict_py<'py, T: Real + numpy::Element>(
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

pub(crate) fn state_dict_from_py<T: Real + numpy::Element>(
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

pub(crate) fn to_array<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    data: &[T],
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(numpy::PyArray1::from_slice(py, data)
        .reshape(shape.to_vec())?
        .into_any())
}
