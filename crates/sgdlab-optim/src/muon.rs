//! Muon (Jordan et al. 2024) as PyTorch's `torch.optim.Muon`: momentum, then the update
//! orthogonalised by a quintic Newton–Schulz iteration, for 2-D parameters.

use rayon::prelude::*;

use super::StepContext;
use super::rule::{MatrixRule, UpdateRule};
use super::spec::{SpecValue, check, config};
use crate::{Error, Real, Result};

/// The quintic Newton–Schulz coefficients (a, b, c) of PyTorch (and Keller Jordan's
/// reference): X ← aX + (bA + cA²)X with A = XXᵀ.
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// How Muon scales its learning rate by the matrix shape A×B (PyTorch's
/// `adjust_lr_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdjustLr {
    /// Keller Jordan's η√(max(1, A/B)) (PyTorch's default).
    #[default]
    Original,
    /// Moonshot's 0.2 η√(max(A, B)), matching AdamW's update RMS.
    MatchRmsAdamw,
    /// Bernstein's η√(A/B).
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
    /// B ← B + (1 − μ)(g − B); U = g + μ(B − g) with Nesterov, else B;
    /// O = NSₖ(U/max(‖U‖\_F, ε)), k quintic Newton–Schulz steps
    /// X ← aX + (bXXᵀ + c(XXᵀ)²)X on the wide orientation of U;
    /// Φ ← (1 − ηλ)Φ − η′O with η′ the shape-adjusted
    /// learning rate ([`AdjustLr`]). The iteration runs in the parameters' precision
    /// (`ns_bf16=true` rounds every product to bfloat16, as PyTorch computes it).
    Muon("muon") {
        /// Learning rate η ≥ 0.
        lr: f64 = 1e-3,
        /// Decoupled weight decay λ ≥ 0.
        weight_decay: f64 = 0.1,
        /// Momentum μ ∈ \[0, 1).
        momentum: f64 = 0.95,
        /// Nesterov momentum.
        nesterov: bool = true,
        /// Newton–Schulz steps k (1 to 99).
        ns_steps: u64 = 5,
        /// ε > 0, the floor of the norm the update is divided by.
        eps: f64 = 1e-7,
        /// The shape adjustment of the learning rate.
        adjust_lr: AdjustLr = AdjustLr::Original,
        /// Round the Newton–Schulz iteration to bfloat16 like PyTorch.
        ns_bf16: bool = false,
    }
}

impl Muon {
    /// η′ for a matrix of `rows` × `cols`.
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

    fn matrix<T: Real>(&self) -> Option<&dyn MatrixRule<T>> {
        Some(self)
    }

    /// Never called: Muon steps whole matrices ([`MatrixRule::step_matrix`]).
    fn step_tensor<T: Real>(
        &self,
        _ctx: &StepContext,
        _p: &mut [T],
        _g: &[T],
        _slots: &mut [&mut [T]],
        _scalars: &[f64],
    ) {
        unreachable!("muon steps whole matrices (step_matrix)")
    }
}

impl<T: Real> MatrixRule<T> for Muon {
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

    fn step_matrix(
        &self,
        ctx: &StepContext,
        shape: &[usize],
        p: &mut [T],
        g: &[T],
        slots: &mut [&mut [T]],
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

/// PyTorch's `lerp` as its CPU kernel computes it: a + w(b − a) for w < ½, else
/// b + (w − 1)(b − a), each one fused multiply-add (rounded once), with w and w − 1 in `T`.
/// `mul_add` is correctly rounded on every machine (hardware FMA or libm's `fma`), so the
/// bits are the same everywhere.
#[inline]
pub(crate) fn lerp<T: Real>(a: T, b: T, w: f64) -> T {
    let w = T::from_f64(w);
    if w < T::from_f64(0.5) {
        (b - a).mul_add(w, a)
    } else {
        (b - a).mul_add(w - T::one(), b)
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

/// Whether an m×k by k×n product runs its row blocks on the pool: when
/// m max(n, k) ≥ [`PARALLEL_MIN`]. Speed only: the blocks are the same either way.
fn parallel_product(m: usize, k: usize, n: usize) -> bool {
    m * n.max(k) >= PARALLEL_MIN
}

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

/// C = AB for row-major `a` (m×k), and `b` given as (k×n) with strides
/// `(rsb, csb)`; rows of C in parallel blocks of [`ROW_BLOCK`].
///
/// With `symmetric` (a square product known to be symmetric: XXᵀ, A² for symmetric
/// A), each row block computes only the columns from its first row on, and the rest is
/// mirrored: half the arithmetic, and the same bits (element (j, i) is the same products
/// summed in the same order as (i, j)).
pub(crate) fn matmul<T: Real>(
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
    if parallel_product(m, k, n) {
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
            // Row i's block computed its columns from the block's first row on.
            for j in 0..i / ROW_BLOCK * ROW_BLOCK {
                c[i * n + j] = c[j * n + i];
            }
        }
    }
}

/// The quintic Newton–Schulz iteration of `update` (`rows` × `cols`, row-major), as
/// PyTorch's `_zeropower_via_newtonschulz`: on the wide orientation (r ≤ c), X is
/// normalised by max(‖X‖\_F, ε), then `steps` times
/// A = XXᵀ, B = bA + cA², X ← aX + BX. Returns the result in the
/// original orientation. With `bf16`, the input and every product are rounded to bfloat16.
///
/// # Panics
/// If `update` does not have `rows` × `cols` elements.
pub fn newton_schulz<T: Real>(
    update: &[T],
    rows: usize,
    cols: usize,
    steps: usize,
    eps: f64,
    bf16: bool,
) -> Vec<T> {
    assert_eq!(
        update.len(),
        rows * cols,
        "newton_schulz: not a rows × cols matrix"
    );
    // Speed only: `each` gives the same bits either way.
    let parallel = update.len() >= PARALLEL_MIN;
    let round = |v: &mut [T]| {
        if bf16 {
            each(parallel, v, |x| *x = round_bf16(*x));
        }
    };
    let tall = works_transposed(rows, cols);
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

/// Whether [`newton_schulz`] works on the transpose: PyTorch's `if G.size(-2) > G.size(-1)`,
/// so that the Gram matrix XXᵀ is the smaller one, min(r, c)² elements; a square
/// matrix is not transposed. Either orientation gives the same result up to rounding (both
/// compute p(XXᵀ)X = X p(XᵀX)), so only the bits and the cost tell them apart.
fn works_transposed(rows: usize, cols: usize) -> bool {
    rows > cols
}

/// The transpose of a row-major `rows` × `cols` matrix.
pub(crate) fn transpose<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
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

    /// Products large enough for the parallel row blocks (m max(n, k) ≥
    /// [`PARALLEL_MIN`]) are the product by its definition, Cᵢⱼ = ΣₗAᵢₗBₗⱼ, to
    /// rounding: a general one with a transposed (strided) B, and a symmetric XXᵀ. (The
    /// thread-count test compares the parallel path only with itself; the reference
    /// trajectories' matrices are small enough for the serial one.)
    #[test]
    fn parallel_products_are_the_product() {
        let (m, k, n) = (300, 230, 250);
        assert!(parallel_product(m, k, n) && parallel_product(m, k, m));
        let entry = |i: usize, s: usize| (((i * 37 + s * 11) % 101) as f64 / 50.0 - 1.0) * 0.3;
        let a: Vec<f64> = (0..m * k).map(|i| entry(i, 1)).collect();
        // B (k × n) stored transposed: n × k row-major, so strides (1, k).
        let bt: Vec<f64> = (0..n * k).map(|i| entry(i, 2)).collect();
        let check = |c: &[f64], rows: usize, cols: usize, b: &dyn Fn(usize, usize) -> f64| {
            for i in 0..rows {
                for j in 0..cols {
                    let want: f64 = (0..k).map(|l| a[i * k + l] * b(l, j)).sum();
                    let got = c[i * cols + j];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                        "({i}, {j})"
                    );
                }
            }
        };
        let mut c = vec![0.0; m * n];
        matmul(m, k, n, &a, (&bt, 1, k), &mut c, false);
        check(&c, m, n, &|l, j| bt[j * k + l]);
        // X Xᵀ for X = A (m × k): B is Aᵀ, A with strides (1, k).
        let mut gram = vec![0.0; m * m];
        matmul(m, k, m, &a, (&a, 1, k), &mut gram, true);
        check(&gram, m, m, &|l, j| a[j * k + l]);
    }

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

    /// `adjust_lr`'s text is PyTorch's `adjust_lr_fn` names, and each reads back as itself
    /// (a spec prints its non-default values with `show`, and a checkpoint stores that text).
    #[test]
    fn adjust_lr_text_round_trips() {
        for (mode, text) in [
            (AdjustLr::Original, "original"),
            (AdjustLr::MatchRmsAdamw, "match_rms_adamw"),
            (AdjustLr::SpectralUnclamped, "spectral_unclamped"),
        ] {
            assert_eq!(mode.show(), text);
            assert_eq!(AdjustLr::parse_value("adjust_lr", text).unwrap(), mode);
            let spec: crate::OptimizerSpec = format!("muon:adjust_lr={text}").parse().unwrap();
            let printed = spec.to_string();
            // A spec prints what differs from the defaults.
            let shown = printed.contains(&format!("adjust_lr={text}"));
            assert_eq!(shown, mode != AdjustLr::default(), "{printed}");
            assert_eq!(printed.parse::<crate::OptimizerSpec>().unwrap(), spec);
        }
        let err = AdjustLr::parse_value("adjust_lr", "spectral").unwrap_err();
        assert!(err.to_string().contains("adjust_lr"), "{err}");
    }

    /// The orientation rule is PyTorch's: only a tall matrix is transposed (a square one
    /// would get its rounding from XᵀX instead of XXᵀ, and a tall one a Gram
    /// matrix of max(r, c)² elements, and neither shows beyond rounding).
    #[test]
    fn only_tall_matrices_are_transposed() {
        assert!(works_transposed(6, 4));
        assert!(works_transposed(2, 1));
        assert!(!works_transposed(4, 6));
        assert!(!works_transposed(5, 5));
        assert!(!works_transposed(1, 1));
    }

    /// `lerp` is PyTorch's CPU kernel bit for bit: `torch.lerp` (torch 2.15, float64 and
    /// float32 tensors) on a = 0.0137i − 7, b = 0.31(i mod 97) + 0.123 for
    /// i = 0, 41, … and w ∈ {0.05, 0.3, 0.5, 0.7, 0.95} (both branches, and
    /// w = 1/2, which takes the second: 9 of its 49 cases round differently in the first),
    /// recorded here: a fused multiply-add from the nearer end, which in about a third of
    /// these cases differs in the last bit from either unfused formula. (The reference
    /// trajectories' tolerance cannot see the last bit.)
    #[test]
    fn lerp_is_torchs_bit_for_bit() {
        const F64: [u64; 245] = [
            0xc01a934d6a161e4f,
            0xc01373d07c84b5dd,
            0xc00b820c49ba5e36,
            0xc0001c779a6b50b2,
            0xbfcdd7dbf487fcc5,
            0xc015e620ee8d10f5,
            0xbfe505681ecd4aac,
            0x4009942c3c9eecc0,
            0x401c34d940789612,
            0x4027bd269595fed9,
            0xc01138f47304039b,
            0x400c64ece9a2c668,
            0x4023aa9930be0ded,
            0x40301dfb9389b520,
            0x4037f8d64d7f0ed3,
            0xc0128f5d78811b1d,
            0xbff43f9c62a1b5c8,
            0x3ff6f1de69ad42c4,
            0x401088d64d7f0ed3,
            0x401e084cad57bc7f,
            0xc00bc461f9f01b85,
            0x40078678c0053e2e,
            0x402023c9eecbfb16,
            0x402a65f5ad96a6a0,
            0x40339c562e09fe86,
            0xc00e713404ea4a8b,
            0xbffdfc84b5dcc63e,
            0xbfd5126e978d4fd8,
            0x3ff3734d6a161e50,
            0x40092c985f06f694,
            0xc00516db0dd82fd7,
            0x4002a8049667b5f3,
            0x401939f559b3d07e,
            0x40248ff43419e301,
            0x402e7fac1d29dc73,
            0xbff779042d8c2a45,
            0x401a2725c3dee780,
            0x4029e288ce703afc,
            0x403358bf5d78811b,
            0x403b5a191148fd9f,
            0xbffcd2a843808851,
            0x3ffb9320d9945b6a,
            0x40122c56d5cfaace,
            0x401d73e5753a3ec0,
            0x4025c6abde3fbbd7,
            0xbfe43becaab8a5ce,
            0x4017b7ebaf102364,
            0x40265bb98c7e2824,
            0x40306dbea0ba1f4b,
            0x4036fd98f1d3ed52,
            0xbfeeef34d6a161e5,
            0x3ff1d63886594af5,
            0x40063d70a3d70a3e,
            0x4011c7e28240b780,
            0x401a1b573eab367a,
            0x3fc9e8bc169c23c2,
            0x401548b19a415f47,
            0x4022d4ea4a8c154d,
            0x402b057bc7f77af6,
            0x4032a118d25edd05,
            0xbfc0e4649906cc9d,
            0x3fe032a0663c74fd,
            0x3ff04467381d7dc0,
            0x3ff86f7e3d1cc101,
            0x400152ad81adea8a,
            0x3ff098255b035bd6,
            0x4012d97785729b27,
            0x401e9c36113404ea,
            0x40252f7a4e7ab755,
            0x402c893165d3996e,
            0x4001a66ba493c8a0,
            0x4021d64d7f0ed3d8,
            0x402c93a92a305533,
            0x4033a8826aa8eb46,
            0x403a5edbb59ddc1e,
            0x3ffdf33333333331,
            0x40106a3d70a3d70a,
            0x40178e978d4fdf3b,
            0x401eb2f1a9fbe76c,
            0x4023d03126e978d5,
            0x400853f290abb44e,
            0x40209eb074a771c9,
            0x40290cd9e83e425c,
            0x4030bd81adea8977,
            0x4036025b9628cbd2,
            0x4005a72085b18548,
            0x400bf606b7aa25d9,
            0x401080f9096bb98c,
            0x401306eeb702602d,
            0x40162e61cffeb075,
            0x400f01797cc39ffd,
            0x401ece26d4801f75,
            0x4025860aa64c2f84,
            0x402ba501e2584f4c,
            0x4031a5db76b3bb84,
            0x400c54a771c970f7,
            0x400717928e0c9d9d,
            0x4002e6b50b0f27bb,
            0x3ffd6baf102363b3,
            0x3ff2f18548a9bcfe,
            0x4012d780346dc5d6,
            0x401c5eecbfb15b57,
            0x4021ff3b645a1cac,
            0x4025cf0068db8bac,
            0x402a92b6ae7d566d,
            0x401784acaff6d331,
            0x402699081c2e33f0,
            0x402f44c985f06f6a,
            0x4033f84577d95572,
            0x4039639e59f2ba9e,
            0x40162e43aa79bbae,
            0x4019efb2aae29739,
            0x401cf0d844d013a9,
            0x401ff1fddebd9018,
            0x4021d9b66f9335d2,
            0x401adb702602c908,
            0x4025616b11c6d1e1,
            0x402bbdfa43fe5c92,
            0x40310d44bb1af3a1,
            0x4035071e3a7daa50,
            0x401985072085b186,
            0x401780789613d31c,
            0x4015e339c0ebedfa,
            0x401445faebc408d9,
            0x4012416c61522a6f,
            0x401e32339c0ebee0,
            0x402429ce075f6fd3,
            0x4028372b020c49bb,
            0x402c4487fcb923a3,
            0x4030aa9e1b089a03,
            0x40216fb00bcbe61d,
            0x402c935fc3b4f616,
            0x4032be5c91d14e3c,
            0x4037330941c8216c,
            0x403cc4e11dbca969,
            0x4020c47b890d5a5c,
            0x4022f230fcf80dc3,
            0x4024b05bc01a36e3,
            0x40266e86833c6002,
            0x40289c3bf727136a,
            0x40231b11c6d1e109,
            0x402b5bc2b94d9408,
            0x4030faf4f0d844d0,
            0x403448088509bf9c,
            0x40386860fe47991c,
            0x40226fdd44135548,
            0x4021ba93f290abb5,
            0x4021298c7e28240c,
            0x4020988509bf9c63,
            0x401fc6777079e5a0,
            0x4024c67381d7dbf4,
            0x402a2425aee631f9,
            0x402e6f1a9fbe76c9,
            0x40315d07c84b5dcd,
            0x40340be0ded288cf,
            0x40241b3eff195034,
            0x402082f6e82949a6,
            0x401b457a786c2268,
            0x401585072085b186,
            0x400ca8ede54b48d4,
            0x402671d53cddd6e0,
            0x4028ec88a47ecfe9,
            0x402ae84b5dcc63f1,
            0x402ce40e1719f7f8,
            0x402f5ec17ebaf102,
            0x4028c86b7aa25d8e,
            0x4030ab0d306a2b17,
            0x403416ecbfb15b58,
            0x403782cc4ef88b97,
            0x403bc9a3c21187e8,
            0x40281d36f7e3d1cc,
            0x4027b4eb9a176ddb,
            0x4027617c1bda511a,
            0x40270e0c9d9d3459,
            0x4026a5c13fd0d067,
            0x402a73cd35a8587a,
            0x40300f3eab367a10,
            0x403253851eb851ec,
            0x403497cb923a29c8,
            0x40376d23a29c779b,
            0x4029c898b2e9ccb8,
            0x40267d4e8fb00bcc,
            0x4023daacd9e83e42,
            0x4021380b242070b9,
            0x401bd98201cd5f9a,
            0x402c1f2ef0ae5366,
            0x402ee6e04c059211,
            0x4030901d7dbf4880,
            0x4031accad57bc7f8,
            0x403310a38327674d,
            0x402b73fa6defc7a3,
            0x402545b18548a9bd,
            0x402053dd97f62b6b,
            0x4016c41355475a32,
            0x4004cf0307f23cca,
            0x402dca90abb44e52,
            0x402daf43419e3002,
            0x402d996bb98c7e28,
            0x402d8394317acc4f,
            0x402d6846c764adff,
            0x4030109374bc6a7f,
            0x40330c6a7ef9db23,
            0x40356f7ced916873,
            0x4037d28f5c28f5c3,
            0x403ace6666666667,
            0x402f75f266ba493d,
            0x402c77a63736cdf3,
            0x402a129c779a6b51,
            0x4027ad92b7fe08af,
            0x4024af46887a8d65,
            0x4030e644523f67f5,
            0x4032709bf9c62a1b,
            0x4033ac154c985f07,
            0x4034e78e9f6a93f3,
            0x403671e646f15619,
            0x403090aa10e02215,
            0x402b40092ccf6be4,
            0x40268bcd35a8587a,
            0x4021d7913e81450f,
            0x4017ec8c9320d995,
            0x4031bbf52fc2656b,
            0x4031d4cd74927914,
            0x4031e8adab9f559c,
            0x4031fc8de2ac3223,
            0x40321566277c45cc,
            0x4031665aee631f8b,
            0x402a086c226809d5,
            0x402304fdf3b645a3,
            0x4018031f8a0902e0,
            0x3ff9ea3055326180,
            0x403291a60d4562e1,
            0x403138feef5ec80d,
            0x403025460aa64c30,
            0x402e231a4bdba0a5,
            0x402b71cc100e6afd,
            0x4033bcf12c27a638,
            0x40356dc7cd898b2f,
            0x4036c80d1b71758e,
            0x4038225269595fee,
            0x4039d3290abb44e5,
            0x40336756eac86057,
            0x40309d306a2b1705,
            0x402cc3bcd35a8588,
            0x40284d18d25edd05,
            0x4022b8cbd1244a62,
        ];
        const F32: [u32; 245] = [
            0xc0d49a6b, 0xc09b9e84, 0xc05c1063, 0xc000e3bd, 0xbe6ebee6, 0xc0af3108, 0xbf282b39,
            0x404ca160, 0x40e1a6c9, 0x413de935, 0xc089c7a3, 0x40632769, 0x411d54c9, 0x4180efdc,
            0x41bfc6b2, 0xc0947aec, 0xbfa1fce1, 0x3fb78ef0, 0x408446b1, 0x40f04264, 0xc05e2310,
            0x403c33c7, 0x41011e4f, 0x41532fad, 0x419ce2b1, 0xc07389a1, 0xbfefe426, 0xbea89378,
            0x3f9b9a6a, 0x404964c3, 0xc028b6d9, 0x40154026, 0x40c9cfaa, 0x41247fa1, 0x4173fd61,
            0xbfbbc821, 0x40d1392e, 0x414f1446, 0x419ac5fa, 0x41dad0c8, 0xbfe69543, 0x3fdc9909,
            0x409162b7, 0x40eb9f2c, 0x412e355f, 0xbf21df65, 0x40bdbf5e, 0x4132ddcc, 0x41836df5,
            0x41b7ecc7, 0xbf7779a7, 0x3f8eb1c5, 0x4031eb84, 0x408e3f13, 0x40d0dab9, 0x3e4f45e1,
            0x40aa458e, 0x4116a752, 0x41582bde, 0x419508c6, 0xbe072326, 0x3f019503, 0x3f82233a,
            0x3fc37bf2, 0x400a956c, 0x3f84c12b, 0x4096cbbd, 0x40f4e1b1, 0x41297bd3, 0x4164498b,
            0x400d335d, 0x410eb26c, 0x41649d49, 0x419d4413, 0x41d2f6dd, 0x3fef999a, 0x408351ec,
            0x40bc74bc, 0x40f5978d, 0x411e8189, 0x40429f95, 0x4104f584, 0x414866cf, 0x4185ec0d,
            0x41b012dc, 0x402d3904, 0x405fb036, 0x408407c8, 0x40983776, 0x40b1730f, 0x40780bcc,
            0x40f67137, 0x412c3055, 0x415d280f, 0x418d2edc, 0x4062a53c, 0x4038bc95, 0x401735a8,
            0x3feb5d79, 0x3f978c2a, 0x4096bc02, 0x40e2f766, 0x410ff9db, 0x412e7803, 0x415495b5,
            0x40bc2566, 0x4134c841, 0x417a264c, 0x419fc22b, 0x41cb1cf2, 0x40b1721d, 0x40cf7d95,
            0x40e786c2, 0x40ff8fef, 0x410ecdb3, 0x40d6db81, 0x412b0b59, 0x415defd2, 0x41886a26,
            0x41a838f2, 0x40cc2839, 0x40bc03c5, 0x40af19ce, 0x40a22fd7, 0x40920b63, 0x40f1919d,
            0x41214e71, 0x4141b958, 0x41622440, 0x418554f1, 0x410b7d80, 0x41649afe, 0x4195f2e4,
            0x41b9984a, 0x41e62709, 0x410623dd, 0x41179188, 0x412582de, 0x41337434, 0x4144e1df,
            0x4118d88e, 0x415ade16, 0x4187d7a8, 0x41a24044, 0x41c34308, 0x41137eea, 0x410dd4a0,
            0x41094c64, 0x4104c428, 0x40fe33bc, 0x4126339c, 0x4151212e, 0x417378d5, 0x418ae83e,
            0x41a05f07, 0x4120d9f8, 0x410417b7, 0x40da2bd4, 0x40ac2839, 0x40654770, 0x41338ea9,
            0x41476445, 0x4157425a, 0x41672070, 0x417af60b, 0x4146435c, 0x4185586a, 0x41a0b766,
            0x41bc1662, 0x41de4d1e, 0x4140e9b8, 0x413da75d, 0x413b0be1, 0x41387065, 0x41352e0a,
            0x41539e6a, 0x418079f5, 0x41929c29, 0x41a4be5d, 0x41bb691d, 0x414e44c6, 0x4133ea74,
            0x411ed567, 0x4109c059, 0x40decc10, 0x4160f977, 0x41773702, 0x418480ec, 0x418d6657,
            0x4198851c, 0x415b9fd3, 0x412a2d8c, 0x41029eed, 0x40b6209b, 0x40267819, 0x416e5485,
            0x416d7a1a, 0x416ccb5e, 0x416c1ca1, 0x416b4236, 0x4180849c, 0x41986354, 0x41ab7be8,
            0x41be947b, 0x41d67333, 0x417baf93, 0x4163bd31, 0x415094e4, 0x413d6c96, 0x41257a35,
            0x41873223, 0x419384e0, 0x419d60aa, 0x41a73c75, 0x41b38f32, 0x41848550, 0x415a0048,
            0x41345e6a, 0x410ebc8a, 0x40bf6465, 0x418ddfa9, 0x418ea66c, 0x418f456e, 0x418fe46f,
            0x4190ab32, 0x418b32d8, 0x41504361, 0x411827f0, 0x40c018fd, 0x3fcf5184, 0x41948d30,
            0x4189c7f7, 0x41812a30, 0x417118d2, 0x415b8e61, 0x419de78a, 0x41ab6e3f, 0x41b64069,
            0x41c11293, 0x41ce9948, 0x419b3ab7, 0x4184e983, 0x41661de6, 0x414268c7, 0x4115c65f,
        ];
        let cases = (0..2000u32).step_by(41).flat_map(|i| {
            let (a, b) = (
                f64::from(i) * 0.0137 - 7.0,
                f64::from(i % 97) * 0.31 + 0.123,
            );
            [0.05, 0.3, 0.5, 0.7, 0.95].map(|w| (a, b, w))
        });
        let mut unfused_differs = 0;
        for (k, (a, b, w)) in cases.enumerate() {
            assert_eq!(lerp(a, b, w).to_bits(), F64[k], "f64 {a} {b} {w}");
            let got = lerp(a as f32, b as f32, w);
            assert_eq!(got.to_bits(), F32[k], "f32 {a} {b} {w}");
            let unfused = if w < 0.5 {
                a + w * (b - a)
            } else {
                b - (b - a) * (1.0 - w)
            };
            unfused_differs += usize::from(unfused.to_bits() != F64[k]);
        }
        assert_eq!(F64.len(), 245);
        assert!(unfused_differs > 20, "{unfused_differs}");
    }
}
