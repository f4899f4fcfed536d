//! SOAP's whole-matrix state: buffers of their own shapes (the d×d statistics and
//! eigenbases) through checkpoints, the same bits for any thread count, what it refuses, and
//! why the shared reference trajectory `po-soap.json` cannot be matched by any independent
//! eigensolver.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::Real;
use sgdlab_optim::{Optimizer, StepInfo, Tensor};

/// A rows × cols matrix of pseudo-random values (a linear congruential sequence, so that the
/// statistics have full rank).
fn matrix<T: Real>(name: &str, rows: usize, cols: usize, seed: u64) -> Tensor<T> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let v = (0..rows * cols)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            T::from_f64(((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.6)
        })
        .collect();
    Tensor::new(name, vec![rows, cols], v).unwrap()
}

fn grads<T: Real>(params: &[Tensor<T>], t: u64) -> Vec<Tensor<T>> {
    params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let noise = matrix::<T>(p.name(), p.shape()[0], p.shape()[1], 100 * t + k as u64);
            let v = p
                .data()
                .iter()
                .zip(noise.data())
                .map(|(&x, &n)| x * T::from_f64(0.3) + n)
                .collect();
            Tensor::new(p.name(), p.shape().to_vec(), v).unwrap()
        })
        .collect()
}

const SPEC: &str = "soap:lr=0.01,precondition_frequency=2";

/// Tall (its products parallel: over 65,536 elements) and small matrices, across two
/// refreshes of the eigenbases: the same bits on 1, 3 and 4 threads.
#[test]
fn soap_gives_the_same_bits_for_any_thread_count() {
    fn run<T: Real>(threads: usize) -> Vec<Tensor<T>> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut p = vec![matrix::<T>("a", 300, 230, 1), matrix::<T>("b", 7, 5, 2)];
                let mut opt = Optimizer::<T>::from_spec(SPEC).unwrap();
                for t in 0..5 {
                    let g = grads(&p, t);
                    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
                }
                p
            })
    }
    let one = run::<f32>(1);
    assert_ne!(one[1], matrix::<f32>("b", 7, 5, 2), "the parameters moved");
    assert_eq!(one, run::<f32>(3));
    assert_eq!(run::<f64>(1), run::<f64>(4));
}

/// A checkpoint between two refreshes resumes bit for bit; the file holds the statistics and
/// eigenbases at their own shapes (d×d, or empty for a side that is not rotated).
#[test]
fn a_checkpoint_keeps_the_statistics_at_their_shapes() {
    let spec = "soap:lr=0.01,precondition_frequency=3,max_precondition_dim=6";
    let start = || {
        vec![
            matrix::<f64>("w", 5, 8, 3),
            Tensor::vector("b", vec![0.5, -0.25, 1.0]),
        ]
    };
    let mut straight = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut p_straight = start();
    for t in 0..9 {
        let g = grads_any(&p_straight, t);
        straight
            .step(&mut p_straight, &g, &StepInfo::default())
            .unwrap();
    }
    let mut first = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut p = start();
    for t in 0..5 {
        let g = grads_any(&p, t);
        first.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    let sd = first.state_dict().unwrap();
    let shape = |key: &str| sd.buffers[key].0.clone();
    assert_eq!(shape("GG_0/w"), vec![5, 5]);
    assert_eq!(shape("Q_0/w"), vec![5, 5]);
    assert_eq!(
        shape("GG_1/w"),
        vec![0],
        "8 > max_precondition_dim: not rotated"
    );
    assert_eq!(shape("exp_avg_sq/w"), vec![5, 8]);
    assert_eq!(shape("Q_0/b"), vec![0], "a vector is not rotated");
    let mut resumed = Optimizer::<f64>::from_bytes(&first.to_bytes().unwrap()).unwrap();
    for t in 5..9 {
        let g = grads_any(&p, t);
        resumed.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    assert_eq!(p, p_straight);
    assert_eq!(resumed, straight);
    // The statistics' shapes depend on max_precondition_dim: it cannot change mid-run.
    let err = resumed
        .set("max_precondition_dim", 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape of tensor `w`"), "{err}");
    resumed.set("lr", 0.02).unwrap();
}

/// Gradients for matrices and vectors alike.
fn grads_any(params: &[Tensor<f64>], t: u64) -> Vec<Tensor<f64>> {
    params
        .iter()
        .map(|p| {
            let v = p
                .data()
                .iter()
                .enumerate()
                .map(|(i, &x)| 0.3 * x + ((i as f64 * 0.7 + t as f64 * 1.3).sin()))
                .collect();
            Tensor::new(p.name(), p.shape().to_vec(), v).unwrap()
        })
        .collect()
}

#[test]
fn soap_refuses_what_it_cannot_step() {
    let mut opt = Optimizer::<f32>::from_spec("soap").unwrap();
    let mut p = vec![Tensor::new("conv", vec![2, 2, 3], vec![0.1f32; 12]).unwrap()];
    let g = vec![Tensor::new("conv", vec![2, 2, 3], vec![0.2f32; 12]).unwrap()];
    let err = opt
        .step(&mut p, &g, &StepInfo::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`conv`") && err.contains("rule=adamw"),
        "{err}"
    );
    for (spec, key) in [
        ("soap:state_dtype=bf16", "state_dtype"),
        ("soap:cautious=true", "cautious"),
        ("soap:precondition_frequency=0", "precondition_frequency"),
        ("soap:max_precondition_dim=0", "max_precondition_dim"),
        ("soap:eps=-1", "eps"),
        ("soap:shampoo_beta=1", "shampoo_beta"),
        ("soap:beta2=1", "beta2"),
    ] {
        let err = Optimizer::<f32>::from_spec(spec).unwrap_err().to_string();
        assert!(err.contains(key), "{spec}: {err}");
    }
}

/// The shared `po-soap.json` (a 4×6 matrix, both sides rotated): the first step's
/// statistic of the 6-side, (1 − β)GᵀG, has rank 4, so two of its eigenvectors are any
/// orthonormal basis of its null space — and the trajectory depends on which (rotating that
/// basis by 0.7 rad moves the package's own trajectory by 0.71, relative). The file records
/// the one torch's LAPACK returns; a test can hold an independent eigensolver only to
/// statistics of full rank (`conformance/po-soap-*.json`, recorded by
/// `reference/record_soap.py`).
#[test]
fn the_shared_soap_file_starts_from_a_rank_deficient_statistic() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference/po-soap.json"
    );
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let g: Vec<f64> = case["grads"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let (rows, cols) = (4, 6);
    // GᵀG (6×6), and its rank by Gaussian elimination with partial pivoting.
    let mut a: Vec<Vec<f64>> = (0..cols)
        .map(|i| {
            (0..cols)
                .map(|j| (0..rows).map(|k| g[k * cols + i] * g[k * cols + j]).sum())
                .collect()
        })
        .collect();
    let scale = a.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut rank = 0;
    for col in 0..cols {
        let pivot = (rank..cols)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        if a[pivot][col].abs() <= 1e-12 * scale {
            continue;
        }
        a.swap(rank, pivot);
        let pivot_row = a[rank].clone();
        for row in a.iter_mut().skip(rank + 1) {
            let f = row[col] / pivot_row[col];
            for (x, &p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
        }
        rank += 1;
    }
    assert_eq!(rank, 4);
}
