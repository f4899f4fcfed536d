//! Inputs that could give a silently wrong result, a wrapped counter, an unbounded read or a
//! crash: each gives the right result or an error that names the problem (see
//! `docs/src/reliability.md`).

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab::Error;
use sgdlab::lab::audit::{MAX_SIMULATION_STEPS, SimulationOptions};
use sgdlab::optim::{
    GradRef, MAX_STEPS, MAX_TENSORS, Optimizer, ParamMut, Schedule, StepInfo, Tensor,
    clip_grad_norm,
};
use sgdlab::train::ScheduleSpec;

fn stepped(spec: &str, steps: usize) -> (Optimizer<f64>, Vec<Tensor<f64>>) {
    let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut p = vec![Tensor::vector("w", vec![1.0, -2.0, 3.0])];
    let g = vec![Tensor::vector("w", vec![0.5, 0.25, -1.0])];
    for _ in 0..steps {
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    (opt, p)
}

fn grads() -> Vec<Tensor<f64>> {
    vec![Tensor::vector("w", vec![0.5, 0.25, -1.0])]
}

#[test]
fn schedule_free_eval_mode_is_saved_with_the_state() {
    let (mut opt, mut p) = stepped("sf-adamw:lr=0.01", 3);
    let mut uninterrupted = opt.clone();
    let mut q = p.clone();
    {
        let mut views: Vec<ParamMut<'_, f64>> = p.iter_mut().map(ParamMut::from).collect();
        opt.eval_mode(&mut views).unwrap();
    }
    let bytes = opt.to_bytes().unwrap();
    let mut loaded = Optimizer::<f64>::from_bytes(&bytes).unwrap();
    assert!(loaded.in_eval_mode());
    assert_eq!(loaded, opt);
    let mut views: Vec<ParamMut<'_, f64>> = p.iter_mut().map(ParamMut::from).collect();
    loaded.train_mode(&mut views).unwrap();
    // Back at the training point y: the next steps equal the uninterrupted run's, bit for bit.
    for _ in 0..2 {
        loaded.step(&mut p, &grads(), &StepInfo::default()).unwrap();
        uninterrupted
            .step(&mut q, &grads(), &StepInfo::default())
            .unwrap();
    }
    assert_eq!(p, q);
    // A state in train mode says nothing about eval mode, and a bad value is refused.
    let sd = uninterrupted.state_dict().unwrap();
    assert!(!sd.metadata.contains_key("eval_mode"));
    let mut bad = sd.clone();
    bad.metadata.insert("eval_mode".into(), "maybe".into());
    let err = Optimizer::<f64>::from_state_dict(&bad).unwrap_err();
    assert!(err.to_string().contains("`eval_mode` is `maybe`"), "{err}");
}

#[test]
fn step_counts_are_bounded_so_that_no_counter_wraps() {
    let (opt, mut p) = stepped("adam", 2);
    let sd = opt.state_dict().unwrap();
    for (key, value) in [
        ("step", u64::MAX),
        ("skipped", u64::MAX),
        ("step", MAX_STEPS + 1),
    ] {
        let mut bad = sd.clone();
        bad.metadata.insert(key.into(), value.to_string());
        let err = Optimizer::<f64>::from_state_dict(&bad).unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{key}: {err}");
    }
    let mut skipped_at = sd.clone();
    skipped_at
        .metadata
        .insert("skipped".into(), MAX_STEPS.to_string());
    let mut full = Optimizer::<f64>::from_state_dict(&skipped_at).unwrap();
    assert!(full.step(&mut p, &grads(), &StepInfo::default()).is_err());
    let mut at = sd.clone();
    at.metadata.insert("step".into(), MAX_STEPS.to_string());
    let mut opt = Optimizer::<f64>::from_state_dict(&at).unwrap();
    let before = p.clone();
    let err = opt
        .step(&mut p, &grads(), &StepInfo::default())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("step count = 9007199254740992 (applied), 0 (skipped)")
            && text.contains("at most 9007199254740992 steps"),
        "{text}"
    );
    assert_eq!(p, before);
    assert_eq!(opt.steps(), MAX_STEPS);
}

#[test]
fn finite_gradients_whose_norm_overflows_are_refused_not_zero_steps() {
    for spec in ["normsgd", "sgd:clip_norm=1", "muon:lr=0.1"] {
        let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
        let mut p = vec![Tensor::new("m", vec![2, 2], vec![1.0; 4]).unwrap()];
        let g = vec![Tensor::new("m", vec![2, 2], vec![1e200, -1e200, 3.0, 0.0]).unwrap()];
        let err = opt.step(&mut p, &g, &StepInfo::default()).unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{spec}: {err}");
        let text = err.to_string();
        assert!(text.contains("|1e200| at index 0 of `m`"), "{spec}: {text}");
        assert_eq!(p[0].data(), &[1.0; 4], "{spec}");
        assert_eq!(opt.steps(), 0, "{spec}");
        // With skip_nonfinite the step is skipped and counted, as a NaN's would be.
        let sep = if spec.contains(':') { "," } else { ":" };
        let mut skipping =
            Optimizer::<f64>::from_spec(&format!("{spec}{sep}skip_nonfinite=true")).unwrap();
        let report = skipping.step(&mut p, &g, &StepInfo::default()).unwrap();
        assert!(!report.applied() && skipping.skipped() == 1, "{spec}");
        // Squares that fit in f64 step normally.
        let big = vec![Tensor::new("m", vec![2, 2], vec![1e150; 4]).unwrap()];
        let mut fresh = Optimizer::<f64>::from_spec(spec).unwrap();
        assert!(
            fresh
                .step(&mut p, &big, &StepInfo::default())
                .unwrap()
                .applied()
        );
    }
    // Plain SGD does not divide by a norm: it is not refused.
    let mut sgd = Optimizer::<f64>::from_spec("sgd:lr=1e-200").unwrap();
    let mut p = vec![Tensor::vector("w", vec![0.0])];
    let g = vec![Tensor::vector("w", vec![1e200])];
    sgd.step(&mut p, &g, &StepInfo::default()).unwrap();
    assert_eq!(p[0].data(), &[-1.0]);
    // The standalone clip refuses too, changing nothing.
    let mut a = vec![1e200, 1.0];
    let err = clip_grad_norm(&mut [&mut a[..]], 1.0).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    assert_eq!(a, [1e200, 1.0]);
}

#[test]
fn tensor_names_must_be_distinct() {
    let mut opt = Optimizer::<f64>::from_spec("adam").unwrap();
    let (mut a, mut b) = (vec![1.0], vec![2.0]);
    let err = opt
        .step_views(
            &mut [ParamMut::vector("x", &mut a), ParamMut::vector("x", &mut b)],
            &[GradRef::vector("x", &[1.0]), GradRef::vector("x", &[1.0])],
            &StepInfo::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("`x`: occurs twice"), "{err}");
    assert!(opt.layout().is_none() && a == [1.0] && b == [2.0]);
    // A state whose layout repeats a name is refused on loading.
    let (opt, _) = stepped("adam", 1);
    let mut sd = opt.state_dict().unwrap();
    sd.metadata
        .insert("layout".into(), r#"[["w",[3]],["w",[3]]]"#.into());
    let err = Optimizer::<f64>::from_state_dict(&sd).unwrap_err();
    assert!(err.to_string().contains("occurs twice"), "{err}");
}

#[test]
fn a_layout_longer_than_the_tensor_limit_is_refused_while_it_is_parsed() {
    let (opt, _) = stepped("sgd", 1);
    let mut sd = opt.state_dict().unwrap();
    let entries: Vec<String> = (0..=MAX_TENSORS)
        .map(|i| format!(r#"["t{i}",[]]"#))
        .collect();
    sd.metadata
        .insert("layout".into(), format!("[{}]", entries.join(",")));
    let err = Optimizer::<f64>::from_state_dict(&sd).unwrap_err();
    assert!(
        err.to_string().contains("more than 1048576 tensors"),
        "{err}"
    );
    sd.metadata.insert("layout".into(), "5".into());
    let err = Optimizer::<f64>::from_state_dict(&sd).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected an array of at most 1048576 entries"),
        "{err}"
    );
}

#[test]
fn state_files_are_checksummed() {
    let (opt, _) = stepped("adam", 2);
    let good = opt.to_bytes().unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    let err = Optimizer::<f64>::from_bytes(&flipped).unwrap_err();
    assert!(err.to_string().contains("SHA-256 does not match"), "{err}");
    // In-memory state dicts are not files: they carry no checksum.
    let sd = opt.state_dict().unwrap();
    assert!(!sd.metadata.contains_key("sha256"));
    assert_eq!(Optimizer::<f64>::from_bytes(&good).unwrap(), opt);
    assert_eq!(
        Optimizer::<f64>::from_bytes(&good)
            .unwrap()
            .to_bytes()
            .unwrap(),
        good
    );
}

#[test]
fn state_files_are_read_only_as_far_as_their_header_declares() {
    let dir = tempfile::tempdir().unwrap();
    let (opt, _) = stepped("adam", 2);
    let path = dir.path().join("state.safetensors");
    opt.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let err = |p: &std::path::Path| Optimizer::<f64>::load(p).unwrap_err().to_string();
    // Sparse bytes past the declared end (a terabyte): refused before reading them.
    let sparse = dir.path().join("sparse.safetensors");
    std::fs::write(&sparse, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    assert!(err(&sparse).contains("longer than its contents"));
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    assert!(err(&cut).contains("truncated"));
    // Devices and FIFOs are refused at once (a FIFO without a writer would block for ever).
    assert!(err(std::path::Path::new("/dev/zero")).contains("regular file"));
    #[cfg(target_os = "linux")]
    {
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(err(&fifo).contains("regular file"));
    }
}

#[test]
fn schedules_nest_boundedly_and_do_not_overflow() {
    let deep = format!("{}exp:0.5{}", "prod[".repeat(8000), "]".repeat(8000));
    let err = deep.parse::<Schedule>().unwrap_err().to_string();
    assert!(err.contains("nest at most 16 deep"), "{err}");
    let ok = format!("{}exp:0.5{}", "prod[".repeat(16), "]".repeat(16));
    assert_eq!(ok.parse::<Schedule>().unwrap().factor(1), 0.5);
    // Factors at the last step a counter can hold.
    let warmup: Schedule = "warmup:10".parse().unwrap();
    assert_eq!(warmup.factor(u64::MAX), 1.0);
    let wsd: Schedule = format!("wsd:1,{},5", u64::MAX - 1).parse().unwrap();
    assert_eq!(wsd.factor(u64::MAX - 1), 1.0);
    assert_eq!(wsd.factor(0), 1.0);
}

#[test]
fn train_schedules_name_their_own_problem() {
    let err = |s: &str| s.parse::<ScheduleSpec>().unwrap_err().to_string();
    assert!(
        err("exp:0").contains("needs 0 < γ <= 1"),
        "{}",
        err("exp:0")
    );
    assert!(err("cosine:0").contains("needs T >= 1"));
    assert!(err("linear:0,0,0").contains("needs T >= 1"));
    let e = err("warmup-cosine:0");
    assert!(
        e.contains("warmup-cosine:0") && e.contains("at least 1 step"),
        "{e}"
    );
    assert!(err("bogus:1").contains("must be constant, warmup:S"));
    // W + D past u64: an error, not a wrapped sum that fits the run.
    for text in [
        format!("wsd:{},*,1", u64::MAX),
        format!("wsd:100,*,{}", u64::MAX - 15),
    ] {
        let spec: ScheduleSpec = text.parse().unwrap();
        let e = spec.for_run(10, 5).unwrap_err().to_string();
        assert!(e.contains("exceed the run"), "{text}: {e}");
    }
}

#[test]
fn errors_print_numbers_in_shortest_form() {
    let err = |spec: &str| Optimizer::<f64>::from_spec(spec).unwrap_err().to_string();
    assert!(
        err("sgd:lr=-1e308").contains("lr = -1e308:"),
        "{}",
        err("sgd:lr=-1e308")
    );
    assert!(
        err("sgd:lr=-1e-8").contains("lr = -1e-8:"),
        "{}",
        err("sgd:lr=-1e-8")
    );
    assert!(err("sgd:lr=-0.5").contains("lr = -0.5:"));
    // Whole numbers (every u64) are kept as they are.
    let e = Error::invalid("steps", u64::MAX, "too many").to_string();
    assert!(e.contains("18446744073709551615"), "{e}");
}

#[test]
fn simulation_sizes_are_bounded() {
    let ok = SimulationOptions::default();
    ok.validate().unwrap();
    for (burn_in, steps) in [
        (20_000, usize::MAX),
        (usize::MAX, 1000),
        (0, MAX_SIMULATION_STEPS + 1),
        (0, 79),
    ] {
        let o = SimulationOptions {
            burn_in,
            steps,
            seed: 1,
        };
        assert!(o.validate().is_err(), "{burn_in} + {steps}");
    }
}

#[test]
fn group_values_are_one_word() {
    let mut opt =
        Optimizer::<f64>::with_groups("adam".parse().unwrap(), vec!["w:lr=0.1".parse().unwrap()])
            .unwrap();
    let err = opt
        .set_group_keys(1, &[("lr", "0.5,weight_decay=0.5".to_string())])
        .unwrap_err();
    assert!(err.to_string().contains("one word"), "{err}");
    assert_eq!(opt.groups()[0].to_string(), "w:lr=0.1");
}

#[test]
fn a_state_dict_buffer_must_hold_as_many_elements_as_its_shape() {
    let (opt, mut p) = stepped("adam", 1);
    let mut sd = opt.state_dict().unwrap();
    let (shape, data) = sd.buffers.get_mut("exp_avg/w").unwrap();
    assert_eq!(shape, &vec![3]);
    data.pop();
    let err = Optimizer::<f64>::from_state_dict(&sd).unwrap_err();
    assert!(
        err.to_string()
            .contains("has 2 elements, but its shape [3] holds 3"),
        "{err}"
    );
    // Intact, it loads and steps.
    let mut back = Optimizer::<f64>::from_state_dict(&opt.state_dict().unwrap()).unwrap();
    back.step(&mut p, &grads(), &StepInfo::default()).unwrap();
}

#[test]
fn one_optimizer_takes_at_most_the_tensor_limit() {
    let names: Vec<String> = (0..=MAX_TENSORS).map(|i| format!("t{i}")).collect();
    let mut data = vec![0.0f64; MAX_TENSORS + 1];
    for (n, ok) in [(MAX_TENSORS, true), (MAX_TENSORS + 1, false)] {
        let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
        let mut params: Vec<ParamMut<'_, f64>> = names[..n]
            .iter()
            .zip(data[..n].chunks_mut(1))
            .map(|(name, x)| ParamMut::vector(name, x))
            .collect();
        // eval_mode checks the tensors as a first step does, and (for sgd) changes nothing.
        match opt.eval_mode(&mut params) {
            Ok(()) => assert!(ok, "{n} tensors were accepted"),
            Err(e) => {
                assert!(!ok, "{n}: {e}");
                assert!(
                    e.to_string()
                        .contains("one optimizer steps at most 1048576"),
                    "{e}"
                );
            }
        }
    }
}
