//! Optimizer state kept in bfloat16 (`state_dtype=bf16`): the fused path against an
//! independent one, determinism across threads and resume, unbiased stochastic rounding,
//! checkpoints, and refused combinations.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::lowp::{bf16_nearest, bf16_to_f32};
use sgdlab_optim::{Optimizer, StepInfo, Tensor};

fn params(n: usize, seed: u64) -> Vec<Tensor<f32>> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    vec![
        Tensor::new(
            "w",
            vec![n / 100, 100],
            (0..n / 100 * 100).map(|_| next()).collect(),
        )
        .unwrap(),
        Tensor::vector("b", (0..37).map(|_| next()).collect()),
    ]
}

fn grads(ps: &[Tensor<f32>], t: u64) -> Vec<Tensor<f32>> {
    ps.iter()
        .map(|p| {
            let data = (0..p.len())
                .map(|i| ((i as f32 * 0.37 + t as f32 * 1.3).sin()) * 0.01)
                .collect();
            Tensor::new(p.name(), p.shape().to_vec(), data).unwrap()
        })
        .collect()
}

/// Round to nearest, step by step: the fused bf16 kernel equals an f32 optimizer whose state
/// is narrowed to bf16 after every step through its state dict (the plain kernel and the
/// checkpoint path, no code of the bf16 kernel).
#[test]
fn nearest_equals_f32_steps_with_state_rounded_between_them() {
    // Every rule with state, and each of its element loops (RMSprop has one per
    // momentum × centered, SGD per first step × Nesterov).
    for spec in [
        "adam:lr=0.01",
        "adam:lr=0.01,amsgrad=true,weight_decay=0.01",
        "adamw:lr=0.01,debias=none",
        "rmsprop:lr=0.01",
        "rmsprop:lr=0.01,momentum=0.5",
        "rmsprop:lr=0.01,centered=true",
        "rmsprop:lr=0.01,momentum=0.5,centered=true",
        "lion:lr=0.001",
        "sgd:lr=0.1,momentum=0.9",
        "sgd:lr=0.1,momentum=0.9,nesterov=true",
        "sgd:lr=0.1,momentum=0.9,dampening=0.3,weight_decay=0.01",
        "ema-momentum:lr=0.1,beta=0.9,debias=horizon",
        "adagrad:lr=0.1,lr_decay=0.01",
        "adamax:lr=0.01",
        "nadam:lr=0.01",
        "radam:lr=0.01",
        "ademamix:lr=0.01,beta3=0.99",
        "madam:lr=0.01",
        "adopt:lr=0.01",
        "adan:lr=0.01",
    ] {
        // 300k parameters: many units, on several threads.
        let mut a = params(300_000, 1);
        let mut b = a.clone();
        let mut fused =
            Optimizer::<f32>::from_spec(&format!("{spec},state_dtype=bf16,rounding=nearest"))
                .unwrap();
        let mut reference = Optimizer::<f32>::from_spec(spec).unwrap();
        for t in 0..6 {
            let g = grads(&a, t);
            fused.step(&mut a, &g, &StepInfo::default()).unwrap();
            reference.step(&mut b, &g, &StepInfo::default()).unwrap();
            let mut sd = reference.state_dict().unwrap();
            for (_, data) in sd.buffers.values_mut() {
                for x in data.iter_mut() {
                    *x = bf16_to_f32(bf16_nearest(*x));
                }
            }
            reference.load_state_dict(&sd).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.data(), y.data(), "{spec}: params at step {t}");
            }
            assert_eq!(
                fused.state_dict().unwrap().buffers,
                sd.buffers,
                "{spec}: state at step {t}"
            );
        }
    }
}

fn run_sr(threads: usize, steps: u64) -> (Vec<Tensor<f32>>, Vec<u8>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut p = params(300_000, 2);
        let mut opt =
            Optimizer::<f32>::from_spec("adamw:lr=0.01,state_dtype=bf16,sr_seed=7").unwrap();
        for t in 0..steps {
            let g = grads(&p, t);
            opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        }
        (p, opt.to_bytes().unwrap())
    })
}

#[test]
fn stochastic_rounding_is_the_same_for_any_thread_count() {
    let one = run_sr(1, 5);
    let three = run_sr(3, 5);
    assert_eq!(one.1, three.1);
    for (x, y) in one.0.iter().zip(&three.0) {
        assert_eq!(x.data(), y.data());
    }
}

#[test]
fn a_resumed_run_is_the_uninterrupted_one_and_the_file_keeps_bf16() {
    let (full, full_state) = run_sr(2, 8);
    let mut p = params(300_000, 2);
    let mut opt = Optimizer::<f32>::from_spec("adamw:lr=0.01,state_dtype=bf16,sr_seed=7").unwrap();
    for t in 0..3 {
        let g = grads(&p, t);
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    let bytes = opt.to_bytes().unwrap();
    // The file holds bf16 tensors: 2 bytes per state element (plus a small header).
    let elems: usize = p.iter().map(Tensor::len).sum();
    assert!(bytes.len() < 2 * 2 * elems + 4096, "{} bytes", bytes.len());
    let mut opt = Optimizer::<f32>::from_bytes(&bytes).unwrap();
    assert!(opt.state("exp_avg", 0).is_none());
    assert_eq!(opt.state_bf16("exp_avg", 0).unwrap().len(), p[0].len());
    for t in 3..8 {
        let g = grads(&p, t);
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    assert_eq!(opt.to_bytes().unwrap(), full_state);
    for (x, y) in p.iter().zip(&full) {
        assert_eq!(x.data(), y.data());
    }
    // The state dict holds the values widened; it loads back exactly, and a value that is
    // not a bfloat16 is refused.
    let mut sd = opt.state_dict().unwrap();
    let again = Optimizer::<f32>::from_state_dict(&sd).unwrap();
    assert_eq!(again.to_bytes().unwrap(), full_state);
    let first = sd.buffers.values_mut().next().unwrap();
    first.1[0] = 1.0 + 1e-6;
    let err = Optimizer::<f32>::from_state_dict(&sd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a bfloat16"), "{err}");
}

/// SGD's momentum buffer on a constant gradient is the same number in every element; with
/// stochastic rounding each element draws its own rounding, and their mean is the exact value
/// within Monte Carlo error, while rounding to nearest is off by a fixed amount.
#[test]
fn stochastic_rounding_is_unbiased_in_the_optimizer() {
    let n = 200_000;
    let g = 1.0f32 / 3.0;
    let mut exact = 0.0f64;
    let mut means = Vec::new();
    for rounding in ["stochastic", "nearest"] {
        let mut p = vec![Tensor::vector("p", vec![0.0f32; n])];
        let gs = vec![Tensor::vector("p", vec![g; n])];
        let spec =
            format!("sgd:lr=0.0,momentum=0.9,dampening=0.1,state_dtype=bf16,rounding={rounding}");
        let mut opt = Optimizer::<f32>::from_spec(&spec).unwrap();
        exact = 0.0;
        for t in 0..40 {
            opt.step(&mut p, &gs, &StepInfo::default()).unwrap();
            exact = if t == 0 {
                f64::from(g)
            } else {
                0.9 * exact + 0.9 * f64::from(g)
            };
        }
        let buf = opt.state_values("momentum_buffer", 0).unwrap();
        let mean = buf.iter().sum::<f64>() / n as f64;
        let var = buf.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        means.push((mean, (var / n as f64).sqrt()));
    }
    let (sr, se) = means[0];
    assert!(
        (sr - exact).abs() < 4.0 * se,
        "SR mean {sr} vs exact {exact} ± {se}"
    );
    let (rn, rn_se) = means[1];
    assert_eq!(rn_se, 0.0, "nearest rounds every element alike");
    assert!((rn - exact).abs() > 50.0 * se, "RN {rn} vs exact {exact}");
}

/// Each element of a tensor draws its own stochastic rounding (its index is the counter of
/// the tensor's stream), also across the units the step is cut into for the threads: on a
/// constant gradient no two blocks of 1,024 elements round alike.
#[test]
fn every_element_of_a_large_tensor_draws_its_own_rounding() {
    let n = 1 << 17;
    let mut p = vec![Tensor::vector("p", vec![0.0f32; n])];
    let g = vec![Tensor::vector("p", vec![1.0f32 / 3.0; n])];
    let mut opt =
        Optimizer::<f32>::from_spec("sgd:lr=0.0,momentum=0.9,state_dtype=bf16,sr_seed=3").unwrap();
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    let buf = opt.state_bf16("momentum_buffer", 0).unwrap();
    assert_eq!(buf.len(), n);
    let (lo, hi) = (buf.iter().min().unwrap(), buf.iter().max().unwrap());
    assert_eq!(hi - lo, 1, "1/3 rounds to its two bfloat16 neighbours");
    let mut seen = std::collections::HashMap::new();
    for (k, block) in buf.chunks(1024).enumerate() {
        if let Some(j) = seen.insert(block, k) {
            panic!("blocks {j} and {k} rounded alike");
        }
    }
}

#[test]
fn bad_combinations_are_errors() {
    for (spec, what) in [
        ("muon:state_dtype=bf16", "muon"),
        ("sf-adamw:state_dtype=bf16", "sf-adamw"),
        ("adam:state_dtype=bf8", "state_dtype"),
        ("adam:state_dtype=bf16,rounding=up", "rounding"),
    ] {
        let err = spec
            .parse::<sgdlab_optim::OptimizerSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{spec}: {err}");
    }
    let err = Optimizer::<f32>::from_spec("adam:state_dtype=f64")
        .unwrap_err()
        .to_string();
    assert!(err.contains("state_dtype") && err.contains("f32"), "{err}");
    assert!(Optimizer::<f64>::from_spec("adam:state_dtype=f64").is_ok());
    let mut opt = Optimizer::<f32>::from_spec("adam:state_dtype=bf16").unwrap();
    assert!(
        opt.set("state_dtype", "param").is_err(),
        "the state's layout cannot change"
    );
    opt.set("rounding", "nearest").unwrap();
    // A group may not choose another state type, and a Muon group is refused under bf16.
    let groups = vec!["b:rule=muon".parse().unwrap()];
    assert!(
        Optimizer::<f32>::with_groups("adam:state_dtype=bf16".parse().unwrap(), groups).is_err()
    );
    let err = "b:state_dtype=param"
        .parse::<sgdlab_optim::GroupSpec>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole optimizer"), "{err}");
}
