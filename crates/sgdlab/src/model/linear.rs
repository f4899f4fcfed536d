//! Models linear in their parameters before the loss: points, linear, logistic and softmax
//! regression.

use super::{LossUnit, Model, class_labels, softplus};
use crate::data::Dataset;
use crate::linalg::solve;
use crate::{Error, Real, Result};

/// w·x + b with `phi = [w..., b?]`.
#[inline]
fn affine<T: Real>(phi: &[T], x: &[f64], bias: bool) -> T {
    let d = x.len();
    let dot = phi[..d]
        .iter()
        .zip(x)
        .fold(T::zero(), |s, (&w, &x)| s + w * T::from_f64(x));
    if bias { dot + phi[d] } else { dot }
}

/// Writes r·(x, 1?) into `grad`.
#[inline]
fn affine_grad<T: Real>(r: T, x: &[f64], bias: bool, grad: &mut [T]) {
    let d = x.len();
    for (g, &x) in grad[..d].iter_mut().zip(x) {
        *g = r * T::from_f64(x);
    }
    if bias {
        grad[d] = r;
    }
}

fn linear_names(d: usize, bias: bool) -> Vec<String> {
    let mut names: Vec<String> = (0..d).map(|j| format!("w{j}")).collect();
    if bias {
        names.push("b".to_string());
    }
    names
}

/// Points: ℒᵢ = ½‖Φ − xᵢ‖²; the minimiser is the mean.
#[derive(Clone, Debug)]
pub struct Points {
    data: Dataset,
}

impl Points {
    /// Points are the rows of `data` (a target column, if any, is ignored).
    pub fn new(data: Dataset) -> Self {
        Self { data }
    }

    /// The points.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The mean of the points, the exact minimiser of the mean loss.
    pub fn mean(&self) -> Vec<f64> {
        let (n, d) = (self.data.len(), self.data.dim());
        let mut mean = vec![0.0; d];
        for i in 0..n {
            for (m, x) in mean.iter_mut().zip(self.data.row(i)) {
                *m += x;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        mean
    }
}

impl<T: Real> Model<T> for Points {
    fn dim(&self) -> usize {
        self.data.dim()
    }
    fn examples(&self) -> usize {
        self.data.len()
    }
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T {
        let mut loss = T::zero();
        for ((g, &p), &x) in grad.iter_mut().zip(phi).zip(self.data.row(i)) {
            *g = p - T::from_f64(x);
            loss = loss + *g * *g;
        }
        loss * T::from_f64(0.5)
    }
    fn parameter_names(&self) -> Vec<String> {
        (0..self.data.dim()).map(|j| format!("phi{j}")).collect()
    }
}

/// Linear regression: ℒᵢ = ½(w·xᵢ + b − yᵢ)².
#[derive(Clone, Debug)]
pub struct LinReg {
    data: Dataset,
    targets: Vec<f64>,
    bias: bool,
}

impl LinReg {
    /// Linear regression on `data` (which must have targets); `bias` adds b.
    pub fn new(data: Dataset, bias: bool) -> Result<Self> {
        let targets = data
            .targets()
            .ok_or_else(|| Error::Data("linreg needs a target column".to_string()))?
            .to_vec();
        Ok(Self {
            data,
            targets,
            bias,
        })
    }

    /// The least-squares solution of the normal equations, the exact minimiser; errors when
    /// the features are collinear (no unique minimiser).
    pub fn least_squares(&self) -> Result<Vec<f64>> {
        let d = self.data.dim() + usize::from(self.bias);
        let mut a = vec![0.0; d * d];
        let mut b = vec![0.0; d];
        let mut row = vec![0.0; d];
        for i in 0..self.data.len() {
            row[..self.data.dim()].copy_from_slice(self.data.row(i));
            if self.bias {
                row[d - 1] = 1.0;
            }
            for j in 0..d {
                b[j] += row[j] * self.targets[i];
                for k in 0..d {
                    a[j * d + k] += row[j] * row[k];
                }
            }
        }
        solve(&mut a, &mut b, d).ok_or_else(|| {
            Error::Data("linreg: the features are collinear, the minimiser is not unique".into())
        })?;
        Ok(b)
    }
}

impl<T: Real> Model<T> for LinReg {
    fn dim(&self) -> usize {
        self.data.dim() + usize::from(self.bias)
    }
    fn examples(&self) -> usize {
        self.data.len()
    }
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T {
        let x = self.data.row(i);
        let r = affine(phi, x, self.bias) - T::from_f64(self.targets[i]);
        affine_grad(r, x, self.bias, grad);
        T::from_f64(0.5) * r * r
    }
    fn parameter_names(&self) -> Vec<String> {
        linear_names(self.data.dim(), self.bias)
    }
}

/// Logistic regression: ℒᵢ = log(1 + eᶻ) − yᵢz, z = w·xᵢ + b,
/// labels 0/1; gradient (σ(z) − yᵢ)(xᵢ, 1).
#[derive(Clone, Debug)]
pub struct LogReg {
    data: Dataset,
    labels: Vec<f64>,
    bias: bool,
    unit: LossUnit,
}

impl LogReg {
    /// Logistic regression on `data` with labels 0/1.
    pub fn new(data: Dataset, bias: bool, unit: LossUnit) -> Result<Self> {
        let labels = class_labels(data.targets(), 2)?
            .into_iter()
            .map(|y| y as f64)
            .collect();
        Ok(Self {
            data,
            labels,
            bias,
            unit,
        })
    }
}

impl<T: Real> Model<T> for LogReg {
    fn dim(&self) -> usize {
        self.data.dim() + usize::from(self.bias)
    }
    fn examples(&self) -> usize {
        self.data.len()
    }
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T {
        let x = self.data.row(i);
        let z = affine(phi, x, self.bias).as_f64();
        let y = self.labels[i];
        let s = self.unit.scale();
        let sigma = 1.0 / (1.0 + (-z).exp());
        affine_grad(T::from_f64(s * (sigma - y)), x, self.bias, grad);
        T::from_f64(s * (softplus(z) - y * z))
    }
    fn parameter_names(&self) -> Vec<String> {
        linear_names(self.data.dim(), self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_csv;
    use crate::model::tests::check_gradient;

    fn small() -> Dataset {
        parse_csv("0.5,-1,1\n2,0.3,0\n-1,1.5,1\n0.1,0.2,0\n", true).unwrap()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let phi = [0.3, -0.7, 0.2];
        check_gradient(&Points::new(small()), &phi[..2], 1e-7);
        check_gradient(&LinReg::new(small(), true).unwrap(), &phi, 1e-7);
        check_gradient(&LinReg::new(small(), false).unwrap(), &phi[..2], 1e-7);
        for unit in [LossUnit::Nats, LossUnit::Bits] {
            check_gradient(&LogReg::new(small(), true, unit).unwrap(), &phi, 1e-7);
        }
    }

    #[test]
    fn bits_are_nats_over_ln2() {
        let phi = [0.3, -0.7, 0.2];
        let nats = LogReg::new(small(), true, LossUnit::Nats).unwrap();
        let bits = LogReg::new(small(), true, LossUnit::Bits).unwrap();
        let (ln, lb) = (
            Model::<f64>::loss(&nats, &phi, 0),
            Model::<f64>::loss(&bits, &phi, 0),
        );
        assert!((lb * std::f64::consts::LN_2 - ln).abs() < 1e-15);
    }

    #[test]
    fn least_squares_is_the_minimiser() {
        let m = LinReg::new(small(), true).unwrap();
        let w = m.least_squares().unwrap();
        let mut g = vec![0.0; 3];
        Model::<f64>::mean_loss_grad(&m, &w, &mut g);
        assert!(g.iter().all(|x| x.abs() < 1e-12), "{g:?}");
        let collinear = parse_csv("1,2,1\n2,4,0\n3,6,1\n", true).unwrap();
        assert!(
            LinReg::new(collinear, false)
                .unwrap()
                .least_squares()
                .is_err()
        );
    }

    #[test]
    fn bad_labels_are_errors() {
        let d = parse_csv("1,0\n2,0.5\n", true).unwrap();
        let err = LogReg::new(d, true, LossUnit::Nats)
            .unwrap_err()
            .to_string();
        assert!(err.contains("example 1") && err.contains("0.5"), "{err}");
        let no_target = parse_csv("1,2\n", false).unwrap();
        assert!(LinReg::new(no_target, true).is_err());
    }

    #[test]
    fn f32_agrees_with_f64() {
        let m = LogReg::new(small(), true, LossUnit::Nats).unwrap();
        let phi64 = [0.3, -0.7, 0.2];
        let phi32 = [0.3f32, -0.7, 0.2];
        let (mut g64, mut g32) = (vec![0.0f64; 3], vec![0.0f32; 3]);
        let l64 = m.loss_grad(&phi64, 2, &mut g64);
        let l32 = m.loss_grad(&phi32, 2, &mut g32);
        assert!((l64 - f64::from(l32)).abs() < 1e-6);
        for (a, b) in g64.iter().zip(&g32) {
            assert!((a - f64::from(*b)).abs() < 1e-6);
        }
    }

    /// Sizes, names and losses by hand on `small()` (4 examples, 2 features, labels 1 0 1 0)
    /// at Φ = (0.3, −0.7, 0.2): example 0 has x = (0.5, −1), so w·x = 0.85, z = 0.85 + b.
    #[test]
    fn sizes_names_and_losses_by_hand() {
        let phi = [0.3, -0.7, 0.2];
        let points = Points::new(small());
        assert_eq!(points.data().row(2), [-1.0, 1.5]);
        assert_eq!(
            (Model::<f64>::dim(&points), Model::<f64>::examples(&points)),
            (2, 4)
        );
        assert_eq!(Model::<f64>::parameter_names(&points), ["phi0", "phi1"]);
        // ½((0.3 − 0.5)² + (−0.7 + 1)²) = ½(0.04 + 0.09).
        let l = Model::<f64>::loss(&points, &phi[..2], 0);
        assert!((l - 0.065).abs() < 1e-15, "{l}");
        for bias in [true, false] {
            let d = 2 + usize::from(bias);
            let names: &[&str] = if bias {
                &["w0", "w1", "b"]
            } else {
                &["w0", "w1"]
            };
            let linreg = LinReg::new(small(), bias).unwrap();
            let logreg = LogReg::new(small(), bias, LossUnit::Bits).unwrap();
            for m in [&linreg as &dyn Model<f64>, &logreg] {
                assert_eq!((m.dim(), m.examples()), (d, 4));
                assert_eq!(m.parameter_names(), names);
            }
            let z = 0.85 + if bias { 0.2 } else { 0.0 };
            // ½(z − 1)² for y = 1.
            let l = linreg.loss(&phi[..d], 0);
            assert!((l - 0.5 * (z - 1.0) * (z - 1.0)).abs() < 1e-15, "{l}");
            // (log(1 + e^z) − z)/ln 2 for y = 1, in bits.
            let l = logreg.loss(&phi[..d], 0);
            let want = ((1.0 + f64::exp(z)).ln() - z) / std::f64::consts::LN_2;
            assert!((l - want).abs() < 1e-15, "{l} vs {want}");
        }
    }
}
