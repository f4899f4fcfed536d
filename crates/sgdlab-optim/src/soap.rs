//! SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): Adam run in
//! the eigenbasis of Shampoo's preconditioner, with pytorch-optimizer's semantics
//! (`pytorch_optimizer.SOAP` 4.1.0, `merge_dims=False`, `precondition_1d=False`,
//! `normalize_gradient=False`, `correct_bias=True`).
//!
//! A whole-tensor rule ([`MatrixRule`]): each matrix keeps, besides Adam's m and v, the
//! statistics L ≈ E\[GGᵀ\] and R ≈ E\[GᵀG\] and their eigenbases Q_L, Q_R
//! (d×d buffers of their own shape, [`UpdateRule::slot_shape`]). The eigenbases come from
//! an eigendecomposition at the first step and one power iteration with a QR decomposition
//! every `precondition_frequency` steps (`faer`, in `f64` for both parameter types); the
//! products run through the same deterministic row-blocked products as Muon's.

use faer::{Mat, Side};

use super::StepContext;
use super::muon::{lerp, matmul, transpose};
use super::rule::{MatrixRule, UpdateRule};
use super::spec::{check, config};
use crate::{Error, Real, Result};

config! {
    /// `soap`: with G the gradient of a matrix, L ← L + (1 − β_s)(GGᵀ − L),
    /// R ← R + (1 − β_s)(GᵀG − R) (β_s = `shampoo_beta`, default β₂), and Q_L,
    /// Q_R their eigenvectors by decreasing eigenvalue (set at the first step, which only
    /// updates the statistics, and refreshed by one power iteration and a QR decomposition
    /// every `precondition_frequency` steps):
    /// G′ = Q_LᵀGQ_R, m ← m + (1 − β₁)(G − m),
    /// v ← v + (1 − β₂)(G′² − v),
    /// Φ ← (Φ − η√(1 − β₂ᵏ)/(1 − β₁ᵏ)·Q_L(Q_Lᵀm Q_R/(√v + ε))Q_Rᵀ)(1 − ηλ)
    /// with k = t − 1. A dimension larger than `max_precondition_dim`, and every vector,
    /// is not rotated (its Q is the identity): a vector steps by Adam in this form.
    Soap("soap") {
        /// Learning rate η ≥ 0.
        lr: f64 = 3e-3,
        /// First-moment decay β₁ ∈ \[0, 1).
        beta1: f64 = 0.95,
        /// Second-moment decay β₂ ∈ \[0, 1).
        beta2: f64 = 0.95,
        /// ε ≥ 0 added to √v.
        eps: f64 = 1e-8,
        /// Decoupled weight decay λ ≥ 0, applied after the update.
        weight_decay: f64 = 1e-2,
        /// Steps between refreshes of the eigenbases (≥ 1).
        precondition_frequency: u64 = 10,
        /// Decay β_s ∈ \[0, 1) of the statistics L and R, or `none` for β₂.
        shampoo_beta: Option<f64> = None,
        /// The largest dimension that is rotated (≥ 1); larger ones keep the identity.
        max_precondition_dim: u64 = 10000,
    }
}

/// The state buffers: Adam's two, then L, R, Q_L, Q_R.
const SLOTS: &[&str] = &["exp_avg", "exp_avg_sq", "GG_0", "GG_1", "Q_0", "Q_1"];

impl Soap {
    /// Whether dimension `axis` of a tensor of `shape` is rotated.
    fn rotates(&self, shape: &[usize], axis: usize) -> bool {
        shape.len() == 2 && shape[axis] as u64 <= self.max_precondition_dim
    }

    /// β_s.
    fn shampoo_beta(&self) -> f64 {
        self.shampoo_beta.unwrap_or(self.beta2)
    }
}

impl UpdateRule for Soap {
    /// Decoupled decay after the update: (Φ − ηu)(1 − ηλ) has an η² term.
    fn linear_in_lr(&self) -> bool {
        false
    }

    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::unit_open("beta1", self.beta1)?;
        check::unit_open("beta2", self.beta2)?;
        check::at_least("eps", self.eps, 0.0)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        if let Some(b) = self.shampoo_beta {
            check::unit_open("shampoo_beta", b)?;
        }
        if self.precondition_frequency == 0 {
            return Err(Error::invalid(
                "precondition_frequency",
                0,
                "must be at least 1",
            ));
        }
        if self.max_precondition_dim == 0 {
            return Err(Error::invalid(
                "max_precondition_dim",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        SLOTS
    }

    /// m and v as the tensor; L and Q_L d₀×d₀, R and Q_R d₁×d₁ for a matrix whose
    /// dimension is rotated, empty otherwise.
    fn slot_shape(&self, slot: usize, shape: &[usize]) -> Vec<usize> {
        match slot {
            0 | 1 => shape.to_vec(),
            _ => {
                let axis = slot % 2;
                if self.rotates(shape, axis) {
                    vec![shape[axis], shape[axis]]
                } else {
                    vec![0]
                }
            }
        }
    }

    fn matrix<T: Real>(&self) -> Option<&dyn MatrixRule<T>> {
        Some(self)
    }

    fn step_tensor<T: Real>(
        &self,
        _ctx: &StepContext,
        _p: &mut [T],
        _g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        unreachable!("soap steps whole tensors (MatrixRule)")
    }
}

impl<T: Real> MatrixRule<T> for Soap {
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        if shape.len() <= 2 {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "soap steps matrices and vectors, and tensor `{name}` has shape {shape:?}: give \
                 it another rule with a parameter group (e.g. --group '{name}:rule=adamw')"
            )))
        }
    }

    fn step_matrix(
        &self,
        ctx: &StepContext,
        shape: &[usize],
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
    ) {
        let [m, v, gg0, gg1, q0, q1] = slots else {
            unreachable!("soap has six slots")
        };
        let (rows, cols) = match shape {
            [r, c] => (*r, *c),
            _ => (1, p.len()),
        };
        let gs = T::from_f64(ctx.grad_scale);
        let grad: Vec<T> = g.iter().map(|&x| x * gs).collect();
        let mut basis = Basis {
            rows,
            cols,
            q0: (!q0.is_empty()).then_some(&mut **q0),
            q1: (!q1.is_empty()).then_some(&mut **q1),
        };
        let ws = self.shampoo_beta();
        if ctx.t == 1 {
            // The first step fills the statistics and sets the eigenbases; Φ, m and v stay.
            statistics(&grad, rows, cols, gg0, gg1, 1.0 - ws);
            if let Some(q) = basis.q0.as_deref_mut() {
                eigenbasis(gg0, rows, q);
            }
            if let Some(q) = basis.q1.as_deref_mut() {
                eigenbasis(gg1, cols, q);
            }
            return;
        }
        let k = (ctx.t - 1) as f64;
        let step_size = ctx.lr * (1.0 - self.beta2.powf(k)).sqrt() / (1.0 - self.beta1.powf(k));
        let projected = basis.forward(&grad);
        let (w1, w2) = (1.0 - self.beta1, 1.0 - self.beta2);
        for (mi, &gi) in m.iter_mut().zip(&grad) {
            *mi = lerp(*mi, gi, w1);
        }
        for (vi, &gi) in v.iter_mut().zip(&projected) {
            *vi = lerp(*vi, gi * gi, w2);
        }
        let eps = T::from_f64(self.eps);
        let mut normed = basis.forward(m);
        for (x, &vi) in normed.iter_mut().zip(v.iter()) {
            *x = *x / (vi.sqrt() + eps);
        }
        let update = basis.backward(&normed);
        let (step, decay) = (
            T::from_f64(-step_size),
            T::from_f64(1.0 - self.weight_decay * ctx.lr),
        );
        for (pi, &u) in p.iter_mut().zip(&update) {
            *pi = (*pi + step * u) * decay;
        }
        statistics(&grad, rows, cols, gg0, gg1, 1.0 - ws);
        let steps = ctx.t - 1;
        if steps.is_multiple_of(self.precondition_frequency) {
            if let Some(q) = basis.q0.as_deref_mut() {
                let order = power_iteration(gg0, rows, q);
                permute(v, rows, cols, 0, &order);
            }
            if let Some(q) = basis.q1.as_deref_mut() {
                let order = power_iteration(gg1, cols, q);
                permute(v, rows, cols, 1, &order);
            }
        }
    }
}

/// The eigenbases of one matrix (`None`: that side is not rotated).
struct Basis<'a, T> {
    rows: usize,
    cols: usize,
    q0: Option<&'a mut [T]>,
    q1: Option<&'a mut [T]>,
}

impl<T: Real> Basis<'_, T> {
    /// Q_LᵀXQ_R.
    fn forward(&self, x: &[T]) -> Vec<T> {
        let (r, c) = (self.rows, self.cols);
        let mut x = x.to_vec();
        if let Some(q) = self.q0.as_deref() {
            let qt = transpose(q, r, r);
            let mut out = vec![T::zero(); r * c];
            matmul(r, r, c, &qt, (&x, c, 1), &mut out, false);
            x = out;
        }
        if let Some(q) = self.q1.as_deref() {
            let mut out = vec![T::zero(); r * c];
            matmul(r, c, c, &x, (q, c, 1), &mut out, false);
            x = out;
        }
        x
    }

    /// Q_LXQ_Rᵀ.
    fn backward(&self, x: &[T]) -> Vec<T> {
        let (r, c) = (self.rows, self.cols);
        let mut x = x.to_vec();
        if let Some(q) = self.q0.as_deref() {
            let mut out = vec![T::zero(); r * c];
            matmul(r, r, c, q, (&x, c, 1), &mut out, false);
            x = out;
        }
        if let Some(q) = self.q1.as_deref() {
            let mut out = vec![T::zero(); r * c];
            matmul(r, c, c, &x, (q, 1, c), &mut out, false);
            x = out;
        }
        x
    }
}

/// L ← L + w(GGᵀ − L) and R ← R + w(GᵀG − R), for the sides that are kept (a
/// non-empty buffer).
fn statistics<T: Real>(g: &[T], rows: usize, cols: usize, l: &mut [T], r: &mut [T], w: f64) {
    if !l.is_empty() {
        let mut outer = vec![T::zero(); rows * rows];
        matmul(rows, cols, rows, g, (g, 1, cols), &mut outer, true);
        for (a, &b) in l.iter_mut().zip(&outer) {
            *a = lerp(*a, b, w);
        }
    }
    if !r.is_empty() {
        let gt = transpose(g, rows, cols);
        let mut outer = vec![T::zero(); cols * cols];
        matmul(cols, rows, cols, &gt, (g, cols, 1), &mut outer, true);
        for (a, &b) in r.iter_mut().zip(&outer) {
            *a = lerp(*a, b, w);
        }
    }
}

/// A row-major n×n matrix of `T` as a `faer` matrix of `f64`.
fn to_faer<T: Real>(a: &[T], n: usize) -> Mat<f64> {
    Mat::from_fn(n, n, |i, j| a[i * n + j].as_f64())
}

/// `q` ← the eigenvectors of the symmetric `a` (n×n, plus 10⁻³⁰I as the reference adds),
/// by decreasing eigenvalue, as columns.
fn eigenbasis<T: Real>(a: &[T], n: usize, q: &mut [T]) {
    let mut s = to_faer(a, n);
    for i in 0..n {
        s[(i, i)] += 1e-30;
    }
    let Ok(eig) = s.self_adjoint_eigen(Side::Lower) else {
        // Not finite: keep the basis (the identity would be as arbitrary).
        return;
    };
    let values = eig.S().column_vector();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let u = eig.U();
    for (col, &src) in order.iter().enumerate() {
        for row in 0..n {
            q[row * n + col] = T::from_f64(u[(row, src)]);
        }
    }
}

/// One power iteration of the basis `q` (n×n) on the statistic `a`: with P = AQ and the
/// estimated eigenvalues diag(QᵀAQ), the columns of P sorted by them, decreasing, then
/// Q ← the Q factor of P. Returns the order (new column j is old column `order[j]`).
fn power_iteration<T: Real>(a: &[T], n: usize, q: &mut [T]) -> Vec<usize> {
    let mut product = vec![T::zero(); n * n];
    matmul(n, n, n, a, (q, n, 1), &mut product, false);
    let estimate: Vec<f64> = (0..n)
        .map(|j| {
            (0..n)
                .map(|i| (q[i * n + j] * product[i * n + j]).as_f64())
                .sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| estimate[j].total_cmp(&estimate[i]));
    let sorted = Mat::<f64>::from_fn(n, n, |i, j| product[i * n + order[j]].as_f64());
    let factor = sorted.qr().compute_thin_Q();
    for i in 0..n {
        for j in 0..n {
            q[i * n + j] = T::from_f64(factor[(i, j)]);
        }
    }
    order
}

/// `v` (rows × cols) with its indices along `axis` reordered: new index j is old `order[j]`.
fn permute<T: Real>(v: &mut [T], rows: usize, cols: usize, axis: usize, order: &[usize]) {
    let old = v.to_vec();
    for i in 0..rows {
        for j in 0..cols {
            v[i * cols + j] = if axis == 0 {
                old[order[i] * cols + j]
            } else {
                old[i * cols + order[j]]
            };
        }
    }
}
