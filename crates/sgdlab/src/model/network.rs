//! Softmax regression and multilayer perceptrons (ReLU), batched on a matrix-multiply kernel.
//!
//! A [`Network`] with layer widths d = n₀, n₁, …, n\_L = k computes
//! A₀ = X, Zₗ = Aₗ₋₁Wₗᵀ + bₗ, Aₗ = max(Zₗ, 0) for hidden layers, and the
//! softmax cross-entropy of Z\_L: ℒ = (1/B)Σ\_b log Σ\_c e^(Z\_bc) − Z\_(by\_b)
//! (divided by ln 2 in bits). With no hidden layer it is softmax regression. Gradients by
//! backpropagation: δ\_L = (P − Y)/B, ∇Wₗ = δₗᵀAₗ₋₁,
//! ∇bₗ = 1ᵀδₗ, δₗ₋₁ = (δₗWₗ)⊙\[Zₗ₋₁ > 0\].
//!
//! Matrix products use the `matrixmultiply` crate: no dependencies, seconds to build, within a
//! small factor of BLAS for these sizes, and single-threaded (so results do not depend on the
//! thread count; runs are parallelised one level up).
//!
//! [`Classifier`] binds a network to a labelled data set and implements [`Model`] (batch of
//! one), so the lab and the trainer use the same model code.

use rand::RngExt;

use super::{LossUnit, Model, class_labels};
use crate::data::Dataset;
use crate::optim::Tensor;
use crate::rng::chain_rng;
use crate::{Error, Real, Result};

/// C ← αAB + βC with explicit strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: (&[T], isize, isize),
    b: (&[T], isize, isize),
    beta: T,
    c: (&mut [T], isize, isize),
) {
    // Bounds: the largest index each operand is read or written at must lie in its slice.
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows.saturating_sub(1) as isize * rs + cols.saturating_sub(1) as isize * cs) as usize
    };
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || last(m, k, a.1, a.2) < a.0.len(),
        "gemm: A out of bounds"
    );
    assert!(
        k == 0 || last(k, n, b.1, b.2) < b.0.len(),
        "gemm: B out of bounds"
    );
    assert!(last(m, n, c.1, c.2) < c.0.len(), "gemm: C out of bounds");
    if small_gemm(m, k, n, a, b, beta, &mut *c.0, c.1, c.2) {
        return;
    }
    // SAFETY: every element the kernel touches lies inside the slices (checked above), the
    // strides are non-negative, and C does not alias A or B (it is a distinct &mut slice).
    unsafe {
        T::gemm(
            m,
            k,
            n,
            a.0.as_ptr(),
            a.1,
            a.2,
            b.0.as_ptr(),
            b.1,
            b.2,
            beta,
            c.0.as_mut_ptr(),
            c.1,
            c.2,
        );
    }
}

/// Direct loops for the shapes of per-example training (a single row, or an outer product),
/// where `matrixmultiply`'s packing and buffer allocation would cost more than the
/// arithmetic. Returns `false` for shapes it does not handle. Sums run in a fixed order (8
/// lanes for dot products), so results are deterministic.
#[allow(clippy::too_many_arguments)]
fn small_gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: (&[T], isize, isize),
    b: (&[T], isize, isize),
    beta: T,
    c: &mut [T],
    rsc: isize,
    csc: isize,
) -> bool {
    let at = |s: (&[T], isize, isize), i: usize, j: usize| s.0[i * s.1 as usize + j * s.2 as usize];
    let (rsc, csc) = (rsc as usize, csc as usize);
    if m == 1 && a.2 == 1 && b.1 == 1 {
        // Row times a matrix stored by columns: n dot products of contiguous vectors.
        let x = &a.0[..k];
        for j in 0..n {
            let col = &b.0[j * b.2 as usize..j * b.2 as usize + k];
            let mut acc = [T::zero(); 8];
            let mut xs = x.chunks_exact(8);
            let mut cs = col.chunks_exact(8);
            for (xb, cb) in (&mut xs).zip(&mut cs) {
                for l in 0..8 {
                    acc[l] = acc[l] + xb[l] * cb[l];
                }
            }
            let tail = xs
                .remainder()
                .iter()
                .zip(cs.remainder())
                .fold(T::zero(), |s, (&x, &w)| s + x * w);
            let dot = acc.iter().fold(tail, |s, &v| s + v);
            let out = &mut c[j * csc];
            *out = beta * *out + dot;
        }
        return true;
    }
    if m == 1 && b.2 == 1 && csc == 1 {
        // Row times a matrix stored by rows: accumulate scaled rows.
        let out = &mut c[..n];
        out.iter_mut().for_each(|v| *v = beta * *v);
        for i in 0..k {
            let coef = at(a, 0, i);
            let row = &b.0[i * b.1 as usize..i * b.1 as usize + n];
            for (o, &w) in out.iter_mut().zip(row) {
                *o = *o + coef * w;
            }
        }
        return true;
    }
    if k == 1 && b.2 == 1 && csc == 1 {
        // Outer product.
        for i in 0..m {
            let coef = at(a, i, 0);
            let row = &mut c[i * rsc..i * rsc + n];
            for (o, &w) in row.iter_mut().zip(&b.0[..n]) {
                *o = beta * *o + coef * w;
            }
        }
        return true;
    }
    false
}

/// A fully connected network: ReLU hidden layers, softmax cross-entropy output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    widths: Vec<usize>,
    unit: LossUnit,
}

/// Scratch buffers for one batch size (reused across steps; no allocation per step).
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    batch: usize,
    /// Pre-activations Zₗ of every layer, then the probabilities for the last.
    z: Vec<Vec<T>>,
    /// Activations Aₗ of the hidden layers.
    a: Vec<Vec<T>>,
    /// Back-propagated δ of the current and previous layer.
    delta: Vec<T>,
    delta_prev: Vec<T>,
}

impl Network {
    /// A network from `inputs` features through `hidden` widths to `classes` outputs.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize, unit: LossUnit) -> Result<Self> {
        if inputs == 0 {
            return Err(Error::invalid("inputs", inputs, "must be at least 1"));
        }
        if classes < 2 {
            return Err(Error::invalid("classes", classes, "must be at least 2"));
        }
        if let Some(&h) = hidden.iter().find(|&&h| h == 0) {
            return Err(Error::invalid("hidden width", h, "must be at least 1"));
        }
        let mut widths = vec![inputs];
        widths.extend_from_slice(hidden);
        widths.push(classes);
        // Every count below (parameters, bytes) must fit in memory's address range.
        let params: u128 = widths
            .windows(2)
            .map(|w| (w[0] as u128 + 1).saturating_mul(w[1] as u128))
            .fold(0u128, u128::saturating_add);
        if params > (isize::MAX as u128) / 16 {
            return Err(Error::Unsupported(format!(
                "a network of widths {widths:?} has {params} parameters, too many to store"
            )));
        }
        Ok(Self { widths, unit })
    }

    /// Layer widths, inputs first, classes last.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// The loss unit.
    pub fn unit(&self) -> LossUnit {
        self.unit
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    /// Names and shapes of the parameter tensors: `layer{l}.weight` `[out, in]`, then
    /// `layer{l}.bias` `[out]`, layer by layer.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (l, w) in self.widths.windows(2).enumerate() {
            out.push((format!("layer{l}.weight"), vec![w[1], w[0]]));
            out.push((format!("layer{l}.bias"), vec![w[1]]));
        }
        out
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Seeded initial parameters, as PyTorch's `nn.Linear`: weights and biases uniform in
    /// ±1/√(fan-in).
    pub fn init<T: Real>(&self, seed: u64) -> Vec<Tensor<T>> {
        let mut rng = chain_rng(seed, 0);
        self.shapes()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let fan_in = self.widths[i / 2] as f64;
                let bound = 1.0 / fan_in.sqrt();
                let n = shape.iter().product();
                let data = (0..n)
                    .map(|_| T::from_f64(rng.random_range(-bound..bound)))
                    .collect();
                Tensor::new(name, shape, data).expect("`n` is the shape's product")
            })
            .collect()
    }

    fn prepare<T: Real>(&self, ws: &mut Workspace<T>, batch: usize) {
        if ws.batch == batch && ws.z.len() == self.widths.len() - 1 {
            return;
        }
        let layers = self.widths.len() - 1;
        ws.batch = batch;
        ws.z = (1..=layers)
            .map(|l| vec![T::zero(); batch * self.widths[l]])
            .collect();
        ws.a = (1..layers)
            .map(|l| vec![T::zero(); batch * self.widths[l]])
            .collect();
        let widest = self.widths.iter().copied().max().unwrap_or(1);
        ws.delta = vec![T::zero(); batch * widest];
        ws.delta_prev = vec![T::zero(); batch * widest];
    }

    /// Forward pass of `batch` rows of `x`; leaves the class probabilities in the workspace
    /// and returns the summed loss (in nats) and the number of correct predictions.
    fn forward<T: Real>(
        &self,
        params: &[&[T]],
        x: &[T],
        labels: &[usize],
        ws: &mut Workspace<T>,
    ) -> (f64, usize) {
        let batch = labels.len();
        self.prepare(ws, batch);
        let layers = self.widths.len() - 1;
        for l in 0..layers {
            let (fan_in, out) = (self.widths[l], self.widths[l + 1]);
            let (w, b) = (params[2 * l], params[2 * l + 1]);
            let input: &[T] = if l == 0 { x } else { &ws.a[l - 1] };
            let z = &mut ws.z[l];
            for row in z.chunks_exact_mut(out) {
                row.copy_from_slice(b);
            }
            gemm(
                batch,
                fan_in,
                out,
                (input, fan_in as isize, 1),
                (w, 1, fan_in as isize),
                T::one(),
                (z, out as isize, 1),
            );
            if l + 1 < layers {
                for (a, &z) in ws.a[l].iter_mut().zip(ws.z[l].iter()) {
                    *a = z.max(T::zero());
                }
            }
        }
        let k = self.classes();
        let mut loss = 0.0f64;
        let mut correct = 0;
        for (row, &y) in ws.z[layers - 1].chunks_exact_mut(k).zip(labels) {
            let argmax = (0..k).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            correct += usize::from(argmax == y);
            let z_y = row[y];
            let log_sum = super::softmax_in_place(row);
            loss += (log_sum - z_y).as_f64();
        }
        (loss, correct)
    }

    /// Mean loss over the batch (in the network's unit) and its gradient: `grads` are
    /// overwritten, one slice per parameter tensor in [`Network::shapes`] order. `x` holds
    /// `labels.len()` rows of inputs.
    pub fn loss_grad<T: Real>(
        &self,
        params: &[&[T]],
        x: &[T],
        labels: &[usize],
        grads: &mut [&mut [T]],
        ws: &mut Workspace<T>,
    ) -> f64 {
        let batch = labels.len();
        let (loss, _) = self.forward(params, x, labels, ws);
        let layers = self.widths.len() - 1;
        let k = self.classes();
        let scale = self.unit.scale();
        let coef = T::from_f64(scale / batch as f64);
        // δ_L = (P − Y)·scale/B
        {
            let probs = &ws.z[layers - 1];
            for ((d, &p), i) in ws.delta[..batch * k].iter_mut().zip(probs).zip(0..) {
                let target = if labels[i / k] == i % k {
                    T::one()
                } else {
                    T::zero()
                };
                *d = (p - target) * coef;
            }
        }
        for l in (0..layers).rev() {
            let (fan_in, out) = (self.widths[l], self.widths[l + 1]);
            let input: &[T] = if l == 0 { x } else { &ws.a[l - 1] };
            let delta = &ws.delta[..batch * out];
            let (gw, gb) = {
                let (head, tail) = grads.split_at_mut(2 * l + 1);
                (&mut *head[2 * l], &mut *tail[0])
            };
            // ∇W = δᵀ A_{l−1}
            gemm(
                out,
                batch,
                fan_in,
                (delta, 1, out as isize),
                (input, fan_in as isize, 1),
                T::zero(),
                (gw, fan_in as isize, 1),
            );
            // ∇b = column sums of δ
            gb.iter_mut().for_each(|g| *g = T::zero());
            for row in delta.chunks_exact(out) {
                for (g, &d) in gb.iter_mut().zip(row) {
                    *g = *g + d;
                }
            }
            if l > 0 {
                // δ_{l−1} = (δ W) ⊙ [Z_{l−1} > 0]
                let prev = &mut ws.delta_prev[..batch * fan_in];
                gemm(
                    batch,
                    out,
                    fan_in,
                    (delta, out as isize, 1),
                    (params[2 * l], fan_in as isize, 1),
                    T::zero(),
                    (prev, fan_in as isize, 1),
                );
                for (d, &z) in prev.iter_mut().zip(ws.z[l - 1].iter()) {
                    if z <= T::zero() {
                        *d = T::zero();
                    }
                }
                std::mem::swap(&mut ws.delta, &mut ws.delta_prev);
            }
        }
        loss / batch as f64 * scale
    }

    /// Mean loss (in the network's unit) and accuracy over all rows of `x`, in batches.
    pub fn evaluate<T: Real>(
        &self,
        params: &[&[T]],
        x: &[T],
        labels: &[usize],
        ws: &mut Workspace<T>,
    ) -> (f64, f64) {
        let d = self.widths[0];
        let batch = 256;
        let (mut loss, mut correct) = (0.0, 0);
        for (xs, ys) in x.chunks(batch * d).zip(labels.chunks(batch)) {
            let (l, c) = self.forward(params, xs, ys, ws);
            loss += l;
            correct += c;
        }
        let n = labels.len().max(1) as f64;
        (loss / n * self.unit.scale(), correct as f64 / n)
    }
}

/// A [`Network`] bound to a labelled data set: a [`Model`] over the flat parameter vector
/// (tensors of [`Network::shapes`] concatenated).
#[derive(Clone, Debug)]
pub struct Classifier {
    net: Network,
    data: Dataset,
    labels: Vec<usize>,
}

impl Classifier {
    /// Softmax regression with `classes` classes on `data`.
    pub fn softmax(data: Dataset, classes: usize, unit: LossUnit) -> Result<Self> {
        Self::new(data, &[], classes, unit)
    }

    /// A network with `hidden` ReLU layers on `data`.
    pub fn new(data: Dataset, hidden: &[usize], classes: usize, unit: LossUnit) -> Result<Self> {
        let labels = class_labels(data.targets(), classes)?;
        let net = Network::new(data.dim(), hidden, classes, unit)?;
        Ok(Self { net, data, labels })
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn split<'a, T>(&self, phi: &'a [T]) -> Vec<&'a [T]> {
        let mut rest = phi;
        self.net
            .shapes()
            .iter()
            .map(|(_, s)| {
                let (head, tail) = rest.split_at(s.iter().product());
                rest = tail;
                head
            })
            .collect()
    }
}

impl<T: Real> Model<T> for Classifier {
    fn dim(&self) -> usize {
        self.net.num_params()
    }
    fn examples(&self) -> usize {
        self.data.len()
    }
    fn loss_grad(&self, phi: &[T], i: usize, grad: &mut [T]) -> T {
        let params = self.split(phi);
        let mut grads: Vec<&mut [T]> = Vec::new();
        let mut rest = &mut grad[..];
        for (_, s) in self.net.shapes() {
            let (head, tail) = rest.split_at_mut(s.iter().product());
            grads.push(head);
            rest = tail;
        }
        let x: Vec<T> = self.data.row(i).iter().map(|&v| T::from_f64(v)).collect();
        let mut ws = Workspace::default();
        T::from_f64(
            self.net
                .loss_grad(&params, &x, &self.labels[i..=i], &mut grads, &mut ws),
        )
    }
    fn parameter_names(&self) -> Vec<String> {
        self.net
            .shapes()
            .iter()
            .flat_map(|(name, shape)| {
                let n: usize = shape.iter().product();
                (0..n).map(move |j| format!("{name}[{j}]"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_csv;
    use crate::model::tests::check_gradient;

    fn data() -> Dataset {
        parse_csv("0.5,-1,2\n2,0.3,0\n-1,1.5,1\n0.2,0.1,2\n", true).unwrap()
    }

    fn flat(tensors: &[Tensor<f64>]) -> Vec<f64> {
        tensors.iter().flat_map(|t| t.data().to_vec()).collect()
    }

    #[test]
    fn per_example_gradients_match_finite_differences() {
        for hidden in [vec![], vec![5], vec![4, 3]] {
            for unit in [LossUnit::Nats, LossUnit::Bits] {
                let c = Classifier::new(data(), &hidden, 3, unit).unwrap();
                let phi = flat(&c.network().init::<f64>(9));
                check_gradient(&c, &phi, 1e-6);
            }
        }
    }

    #[test]
    fn batched_gradient_is_the_mean_of_per_example_gradients() {
        let c = Classifier::new(data(), &[6, 4], 3, LossUnit::Nats).unwrap();
        let net = c.network();
        let params = net.init::<f64>(2);
        let phi = flat(&params);
        let slices: Vec<&[f64]> = params.iter().map(|t| t.data()).collect();
        let mut grads: Vec<Vec<f64>> = params.iter().map(|t| vec![0.0; t.len()]).collect();
        let mut gref: Vec<&mut [f64]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
        let x = data().features().to_vec();
        let labels = [2, 0, 1, 2];
        let mut ws = Workspace::default();
        let loss = net.loss_grad(&slices, &x, &labels, &mut gref, &mut ws);
        let mut mean = vec![0.0; phi.len()];
        let mean_loss = Model::<f64>::mean_loss_grad(&c, &phi, &mut mean);
        assert!((loss - mean_loss).abs() < 1e-12);
        let batched: Vec<f64> = grads.concat();
        for (a, b) in batched.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let (eval_loss, acc) = net.evaluate(&slices, &x, &labels, &mut ws);
        assert!((eval_loss - loss).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&acc));
    }

    #[test]
    fn f32_agrees_with_f64() {
        let c = Classifier::new(data(), &[5], 3, LossUnit::Nats).unwrap();
        let phi = flat(&c.network().init::<f64>(1));
        let phi32: Vec<f32> = phi.iter().map(|&x| x as f32).collect();
        let (mut g64, mut g32) = (vec![0.0f64; phi.len()], vec![0.0f32; phi.len()]);
        let l64 = c.loss_grad(&phi, 0, &mut g64);
        let l32 = c.loss_grad(&phi32, 0, &mut g32);
        assert!((l64 - f64::from(l32)).abs() < 1e-5);
        for (a, b) in g64.iter().zip(&g32) {
            assert!((a - f64::from(*b)).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Network::new(0, &[], 3, LossUnit::Nats).is_err());
        assert!(Network::new(3, &[0], 3, LossUnit::Nats).is_err());
        assert!(Network::new(3, &[], 1, LossUnit::Nats).is_err());
    }

    /// With every parameter 0 each class has probability 1/3: the loss is ln 3 a row (log₂ 3
    /// in bits), and every row's scores tie, so the prediction is the first class (class 0)
    /// and the accuracy is the share of rows labelled 0 — over 300 rows, two batches of
    /// `evaluate`'s 256.
    #[test]
    fn evaluate_by_hand_at_zero_parameters() {
        let labels: Vec<usize> = (0..300).map(|i| [2, 0, 1, 2][i % 4]).collect();
        let x: Vec<f64> = (0..300).flat_map(|i| data().row(i % 4).to_vec()).collect();
        for (unit, per_row) in [(LossUnit::Nats, 3f64.ln()), (LossUnit::Bits, 3f64.log2())] {
            let net = Network::new(2, &[5], 3, unit).unwrap();
            let zeros: Vec<Vec<f64>> = net
                .shapes()
                .iter()
                .map(|(_, s)| vec![0.0; s.iter().product()])
                .collect();
            let params: Vec<&[f64]> = zeros.iter().map(Vec::as_slice).collect();
            let (loss, accuracy) = net.evaluate(&params, &x, &labels, &mut Workspace::default());
            assert!((loss - per_row).abs() < 1e-12, "{unit:?}: {loss}");
            assert_eq!(accuracy, 75.0 / 300.0);
        }
    }

    /// The accessors, the parameter count and names, and the initialisation's bounds
    /// ±1/√fan-in per layer (fan-in 2 for the first, 400 for the second), nearly reached by
    /// the tensors of 100 elements or more.
    #[test]
    fn shapes_names_and_initial_bounds() {
        let c = Classifier::new(data(), &[5], 3, LossUnit::Bits).unwrap();
        let net = c.network();
        assert_eq!(
            (net.widths(), net.classes(), net.unit()),
            (&[2, 5, 3][..], 3, LossUnit::Bits)
        );
        let shapes: Vec<(String, Vec<usize>)> = vec![
            ("layer0.weight".into(), vec![5, 2]),
            ("layer0.bias".into(), vec![5]),
            ("layer1.weight".into(), vec![3, 5]),
            ("layer1.bias".into(), vec![3]),
        ];
        assert_eq!(net.shapes(), shapes);
        assert_eq!(net.num_params(), 33);
        assert_eq!((Model::<f64>::dim(&c), Model::<f64>::examples(&c)), (33, 4));
        let names = Model::<f64>::parameter_names(&c);
        assert_eq!(names.len(), 33);
        assert_eq!(
            (names[0].as_str(), names[10].as_str(), names[32].as_str()),
            ("layer0.weight[0]", "layer0.bias[0]", "layer1.bias[2]")
        );
        let wide = Network::new(2, &[400], 3, LossUnit::Nats).unwrap();
        let init = wide.init::<f64>(4);
        for (t, fan_in) in init.iter().zip([2.0f64, 2.0, 400.0, 400.0]) {
            let bound = 1.0 / fan_in.sqrt();
            let largest = t.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                largest < bound && (t.len() < 100 || largest > 0.9 * bound),
                "{}: {largest} vs {bound}",
                t.name()
            );
        }
        let err = Network::new(usize::MAX / 4, &[8], 3, LossUnit::Nats).unwrap_err();
        assert!(err.to_string().contains("too many to store"), "{err}");
    }

    /// C = AB + βC by the definition, with the same (row, column) strides as `gemm`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        k: usize,
        n: usize,
        a: (&[f64], usize, usize),
        b: (&[f64], usize, usize),
        beta: f64,
        c: (&mut [f64], usize, usize),
    ) {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|l| a.0[i * a.1 + l * a.2] * b.0[l * b.1 + j * b.2])
                    .sum();
                let out = &mut c.0[i * c.1 + j * c.2];
                *out = beta * *out + dot;
            }
        }
    }

    /// Every path of `gemm` against the definition, on small integers (exact sums): a row
    /// times a matrix stored by columns, a strided row times one stored by rows, an outer
    /// product of a strided column, and the general case (`matrixmultiply`), with C's columns
    /// strided where the path allows it; the direct loops take exactly the first four.
    #[test]
    fn gemm_matches_the_definition_on_every_path() {
        let v = |len: usize, seed: usize| -> Vec<f64> {
            (0..len)
                .map(|i| ((i * 7 + seed * 3) % 11) as f64 - 5.0)
                .collect()
        };
        // (m, k, n, A strides, A len, B strides, B len, C strides, C len, direct loops?)
        type Case = (
            usize,
            usize,
            usize,
            (usize, usize),
            usize,
            (usize, usize),
            usize,
            (usize, usize),
            usize,
            bool,
        );
        let cases: [Case; 5] = [
            (1, 9, 3, (9, 1), 9, (1, 9), 27, (3, 1), 3, true),
            (1, 9, 3, (9, 1), 9, (1, 9), 27, (6, 2), 6, true),
            (1, 4, 3, (8, 2), 8, (3, 1), 12, (3, 1), 3, true),
            (3, 1, 4, (3, 1), 9, (4, 1), 4, (4, 1), 12, true),
            (3, 4, 5, (4, 1), 12, (5, 1), 20, (10, 2), 30, false),
        ];
        for (case, &(m, k, n, (ra, ca), la, (rb, cb), lb, (rc, cc), lc, direct)) in
            cases.iter().enumerate()
        {
            let (a, b) = (v(la, 1), v(lb, 2));
            let c0 = v(lc, 3);
            let mut want = c0.clone();
            naive(
                m,
                k,
                n,
                (&a, ra, ca),
                (&b, rb, cb),
                0.5,
                (&mut want, rc, cc),
            );
            let mut got = c0.clone();
            let (ai, bi) = (
                (&a[..], ra as isize, ca as isize),
                (&b[..], rb as isize, cb as isize),
            );
            gemm(m, k, n, ai, bi, 0.5, (&mut got, rc as isize, cc as isize));
            assert_eq!(got, want, "case {case}");
            let mut direct_out = c0.clone();
            let (rc, cc) = (rc as isize, cc as isize);
            assert_eq!(
                small_gemm(m, k, n, ai, bi, 0.5, &mut direct_out, rc, cc),
                direct,
                "case {case}"
            );
        }
        // An empty product is a no-op, even with an empty C.
        gemm::<f64>(
            0,
            2,
            3,
            (&[], 2, 1),
            (&[1.0; 6], 3, 1),
            0.0,
            (&mut [], 3, 1),
        );
    }

    #[test]
    #[should_panic(expected = "gemm: A out of bounds")]
    fn gemm_refuses_an_operand_too_short() {
        let mut c = [0.0; 4];
        gemm(
            2,
            2,
            2,
            (&[1.0; 3], 2, 1),
            (&[1.0; 4], 2, 1),
            0.0,
            (&mut c, 2, 1),
        );
    }

    #[test]
    #[should_panic(expected = "gemm: B out of bounds")]
    fn gemm_refuses_a_strided_operand_too_short() {
        // B's last element is at row 1, column 2: 1·1 + 2·2 = 5, one past its 5 elements.
        let mut c = [0.0; 3];
        gemm(
            1,
            2,
            3,
            (&[1.0; 2], 2, 1),
            (&[1.0; 5], 1, 2),
            0.0,
            (&mut c, 3, 1),
        );
    }

    /// One workspace serves networks of other depths and batch sizes (it is re-prepared for
    /// them), and keeps its buffers between calls of the same shape (no allocation per step).
    #[test]
    fn a_workspace_is_reused_and_re_prepared() {
        let x = data().features().to_vec();
        let labels = [2, 0, 1, 2];
        let mut shared = Workspace::default();
        for hidden in [vec![5], vec![4, 3], vec![5]] {
            let net = Network::new(2, &hidden, 3, LossUnit::Nats).unwrap();
            let params = net.init::<f64>(7);
            let slices: Vec<&[f64]> = params.iter().map(|t| t.data()).collect();
            for batch in [4, 1] {
                let fresh = net.evaluate(
                    &slices,
                    &x[..2 * batch],
                    &labels[..batch],
                    &mut Workspace::default(),
                );
                let reused = net.evaluate(&slices, &x[..2 * batch], &labels[..batch], &mut shared);
                assert_eq!(fresh, reused, "{hidden:?}, batch {batch}");
            }
            let before = shared.z[0].as_ptr();
            net.evaluate(&slices, &x[..2], &labels[..1], &mut shared);
            assert_eq!(shared.z[0].as_ptr(), before, "{hidden:?}: reallocated");
        }
    }
}
