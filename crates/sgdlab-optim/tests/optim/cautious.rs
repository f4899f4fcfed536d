//! Cautious masking (`cautious=true`), the transformation composed with every element-wise
//! rule: against an independent implementation over several chunks, the property it keeps for
//! every rule, thread counts, groups, bfloat16 state, checkpoints, and the rules it refuses.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::{NAMES, Optimizer, OptimizerSpec, StepInfo, Tensor};

/// Deterministic pseudo-random values in (-1, 1) (SplitMix64).
fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Gradients whose signs change from step to step, so that the update (momentum) and the
/// gradient disagree on a good share of the coordinates; every seventh is exactly zero (an
/// update there neither agrees nor disagrees, and is not kept).
fn gradients(n: usize, steps: usize) -> Vec<Vec<f64>> {
    (0..steps)
        .map(|t| {
            let mut g = values(100 + t as u64, n);
            g.iter_mut().step_by(7).for_each(|x| *x = 0.0);
            g
        })
        .collect()
}

/// C-AdamW written out from its definition (Liang et al. 2024): the AdamW update
/// u = m̂/(√v̂ + ε), the mask \[ug > 0\] scaled by n/(k + 1), and
/// p ← (1 − ηλ)p − η mask u.
fn cautious_adamw_by_hand(p: &mut [f64], grads: &[Vec<f64>], lr: f64, wd: f64) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let n = p.len();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        let mut u = vec![0.0; n];
        for i in 0..n {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t));
            let vh = v[i] / (1.0 - b2.powi(t));
            u[i] = mh / (vh.sqrt() + eps);
        }
        let kept = (0..n).filter(|&i| u[i] * g[i] > 0.0).count();
        let scale = n as f64 / (kept as f64 + 1.0);
        for i in 0..n {
            let mask = if u[i] * g[i] > 0.0 { scale } else { 0.0 };
            p[i] = (1.0 - lr * wd) * p[i] - lr * mask * u[i];
        }
    }
}

fn run(spec: &str, p0: &[f64], grads: &[Vec<f64>]) -> Vec<f64> {
    let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut p = vec![Tensor::vector("w", p0.to_vec())];
    for g in grads {
        let g = [Tensor::vector("w", g.clone())];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    p[0].data().to_vec()
}

/// Over a tensor of several chunks (the count is a sum over chunks stepped in parallel),
/// the library's C-AdamW equals the definition to rounding, and a tiny tensor (the
/// single-thread path) too.
#[test]
fn cautious_adamw_equals_its_definition_over_many_chunks() {
    for n in [7, 3 * 32 * 1024 + 17] {
        let p0 = values(1, n);
        let grads = gradients(n, 6);
        let got = run("adamw:lr=0.01,weight_decay=0.1,cautious=true", &p0, &grads);
        let mut want = p0.clone();
        cautious_adamw_by_hand(&mut want, &grads, 0.01, 0.1);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f64, f64::max);
        assert!(err < 1e-13, "n = {n}: {err:e}");
        // The mask did something: the plain rule ends elsewhere.
        let plain = run("adamw:lr=0.01,weight_decay=0.1", &p0, &grads);
        assert!(plain.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-6));
    }
}

/// The same bits on 1, 2 and 3 threads.
#[test]
fn cautious_steps_are_the_same_for_any_thread_count() {
    let n = 5 * 32 * 1024 + 3;
    let (p0, grads) = (values(2, n), gradients(n, 3));
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run("lion:lr=0.001,cautious=true", &p0, &grads))
    };
    let one = on(1);
    assert!(
        one.iter()
            .zip(&on(2))
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    assert!(
        one.iter()
            .zip(&on(3))
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// For every element-wise rule without weight decay: a coordinate either stays where it was
/// (its update disagreed with the gradient) or moves against the gradient — the property
/// that defines the mask, whatever the rule's update is.
#[test]
fn every_element_wise_rule_moves_only_with_the_gradient() {
    let n = 64;
    let grads = gradients(n, 4);
    let mut covered = 0;
    for name in NAMES {
        let Ok(spec) = OptimizerSpec::named(name).and_then(|s| s.with("cautious", true)) else {
            continue; // matrix and averaging rules refuse it (tested below)
        };
        let mut spec = spec;
        if spec.set("weight_decay", "0").is_err() && spec.to_string().contains("weight_decay") {
            panic!("{name}: cannot turn its weight decay off");
        }
        let mut opt = Optimizer::<f64>::new(spec.clone()).unwrap();
        let mut p = vec![Tensor::vector("w", values(3, n))];
        let mut moved = 0;
        for g in &grads {
            let before = p[0].data().to_vec();
            let grad = [Tensor::vector("w", g.clone())];
            opt.step(&mut p, &grad, &StepInfo::with_loss(1.0)).unwrap();
            for ((&b, &a), &g) in before.iter().zip(p[0].data()).zip(g) {
                if a != b {
                    moved += 1;
                    assert!((b - a) * g > 0.0, "{spec}: moved with the gradient");
                }
            }
        }
        assert!(moved > 0, "{spec}: nothing moved");
        covered += 1;
    }
    assert!(covered >= 15, "only {covered} rules take cautious=true");
}

/// A group may turn it on for its tensors only; bfloat16 state composes with it; a
/// checkpoint saves the key and a resumed run continues bit for bit.
#[test]
fn groups_bf16_state_and_checkpoints() {
    let mut opt = Optimizer::<f32>::with_groups(
        "adam:lr=0.01".parse().unwrap(),
        vec!["b:cautious=true".parse().unwrap()],
    )
    .unwrap();
    assert_eq!(
        opt.group_spec(1).unwrap().to_string(),
        "adam:lr=0.01,cautious=true"
    );
    let g = |seed| {
        let v: Vec<f32> = values(seed, 40).iter().map(|&x| x as f32).collect();
        [Tensor::vector("a", v.clone()), Tensor::vector("b", v)]
    };
    let mut p = [
        Tensor::vector("a", vec![0.5f32; 40]),
        Tensor::vector("b", vec![0.5f32; 40]),
    ];
    for seed in 0..3 {
        opt.step(&mut p, &g(seed), &StepInfo::default()).unwrap();
    }
    assert_ne!(p[0].data(), p[1].data(), "the group's mask changed nothing");

    let spec = "adamw:lr=0.01,state_dtype=bf16,rounding=nearest,cautious=true";
    let steps = |opt: &mut Optimizer<f32>, p: &mut [Tensor<f32>], seeds: std::ops::Range<u64>| {
        for seed in seeds {
            opt.step(p, &g(seed)[..1], &StepInfo::default()).unwrap();
        }
    };
    let mut whole = Optimizer::<f32>::from_spec(spec).unwrap();
    let mut pw = [Tensor::vector("a", vec![0.5f32; 40])];
    steps(&mut whole, &mut pw, 0..6);
    let mut first = Optimizer::<f32>::from_spec(spec).unwrap();
    let mut pr = [Tensor::vector("a", vec![0.5f32; 40])];
    steps(&mut first, &mut pr, 0..3);
    let mut resumed = Optimizer::<f32>::from_bytes(&first.to_bytes().unwrap()).unwrap();
    assert_eq!(resumed.spec().to_string(), spec);
    steps(&mut resumed, &mut pr, 3..6);
    assert_eq!(pw[0].data(), pr[0].data());
}

/// Rules whose update is not element-wise refuse the key, naming it and why.
#[test]
fn matrix_and_averaging_rules_refuse_it() {
    for (spec, why) in [
        ("muon:cautious=true", "whole matrix"),
        ("sf-adamw:cautious=true", "interpolation"),
    ] {
        let e = spec.parse::<OptimizerSpec>().unwrap_err().to_string();
        assert!(e.contains("cautious") && e.contains(why), "{spec}: {e}");
    }
    let e = "adam:cautious=maybe"
        .parse::<OptimizerSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("cautious"), "{e}");
}
