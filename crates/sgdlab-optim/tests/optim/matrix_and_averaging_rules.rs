//! Muon (whole-matrix steps) and Schedule-Free (an evaluation point other than the
//! parameters): shape checks, thread-count independence, the eval/train swap.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::Real;
use sgdlab_optim::group::GroupSpec;
use sgdlab_optim::muon::{newton_schulz, round_bf16};
use sgdlab_optim::{Optimizer, OptimizerSpec, ParamMut, StepInfo, Tensor};

fn matrix<T: Real>(name: &str, rows: usize, cols: usize, seed: usize) -> Tensor<T> {
    let v = (0..rows * cols)
        .map(|i| T::from_f64((((i * 37 + seed * 11) % 101) as f64 / 50.0 - 1.0) * 0.3))
        .collect();
    Tensor::new(name, vec![rows, cols], v).unwrap()
}

fn grads<T: Real>(params: &[Tensor<T>], t: usize) -> Vec<Tensor<T>> {
    params
        .iter()
        .map(|p| {
            let mut g = p.zeros_like();
            for (i, (g, &x)) in g.data_mut().iter_mut().zip(p.data()).enumerate() {
                *g = x + T::from_f64((((i + t * 13) % 29) as f64 - 14.0) * 0.01);
            }
            g
        })
        .collect()
}

#[test]
fn muon_refuses_non_matrices_by_name_and_groups_route_them() {
    let mut params = vec![
        matrix::<f64>("w", 3, 4, 0),
        Tensor::vector("b", vec![0.1, 0.2, 0.3]),
    ];
    let g = grads(&params, 0);
    let mut opt = Optimizer::<f64>::from_spec("muon:lr=0.02").unwrap();
    let err = opt
        .step(&mut params, &g, &StepInfo::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("parameter b") && err.contains("[3]"), "{err}");
    // Nothing moved.
    assert_eq!(params[1].data(), &[0.1, 0.2, 0.3]);
    let groups = vec!["b:rule=adamw".parse::<GroupSpec>().unwrap()];
    let spec: OptimizerSpec = "muon:lr=0.02".parse().unwrap();
    let mut opt = Optimizer::<f64>::with_groups(spec, groups).unwrap();
    opt.step(&mut params, &g, &StepInfo::default()).unwrap();
    assert!(
        params
            .iter()
            .all(|p| p.data().iter().all(|x| x.is_finite()))
    );
    assert_ne!(params[1].data(), &[0.1, 0.2, 0.3]);
}

#[test]
fn muon_gives_the_same_bits_for_any_thread_count() {
    fn run<T: Real>(threads: usize, bf16: bool) -> Vec<Tensor<T>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            // Tall (parallel: over 65,536 elements) and wide (on the calling thread), each spanning
            // several row blocks.
            let mut p = vec![matrix::<T>("a", 300, 230, 1), matrix::<T>("b", 70, 260, 2)];
            let spec = format!("muon:lr=0.02,ns_bf16={bf16}");
            let mut opt = Optimizer::<T>::from_spec(&spec).unwrap();
            for t in 0..3 {
                let g = grads(&p, t);
                opt.step(&mut p, &g, &StepInfo::default()).unwrap();
            }
            p
        })
    }
    for bf16 in [false, true] {
        let one = run::<f32>(1, bf16);
        assert_eq!(one, run::<f32>(3, bf16), "f32 bf16={bf16}");
        let one = run::<f64>(1, bf16);
        assert_eq!(one, run::<f64>(4, bf16), "f64 bf16={bf16}");
    }
}

/// The singular values of XᵀX's square roots: the iteration keeps the singular
/// vectors, so OᵀO has eigenvalues σᵢ²; their trace and Frobenius norm are
/// enough to check the band loosely here (the lab measures it exactly).
#[test]
fn newton_schulz_output_is_near_orthogonal_and_bf16_rounds() {
    let g = matrix::<f64>("g", 40, 24, 3);
    let o = newton_schulz(g.data(), 40, 24, 5, 1e-7, false);
    // OᵀO (24×24): its diagonal mean is the mean σ², which the quintic puts near 1.
    let mut diag = 0.0;
    for j in 0..24 {
        diag += (0..40).map(|i| o[i * 24 + j].powi(2)).sum::<f64>();
    }
    let mean_sq = diag / 24.0;
    assert!((0.5..1.5).contains(&mean_sq), "{mean_sq}");
    let o16 = newton_schulz(g.data(), 40, 24, 5, 1e-7, true);
    assert!(o16.iter().all(|&x| round_bf16(x) == x));
    let diff = o
        .iter()
        .zip(&o16)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff > 0.0 && diff < 0.05, "{diff}");
    // bf16 rounding: ties to even, exact values stay.
    assert_eq!(round_bf16(1.0f32), 1.0);
    assert_eq!(round_bf16(1.0f32 + 2f32.powi(-8)), 1.0);
    assert_eq!(
        round_bf16(1.0f32 + 3.0 * 2f32.powi(-8)),
        1.0 + 2f32.powi(-6)
    );
}

#[test]
fn schedule_free_swaps_to_x_and_back_bit_for_bit() {
    for spec in [
        "sf-sgd:lr=0.1,warmup_steps=3",
        "sf-adamw:lr=0.01,weight_decay=0.1",
    ] {
        let mut p = vec![matrix::<f32>("w", 5, 7, 4), matrix::<f32>("v", 3, 3, 5)];
        let mut opt = Optimizer::<f32>::from_spec(spec).unwrap();
        for t in 0..5 {
            let g = grads(&p, t);
            opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        }
        let y = p.clone();
        let x: Vec<Vec<f32>> = (0..2)
            .map(|k| opt.eval_point(k).unwrap().to_vec())
            .collect();
        assert_ne!(x[0], y[0].data(), "{spec}: x and y differ after warm-up");
        assert!(!opt.in_eval_mode(), "{spec}: in train mode until eval_mode");
        let mut views: Vec<ParamMut<'_, f32>> = p.iter_mut().map(ParamMut::from).collect();
        opt.eval_mode(&mut views).unwrap();
        opt.eval_mode(&mut views).unwrap(); // twice is a no-op
        assert!(opt.in_eval_mode());
        drop(views);
        assert_eq!(p[0].data(), x[0].as_slice());
        assert_eq!(p[1].data(), x[1].as_slice());
        let g = grads(&p, 9);
        let err = opt
            .step(&mut p, &g, &StepInfo::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("eval mode"), "{err}");
        let mut views: Vec<ParamMut<'_, f32>> = p.iter_mut().map(ParamMut::from).collect();
        opt.train_mode(&mut views).unwrap();
        drop(views);
        assert!(!opt.in_eval_mode(), "{spec}: back in train mode");
        assert_eq!(p, y, "{spec}: y restored exactly");
        // Other rules have no evaluation point and the swap leaves them alone.
        let mut adam = Optimizer::<f32>::from_spec("adam").unwrap();
        let g = grads(&p, 0);
        adam.step(&mut p, &g, &StepInfo::default()).unwrap();
        assert!(adam.eval_point(0).is_none());
        let before = p.clone();
        let mut views: Vec<ParamMut<'_, f32>> = p.iter_mut().map(ParamMut::from).collect();
        adam.eval_mode(&mut views).unwrap();
        drop(views);
        assert_eq!(p, before);
    }
}

#[test]
fn schedule_free_state_resumes_exactly() {
    let spec = "sf-adamw:lr=0.01,warmup_steps=4,r=0.5";
    let mut p = vec![matrix::<f64>("w", 4, 6, 6)];
    let mut straight = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut q = p.clone();
    for t in 0..10 {
        let g = grads(&p, t);
        straight.step(&mut p, &g, &StepInfo::default()).unwrap();
        if t == 4 {
            // Checkpoint mid-warm-up, reload, continue.
            let mut first = Optimizer::<f64>::from_spec(spec).unwrap();
            let mut r = q.clone();
            for s in 0..=4 {
                let g = grads(&r, s);
                first.step(&mut r, &g, &StepInfo::default()).unwrap();
            }
            let bytes = first.to_bytes().unwrap();
            let mut resumed = Optimizer::<f64>::from_bytes(&bytes).unwrap();
            for s in 5..10 {
                let g = grads(&r, s);
                resumed.step(&mut r, &g, &StepInfo::default()).unwrap();
            }
            q = r;
            assert!(resumed.eval_point(0).is_some());
        }
    }
    assert_eq!(p, q);
}

#[test]
fn muon_steps_degenerate_matrices() {
    for shape in [[0usize, 5], [5, 0], [1, 1], [1, 7], [7, 1]] {
        let n = shape[0] * shape[1];
        let mut p = vec![Tensor::new("w", shape.to_vec(), vec![0.5f64; n]).unwrap()];
        let g = vec![Tensor::new("w", shape.to_vec(), vec![-2.0f64; n]).unwrap()];
        let mut opt = Optimizer::<f64>::from_spec("muon:lr=0.1,weight_decay=0").unwrap();
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        // A single row or column is normalised: every element moves by the same amount.
        assert!(
            p[0].data().iter().all(|x| x.is_finite() && *x > 0.5),
            "{shape:?}"
        );
    }
    // A zero gradient leaves the parameters (the norm's floor ε keeps 0/0 away).
    let mut p = vec![matrix::<f64>("w", 3, 4, 0)];
    let before = p.clone();
    let g = vec![Tensor::new("w", vec![3, 4], vec![0.0; 12]).unwrap()];
    let mut opt = Optimizer::<f64>::from_spec("muon:weight_decay=0").unwrap();
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    assert_eq!(p, before);
}

/// `a` and `b` agree to `tol` relative to the largest magnitude in `a`.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: all zero");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * scale, "{what}: {x} vs {y}");
    }
}

/// One Muon step from zero on a tall matrix is the step on its wide transpose, transposed
/// (Newton–Schulz runs on the wide orientation), times the ratio of the learning-rate
/// adjustments, which differ by shape: `original` √(max(1, A/B)), `match_rms_adamw`
/// 0.2√(max(A, B)), `spectral_unclamped` √(A/B) — for 6 × 4 against 4 × 6,
/// √(3/2), 1 and 3/2.
#[test]
fn muon_on_a_tall_matrix_is_the_wide_step_transposed_and_rescaled() {
    let (rows, cols) = (4, 6);
    let g = matrix::<f64>("w", rows, cols, 3);
    let mut gt = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            gt[j * rows + i] = g.data()[i * cols + j];
        }
    }
    for (mode, ratio) in [
        ("original", 1.5f64.sqrt()),
        ("match_rms_adamw", 1.0),
        ("spectral_unclamped", 1.5),
    ] {
        let spec = format!("muon:lr=0.1,weight_decay=0.5,adjust_lr={mode}");
        let mut wide = vec![Tensor::new("w", vec![rows, cols], vec![0.0; rows * cols]).unwrap()];
        let mut tall = vec![Tensor::new("w", vec![cols, rows], vec![0.0; rows * cols]).unwrap()];
        let mut opt = Optimizer::<f64>::from_spec(&spec).unwrap();
        opt.step(&mut wide, std::slice::from_ref(&g), &StepInfo::default())
            .unwrap();
        let gt = Tensor::new("w", vec![cols, rows], gt.clone()).unwrap();
        let mut opt = Optimizer::<f64>::from_spec(&spec).unwrap();
        opt.step(&mut tall, &[gt], &StepInfo::default()).unwrap();
        let mut want = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                want[j * rows + i] = ratio * wide[0].data()[i * cols + j];
            }
        }
        assert_close(&want, tall[0].data(), 1e-12, mode);
    }
    // The wide step's own scale: `original` adjusts nothing (A/B < 1), `match_rms_adamw`
    // multiplies by 0.2·√6.
    let step = |mode: &str| {
        let mut w = vec![Tensor::new("w", vec![rows, cols], vec![0.0; rows * cols]).unwrap()];
        let spec = format!("muon:lr=0.1,adjust_lr={mode}");
        let mut opt = Optimizer::<f64>::from_spec(&spec).unwrap();
        opt.step(&mut w, std::slice::from_ref(&g), &StepInfo::default())
            .unwrap();
        w[0].data().to_vec()
    };
    let original = step("original");
    let scaled: Vec<f64> = original.iter().map(|x| x * 0.2 * 6f64.sqrt()).collect();
    assert_close(&scaled, &step("match_rms_adamw"), 1e-12, "match_rms_adamw");
    let scaled: Vec<f64> = original.iter().map(|x| x * (4.0f64 / 6.0).sqrt()).collect();
    assert_close(
        &scaled,
        &step("spectral_unclamped"),
        1e-12,
        "spectral_unclamped",
    );
}

/// Muon's momentum by its definition, b ← μb + (1 − μ)g, orthogonalising b
/// (`nesterov=false`) or g + μ(b − g) (the default): the same parameters as Muon
/// without momentum fed those updates as its gradients. With μ = 0.95 and μ = 0.3
/// (the two branches of the interpolation), and the buffer checked against the definition.
#[test]
fn muon_momentum_and_nesterov_by_their_definitions() {
    for mu in [0.95, 0.3] {
        for nesterov in [false, true] {
            let spec = format!("muon:lr=0.05,weight_decay=0,momentum={mu},nesterov={nesterov}");
            let mut opt = Optimizer::<f64>::from_spec(&spec).unwrap();
            let mut plain =
                Optimizer::<f64>::from_spec("muon:lr=0.05,weight_decay=0,momentum=0").unwrap();
            let mut a = vec![matrix::<f64>("w", 3, 5, 1)];
            let mut b = a.clone();
            let mut buf = vec![0.0; 15];
            for t in 0..4 {
                let g = grads(&a, t);
                opt.step(&mut a, &g, &StepInfo::default()).unwrap();
                let mut update = g[0].clone();
                for ((u, &gi), bi) in update.data_mut().iter_mut().zip(g[0].data()).zip(&mut buf) {
                    *bi = mu * *bi + (1.0 - mu) * gi;
                    *u = if nesterov { gi + mu * (*bi - gi) } else { *bi };
                }
                plain.step(&mut b, &[update], &StepInfo::default()).unwrap();
                let what = format!("{spec}, step {t}");
                assert_close(&buf, opt.state("momentum_buffer", 0).unwrap(), 1e-14, &what);
                assert_close(a[0].data(), b[0].data(), 1e-12, &what);
            }
        }
    }
}

/// A step at learning rate 0 gives the average a weight of 0ᵖ = 0: the reference
/// (`schedulefree`) then takes cₜ = 0 instead of 0/0, so neither z nor x moves. A run that
/// starts at learning rate 0 (a schedule from 0) keeps x at the initial point, and the
/// first step with a positive rate takes cₜ = 1: x = z exactly.
#[test]
fn schedule_free_at_learning_rate_zero_keeps_its_average_finite() {
    for spec in ["sf-sgd:lr=0.1", "sf-adamw:lr=0.01,weight_decay=0.1"] {
        let p0 = vec![matrix::<f64>("w", 3, 4, 2)];
        let mut p = p0.clone();
        let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
        let at_zero = StepInfo {
            lr_scale: 0.0,
            ..StepInfo::default()
        };
        for t in 0..3 {
            let g = grads(&p, t);
            opt.step(&mut p, &g, &at_zero).unwrap();
            // z and x stay; y = βx + (1 − β)z is x up to its rounding.
            assert_eq!(opt.state("z", 0).unwrap(), p0[0].data(), "{spec}: step {t}");
            assert_eq!(opt.eval_point(0).unwrap(), p0[0].data(), "{spec}: step {t}");
            for (a, b) in p[0].data().iter().zip(p0[0].data()) {
                assert!((a - b).abs() <= 1e-16, "{spec}: step {t}: {a} {b}");
            }
        }
        let g = grads(&p, 3);
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let z = opt.state("z", 0).unwrap();
        assert_ne!(z, p0[0].data(), "{spec}: z moved");
        assert_eq!(
            opt.eval_point(0).unwrap(),
            z,
            "{spec}: c = 1 at the first weighed step"
        );
    }
}
