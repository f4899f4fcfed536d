//! A small multilayer perceptron: one $\tanh$ hidden layer, softmax cross-entropy output.

use rand::RngExt;

use super::{LossUnit, Model, class_labels, softmax_in_place};
use crate::data::Dataset;
use crate::lab::montecarlo::chain_rng;
use crate::{Error, Real, Result};

/// $h = \tanh(W_1 x + b_1)$, $z = W_2 h + b_2$, $\mathcal L = \log\sum_k e^{z_k} - z_y$.
///
/// Parameters, flattened in this order: $W_1$ ($H\times d$, row-major), $b_1$ ($H$),
/// $W_2$ ($k\times H$), $b_2$ ($k$). Gradients by backpropagation.
#[derive(Clone, Debug)]
pub struct Mlp {
    data: Dataset,
    labels: Vec<usize>,
    hidden: usize,
    classes: usize,
    unit: LossUnit,
}

impl Mlp {
    /// An MLP with `hidden` tanh units and `classes` outputs on `data`.
    pub fn new(data: Dataset, hidden: usize, classes: usize, unit: LossUnit) -> Result<Self> {
        if hidden == 0 {
            return Err(Error::invalid("hidden units", hidden, "must be at least 1"));
        }
        if classes < 2 {
            return Err(Error::invalid("classes", classes, "must be at least 2"));
        }
        let labels = class_labels(data.targets(), classes)?;
        Ok(Self {
            data,
            labels,
            hidden,
            classes,
            unit,
        })
    }

    /// Seeded initial parameters: weights uniform in $\pm 1/\sqrt{\text{fan-in}}$, biases 0.
    pub fn init(&self, seed: u64) -> Vec<f64> {
        let (d, h, k) = (self.data.dim(), self.hidden, self.classes);
        let mut rng = chain_rng(seed, 0);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f64> {
            let a = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        let mut phi = uniform(h * d, d);
        phi.extend(vec![0.0; h]);
        phi.extend(uniform(k * h, h));
        phi.extend(vec![0.0; k]);
        phi
    }
}

impl<T: Real> Model<T> for Mlp {
    fn dim(&self) -> usize {
        let (d, h, k) = (self.data.dim(), self.hidden, self.classes);
        h * d + h + k * h + k
    }
    fn examples(&self) -> usize {
        self.data.len()
    }
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T {
        let (d, h, k) = (self.data.dim(), self.hidden, self.classes);
        let (w1, rest) = phi.split_at(h * d);
        let (b1, rest) = rest.split_at(h);
        let (w2, b2) = rest.split_at(k * h);
        let x = self.data.row(i);
        let y = self.labels[i];
        let hid: Vec<T> = (0..h)
            .map(|j| {
                let s = w1[j * d..(j + 1) * d]
                    .iter()
                    .zip(x)
                    .fold(b1[j], |s, (&w, &x)| s + w * T::from_f64(x));
                s.tanh()
            })
            .collect();
        let mut p: Vec<T> = (0..k)
            .map(|c| {
                w2[c * h..(c + 1) * h]
                    .iter()
                    .zip(&hid)
                    .fold(b2[c], |s, (&w, &a)| s + w * a)
            })
            .collect();
        let z_y = p[y];
        let log_sum = softmax_in_place(&mut p);
        let scale = T::from_f64(self.unit.scale());
        let (gw1, grest) = grad.split_at_mut(h * d);
        let (gb1, grest) = grest.split_at_mut(h);
        let (gw2, gb2) = grest.split_at_mut(k * h);
        let mut dh = vec![T::zero(); h];
        for c in 0..k {
            let r = scale * (p[c] - if c == y { T::one() } else { T::zero() });
            gb2[c] = r;
            for j in 0..h {
                gw2[c * h + j] = r * hid[j];
                dh[j] = dh[j] + r * w2[c * h + j];
            }
        }
        for j in 0..h {
            let dz = dh[j] * (T::one() - hid[j] * hid[j]);
            gb1[j] = dz;
            for (g, &x) in gw1[j * d..(j + 1) * d].iter_mut().zip(x) {
                *g = dz * T::from_f64(x);
            }
        }
        scale * (log_sum - z_y)
    }
    fn parameter_names(&self) -> Vec<String> {
        let (d, h, k) = (self.data.dim(), self.hidden, self.classes);
        let mut names = Vec::new();
        for j in 0..h {
            names.extend((0..d).map(|i| format!("W1[{j},{i}]")));
        }
        names.extend((0..h).map(|j| format!("b1[{j}]")));
        for c in 0..k {
            names.extend((0..h).map(|j| format!("W2[{c},{j}]")));
        }
        names.extend((0..k).map(|c| format!("b2[{c}]")));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_csv;
    use crate::model::tests::check_gradient;

    #[test]
    fn gradient_matches_finite_differences() {
        let data = parse_csv("0.5,-1,2\n2,0.3,0\n-1,1.5,1\n", true).unwrap();
        let m = Mlp::new(data, 4, 3, LossUnit::Nats).unwrap();
        let phi = m.init(3);
        assert_eq!(phi.len(), Model::<f64>::dim(&m));
        assert_eq!(Model::<f64>::parameter_names(&m).len(), phi.len());
        check_gradient(&m, &phi, 1e-6);
    }
}
