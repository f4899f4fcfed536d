//! The gradient noise scale (McCandlish, Kaplan, Amodei et al., "An empirical model of
//! large-batch training", 2018), from exact per-example gradients.
//!
//! With per-example gradients gᵢ (i = 1…n) at Φ, the true gradient G = E\[g\] and the per-example
//! covariance Σ = E\[(g − G)(g − G)ᵀ\], a minibatch of B examples has the gradient noise Σ/B,
//! and the *simple noise scale*
//!
//! B\_simple = tr Σ / |G|²
//!
//! is the batch size at which the noise and the signal are of one size: the critical batch
//! size, past which a larger batch stops saving steps, when the Hessian is isotropic.
//!
//! [`gradient_noise`] treats the n examples as a sample from the data distribution and
//! reports unbiased estimates:
//!
//! * tr Σ̂ = (1/(n − 1)) Σᵢ |gᵢ − ḡ|², with ḡ = (1/n) Σᵢ gᵢ;
//! * |G|²̂ = |ḡ|² − tr Σ̂/n, since E|ḡ|² = |G|² + tr Σ/n (the mean of n noisy gradients is
//!   itself noisy; without the correction a small sample overstates |G|², and understates
//!   B\_simple, by tr Σ/n);
//!
//! and B\_simple = tr Σ̂/|G|²̂ (none when |G|²̂ ≤ 0: the gradient is lost in its own noise).
//! The data set's own values — what SGD sampling from the finite set sees — are reported
//! beside them ([`NoiseScale::data_trace`], [`NoiseScale::data_grad_sq`]).
//!
//! Every quantity is given for the whole parameter vector and for each named group (a
//! network's `layer0.weight`, `layer0.bias`, ...). The sums run over fixed chunks of examples,
//! combined in order (Chan, Golub and LeVeque's pairwise update of the sum of squared
//! deviations), so the numbers do not depend on the thread count.

use std::ops::Range;

use rayon::prelude::*;
use serde::Serialize;

use crate::model::Model;
use crate::{Error, Result};

/// Examples per chunk of the sums (fixed, so that results do not depend on the thread count).
const CHUNK: usize = 32;
/// Chunks computed in parallel before they are folded into the running totals (bounds the
/// memory to this many gradient-sized buffers).
const WINDOW: usize = 64;

/// The gradient noise of one group of parameters (or of all of them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseScale {
    /// The group's name (`all` for the whole parameter vector).
    pub name: String,
    /// Its number of parameters.
    pub params: usize,
    /// tr Σ̂: the unbiased estimate of the per-example gradient covariance's trace.
    pub trace: f64,
    /// |G|²̂: the unbiased estimate of the true gradient's squared norm (may be ≤ 0 where the
    /// gradient is below its noise).
    pub grad_sq: f64,
    /// B\_simple = tr Σ̂/|G|²̂, or none when |G|²̂ ≤ 0.
    pub b_simple: Option<f64>,
    /// The data set's own (1/n) Σᵢ|gᵢ − ḡ|².
    pub data_trace: f64,
    /// The data set's own |ḡ|².
    pub data_grad_sq: f64,
}

/// [`gradient_noise`]'s result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseReport {
    /// Examples the gradients were taken over.
    pub examples: usize,
    /// Mean loss over them.
    pub loss: f64,
    /// The whole parameter vector.
    pub total: NoiseScale,
    /// Each group, in order.
    pub groups: Vec<NoiseScale>,
}

/// Contiguous groups of parameters from their names: a name's index suffix (`[12]`, or the
/// trailing digits of `w12`/`phi3`) is dropped, and runs of equal stems form a group
/// (`layer0.weight[0..]` → `layer0.weight`; `w0, w1, b` → `w`, `b`).
pub fn parameter_groups(names: &[String]) -> Vec<(String, Range<usize>)> {
    let stem = |name: &str| -> String {
        match name.find('[') {
            Some(k) => name[..k].to_string(),
            None => {
                let t = name.trim_end_matches(|c: char| c.is_ascii_digit());
                if t.is_empty() { name } else { t }.to_string()
            }
        }
    };
    let mut groups: Vec<(String, Range<usize>)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let s = stem(name);
        match groups.last_mut() {
            Some((last, range)) if *last == s => range.end = i + 1,
            _ => groups.push((s, i..i + 1)),
        }
    }
    groups
}

/// `k` of the examples `0..n`, drawn without replacement with `seed`, in increasing order
/// (all of them when `k ≥ n`).
pub fn sample_examples(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut rng = crate::rng::chain_rng(seed, u64::MAX);
    let mut idx = rand::seq::index::sample(&mut rng, n, k).into_vec();
    idx.sort_unstable();
    idx
}

/// Running sums over a set of examples: count, mean gradient, mean loss, and per group the
/// sum of squared deviations from the mean.
#[derive(Clone, Debug)]
struct Moments {
    n: usize,
    mean: Vec<f64>,
    loss: f64,
    m2: Vec<f64>,
}

impl Moments {
    fn empty(dim: usize, groups: usize) -> Self {
        Self {
            n: 0,
            mean: vec![0.0; dim],
            loss: 0.0,
            m2: vec![0.0; groups],
        }
    }

    /// Adds one example (Welford's update; `scratch` holds each coordinate's contribution,
    /// summed per group, since the groups may overlap).
    fn push(&mut self, loss: f64, g: &[f64], groups: &[Range<usize>], scratch: &mut [f64]) {
        self.n += 1;
        let k = self.n as f64;
        self.loss += (loss - self.loss) / k;
        for ((m, &x), c) in self.mean.iter_mut().zip(g).zip(scratch.iter_mut()) {
            let before = x - *m;
            *m += before / k;
            *c = before * (x - *m);
        }
        for (m2, r) in self.m2.iter_mut().zip(groups) {
            *m2 += scratch[r.clone()].iter().sum::<f64>();
        }
    }

    /// Merges `other` (the examples after these) into `self` (Chan et al.'s pairwise update).
    fn merge(&mut self, other: &Moments, groups: &[Range<usize>]) {
        if other.n == 0 {
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        for ((m2, &m2b), r) in self.m2.iter_mut().zip(&other.m2).zip(groups) {
            let d2: f64 = self.mean[r.clone()]
                .iter()
                .zip(&other.mean[r.clone()])
                .map(|(a, b)| (b - a) * (b - a))
                .sum();
            *m2 += m2b + d2 * na * nb / n;
        }
        for (a, &b) in self.mean.iter_mut().zip(&other.mean) {
            *a += (b - *a) * nb / n;
        }
        self.loss += (other.loss - self.loss) * nb / n;
        self.n += other.n;
    }
}

/// The gradient noise of `model` at `phi` over the examples `examples` (all when `None`), for
/// the whole vector and each of `groups` (name and index range; they must lie in
/// `0..model.dim()`). See the [module docs](self) for the estimates.
///
/// Errors on fewer than two examples, a `phi` of the wrong length, a group outside the
/// parameters, an example index out of range, or a non-finite loss or gradient (naming the
/// example).
pub fn gradient_noise(
    model: &dyn Model<f64>,
    phi: &[f64],
    groups: &[(String, Range<usize>)],
    examples: Option<&[usize]>,
) -> Result<NoiseReport> {
    let d = model.dim();
    if phi.len() != d {
        return Err(Error::ShapeMismatch {
            what: "parameters of the noise scale".to_string(),
            expected: d,
            got: phi.len(),
        });
    }
    if let Some((i, &x)) = phi.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "parameters".to_string(),
            index: i,
            value: x,
        });
    }
    for (name, r) in groups {
        if r.start >= r.end || r.end > d {
            return Err(Error::invalid(
                format!("parameter group `{name}`"),
                format!("{}..{}", r.start, r.end),
                format!("must be a non-empty range within the {d} parameters"),
            ));
        }
    }
    let all: Vec<usize>;
    let examples = match examples {
        Some(e) => e,
        None => {
            all = (0..model.examples()).collect();
            &all
        }
    };
    if let Some(&i) = examples.iter().find(|&&i| i >= model.examples()) {
        return Err(Error::invalid(
            "example",
            i,
            format!("must be below the {} examples", model.examples()),
        ));
    }
    let n = examples.len();
    if n < 2 {
        return Err(Error::invalid(
            "examples",
            n,
            "the noise scale needs at least 2 examples",
        ));
    }
    // The groups' ranges, then the whole vector as the last "group".
    let mut ranges: Vec<Range<usize>> = groups.iter().map(|(_, r)| r.clone()).collect();
    ranges.push(0..d);
    let mut total = Moments::empty(d, ranges.len());
    let chunks: Vec<&[usize]> = examples.chunks(CHUNK).collect();
    for window in chunks.chunks(WINDOW) {
        let parts: Vec<Result<Moments>> = window
            .par_iter()
            .map(|chunk| {
                let mut m = Moments::empty(d, ranges.len());
                let (mut g, mut scratch) = (vec![0.0; d], vec![0.0; d]);
                for &i in *chunk {
                    let loss = model.loss_grad(phi, i, &mut g);
                    if !loss.is_finite() {
                        return Err(Error::Data(format!(
                            "example {i}: the loss is {loss} at these parameters"
                        )));
                    }
                    if let Some((j, &x)) = g.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                        return Err(Error::NonFinite {
                            what: format!("gradient of example {i}"),
                            index: j,
                            value: x,
                        });
                    }
                    m.push(loss, &g, &ranges, &mut scratch);
                }
                Ok(m)
            })
            .collect();
        for part in parts {
            total.merge(&part?, &ranges);
        }
    }
    let nf = n as f64;
    let scale = |name: String, k: usize, r: &Range<usize>| {
        let data_grad_sq: f64 = total.mean[r.clone()].iter().map(|x| x * x).sum();
        let data_trace = total.m2[k] / nf;
        let trace = total.m2[k] / (nf - 1.0);
        let grad_sq = data_grad_sq - trace / nf;
        NoiseScale {
            name,
            params: r.len(),
            trace,
            grad_sq,
            b_simple: (grad_sq > 0.0).then(|| trace / grad_sq),
            data_trace,
            data_grad_sq,
        }
    };
    let groups_out = groups
        .iter()
        .enumerate()
        .map(|(k, (name, r))| scale(name.clone(), k, r))
        .collect();
    Ok(NoiseReport {
        examples: n,
        loss: total.loss,
        total: scale("all".to_string(), ranges.len() - 1, &(0..d)),
        groups: groups_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::model::{LinReg, Points};

    fn points(rows: &[[f64; 2]]) -> Points {
        let x: Vec<f64> = rows.iter().flatten().copied().collect();
        Points::new(Dataset::new(x, None, 2).unwrap())
    }

    /// The definitions written out over the examples, with every gradient stored.
    fn by_definition(model: &dyn Model<f64>, phi: &[f64], r: Range<usize>) -> (f64, f64) {
        let n = model.examples();
        let grads: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut g = vec![0.0; model.dim()];
                model.loss_grad(phi, i, &mut g);
                g[r.clone()].to_vec()
            })
            .collect();
        let mean: Vec<f64> = (0..r.len())
            .map(|j| grads.iter().map(|g| g[j]).sum::<f64>() / n as f64)
            .collect();
        let ss: f64 = grads
            .iter()
            .map(|g| {
                g.iter()
                    .zip(&mean)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
            })
            .sum();
        (ss / n as f64, mean.iter().map(|m| m * m).sum())
    }

    #[test]
    fn points_by_hand() {
        // g_i = Φ − x_i: at Φ = 0 the gradients are −x_i.
        let m = points(&[[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]]);
        let r = gradient_noise(&m, &[0.0, 0.0], &[], None).unwrap();
        // mean (2, 2); deviations (−1,−2), (1,0), (0,2): Σ|·|² = 5 + 1 + 4 = 10.
        assert!((r.total.data_trace - 10.0 / 3.0).abs() < 1e-12);
        assert!((r.total.trace - 5.0).abs() < 1e-12);
        assert!((r.total.data_grad_sq - 8.0).abs() < 1e-12);
        assert!((r.total.grad_sq - (8.0 - 5.0 / 3.0)).abs() < 1e-12);
        let b = r.total.b_simple.unwrap();
        assert!((b - 5.0 / (8.0 - 5.0 / 3.0)).abs() < 1e-12, "{b}");
        // Mean loss ½|x|²: (1 + 13 + 20)/6.
        assert!((r.loss - 34.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn groups_and_chunks_agree_with_the_definition() {
        // More examples than a window of chunks, so that chunks and windows are merged.
        let n = CHUNK * WINDOW + 77;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = i as f64;
            x.extend([
                (t * 0.37).sin(),
                (t * 1.3).cos() * 2.0,
                (t * 0.11).sin() + 5.0,
            ]);
            y.push((t * 0.7).sin());
        }
        let m = LinReg::new(Dataset::new(x, Some(y), 3).unwrap(), true).unwrap();
        let phi = [0.3, -0.2, 0.1, 0.05];
        let names = Model::<f64>::parameter_names(&m);
        let groups = parameter_groups(&names);
        assert_eq!(
            groups,
            vec![("w".to_string(), 0..3), ("b".to_string(), 3..4)]
        );
        let r = gradient_noise(&m, &phi, &groups, None).unwrap();
        for (s, range) in r.groups.iter().zip([0..3, 3..4]) {
            let (trace, g2) = by_definition(&m, &phi, range.clone());
            assert!((s.data_trace - trace).abs() < 1e-10 * trace, "{s:?}");
            assert!((s.data_grad_sq - g2).abs() < 1e-10 * g2.max(1e-3), "{s:?}");
            assert_eq!(s.params, range.len());
        }
        // The mean loss, over every chunk.
        let mut g = vec![0.0; 4];
        let loss = (0..n).map(|i| m.loss_grad(&phi, i, &mut g)).sum::<f64>() / n as f64;
        assert!((r.loss - loss).abs() < 1e-12 * loss, "{} {loss}", r.loss);
        // The whole vector's values are the groups' sums.
        let sum: f64 = r.groups.iter().map(|s| s.trace).sum();
        assert!((r.total.trace - sum).abs() < 1e-10 * sum);
        // A subset of the examples is the model restricted to them.
        let subset: Vec<usize> = (0..n).step_by(7).collect();
        let part = gradient_noise(&m, &phi, &groups, Some(&subset)).unwrap();
        assert_eq!(part.examples, subset.len());
        assert!((part.total.trace - r.total.trace).abs() > 1e-9);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let n = CHUNK * WINDOW * 2 + 5;
        let x: Vec<f64> = (0..2 * n).map(|i| ((i * i) as f64 * 0.013).sin()).collect();
        let m = Points::new(Dataset::new(x, None, 2).unwrap());
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gradient_noise(&m, &[0.1, 0.2], &[], None).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(8));
    }

    #[test]
    fn bad_inputs_are_named() {
        let m = points(&[[1.0, 0.0], [3.0, 2.0]]);
        let err = |phi: &[f64], groups: &[(String, Range<usize>)], ex: Option<&[usize]>| {
            gradient_noise(&m, phi, groups, ex).unwrap_err().to_string()
        };
        assert!(err(&[0.0], &[], None).contains("expected 2"));
        assert!(err(&[f64::NAN, 0.0], &[], None).contains("parameters"));
        assert!(err(&[0.0; 2], &[("w".into(), 1..3)], None).contains("`w`"));
        assert!(err(&[0.0; 2], &[("w".into(), 1..1)], None).contains("`w`"));
        assert!(err(&[0.0; 2], &[], Some(&[0])).contains("at least 2"));
        assert!(err(&[0.0; 2], &[], Some(&[0, 2])).contains("below the 2"));
        // A model whose example 1 has an overflowing gradient, then an overflowing loss.
        struct Overflows(bool);
        impl Model<f64> for Overflows {
            fn dim(&self) -> usize {
                1
            }
            fn examples(&self) -> usize {
                3
            }
            fn loss_grad(&self, _: &[f64], i: usize, g: &mut [f64]) -> f64 {
                let bad = if i == 1 { f64::INFINITY } else { 1.0 };
                g[0] = if self.0 { bad } else { 1.0 };
                if self.0 { 1.0 } else { bad }
            }
            fn parameter_names(&self) -> Vec<String> {
                vec!["x".into()]
            }
        }
        let e = gradient_noise(&Overflows(true), &[0.0], &[], None).unwrap_err();
        assert!(e.to_string().contains("gradient of example 1"), "{e}");
        let e = gradient_noise(&Overflows(false), &[0.0], &[], None).unwrap_err();
        assert!(e.to_string().contains("example 1: the loss is inf"), "{e}");
    }

    #[test]
    fn a_gradient_below_its_noise_has_no_noise_scale() {
        // At the mean, ḡ = 0: |G|²̂ = −tr Σ̂/n < 0.
        let m = points(&[[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]]);
        let r = gradient_noise(&m, &[2.0, 2.0], &[], None).unwrap();
        assert!(r.total.grad_sq < 0.0);
        assert_eq!(r.total.b_simple, None);
        // On {0, 2} at Φ = 0: |ḡ|² = 1 = tr Σ̂/n exactly; |G|²̂ = 0 has no noise scale either.
        let m = points(&[[0.0, 0.0], [2.0, 0.0]]);
        let r = gradient_noise(&m, &[0.0, 0.0], &[], None).unwrap();
        assert_eq!(r.total.grad_sq, 0.0);
        assert_eq!(r.total.b_simple, None);
        // Two examples are enough.
        assert_eq!(r.examples, 2);
    }

    #[test]
    fn samples_are_seeded_distinct_and_sorted() {
        let a = sample_examples(1000, 50, 7);
        assert_eq!(a, sample_examples(1000, 50, 7));
        assert_ne!(a, sample_examples(1000, 50, 8));
        assert_eq!(a.len(), 50);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[49] < 1000);
        assert_eq!(sample_examples(3, 5, 0), vec![0, 1, 2]);
    }

    #[test]
    fn stems_of_names() {
        let names: Vec<String> = [
            "layer0.weight[0]",
            "layer0.weight[1]",
            "layer0.bias[0]",
            "phi0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            parameter_groups(&names),
            vec![
                ("layer0.weight".to_string(), 0..2),
                ("layer0.bias".to_string(), 2..3),
                ("phi".to_string(), 3..4)
            ]
        );
        assert_eq!(
            parameter_groups(&["7".to_string()]),
            vec![("7".to_string(), 0..1)]
        );
    }
}
