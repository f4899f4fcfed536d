//! Tensors: [`Tensor`], which owns its elements, and the views a step runs over,
//! [`ParamMut`] and [`GradRef`], which borrow the caller's.

use std::borrow::Cow;

use crate::error::check_len;
use crate::{Real, Result};

/// A named, shaped, contiguous tensor of parameters or gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<T>,
}

impl<T: Real> Tensor<T> {
    /// A tensor of the given shape; errors unless the shape's product is `data.len()`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let name = name.into();
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        check_len(
            &format!("tensor {name} of shape {shape:?}"),
            numel.unwrap_or(usize::MAX),
            data.len(),
        )?;
        Ok(Self { name, shape, data })
    }

    /// A one-dimensional tensor.
    pub fn vector(name: impl Into<String>, data: Vec<T>) -> Self {
        Self {
            name: name.into(),
            shape: vec![data.len()],
            data,
        }
    }

    /// A tensor of zeros shaped like `self`, with the same name.
    pub fn zeros_like(&self) -> Self {
        Self {
            name: self.name.clone(),
            shape: self.shape.clone(),
            data: vec![T::zero(); self.data.len()],
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl<'a, T: Real> From<&'a mut Tensor<T>> for ParamMut<'a, T> {
    fn from(t: &'a mut Tensor<T>) -> Self {
        ParamMut {
            name: Cow::Borrowed(&t.name),
            shape: Cow::Borrowed(&t.shape),
            data: &mut t.data,
        }
    }
}

impl<'a, T: Real> From<&'a Tensor<T>> for GradRef<'a, T> {
    fn from(t: &'a Tensor<T>) -> Self {
        GradRef {
            name: Cow::Borrowed(&t.name),
            shape: Cow::Borrowed(&t.shape),
            data: &t.data,
        }
    }
}

/// A parameter tensor that the caller owns, borrowed for one step: a name, a shape and the
/// elements (row-major), updated in place with no copy. `ParamMut<'_, u16>` holds bfloat16
/// parameters (their bits) for [`Optimizer::step_bf16`](crate::Optimizer::step_bf16).
///
/// ```
/// use sgdlab_optim::{GradRef, Optimizer, ParamMut, StepInfo};
///
/// let (mut w, mut b) = (vec![1.0f32, 2.0], vec![0.5f32]);
/// let (gw, gb) = (vec![0.1f32, -0.1], vec![1.0f32]);
/// let mut opt = Optimizer::<f32>::from_spec("sgd:lr=0.5")?;
/// opt.step_views(
///     &mut [ParamMut::vector("w", &mut w), ParamMut::vector("b", &mut b)],
///     &[GradRef::vector("w", &gw), GradRef::vector("b", &gb)],
///     &StepInfo::default(),
/// )?;
/// assert_eq!((w, b), (vec![0.95, 2.05], vec![0.0]));
/// # Ok::<(), sgdlab_optim::Error>(())
/// ```
#[derive(Debug)]
pub struct ParamMut<'a, T> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) shape: Cow<'a, [usize]>,
    pub(crate) data: &'a mut [T],
}

impl<'a, T> ParamMut<'a, T> {
    /// A view of `data` as a tensor of `shape`; errors unless the shape's product is
    /// `data.len()`.
    ///
    /// The name and the shape are borrowed or owned, as the caller prefers: `"w"`, a
    /// `String`, `&[3, 4]`, `&shape[..]` or a `Vec<usize>` built at run time (so that a
    /// helper can return views of shapes it computes).
    pub fn new(
        name: impl Into<Cow<'a, str>>,
        shape: impl Into<Cow<'a, [usize]>>,
        data: &'a mut [T],
    ) -> Result<Self> {
        let (name, shape) = (name.into(), shape.into());
        check_shape(&name, &shape, data.len())?;
        Ok(Self { name, shape, data })
    }

    /// A view of `data` as a one-dimensional tensor (the name borrowed or owned).
    pub fn vector(name: impl Into<Cow<'a, str>>, data: &'a mut [T]) -> Self {
        Self {
            name: name.into(),
            shape: Cow::Owned(vec![data.len()]),
            data,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &[T] {
        self.data
    }
}

/// A gradient tensor that the caller owns, borrowed (read-only) for one step
/// (`GradRef<'_, u16>`: bfloat16 bits, for [`Optimizer::step_bf16`](crate::Optimizer::step_bf16)).
#[derive(Clone, Debug)]
pub struct GradRef<'a, T> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) shape: Cow<'a, [usize]>,
    pub(crate) data: &'a [T],
}

impl<'a, T> GradRef<'a, T> {
    /// A view of `data` as a tensor of `shape`; errors unless the shape's product is
    /// `data.len()`.
    ///
    /// The name and the shape are borrowed or owned, as the caller prefers: `"w"`, a
    /// `String`, `&[3, 4]`, `&shape[..]` or a `Vec<usize>` built at run time (so that a
    /// helper can return views of shapes it computes).
    pub fn new(
        name: impl Into<Cow<'a, str>>,
        shape: impl Into<Cow<'a, [usize]>>,
        data: &'a [T],
    ) -> Result<Self> {
        let (name, shape) = (name.into(), shape.into());
        check_shape(&name, &shape, data.len())?;
        Ok(Self { name, shape, data })
    }

    /// A view of `data` as a one-dimensional tensor (the name borrowed or owned).
    pub fn vector(name: impl Into<Cow<'a, str>>, data: &'a [T]) -> Self {
        Self {
            name: name.into(),
            shape: Cow::Owned(vec![data.len()]),
            data,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &[T] {
        self.data
    }
}

pub(crate) fn check_shape(name: &str, shape: &[usize], len: usize) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    check_len(
        &format!("tensor {name} of shape {shape:?}"),
        numel.unwrap_or(usize::MAX),
        len,
    )
}
