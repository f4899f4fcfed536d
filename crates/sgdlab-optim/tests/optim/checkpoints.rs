//! Optimizer state on disk: checkpoint/resume for every optimizer, byte-identical files,
//! corrupt and mismatched files refused by name, atomic saves, `load_as`, state dicts.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use super::optimizers::{ALL, init, run};
use proptest::prelude::*;
use sgdlab_optim::Real;
use sgdlab_optim::{Optimizer, StepInfo, Tensor};

#[test]
fn checkpoint_resume_is_bit_identical_for_every_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    for (k, spec) in ALL.iter().enumerate() {
        fn check<T: Real>(spec: &str, path: &std::path::Path) {
            let mut straight = Optimizer::<T>::from_spec(spec).unwrap();
            let mut p_straight = init::<T>();
            run(&mut straight, &mut p_straight, 0, 30);

            let mut first = Optimizer::<T>::from_spec(spec).unwrap();
            let mut p_resumed = init::<T>();
            run(&mut first, &mut p_resumed, 0, 13);
            first.save(path).unwrap();
            drop(first);
            let mut resumed = Optimizer::<T>::load_for(path, &spec.parse().unwrap()).unwrap();
            assert_eq!(resumed.steps(), 13);
            run(&mut resumed, &mut p_resumed, 13, 30);
            assert_eq!(p_straight, p_resumed, "{spec} ({})", T::NAME);
            assert_eq!(straight, resumed, "{spec} ({}) state", T::NAME);
        }
        let path = dir.path().join(format!("opt{k}.safetensors"));
        check::<f64>(spec, &path);
        check::<f32>(spec, &path);
    }
}

/// The same state gives the same file, byte for byte (safetensors keeps its metadata in a
/// hash map, whose order changes from one map to the next).
#[test]
fn equal_states_give_identical_checkpoint_bytes() {
    let mut opt = Optimizer::<f32>::from_spec("adam:amsgrad=true").unwrap();
    let mut p = init::<f32>();
    run(&mut opt, &mut p, 0, 3);
    let first = opt.to_bytes().unwrap();
    for _ in 0..20 {
        assert_eq!(opt.clone().to_bytes().unwrap(), first);
    }
    // And the bytes still read back as the same optimizer.
    assert_eq!(Optimizer::<f32>::from_bytes(&first).unwrap(), opt);
}

#[test]
fn a_fresh_optimizer_round_trips_too() {
    let opt = Optimizer::<f32>::from_spec("adam").unwrap();
    let back = Optimizer::<f32>::from_bytes(&opt.to_bytes().unwrap()).unwrap();
    assert_eq!(opt, back);
}

#[test]
fn loading_bad_checkpoints_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.01").unwrap();
    let mut p = init::<f64>();
    run(&mut opt, &mut p, 0, 3);
    opt.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let err = |path: &std::path::Path| Optimizer::<f64>::load(path).unwrap_err().to_string();
    // Wrong optimizer.
    let e = Optimizer::<f64>::load_for(&path, &"sgd:lr=0.01".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not of `sgd:lr=0.01`"), "{e}");
    // Wrong dtype.
    let e = Optimizer::<f32>::load(&path).unwrap_err().to_string();
    assert!(e.contains("f64") && e.contains("f32"), "{e}");
    // Truncated.
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert!(err(&cut).contains("cut.safetensors"));
    // Garbage.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    assert!(err(&junk).contains("not a valid safetensors"));
    // Missing file.
    assert!(err(&dir.path().join("absent")).contains("cannot read"));
    // Resuming onto parameters of another shape.
    let mut resumed = Optimizer::<f64>::load(&path).unwrap();
    let mut other = vec![Tensor::vector("layer.weight", vec![0.0; 5])];
    let grads = vec![Tensor::vector("layer.weight", vec![0.0; 5])];
    assert!(
        resumed
            .step(&mut other, &grads, &StepInfo::default())
            .is_err()
    );
}

/// Every field of a state is checked on loading, and each corruption is refused with a
/// message that names it: a state with a group of another rule (Madam: one tensor scalar,
/// the last group's index), edited one field or buffer at a time.
#[test]
fn every_corrupt_field_of_a_state_is_refused_by_name() {
    use sgdlab_optim::{GroupSpec, StateDict};
    let groups: Vec<GroupSpec> = vec!["b:rule=madam,lr=0.05".parse().unwrap()];
    let mut opt = Optimizer::<f64>::with_groups("adam:lr=0.1".parse().unwrap(), groups).unwrap();
    let mut p = vec![
        Tensor::vector("w", vec![1.0, 2.0]),
        Tensor::vector("b", vec![0.5]),
    ];
    let g = vec![
        Tensor::vector("w", vec![0.5, -0.5]),
        Tensor::vector("b", vec![0.25]),
    ];
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    let sd = opt.state_dict().unwrap();
    assert_eq!(sd.metadata["tensor_groups"], "[0,1]");
    assert_eq!(Optimizer::<f64>::from_state_dict(&sd).unwrap(), opt);
    let refused = |edit: &dyn Fn(&mut StateDict<f64>), needle: &str| {
        let mut bad = sd.clone();
        edit(&mut bad);
        let err = Optimizer::<f64>::from_state_dict(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    let set = |key: &'static str, value: &'static str| {
        move |s: &mut StateDict<f64>| {
            s.metadata.insert(key.to_string(), value.to_string());
        }
    };
    refused(&set("format", "nope"), "format is `nope`");
    refused(&set("version", "3"), "format version 3 is not supported");
    refused(
        &set("dtype", "f32"),
        "holds f32 state, but f64 was asked for",
    );
    refused(&set("spec", "bogus"), "bad spec");
    refused(&set("step", "x"), "`step` is not a step count");
    refused(&set("skipped", "-1"), "`skipped` is not a step count");
    refused(&set("layout", "["), "bad layout");
    refused(&set("tensor_scalars", "["), "bad tensor_scalars");
    refused(&set("groups", "[1]"), "bad groups");
    refused(&set("groups", "[\"nocolon\"]"), "bad group");
    refused(&set("schedule", "bogus"), "bad schedule");
    refused(&set("tensor_groups", "["), "bad tensor_groups");
    refused(
        &|s| drop(s.metadata.remove("spec")),
        "metadata lacks `spec`",
    );
    // No layout: only a fresh optimizer (step 0, no buffers) has none.
    let no_layout = "state buffers without a parameter layout";
    refused(&set("layout", "null"), no_layout);
    refused(
        &|s| {
            set("layout", "null")(s);
            s.buffers.clear();
        },
        no_layout,
    );
    refused(
        &|s| {
            set("layout", "null")(s);
            set("step", "0")(s);
        },
        no_layout,
    );
    let mut fresh = sd.clone();
    set("layout", "null")(&mut fresh);
    set("step", "0")(&mut fresh);
    fresh.buffers.clear();
    assert_eq!(
        Optimizer::<f64>::from_state_dict(&fresh).unwrap().steps(),
        0
    );
    // Groups and scalars per tensor, and the buffers they imply.
    let groups_mismatch = "tensor_groups do not match the layout and groups";
    refused(&set("tensor_groups", "[0]"), groups_mismatch);
    refused(&set("tensor_groups", "[0,2]"), groups_mismatch);
    let scalars_mismatch = "tensor_scalars do not match the layout";
    refused(&set("tensor_scalars", "[[]]"), scalars_mismatch);
    refused(&set("tensor_scalars", "[[],[]]"), scalars_mismatch);
    refused(&set("tensor_scalars", "[[1.0],[1.0]]"), scalars_mismatch);
    refused(
        &|s| {
            s.buffers.insert("exp_avg/x".into(), (vec![1], vec![0.0]));
        },
        "holds 4 buffers, expected 3",
    );
    refused(
        &|s| {
            let b = s.buffers.remove("exp_avg/w").unwrap();
            s.buffers.insert("exp_avg/v".into(), b);
        },
        "buffer `exp_avg/w` is missing",
    );
    refused(
        &|s| s.buffers.get_mut("exp_avg_sq/b").unwrap().0 = vec![1, 1],
        "buffer `exp_avg_sq/b` is f64 [1, 1], expected f64 [1]",
    );
}

/// `stored_dtype` reads the element type from a saved state's metadata (the Python package
/// loads with it), and refuses bytes that are not an sgdlab optimizer state by name.
#[test]
fn stored_dtype_reads_the_state_type_and_refuses_other_bytes() {
    use sgdlab_optim::stored_dtype;
    let f32_bytes = Optimizer::<f32>::from_spec("adam")
        .unwrap()
        .to_bytes()
        .unwrap();
    let f64_bytes = Optimizer::<f64>::from_spec("adam")
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(stored_dtype(&f32_bytes).unwrap(), "f32");
    assert_eq!(stored_dtype(&f64_bytes).unwrap(), "f64");
    let err = stored_dtype(b"junk").unwrap_err().to_string();
    assert!(err.contains("not a valid safetensors"), "{err}");
    // Valid safetensors whose format name is another's.
    let mut bytes = f64_bytes.clone();
    let pos = bytes
        .windows(22)
        .position(|w| w == b"sgdlab-optimizer-state")
        .unwrap();
    bytes[pos..pos + 6].copy_from_slice(b"xxxxxx");
    let err = stored_dtype(&bytes).unwrap_err().to_string();
    assert!(err.contains("not an sgdlab optimizer state"), "{err}");
}

/// bfloat16 state and master copies through a state dict: the widened values load back
/// exactly (NaN too), a value that is not a bfloat16 is refused, and the master copy must be
/// there with the parameters' shape.
#[test]
fn bf16_state_and_master_copies_are_checked_in_a_state_dict() {
    use sgdlab_optim::lowp::bf16_nearest;
    use sgdlab_optim::{GradRef, ParamMut};
    let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.1,state_dtype=bf16").unwrap();
    let mut p = vec![Tensor::vector("w", vec![1.0, 2.0])];
    let g = vec![Tensor::vector("w", vec![0.5, -0.5])];
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    let sd = opt.state_dict().unwrap();
    assert_eq!(Optimizer::<f64>::from_state_dict(&sd).unwrap(), opt);
    let mut nan = sd.clone();
    nan.buffers.get_mut("exp_avg/w").unwrap().1[0] = f64::NAN;
    let loaded = Optimizer::<f64>::from_state_dict(&nan).unwrap();
    let bits = loaded.state_bf16("exp_avg", 0).unwrap()[0];
    assert!(sgdlab_optim::lowp::bf16_to_f32(bits).is_nan());
    let mut off = sd.clone();
    off.buffers.get_mut("exp_avg/w").unwrap().1[1] = 0.1;
    let err = Optimizer::<f64>::from_state_dict(&off)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("element 1 = 0.1 is not a bfloat16 value"),
        "{err}"
    );

    let mut opt = Optimizer::<f64>::from_spec("sgd:lr=0.1,master_weights=true").unwrap();
    let mut bits = vec![bf16_nearest(1.0), bf16_nearest(2.0)];
    let grad = [0.5, -0.5];
    opt.step_bf16_params(
        &mut [ParamMut::vector("w", &mut bits)],
        &[GradRef::vector("w", &grad)],
        &StepInfo::default(),
    )
    .unwrap();
    let sd = opt.state_dict().unwrap();
    assert_eq!(sd.buffers["master/w"].1, [0.95, 2.05]);
    assert_eq!(Optimizer::<f64>::from_state_dict(&sd).unwrap(), opt);
    let mut moved = sd.clone();
    let m = moved.buffers.remove("master/w").unwrap();
    moved.buffers.insert("master/v".into(), m);
    let err = Optimizer::<f64>::from_state_dict(&moved)
        .unwrap_err()
        .to_string();
    assert!(err.contains("buffer `master/w` is missing"), "{err}");
    let mut reshaped = sd.clone();
    reshaped.buffers.get_mut("master/w").unwrap().0 = vec![1, 2];
    let err = Optimizer::<f64>::from_state_dict(&reshaped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`master/w` is f64 [1, 2], expected f64 [2]"),
        "{err}"
    );
    let mut gone = sd.clone();
    gone.buffers.remove("master/w");
    let err = Optimizer::<f64>::from_state_dict(&gone)
        .unwrap_err()
        .to_string();
    assert!(err.contains("master_weights=true"), "{err}");
}

#[test]
fn save_is_atomic_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    Optimizer::<f64>::from_spec("sgd")
        .unwrap()
        .save(&path)
        .unwrap();
    Optimizer::<f64>::from_spec("adam")
        .unwrap()
        .save(&path)
        .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert!(
        Optimizer::<f64>::from_spec("adam")
            .unwrap()
            .save(&dir.path().join("missing/x"))
            .is_err()
    );
}

proptest! {
    /// A zero gradient with zero weight decay leaves SGD (any momentum) and Adam parameters
    /// exactly where they are.
    #[test]
    fn zero_gradient_leaves_parameters(p0 in prop::collection::vec(-1e3..1e3f64, 1..20), momentum in 0.0..0.99f64, steps in 1usize..5) {
        for spec in [format!("sgd:lr=0.1,momentum={momentum}"), "adam:lr=0.1".to_string(), "adam:lr=0.1,amsgrad=true".to_string()] {
            let mut opt = Optimizer::<f64>::from_spec(&spec).unwrap();
            let mut p = vec![Tensor::vector("p", p0.clone())];
            let g = vec![Tensor::vector("p", vec![0.0; p0.len()])];
            for _ in 0..steps {
                opt.step(&mut p, &g, &StepInfo::default()).unwrap();
            }
            prop_assert_eq!(p[0].data(), p0.as_slice());
        }
    }

    /// The multiplicative update never moves a parameter by more than lr·max(eps,|Φ|)·|g|,
    /// up to the rounding of the updated parameter (half an ulp of Φ).
    #[test]
    fn multiplicative_step_is_bounded(p0 in prop::collection::vec(-1e3..1e3f64, 1..20), g0 in prop::collection::vec(-1e3..1e3f64, 20), lr in 0.0..1.0f64, eps in 1e-6..1.0f64) {
        let mut opt = Optimizer::<f64>::from_spec(&format!("multiplicative:lr={lr},eps={eps}")).unwrap();
        let g0 = &g0[..p0.len()];
        let mut p = vec![Tensor::vector("p", p0.clone())];
        opt.step(&mut p, &[Tensor::vector("p", g0.to_vec())], &StepInfo::default()).unwrap();
        for ((after, before), g) in p[0].data().iter().zip(&p0).zip(g0) {
            let bound = lr * before.abs().max(eps) * g.abs();
            let rounding = before.abs().max(after.abs()) * f64::EPSILON;
            prop_assert!((after - before).abs() <= bound * (1.0 + 1e-12) + rounding);
        }
    }

    /// Spec strings round-trip through Display for random hyper-parameters.
    #[test]
    fn specs_round_trip(lr in 0.0..10.0f64, b1 in 0.0..0.999f64, b2 in 0.0..0.9999f64, eps in 1e-12..1.0f64, wd in 0.0..1.0f64, ams in any::<bool>()) {
        for name in ["adam", "adamw"] {
            let s = format!("{name}:lr={lr},beta1={b1},beta2={b2},eps={eps},weight_decay={wd},amsgrad={ams}");
            let spec: sgdlab_optim::OptimizerSpec = s.parse().unwrap();
            prop_assert_eq!(spec.to_string().parse::<sgdlab_optim::OptimizerSpec>().unwrap(), spec);
        }
    }
}

#[test]
fn load_as_allows_hyper_parameter_changes_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let mut opt = Optimizer::<f32>::from_spec("adam:lr=0.01").unwrap();
    let mut p = vec![Tensor::vector("w", vec![1.0f32, 2.0])];
    let g = vec![Tensor::vector("w", vec![0.1f32, 0.2])];
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    opt.save(&path).unwrap();
    let other: sgdlab_optim::OptimizerSpec = "adam:lr=0.001,weight_decay=0.1".parse().unwrap();
    assert!(Optimizer::<f32>::load_for(&path, &other).is_err());
    let loaded = Optimizer::<f32>::load_as(&path, &other).unwrap();
    assert_eq!((loaded.spec(), loaded.steps()), (&other, 1));
    assert_eq!(loaded.state("exp_avg", 0), opt.state("exp_avg", 0));
    for refused in ["sgd", "adam:amsgrad=true", "adamw"] {
        let spec = refused.parse().unwrap();
        assert!(
            Optimizer::<f32>::load_as(&path, &spec).is_err(),
            "{refused}"
        );
    }
}

mod groups {
    use sgdlab_optim::{GroupSpec, Optimizer, OptimizerSpec, StepInfo, Tensor, clip_grad_norm};

    fn params() -> Vec<Tensor<f64>> {
        vec![
            Tensor::new("fc.weight", vec![2, 2], vec![0.5, -1.0, 2.0, 0.25]).unwrap(),
            Tensor::vector("fc.bias", vec![0.1, -0.2]),
            Tensor::vector("emb.weight", vec![1.0, 2.0, 3.0]),
        ]
    }

    fn grads(step: usize) -> Vec<Tensor<f64>> {
        params()
            .iter()
            .map(|p| {
                let data = (0..p.len())
                    .map(|i| ((i * 7 + step * 3) % 5) as f64 * 0.3 - 0.6)
                    .collect();
                Tensor::new(p.name(), p.shape().to_vec(), data).unwrap()
            })
            .collect()
    }

    fn spec(s: &str) -> OptimizerSpec {
        s.parse().unwrap()
    }

    /// One optimizer with groups equals separate optimizers per group, bit for bit (without
    /// global clipping, the groups do not interact).
    #[test]
    fn groups_equal_separate_optimizers() {
        let groups: Vec<GroupSpec> = vec![
            "*.bias:weight_decay=0".parse().unwrap(),
            "emb.*:rule=lion,lr=0.001".parse().unwrap(),
        ];
        let mut grouped = Optimizer::<f64>::with_groups(spec("adamw:lr=0.01"), groups).unwrap();
        let mut separate = [
            Optimizer::<f64>::new(spec("adamw:lr=0.01")).unwrap(),
            Optimizer::<f64>::new(spec("adamw:lr=0.01,weight_decay=0")).unwrap(),
            Optimizer::<f64>::new(spec("lion:lr=0.001")).unwrap(),
        ];
        let mut p = params();
        let mut q: Vec<Vec<Tensor<f64>>> = params().into_iter().map(|t| vec![t]).collect();
        for step in 0..6 {
            let g = grads(step);
            grouped.step(&mut p, &g, &StepInfo::default()).unwrap();
            for (k, opt) in separate.iter_mut().enumerate() {
                opt.step(&mut q[k], &g[k..k + 1], &StepInfo::default())
                    .unwrap();
            }
        }
        for k in 0..3 {
            assert_eq!(p[k], q[k][0], "tensor {k}");
        }
        assert_eq!(
            (
                grouped.group_of(0),
                grouped.group_of(1),
                grouped.group_of(2)
            ),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(grouped.slot_names_of(2), ["exp_avg"]);
        assert_eq!(grouped.state("exp_avg", 2), separate[2].state("exp_avg", 0));
        // The state, groups included, round-trips through a checkpoint.
        let back = Optimizer::<f64>::from_bytes(&grouped.to_bytes().unwrap()).unwrap();
        assert_eq!(back, grouped);
        assert_eq!(
            back.describe(),
            "adamw:lr=0.01 [*.bias:weight_decay=0] [emb.*:rule=lion,lr=0.001]"
        );
    }

    /// Clipping is global: the norm is taken over every group's gradient.
    #[test]
    fn clipping_and_the_finiteness_check_stay_global() {
        let groups: Vec<GroupSpec> = vec!["*.bias:lr=0.1".parse().unwrap()];
        let mut grouped =
            Optimizer::<f64>::with_groups(spec("sgd:lr=1,clip_norm=0.5"), groups.clone()).unwrap();
        let mut plain = Optimizer::<f64>::with_groups(spec("sgd:lr=1"), groups).unwrap();
        let (mut p, mut q) = (params(), params());
        let g = grads(1);
        let report = grouped.step(&mut p, &g, &StepInfo::default()).unwrap();
        let mut clipped = g.clone();
        let mut views: Vec<&mut [f64]> = clipped.iter_mut().map(|t| t.data_mut()).collect();
        let norm = clip_grad_norm(&mut views, 0.5).unwrap();
        assert_eq!(report.grad_norm, Some(norm));
        plain.step(&mut q, &clipped, &StepInfo::default()).unwrap();
        for (a, b) in p.iter().zip(&q) {
            for (x, y) in a.data().iter().zip(b.data()) {
                assert!((x - y).abs() < 1e-15, "{x} vs {y}");
            }
        }
        // A NaN in one group's gradient stops the whole step.
        let before = (p.clone(), grouped.clone());
        let mut bad = grads(2);
        bad[2].data_mut()[0] = f64::NAN;
        assert!(grouped.step(&mut p, &bad, &StepInfo::default()).is_err());
        assert_eq!((p, grouped), before);
    }

    #[test]
    fn changes_reach_the_groups_that_follow_the_base() {
        let groups: Vec<GroupSpec> = vec![
            "*.bias:weight_decay=0".parse().unwrap(),
            "emb.*:lr=0.5".parse().unwrap(),
        ];
        let mut opt = Optimizer::<f64>::with_groups(spec("adamw:lr=0.01"), groups).unwrap();
        opt.step(&mut params(), &grads(0), &StepInfo::default())
            .unwrap();
        opt.set_lr(0.02).unwrap();
        let lrs: Vec<f64> = (0..3)
            .map(|g| opt.group_spec(g).unwrap().rule.lr())
            .collect();
        assert_eq!(lrs, [0.02, 0.02, 0.5]);
        opt.set("weight_decay", 0.05).unwrap();
        assert_eq!(
            opt.group_spec(1).unwrap().to_string(),
            "adamw:lr=0.02,weight_decay=0"
        );
        assert_eq!(
            opt.group_spec(2).unwrap().to_string(),
            "adamw:lr=0.5,weight_decay=0.05"
        );
        opt.set_group(2, "lr", 0.25).unwrap();
        assert_eq!(opt.group_spec(2).unwrap().rule.lr(), 0.25);
        assert!(
            opt.set_group(1, "amsgrad", true).is_err(),
            "would add a buffer"
        );
        assert!(opt.set_group(3, "lr", 1).is_err());
        assert!(opt.set_group(1, "clip_norm", 1).is_err());
    }

    #[test]
    fn group_keys_set_together_are_validated_together() {
        let groups: Vec<GroupSpec> = vec!["b:lr=0.5".parse().unwrap()];
        let base = spec("sgd:lr=0.1,momentum=0.9,dampening=0.1");
        let mut opt = Optimizer::<f64>::with_groups(base, groups).unwrap();
        // Nesterov needs zero dampening: alone it is refused, and nothing changes.
        assert!(opt.set_group(1, "nesterov", true).is_err());
        let both = [
            ("dampening", "0".to_string()),
            ("nesterov", "true".to_string()),
        ];
        assert!(opt.set_group_keys(1, &both[1..]).is_err());
        let before = "sgd:lr=0.5,momentum=0.9,dampening=0.1";
        assert_eq!(opt.group_spec(1).unwrap().to_string(), before);
        opt.set_group_keys(1, &both).unwrap();
        assert_eq!(
            opt.group_spec(1).unwrap().to_string(),
            "sgd:lr=0.5,momentum=0.9,nesterov=true"
        );
        opt.set_group_keys(0, &both).unwrap();
        assert_eq!(
            opt.spec().to_string(),
            "sgd:lr=0.1,momentum=0.9,nesterov=true"
        );
        let bad = [("lr", "0.2".to_string()), ("clip_norm", "1".to_string())];
        assert!(opt.set_group_keys(1, &bad).is_err());
        assert_eq!(opt.group_spec(1).unwrap().rule.lr(), 0.5);
    }

    #[test]
    fn a_group_that_matches_nothing_is_an_error() {
        let groups: Vec<GroupSpec> = vec!["*.bais:weight_decay=0".parse().unwrap()];
        let mut opt = Optimizer::<f64>::with_groups(spec("adamw"), groups).unwrap();
        let err = opt
            .step(&mut params(), &grads(0), &StepInfo::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("*.bais")
                && err.contains("matches no parameter")
                && err.contains("`fc.bias`"),
            "{err}"
        );
        assert_eq!(opt.steps(), 0);
        assert!(
            Optimizer::<f64>::with_groups(spec("adamw"), vec!["x:momentum=0.9".parse().unwrap()])
                .is_err()
        );
    }
}

#[test]
fn a_state_dict_can_be_inspected_edited_and_loaded() {
    let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.1").unwrap();
    let mut p = vec![Tensor::vector("w", vec![1.0, 2.0])];
    opt.step(
        &mut p,
        &[Tensor::vector("w", vec![0.5, -0.5])],
        &StepInfo::default(),
    )
    .unwrap();
    let mut sd = opt.state_dict().unwrap();
    assert_eq!(sd.metadata["step"], "1");
    assert_eq!(sd.buffers["exp_avg/w"].1, opt.state("exp_avg", 0).unwrap());
    assert_eq!(Optimizer::<f64>::from_state_dict(&sd).unwrap(), opt);
    // Edit: zero the first moment, then load it into an optimizer.
    sd.buffers.get_mut("exp_avg/w").unwrap().1.fill(0.0);
    let mut other = Optimizer::<f64>::from_spec("sgd").unwrap();
    other.load_state_dict(&sd).unwrap();
    assert_eq!(other.state("exp_avg", 0).unwrap(), [0.0, 0.0]);
    assert_eq!(other.spec().to_string(), "adam:lr=0.1");
    // Serialised, it is the file format.
    let bytes = other.to_bytes().unwrap();
    assert_eq!(
        Optimizer::<f64>::from_bytes(&bytes)
            .unwrap()
            .state_dict()
            .unwrap(),
        sd
    );
    // A wrong shape is refused, naming the buffer, and nothing changes.
    sd.buffers.get_mut("exp_avg/w").unwrap().1.push(1.0);
    sd.buffers.get_mut("exp_avg/w").unwrap().0 = vec![3];
    let err = other.load_state_dict(&sd).unwrap_err().to_string();
    assert!(err.contains("exp_avg/w"), "{err}");
    assert_eq!(other.state("exp_avg", 0).unwrap(), [0.0, 0.0]);
}
