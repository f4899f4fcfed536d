//! The library's optimizer of either element type, fixed by the first step or a loaded
//! state.

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use sgdlab::optim::{GroupSpec, Optimizer, OptimizerSpec};

/// An optimizer of either element type. The type is fixed by the first step (or a loaded
/// state); a fresh optimizer is rebuilt for the other type when the first step's arrays
/// need it.
#[derive(Clone)]
pub(crate) enum Inner {
    F32(Optimizer<f32>),
    F64(Optimizer<f64>),
}

/// `$body` with `$o` bound to the optimizer of either type.
macro_rules! with_opt {
    ($inner:expr, $o:ident => $body:expr) => {
        match $inner {
            $crate::inner::Inner::F32($o) => $body,
            $crate::inner::Inner::F64($o) => $body,
        }
    };
}
pub(crate) use with_opt;

/// The element types the kernels step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub(crate) fn of(array: &Bound<'_, PyUntypedArray>) -> Option<Self> {
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

    pub(crate) fn numpy_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

impl Inner {
    pub(crate) fn dtype(&self) -> Dtype {
        match self {
            Inner::F32(_) => Dtype::F32,
            Inner::F64(_) => Dtype::F64,
        }
    }

    pub(crate) fn is_fresh(&self) -> bool {
        with_opt!(self, o => o.layout().is_none())
    }

    pub(crate) fn spec_and_groups(&self) -> (OptimizerSpec, Vec<GroupSpec>) {
        with_opt!(self, o => (o.spec().clone(), o.groups().to_vec()))
    }

    /// A fresh optimizer of the same spec and groups for `dtype`.
    pub(crate) fn rebuilt(&self, dtype: Dtype) -> sgdlab::Result<Self> {
        let (spec, groups) = self.spec_and_groups();
        let schedule = with_opt!(self, o => o.schedule().clone());
        Ok(match dtype {
            Dtype::F32 => {
                let mut o = Optimizer::with_groups(spec, groups)?;
                o.set_schedule(schedule)?;
                Inner::F32(o)
            }
            Dtype::F64 => {
                let mut o = Optimizer::with_groups(spec, groups)?;
                o.set_schedule(schedule)?;
                Inner::F64(o)
            }
        })
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> sgdlab::Result<Self> {
        Ok(match sgdlab::optim::stored_dtype(bytes)? {
            "f32" => Inner::F32(Optimizer::from_bytes(bytes)?),
            _ => Inner::F64(Optimizer::from_bytes(bytes)?),
        })
    }
}
