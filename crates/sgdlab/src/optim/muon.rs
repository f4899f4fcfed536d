//! Muon (Jordan et al. 2024) as PyTorch's `torch.optim.Muon`: momentum, then the update
//! orthogonalised by a quintic Newton–Schulz iteration, for 2-D parameters.

use rayon::prelude::*;

use super::StepContext;
use super::rule::UpdateRule;
use super::spec::{SpecValue, check, config};
use crate::{Error, Real, Result};

/// The quintic Newton–Schulz coefficients $(a, b, c)$ of PyTorch (and Keller Jordan's
/// reference): $X \leftarrow aX + (bA + cA^2)X$ with $A = XX^\top$.
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// How Muon scales its learning rate by the matrix shape $A \times B$ (PyTorch's
/// `adjust_lr_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdjustLr {
    /// Keller Jordan's $\eta\sqrt{\max(1, A/B)}$ (PyTorch's default).
    #[default]
    Original,
    /// Moonshot's $0.2\,\eta\sqrt{\max(A, B)}$, matching AdamW's update RMS.
    MatchRmsAdamw,
    /// Bernstein's $\eta\sqrt{A/B}$.
    SpectralUnclamped,
}

impl SpecValue for AdjustLr {
    fn parse_value(key: &str, text: &str) -> Result<Self> {
        match text {
            "original" => Ok(AdjustLr::Original),
            "match_rms_adamw" => Ok(AdjustLr::MatchRmsAdamw),
            "spectral_unclamped" => Ok(AdjustLr::SpectralUnclamped),
            _ => Err(Error::invalid(
                key,
                text,
                "must be original, match_rms_adamw or spectral_unclamped",
            )),
        }
    }
    fn show(&self) -> String {
        match self {
            AdjustLr::Original => "original",
            AdjustLr::MatchRmsAdamw => "match_rms_adamw",
            AdjustLr::SpectralUnclamped => "spectral_unclamped",
        }
        .to_string()
    }
}

config! {
    /// `muon`: PyTorch's `torch.optim.Muon`, for matrices (2-D tensors; route the others to
    /// another rule with a parameter group).
    ///
    /// $B \leftarrow B + (1-\mu)(g - B)$; $U = g + \mu(B - g)$ with Nesterov, else $B$;
    /// $O = \mathrm{NS}_k(U/\max(\lVert U\rVert_F, \epsilon))$, $k$ quintic Newton–Schulz steps
    /// $X \leftarrow aX + (bXX^\top + c(XX^\top)^2)X$ on the wide orientation of $U$;
    /// $\Phi \leftarrow (1-\eta\lambda)\Phi - \eta' O$ with $\eta'$ the shape-adjusted
    /// learning rate ([`AdjustLr`]). The iteration runs in the parameters' precision
    /// (`ns_bf16=true` rounds every product to bfloat16, as PyTorch computes it).
    Muon("muon") {
        /// Learning rate $\eta \ge 0$.
        lr: f64 = 1e-3,
        /// Decoupled weight decay $\lambda \ge 0$.
        weight_decay: f64 = 0.1,
        /// Momentum $\mu \in [0, 1)$.
        momentum: f64 = 0.95,
        /// Nesterov momentum.
        nesterov: bool = true,
        /// Newton–Schulz steps $k$ (1 to 99).
        ns_steps: u64 = 5,
        /// $\epsilon > 0$, the floor of the norm the update is divided by.
        eps: f64 = 1e-7,
        /// The shape adjustment of the learning rate.
        adjust_lr: AdjustLr = AdjustLr::Original,
        /// Round the Newton–Schulz iteration to bfloat16 like PyTorch.
        ns_bf16: bool = false,
    }
}

impl Muon {
    /// $\eta'$ for a matrix of `rows` × `cols`.
    fn adjusted_lr(&self, lr: f64, rows: usize, cols: usize) -> f64 {
        let (a, b) = (rows as f64, cols as f64);
        lr * match self.adjust_lr {
            AdjustLr::Original => (a / b).max(1.0).sqrt(),
            AdjustLr::MatchRmsAdamw => 0.2 * a.max(b).sqrt(),
            AdjustLr::SpectralUnclamped => (a / b).sqrt(),
        }
    }
}

impl UpdateRule for Muon {
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr, 0.0)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        check::unit_open("momentum", self.momentum)?;
        check::positive("eps", self.eps)?;
        if !(1..100).contains(&self.ns_steps) {
            return Err(Error::invalid(
                "ns_steps",
                self.ns_steps,
                "must be between 1 and 99",
            ));
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn slots(&self) -> &'static [&'static str] {
        &["momentum_buffer"]
    }

    fn whole_tensor(&self) -> bool {
        true
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        if shape.len() != 2 {
            return Err(Error::Unsupported(format!(
                "muon steps matrices only, and parameter {name} has shape {shape:?}: give the \
                 other tensors another rule with a parameter group (e.g. --group \
                 '*bias*:rule=adamw')"
            )));
        }
        Ok(())
    }

    /// Never called: Muon steps whole matrices ([`UpdateRule::step_whole`]).
    fn step_tensor<T: Real>(
        &self,
        _ctx: &StepContext,
        _p: &mut [T],
        _g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        unreachable!("muon steps whole matrices (step_whole)")
    }

    fn step_whole<T: Real>(
        &self,
        ctx: &StepContext,
        shape: &[usize],
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        let [buf] = slots else {
            unreachable!("muon has one slot")
        };
        let (rows, cols) = (shape[0], shape[1]);
        let gs = T::from_f64(ctx.grad_scale);
        let w = 1.0 - self.momentum;
        let mut update: Vec<T> = Vec::with_capacity(p.len());
        for (&g, b) in g.iter().zip(buf.iter_mut()) {
            let g = g * gs;
            *b = lerp(*b, g, w);
            update.push(if self.nesterov {
                lerp(g, *b, self.momentum)
            } else {
                *b
            });
        }
        let ortho = newton_schulz(
            &update,
            rows,
            cols,
            self.ns_steps as usize,
            self.eps,
            self.ns_bf16,
        );
        let decay = T::from_f64(1.0 - ctx.lr * self.weight_decay);
        let step = T::from_f64(-self.adjusted_lr(ctx.lr, rows, cols));
        for (p, &o) in p.iter_mut().zip(&ortho) {
            *p = *p * decay + step * o;
        }
    }
}

/// PyTorch's `lerp`: $a + w(b-a)$ for $w < \tfrac12$, else $b - (b-a)(1-w)$.
#[inline]
fn lerp<T: Real>(a: T, b: T, w: f64) -> T {
    if w < 0.5 {
        a + T::from_f64(w) * (b - a)
    } else {
        b - (b - a) * T::from_f64(1.0 - w)
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), through `f32` as PyTorch converts.
#[inline]
pub fn round_bf16<T: Real>(x: T) -> T {
    let f = x.as_f64() as f32;
    if f.is_nan() {
        return x;
    }
    let bits = f.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    T::from_f64(f64::from(f32::from_bits(rounded)))
}

/// Rows of the product computed per task: fixed, so the bits do not depend on the thread
/// count.
const ROW_BLOCK: usize = 64;

/// Matrices below this many elements run on the calling thread: waking the pool costs more
/// than their products (a 64 × 64 step takes microseconds).
const PARALLEL_MIN: usize = 1 << 16;

/// `f` over the elements of `v`, on the pool when `parallel`; the same bits either way.
fn each<T: Real>(parallel: bool, v: &mut [T], f: impl Fn(&mut T) + Sync + Send) {
    if parallel {
        v.par_iter_mut().for_each(f);
    } else {
        v.iter_mut().for_each(f);
    }
}

/// `f` over the elements of `v` and `w` in pairs, on the pool when `parallel`.
fn each2<T: Real>(parallel: bool, v: &mut [T], w: &[T], f: impl Fn(&mut T, T) + Sync + Send) {
    if parallel {
        v.par_iter_mut().zip(w).for_each(|(a, &b)| f(a, b));
    } else {
        v.iter_mut().zip(w).for_each(|(a, &b)| f(a, b));
    }
}

/// $C = A B$ for row-major `a` ($m \times k$), and `b` given as ($k \times n$) with strides
/// `(rsb, csb)`; rows of $C$ in parallel blocks of [`ROW_BLOCK`].
///
/// With `symmetric` (a square product known to be symmetric: $XX^\top$, $A^2$ for symmetric
/// $A$), each row block computes only the columns from its first row on, and the rest is
/// mirrored: half the arithmetic, and the same bits (element $(j, i)$ is the same products
/// summed in the same order as $(i, j)$).
fn matmul<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: (&[T], usize, usize),
    c: &mut [T],
    symmetric: bool,
) {
    assert!(
        a.len() >= m * k && c.len() >= m * n,
        "matmul: operand sizes"
    );
    let (bs, rsb, csb) = b;
    assert!(
        k == 0 || n == 0 || (k - 1) * rsb + (n - 1) * csb < bs.len(),
        "matmul: B out of bounds"
    );
    if n == 0 {
        return;
    }
    assert!(
        !symmetric || m == n,
        "matmul: a symmetric product is square"
    );
    let block = |(i, block): (usize, &mut [T])| {
        let r0 = i * ROW_BLOCK;
        let rows = block.len() / n;
        let a_rows = &a[r0 * k..(r0 + rows) * k];
        let col0 = if symmetric { r0 } else { 0 };
        // SAFETY: A is rows × k row-major inside `a_rows`; B's columns col0..n start at
        // offset col0·csb, and their last element (k-1)·rsb + (n-1)·csb lies in `bs`
        // (asserted above); C's columns col0..n of the rows × n row-major `block` start at
        // offset col0 < n; `block` is a distinct &mut slice that aliases neither.
        unsafe {
            T::gemm(
                rows,
                k,
                n - col0,
                a_rows.as_ptr(),
                k as isize,
                1,
                bs.as_ptr().add(col0 * csb),
                rsb as isize,
                csb as isize,
                T::zero(),
                block.as_mut_ptr().add(col0),
                n as isize,
                1,
            );
        }
    };
    if m * n.max(k) >= PARALLEL_MIN {
        c[..m * n]
            .par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(block);
    } else {
        c[..m * n]
            .chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(block);
    }
    if symmetric {
        for i in 1..n {
            for j in 0..i.min(i / ROW_BLOCK * ROW_BLOCK) {
                c[i * n + j] = c[j * n + i];
            }
        }
    }
}

/// The quintic Newton–Schulz iteration of `update` (`rows` × `cols`, row-major), as
/// PyTorch's `_zeropower_via_newtonschulz`: on the wide orientation ($r \le c$), $X$ is
/// normalised by $\max(\lVert X\rVert_F, \epsilon)$, then `steps` times
/// $A = XX^\top$, $B = bA + cA^2$, $X \leftarrow aX + BX$. Returns the result in the
/// original orientation. With `bf16`, the input and every product are rounded to bfloat16.
pub fn newton_schulz<T: Real>(
    update: &[T],
    rows: usize,
    cols: usize,
    steps: usize,
    eps: f64,
    bf16: bool,
) -> Vec<T> {
    let parallel = rows * cols >= PARALLEL_MIN;
    let round = |v: &mut [T]| {
        if bf16 {
            each(parallel, v, |x| *x = round_bf16(*x));
        }
    };
    let tall = rows > cols;
    let (r, c) = if tall { (cols, rows) } else { (rows, cols) };
    let mut x: Vec<T> = if tall {
        transpose(update, rows, cols)
    } else {
        update.to_vec()
    };
    round(&mut x);
    let norm_sq: f64 = x.iter().map(|v| v.as_f64() * v.as_f64()).sum();
    let mut norm = T::from_f64(norm_sq.sqrt().max(eps));
    if bf16 {
        norm = round_bf16(norm);
    }
    each(parallel, &mut x, |v| *v = *v / norm);
    round(&mut x);
    let (a, b, cc) = NS_COEFFICIENTS;
    let (a, b, cc) = (T::from_f64(a), T::from_f64(b), T::from_f64(cc));
    let mut gram = vec![T::zero(); r * r];
    let mut gram2 = vec![T::zero(); r * r];
    let mut bx = vec![T::zero(); r * c];
    for _ in 0..steps {
        // A = X Xᵀ: B operand is Xᵀ, i.e. X with strides (1, c).
        matmul(r, c, r, &x, (&x, 1, c), &mut gram, true);
        round(&mut gram);
        matmul(r, r, r, &gram, (&gram, r, 1), &mut gram2, true);
        each2(parallel, &mut gram2, &gram, |g2, g| *g2 = b * g + cc * *g2);
        round(&mut gram2);
        matmul(r, r, c, &gram2, (&x, c, 1), &mut bx, false);
        each2(parallel, &mut x, &bx, |x, bx| *x = a * *x + bx);
        round(&mut x);
    }
    if tall { transpose(&x, r, c) } else { x }
}

/// The transpose of a row-major `rows` × `cols` matrix.
fn transpose<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); m.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = m[i * cols + j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The half-computed symmetric products are bit for bit the full ones.
    #[test]
    fn symmetric_products_equal_full_ones() {
        fn check<T: Real>() {
            let (r, c) = (150, 90);
            let x: Vec<T> = (0..r * c)
                .map(|i| T::from_f64((((i * 37) % 101) as f64 / 50.0 - 1.0) * 0.3))
                .collect();
            let (mut full, mut half) = (vec![T::zero(); r * r], vec![T::zero(); r * r]);
            matmul(r, c, r, &x, (&x, 1, c), &mut full, false);
            matmul(r, c, r, &x, (&x, 1, c), &mut half, true);
            assert!(full == half, "{} XXᵀ", T::NAME);
            let (mut full2, mut half2) = (vec![T::zero(); r * r], vec![T::zero(); r * r]);
            matmul(r, r, r, &full, (&full, r, 1), &mut full2, false);
            matmul(r, r, r, &full, (&full, r, 1), &mut half2, true);
            assert!(full2 == half2, "{} A²", T::NAME);
        }
        check::<f32>();
        check::<f64>();
    }
}
