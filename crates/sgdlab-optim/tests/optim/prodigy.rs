//! Prodigy's optimizer-wide estimate: parameter groups and a schedule against the authors'
//! package (`tests/data/reference/record_prodigy.py`), the estimate's sums the same for any
//! thread count and chunking, a checkpoint taken mid-run, and what its groups may not do.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use super::groups_schedule::{floats, grads, setup};
use serde_json::Value;
use sgdlab_optim::kernel::CHUNK;
use sgdlab_optim::{Optimizer, StepInfo, Tensor, Totals};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference/prodigy-groups.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn assert_close(params: &[Tensor<f64>], r: &Value, t: usize) {
    for p in params {
        let want = floats(&r["expected"][t][p.name()]);
        for (a, e) in p.data().iter().zip(&want) {
            assert!(
                (a - e).abs() <= 1e-10 * e.abs().max(1.0),
                "step {t}, {}: {a} vs {e}",
                p.name()
            );
        }
    }
}

/// Three groups (no decay and another ε on biases, a frozen group at lr 0 that the package
/// still decays by the shared step), zero gradients at the first step (the package then
/// only updates the averages), a LinearLR warm-up: prodigyopt 1.1.2's trajectory to 1e-10.
#[test]
fn groups_a_frozen_group_and_a_schedule_match_prodigyopt() {
    let r = reference();
    let (mut opt, mut params) = setup(&r);
    let frozen0 = params[3].data().to_vec();
    for t in 0..floats(&r["lrs"]).len() {
        let g = grads(&r, t, &params);
        opt.step(&mut params, &g, &StepInfo::default()).unwrap();
        assert_close(&params, &r, t);
        if t == 0 {
            assert_eq!(
                opt.tensor_scalars(0).unwrap()[3],
                0.0,
                "the zero step does not count"
            );
        }
    }
    // The estimate grew from d0 = 1e-5, to the package's d, d_max, d_numerator and k; every
    // tensor keeps the same scalars.
    let kept = opt.tensor_scalars(0).unwrap();
    for (got, want) in kept.iter().zip(floats(&r["scalars"])) {
        assert!((got - want).abs() <= 1e-10 * want.abs(), "{kept:?}");
    }
    let d = kept[0];
    assert!(d > 1e-3, "d = {d}");
    for t in 1..params.len() {
        assert_eq!(opt.tensor_scalars(t), opt.tensor_scalars(0));
    }
    assert_ne!(
        params[3].data(),
        &frozen0[..],
        "the frozen group is decayed"
    );
}

/// A checkpoint after the zero step and the warm-up resumes bit for bit.
#[test]
fn a_checkpoint_mid_run_resumes_bit_for_bit() {
    let r = reference();
    let (mut straight, mut p_straight) = setup(&r);
    let (mut first, mut p_resumed) = setup(&r);
    for t in 0..40 {
        let g = grads(&r, t, &p_straight);
        straight
            .step(&mut p_straight, &g, &StepInfo::default())
            .unwrap();
    }
    for t in 0..9 {
        let g = grads(&r, t, &p_resumed);
        first
            .step(&mut p_resumed, &g, &StepInfo::default())
            .unwrap();
    }
    let mut resumed = Optimizer::<f64>::from_bytes(&first.to_bytes().unwrap()).unwrap();
    for t in 9..40 {
        let g = grads(&r, t, &p_resumed);
        resumed
            .step(&mut p_resumed, &g, &StepInfo::default())
            .unwrap();
    }
    assert_eq!(p_straight, p_resumed);
    assert_eq!(straight.tensor_scalars(0), resumed.tensor_scalars(0));
}

/// The estimate's sums run over fixed chunks added in order: several chunks, a ragged
/// tensor and a tiny one give the same bits on 1, 2 and 5 threads.
#[test]
fn the_estimate_is_the_same_for_any_thread_count() {
    let sizes = [3 * CHUNK + 17, CHUNK / 2 + 3, 5];
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut opt = Optimizer::<f32>::from_spec("prodigy:weight_decay=0.01").unwrap();
                let mut p: Vec<Tensor<f32>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(k, &n)| {
                        Tensor::vector(
                            format!("t{k}"),
                            (0..n)
                                .map(|i| ((i * 37 + k * 11) % 101) as f32 / 50.0 - 1.0)
                                .collect(),
                        )
                    })
                    .collect();
                for t in 0..6 {
                    let g: Vec<Tensor<f32>> = p
                        .iter()
                        .map(|x| {
                            let v = x
                                .data()
                                .iter()
                                .enumerate()
                                .map(|(i, &xi)| xi + (((i + t * 13) % 29) as f32 - 14.0) * 0.01)
                                .collect();
                            Tensor::vector(x.name(), v)
                        })
                        .collect();
                    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
                }
                (p, opt.tensor_scalars(0).unwrap().to_vec())
            })
    };
    let one = run(1);
    assert!(one.1[0] > 1e-6, "the estimate moved: {:?}", one.1);
    for threads in [2, 5] {
        let other = run(threads);
        assert_eq!(one.1, other.1, "{threads} threads: scalars");
        assert_eq!(one.0, other.0, "{threads} threads: parameters");
    }
}

/// The sums run over every chunk once: a tensor of several chunks steps as the same values
/// cut into tensors of less than one chunk (the sums then add in another order: to 1e-12).
#[test]
fn a_tensor_of_several_chunks_sums_each_chunk_once() {
    let n = 3 * CHUNK + 17;
    let value = |i: usize| ((i * 37 % 101) as f64 / 50.0 - 1.0) * 0.5;
    let grad = |i: usize, x: f64, t: usize| x + (((i + t * 13) % 29) as f64 - 14.0) * 0.01;
    let run = |pieces: usize| {
        let per = n.div_ceil(pieces);
        let mut p: Vec<Tensor<f64>> = (0..pieces)
            .map(|k| {
                let range = k * per..((k + 1) * per).min(n);
                Tensor::vector(format!("t{k}"), range.map(value).collect())
            })
            .collect();
        let mut opt = Optimizer::<f64>::from_spec("prodigy").unwrap();
        for t in 0..6 {
            let g: Vec<Tensor<f64>> = p
                .iter()
                .enumerate()
                .map(|(k, x)| {
                    let v = x
                        .data()
                        .iter()
                        .enumerate()
                        .map(|(i, &xi)| grad(k * per + i, xi, t))
                        .collect();
                    Tensor::vector(x.name(), v)
                })
                .collect();
            opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        }
        let flat: Vec<f64> = p.iter().flat_map(|x| x.data().to_vec()).collect();
        (flat, opt.tensor_scalars(0).unwrap().to_vec())
    };
    let (whole, d_whole) = run(1);
    let (cut, d_cut) = run(4);
    assert!(d_whole[0] > 1e-5, "the estimate grew: {d_whole:?}");
    for (a, b) in d_whole.iter().zip(&d_cut) {
        assert!((a - b).abs() <= 1e-12 * a.abs(), "{d_whole:?} vs {d_cut:?}");
    }
    let worst = whole
        .iter()
        .zip(&cut)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-12, "{worst}");
}

/// What the shared estimate forbids, each refused before anything changes.
#[test]
fn groups_that_cannot_share_the_estimate_are_refused() {
    let params = || {
        vec![
            Tensor::vector("w", vec![1.0f64, 2.0]),
            Tensor::vector("b", vec![0.5]),
        ]
    };
    let grads = || {
        vec![
            Tensor::vector("w", vec![0.1f64, -0.2]),
            Tensor::vector("b", vec![0.3]),
        ]
    };
    let refused = |spec: &str, group: &str| {
        let mut opt =
            Optimizer::<f64>::with_groups(spec.parse().unwrap(), vec![group.parse().unwrap()])
                .unwrap();
        let mut p = params();
        let err = opt
            .step(&mut p, &grads(), &StepInfo::default())
            .unwrap_err()
            .to_string();
        assert_eq!(p, params(), "{group}: nothing changed");
        assert_eq!(opt.steps(), 0);
        err
    };
    let err = refused("prodigy", "b:lr=0.5");
    assert!(
        err.contains("lr of parameter group 1") && err.contains("or 0"),
        "{err}"
    );
    let err = refused("prodigy", "b:d0=1e-3");
    assert!(err.contains("d0 of parameter group 1"), "{err}");
    let err = refused("prodigy", "b:rule=adam");
    assert!(err.contains("adam beside prodigy"), "{err}");
    let err = refused("adam", "b:rule=prodigy");
    assert!(err.contains("prodigy beside adam"), "{err}");
    // A group may differ in weight decay, eps and safeguard_warmup, or be frozen.
    for group in ["b:weight_decay=0,eps=1e-4,safeguard_warmup=true", "b:lr=0"] {
        let mut opt = Optimizer::<f64>::with_groups(
            "prodigy:weight_decay=0.1".parse().unwrap(),
            vec![group.parse().unwrap()],
        )
        .unwrap();
        opt.step(&mut params(), &grads(), &StepInfo::default())
            .unwrap();
    }
    // The optimizer's own spec steps no tensor when groups take them all (as sgdlab.torch
    // builds it): only the groups in use share the estimate, and their lr is the step's.
    let mut grouped = Optimizer::<f64>::with_groups(
        "prodigy".parse().unwrap(),
        vec!["*:beta1=0.8,lr=0.5".parse().unwrap()],
    )
    .unwrap();
    let mut plain = Optimizer::<f64>::from_spec("prodigy:beta1=0.8,lr=0.5").unwrap();
    let (mut a, mut b) = (params(), params());
    for _ in 0..3 {
        grouped
            .step(&mut a, &grads(), &StepInfo::default())
            .unwrap();
        plain.step(&mut b, &grads(), &StepInfo::default()).unwrap();
    }
    assert_eq!(a, b);
    // One part of a distributed model: its sums would be this part's alone.
    let mut opt = Optimizer::<f64>::from_spec("prodigy").unwrap();
    let info = StepInfo {
        totals: Some(Totals::default()),
        ..StepInfo::default()
    };
    let err = opt
        .step(&mut params(), &grads(), &info)
        .unwrap_err()
        .to_string();
    assert!(err.contains("distributed"), "{err}");
    // bfloat16 state, and the reference's ranges.
    for (spec, key) in [
        ("prodigy:state_dtype=bf16", "state_dtype"),
        ("prodigy:lr=-1", "lr"),
        ("prodigy:d0=0", "d0"),
        ("prodigy:beta3=1", "beta3"),
        ("prodigy:growth_rate=0", "growth_rate"),
    ] {
        let err = Optimizer::<f32>::from_spec(spec).unwrap_err().to_string();
        assert!(err.contains(key), "{spec}: {err}");
    }
}
