//! What a step checks before it changes anything: the parameter groups match, the layout is
//! the first step's, names are unique, shapes agree, and norms fit `f64`.

use crate::{Error, GradRef, MAX_TENSORS, Optimizer, ParamMut, Real, Result, error::check_len};

impl<T: Real> Optimizer<T> {
    /// The group of each tensor, by name; errors if a group matches no tensor.
    pub(crate) fn assign_groups(&self, params: &[ParamMut<'_, T>]) -> Result<Vec<usize>> {
        let groups: Vec<usize> = params
            .iter()
            .map(|p| {
                self.groups
                    .iter()
                    .position(|g| g.matches(&p.name))
                    .map_or(0, |k| k + 1)
            })
            .collect();
        for (p, &group) in params.iter().zip(&groups) {
            let spec = self.group_spec(group).unwrap_or(&self.spec);
            spec.rule.check_shape(&p.name, &p.shape)?;
        }
        for (k, g) in self.groups.iter().enumerate() {
            if !groups.contains(&(k + 1)) {
                return Err(Error::invalid(
                    "parameter group",
                    g,
                    format!(
                        "matches no parameter tensor (names: {}); check its patterns",
                        names(params.iter().map(|p| &*p.name))
                    ),
                ));
            }
        }
        Ok(groups)
    }

    pub(crate) fn check_layout(
        &self,
        params: &[ParamMut<'_, T>],
        grads: &[GradRef<'_, T>],
    ) -> Result<()> {
        check_len(
            "gradient tensors (one per parameter tensor)",
            params.len(),
            grads.len(),
        )?;
        for (p, g) in params.iter().zip(grads) {
            if p.name != g.name {
                return Err(Error::NameMismatch {
                    what: "gradients passed with the parameters, in order".to_string(),
                    expected: p.name.to_string(),
                    got: g.name.to_string(),
                });
            }
            if p.shape != g.shape {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "gradient of {} is {:?}, the parameter {:?}",
                        &*p.name, g.shape, p.shape
                    ),
                    expected: p.data.len(),
                    got: g.data.len(),
                });
            }
        }
        self.check_params(params)
    }

    /// Checks `params` against the names and shapes of the first step (if any); before the
    /// first step, that their names are distinct and not too many.
    pub(crate) fn check_params(&self, params: &[ParamMut<'_, T>]) -> Result<()> {
        if self.layout.is_none() {
            if params.len() > MAX_TENSORS {
                return Err(Error::invalid(
                    "parameter tensors",
                    params.len(),
                    format!("one optimizer steps at most {MAX_TENSORS}"),
                ));
            }
            check_unique_names("parameter name", params.iter().map(|p| &*p.name))?;
        }
        if let Some(layout) = &self.layout {
            if layout.len() != params.len() {
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "parameter tensors: the optimizer's state is for {} tensors ({}), this \
                         step passes {}",
                        layout.len(),
                        names(layout.iter().map(|(n, _)| n.as_str())),
                        params.len()
                    ),
                    expected: layout.len(),
                    got: params.len(),
                });
            }
            for ((name, shape), p) in layout.iter().zip(params) {
                if name != &*p.name {
                    return Err(Error::NameMismatch {
                        what: "parameters, in the order of the optimizer's first step".to_string(),
                        expected: name.clone(),
                        got: p.name.to_string(),
                    });
                }
                if **shape != *p.shape {
                    return Err(Error::ShapeMismatch {
                        what: format!(
                            "parameter {} {:?}: the optimizer's state is for {} {:?}",
                            &*p.name, p.shape, name, shape
                        ),
                        expected: shape.iter().product(),
                        got: p.data.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The error of a step whose finite gradients have a squared norm beyond `f64` (elements of
/// magnitude about 10¹⁵⁴ or more): clipping, `normsgd` and Muon would divide by an
/// infinite norm and step by zero. Names the largest element.
pub(crate) fn norm_overflow<'a, T: Real + 'a>(
    grads: impl Iterator<Item = (&'a str, &'a [T])>,
) -> Error {
    let mut largest = (String::new(), 0usize, 0.0f64);
    for (name, data) in grads {
        for (i, x) in data.iter().enumerate() {
            let a = x.as_f64().abs();
            if a > largest.2 {
                largest = (name.to_string(), i, a);
            }
        }
    }
    Error::Overflow {
        what: "the squared 2-norm of the gradients".to_string(),
        reason: format!(
            "finite elements whose squares sum past {:e} (the largest, |{:e}| at index {} of \
             `{}`); clipping, normsgd and Muon would divide by an infinite norm and step by zero: \
             scale the loss down",
            f64::MAX,
            largest.2,
            largest.1,
            largest.0
        ),
    }
}

/// Refuses tensor names that occur twice: state, checkpoints and parameter groups are keyed
/// by name.
pub(crate) fn check_unique_names<'a>(
    what: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(Error::invalid(
                what,
                format!("`{name}`"),
                "occurs twice: every tensor needs its own name",
            ));
        }
    }
    Ok(())
}

/// Up to five names, quoted: `` `a`, `b`, ... ``.
pub(crate) fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.collect();
    let mut s = all
        .iter()
        .take(5)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > 5 {
        s.push_str(", ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StepInfo, Tensor};

    /// Error messages list up to five tensor names, then an ellipsis.
    #[test]
    fn names_lists_up_to_five() {
        let list = |k: usize| names(["a", "b", "c", "d", "e", "f"].into_iter().take(k));
        assert_eq!(list(0), "");
        assert_eq!(list(2), "`a`, `b`");
        assert_eq!(list(5), "`a`, `b`, `c`, `d`, `e`");
        assert_eq!(list(6), "`a`, `b`, `c`, `d`, `e`, ...");
        let mut opt = Optimizer::from_spec("sgd").unwrap();
        let mut p = vec![
            Tensor::vector("w", vec![1.0]),
            Tensor::vector("b", vec![1.0]),
        ];
        let g = p.clone();
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let err = opt
            .step(&mut p[..1], &g[..1], &StepInfo::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 tensors (`w`, `b`), this step passes 1"),
            "{err}"
        );
    }
}
