//! Small dense linear algebra for the lab (systems of a few hundred unknowns at most).
//!
//! Hand-written Gaussian elimination rather than a linear-algebra crate: the lab solves only
//! small dense systems (normal equations, Newton steps), and a dependency such as `faer` or
//! `nalgebra` would add minutes to a release build on a small machine for one 30-line routine.

/// Solves Ax = b in place by Gaussian elimination with partial pivoting: `a` is `n × n`
/// row-major (destroyed), `b` becomes x. Returns `None` when A is singular to working
/// precision (a pivot below 10⁻¹³ max |A|).
pub fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Option<()> {
    debug_assert_eq!(a.len(), n * n);
    debug_assert_eq!(b.len(), n);
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return None;
    }
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() <= 1e-13 * scale {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(pivot * n + k, col * n + k);
            }
            b.swap(pivot, col);
        }
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            if f != 0.0 {
                for k in col..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
                b[row] -= f * b[col];
            }
        }
    }
    for col in (0..n).rev() {
        let s: f64 = (col + 1..n).map(|k| a[col * n + k] * b[k]).sum();
        b[col] = (b[col] - s) / a[col * n + col];
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_system() {
        let mut a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0];
        let mut b = vec![5.0, 3.0, 6.0];
        solve(&mut a, &mut b, 3).unwrap();
        // x = (1, 2, 1)... check by substitution
        let x = b;
        assert!((2.0 * x[1] + x[2] - 5.0).abs() < 1e-12);
        assert!((x[0] + x[1] - 3.0).abs() < 1e-12);
        assert!((3.0 * x[0] + x[2] - 6.0).abs() < 1e-12);
    }

    #[test]
    fn singular_is_none() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        let mut b = vec![1.0, 2.0];
        assert!(solve(&mut a, &mut b, 2).is_none());
    }
}
