//! Unit tests of the optimizer: steps by hand, errors, groups, schedules, accumulation.

use super::*;

#[test]
fn groups_and_schedule_read_back() {
    let groups: Vec<GroupSpec> = vec![
        "*.bias:weight_decay=0".parse().unwrap(),
        "embed.*:rule=lion,lr=1e-4".parse().unwrap(),
    ];
    let opt =
        Optimizer::<f32>::with_groups("adamw:lr=1e-3".parse().unwrap(), groups.clone()).unwrap();
    assert_eq!(opt.groups(), &groups[..]);
    let mut opt = Optimizer::<f32>::from_spec("sgd:lr=0.1").unwrap();
    assert!(opt.groups().is_empty());
    assert_eq!(opt.schedule().to_string(), "constant");
    opt.set_schedule("cosine:100,0.1".parse().unwrap()).unwrap();
    assert_eq!(opt.schedule().to_string(), "cosine:100,0.1");
    assert_eq!(opt.schedule().factor(100), 0.1);
}

#[test]
fn the_schedule_counts_skipped_steps_and_the_layout_is_fixed_by_the_first_step() {
    // Skipped steps advance the schedule (as PyTorch's scheduler.step() would): after two
    // applied steps and one skipped, the next step is the schedule's fourth, 0.5^3.
    let mut opt = Optimizer::from_spec("sgd:lr=1,skip_nonfinite=true").unwrap();
    opt.set_schedule("exp:0.5".parse().unwrap()).unwrap();
    let mut p = one(vec![1.0]);
    assert_eq!(opt.layout(), None);
    for g in [1.0, f64::NAN, 1.0] {
        opt.step(&mut p, &one(vec![g]), &StepInfo::default())
            .unwrap();
    }
    assert_eq!((opt.steps(), opt.skipped()), (2, 1));
    assert_eq!(opt.current_lr(), 0.125);
    assert_eq!(opt.layout(), Some(&[("p".to_string(), vec![1])][..]));
}

#[test]
fn views_report_what_they_were_built_from() {
    let mut w = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let g = [0.5f32; 6];
    let p = ParamMut::new("w", &[2, 3], &mut w).expect("2 x 3 = 6");
    assert_eq!(
        (p.name(), p.shape(), p.data()),
        (
            "w",
            &[2usize, 3][..],
            &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0][..]
        )
    );
    let r = GradRef::new("w", &[3, 2], &g).expect("3 x 2 = 6");
    assert_eq!(
        (r.name(), r.shape(), r.data()),
        ("w", &[3usize, 2][..], &g[..])
    );
    let mut b = vec![7.0f64];
    let p = ParamMut::vector("b", &mut b);
    assert_eq!(
        (p.name(), p.shape(), p.data()),
        ("b", &[1usize][..], &[7.0][..])
    );
    let r = GradRef::vector("b", &[0.25f64, 0.5]);
    assert_eq!(
        (r.name(), r.shape(), r.data()),
        ("b", &[2usize][..], &[0.25, 0.5][..])
    );
    assert!(ParamMut::new("w", &[4], &mut w).is_err());
    assert!(GradRef::new("w", &[2, 2], &g).is_err());
    let t = Tensor::new("t", vec![0, 3], Vec::<f32>::new()).expect("empty");
    assert!(t.is_empty());
    assert_eq!(t.len(), 0);
    let t = Tensor::vector("t", vec![1.0f32]);
    assert!(!t.is_empty());
    assert_eq!(t.len(), 1);
}

fn one(x: Vec<f64>) -> Vec<Tensor<f64>> {
    vec![Tensor::vector("p", x)]
}

#[test]
fn sgd_by_hand() {
    let mut p = one(vec![1.0, 2.0]);
    let g = one(vec![1.0, -1.0]);
    let mut opt = Optimizer::from_spec("sgd:lr=0.5").unwrap();
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    assert_eq!(p[0].data(), &[0.5, 2.5]);
}

#[test]
fn nonfinite_gradient_is_an_error_and_changes_nothing() {
    let mut p = one(vec![1.0, 2.0]);
    let mut opt = Optimizer::from_spec("adam:lr=0.1").unwrap();
    opt.step(&mut p, &one(vec![1.0, 1.0]), &StepInfo::default())
        .unwrap();
    let before = (p.clone(), opt.clone());
    let err = opt
        .step(&mut p, &one(vec![1.0, f64::NAN]), &StepInfo::default())
        .unwrap_err();
    assert!(err.to_string().contains("gradient of p"), "{err}");
    assert_eq!((p, opt), before);
}

#[test]
fn skip_nonfinite_counts_and_changes_nothing_else() {
    let mut p = one(vec![1.0]);
    let mut opt = Optimizer::from_spec("adam:lr=0.1,skip_nonfinite=true").unwrap();
    let out = opt
        .step(&mut p, &one(vec![f64::INFINITY]), &StepInfo::default())
        .unwrap();
    assert_eq!(out.outcome, StepOutcome::Skipped);
    assert!(!out.applied());
    assert_eq!((opt.steps(), opt.skipped(), p[0].data()[0]), (0, 1, 1.0));
    let out = opt
        .step(&mut p, &one(vec![0.5]), &StepInfo::default())
        .unwrap();
    assert!(out.applied());
    assert_eq!((opt.steps(), opt.skipped()), (1, 1));
}

#[test]
fn shape_and_name_mismatches_are_errors() {
    let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
    let mut p = one(vec![1.0, 2.0]);
    assert!(
        opt.step(&mut p, &one(vec![1.0]), &StepInfo::default())
            .is_err()
    );
    let renamed = vec![Tensor::vector("q", vec![1.0, 2.0])];
    assert!(opt.step(&mut p, &renamed, &StepInfo::default()).is_err());
    opt.step(&mut p, &one(vec![1.0, 1.0]), &StepInfo::default())
        .unwrap();
    let mut bigger = one(vec![1.0, 2.0, 3.0]);
    let err = opt
        .step(&mut bigger, &one(vec![0.0; 3]), &StepInfo::default())
        .unwrap_err();
    assert!(err.to_string().contains("state is for"), "{err}");
    assert!(Tensor::new("t", vec![2, 2], vec![1.0f64; 3]).is_err());
}

#[test]
fn lossprop_needs_a_finite_loss() {
    let mut opt = Optimizer::<f64>::from_spec("lossprop:lr=0.1").unwrap();
    let mut p = one(vec![1.0]);
    let g = one(vec![2.0]);
    assert!(matches!(
        opt.step(&mut p, &g, &StepInfo::default()),
        Err(Error::MissingLoss { .. })
    ));
    assert!(
        opt.step(&mut p, &g, &StepInfo::with_loss(f64::NAN))
            .is_err()
    );
    opt.step(&mut p, &g, &StepInfo::with_loss(3.0)).unwrap();
    assert!((p[0].data()[0] - (1.0 - 0.1 * 3.0 * 2.0)).abs() < 1e-15);
}

#[test]
fn check_finite_false_skips_the_check() {
    let mut p = one(vec![1.0]);
    let mut opt = Optimizer::from_spec("sgd:lr=0.1,check_finite=false").unwrap();
    let out = opt.step(&mut p, &one(vec![f64::NAN]), &StepInfo::default());
    assert_eq!(out.unwrap().outcome, StepOutcome::Applied);
    assert!(p[0].data()[0].is_nan());
}

#[test]
fn clip_norm_scales_the_gradient() {
    let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1,clip_norm=1").unwrap();
    let mut p = one(vec![0.0, 0.0]);
    opt.step(&mut p, &one(vec![3.0, 4.0]), &StepInfo::default())
        .unwrap();
    let norm = p[0].data().iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 5.0 / (5.0 + 1e-6)).abs() < 1e-12);
}

#[test]
fn normsgd_uses_the_global_norm() {
    // Two tensors: g = (3) and (4); ‖g‖² = 25, d = 2, eps = 0.5: step g/sqrt(13).
    let mut opt = Optimizer::<f64>::from_spec("normsgd:lr=1,eps=0.5").unwrap();
    let mut p = vec![
        Tensor::vector("a", vec![0.0]),
        Tensor::vector("b", vec![0.0]),
    ];
    let g = vec![
        Tensor::vector("a", vec![3.0]),
        Tensor::vector("b", vec![4.0]),
    ];
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    let s = 13.0f64.sqrt();
    assert!((p[0].data()[0] + 3.0 / s).abs() < 1e-15);
    assert!((p[1].data()[0] + 4.0 / s).abs() < 1e-15);
}

#[test]
fn borrowed_views_step_exactly_like_owned_tensors() {
    let spec = "adamw:lr=0.01,clip_norm=0.5";
    let (mut owned, mut opt_a) = (
        vec![
            Tensor::new("w", vec![2, 3], (0..6).map(|i| i as f32 * 0.1).collect()).unwrap(),
            Tensor::vector("b", vec![0.5f32, -0.5]),
        ],
        Optimizer::<f32>::from_spec(spec).unwrap(),
    );
    let (mut w, mut b): (Vec<f32>, Vec<f32>) = (owned[0].data().to_vec(), owned[1].data().to_vec());
    let mut opt_b = Optimizer::<f32>::from_spec(spec).unwrap();
    let shape = [2usize, 3];
    for step in 0..5 {
        let gw: Vec<f32> = (0..6).map(|i| ((i + step) % 4) as f32 - 1.5).collect();
        let gb = vec![0.25f32 * step as f32, -1.0];
        let grads = vec![
            Tensor::new("w", vec![2, 3], gw.clone()).unwrap(),
            Tensor::vector("b", gb.clone()),
        ];
        let a = opt_a
            .step(&mut owned, &grads, &StepInfo::default())
            .unwrap();
        let r = opt_b
            .step_views(
                &mut [
                    ParamMut::new("w", &shape, &mut w).unwrap(),
                    ParamMut::vector("b", &mut b),
                ],
                &[
                    GradRef::new("w", &shape, &gw).unwrap(),
                    GradRef::vector("b", &gb),
                ],
                &StepInfo::default(),
            )
            .unwrap();
        assert_eq!(a, r);
        assert!(r.grad_norm.unwrap() > 0.0 && r.lr == 0.01);
    }
    assert_eq!((owned[0].data(), owned[1].data()), (&w[..], &b[..]));
    assert_eq!(opt_a, opt_b);
    assert!(ParamMut::new("w", &shape, &mut [0.0f32; 5]).is_err());
}

#[test]
fn name_mismatches_name_the_tensors() {
    let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
    let (mut a, mut b) = (vec![1.0, 2.0], vec![3.0, 4.0]);
    let g = [1.0, 1.0];
    let err = opt
        .step_views(
            &mut [ParamMut::vector("w", &mut a)],
            &[GradRef::vector("bias", &g)],
            &StepInfo::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("name mismatch") && err.contains("`w`") && err.contains("`bias`"),
        "{err}"
    );
    opt.step_views(
        &mut [ParamMut::vector("w", &mut a)],
        &[GradRef::vector("w", &g)],
        &StepInfo::default(),
    )
    .unwrap();
    let err = opt
        .step_views(
            &mut [ParamMut::vector("v", &mut b)],
            &[GradRef::vector("v", &g)],
            &StepInfo::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected `w`, got `v`"), "{err}");
}

#[test]
fn accumulated_micro_batches_step_with_their_mean() {
    // Sum of 4 micro-batch gradients with micro_batches = 4 equals one step on the mean
    // (exactly, for a power of two).
    let micro = [[1.0f64, -2.0], [0.5, 0.5], [3.0, 1.0], [-0.5, 2.5]];
    let sum: Vec<f64> = (0..2).map(|j| micro.iter().map(|g| g[j]).sum()).collect();
    let mean: Vec<f64> = sum.iter().map(|s| s / 4.0).collect();
    for spec in [
        "adam:lr=0.1",
        "sgd:lr=0.1,momentum=0.9,clip_norm=0.3",
        "normsgd:lr=0.1,eps=1",
    ] {
        let mut a = Optimizer::<f64>::from_spec(spec).unwrap();
        let mut b = a.clone();
        let (mut pa, mut pb) = (one(vec![1.0, 1.0]), one(vec![1.0, 1.0]));
        let info = StepInfo {
            micro_batches: 4,
            ..StepInfo::default()
        };
        let ra = a.step(&mut pa, &one(sum.clone()), &info).unwrap();
        let rb = b
            .step(&mut pb, &one(mean.clone()), &StepInfo::default())
            .unwrap();
        assert_eq!((pa, a), (pb, b), "{spec}");
        assert_eq!(ra, rb);
    }
    let mut opt = Optimizer::<f64>::from_spec("sgd").unwrap();
    let info = StepInfo {
        micro_batches: 0,
        ..StepInfo::default()
    };
    assert!(
        opt.step(&mut one(vec![0.0]), &one(vec![1.0]), &info)
            .is_err()
    );
}

#[test]
fn clip_grad_norm_is_pytorchs() {
    let (mut a, mut b) = (vec![3.0f64], vec![4.0f64]);
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
    assert_eq!(norm, 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    assert_eq!((a[0], b[0]), (3.0 * c, 4.0 * c));
    // Below the bound nothing changes; non-finite is an error that changes nothing.
    let mut small = vec![0.1f32, 0.2];
    assert!((clip_grad_norm(&mut [&mut small], 1.0).unwrap() - 0.05f64.sqrt()).abs() < 1e-7);
    assert_eq!(small, [0.1, 0.2]);
    let mut bad = vec![1.0f32, f32::NAN];
    assert!(clip_grad_norm(&mut [&mut bad], 1.0).is_err());
    assert!(clip_grad_norm(&mut [&mut small], 0.0).is_err());
    assert_eq!(small, [0.1, 0.2]);
}

#[test]
fn hyper_parameters_change_mid_run_and_keep_the_state() {
    let mut a = Optimizer::<f64>::from_spec("adamw:lr=0.1").unwrap();
    let mut p = one(vec![1.0, -1.0]);
    a.step(&mut p, &one(vec![0.5, 0.5]), &StepInfo::default())
        .unwrap();
    let moments = a.state("exp_avg", 0).unwrap().to_vec();
    a.set_lr(0.05).unwrap();
    a.set("weight_decay", 0.0).unwrap();
    assert_eq!(a.spec().to_string(), "adamw:lr=0.05,weight_decay=0");
    assert_eq!(
        (a.steps(), a.state("exp_avg", 0).unwrap()),
        (1, &moments[..])
    );
    // The next step equals one of a fresh optimizer with the new values and the old state.
    let mut b = a.clone();
    let r = a
        .step(&mut p.clone(), &one(vec![0.5, 0.5]), &StepInfo::default())
        .unwrap();
    assert_eq!(r.lr, 0.05);
    // Refused: invalid values, changes of the state's shape, unknown keys; nothing changes.
    for (k, v) in [
        ("lr", "-1"),
        ("amsgrad", "true"),
        ("nope", "1"),
        ("beta1", "x"),
    ] {
        assert!(b.set(k, v).is_err(), "{k}={v}");
    }
    assert_eq!(b.spec().to_string(), "adamw:lr=0.05,weight_decay=0");
    let mut sgd = Optimizer::<f64>::from_spec("sgd:momentum=0.9").unwrap();
    assert!(sgd.set("nesterov", true).is_ok());
    assert!(sgd.set("momentum", 0).is_err(), "drops the momentum buffer");
}

#[test]
fn an_attached_schedule_sets_every_steps_lr_and_is_saved() {
    let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1").unwrap();
    opt.set_schedule("seq[warmup:2;exp:0.5]@2".parse().unwrap())
        .unwrap();
    let mut p = one(vec![0.0]);
    let mut lrs = Vec::new();
    for _ in 0..3 {
        lrs.push(opt.current_lr());
        lrs.push(
            opt.step(&mut p, &one(vec![1.0]), &StepInfo::default())
                .unwrap()
                .lr,
        );
    }
    assert_eq!(lrs, [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(p[0].data()[0], -2.5);
    let back = Optimizer::<f64>::from_bytes(&opt.to_bytes().unwrap()).unwrap();
    assert_eq!(back, opt);
    assert_eq!(back.current_lr(), 0.5);
    // A custom schedule must be attached again after loading.
    opt.set_schedule(Schedule::custom("third", |_| 1.0 / 3.0))
        .unwrap();
    let mut back = Optimizer::<f64>::from_bytes(&opt.to_bytes().unwrap()).unwrap();
    let err = back
        .step(&mut p, &one(vec![1.0]), &StepInfo::default())
        .unwrap_err();
    assert!(err.to_string().contains("`third`"), "{err}");
    back.set_schedule(Schedule::custom("third", |_| 1.0 / 3.0))
        .unwrap();
    assert_eq!(
        back.step(&mut p, &one(vec![1.0]), &StepInfo::default())
            .unwrap()
            .lr,
        1.0 / 3.0
    );
    let mut bad = Optimizer::<f64>::from_spec("sgd").unwrap();
    bad.set_schedule(Schedule::custom("neg", |_| -1.0)).unwrap();
    assert!(
        bad.step(&mut one(vec![0.0]), &one(vec![1.0]), &StepInfo::default())
            .is_err()
    );
}

#[test]
fn lr_scale_is_validated_and_applied() {
    let mut opt = Optimizer::<f64>::from_spec("sgd:lr=1").unwrap();
    let mut p = one(vec![0.0]);
    let info = StepInfo {
        lr_scale: -1.0,
        ..StepInfo::default()
    };
    assert!(opt.step(&mut p, &one(vec![1.0]), &info).is_err());
    let info = StepInfo {
        lr_scale: 0.25,
        ..StepInfo::default()
    };
    opt.step(&mut p, &one(vec![1.0]), &info).unwrap();
    assert_eq!(p[0].data()[0], -0.25);
}

/// The working set counts parameters, gradient and state at their element sizes, and
/// prefetching starts exactly at [`kernel::PREFETCH_MIN_BYTES`] (a speed decision only:
/// nothing else would notice it going wrong).
#[test]
fn the_working_set_counts_every_buffer_and_prefetching_starts_at_its_threshold() {
    fn stepped<T: Real>(spec: &str, lens: &[usize]) -> (Optimizer<T>, Vec<Tensor<T>>) {
        let mut opt = Optimizer::<T>::from_spec(spec).unwrap();
        let mut p: Vec<Tensor<T>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::new(format!("p{i}"), vec![n], vec![T::from_f64(1.0); n]))
            .collect::<Result<_>>()
            .unwrap();
        let g = p.clone();
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        (opt, p)
    }
    fn bytes<T: Real>(spec: &str, lens: &[usize]) -> usize {
        let (opt, mut p) = stepped::<T>(spec, lens);
        let views: Vec<ParamMut<'_, T>> = p.iter_mut().map(ParamMut::from).collect();
        opt.working_set_bytes(&views)
    }
    // Per element: p and g, plus the state (m and v for Adam, the momentum buffer for SGD).
    assert_eq!(bytes::<f32>("sgd", &[3, 5]), 8 * 8);
    assert_eq!(bytes::<f32>("adam", &[3, 5]), 16 * 8);
    assert_eq!(bytes::<f64>("adam", &[3, 5]), 32 * 8);
    assert_eq!(
        bytes::<f32>("sgd:momentum=0.9,state_dtype=bf16", &[3, 5]),
        10 * 8
    );
    assert_eq!(bytes::<f32>("adam:state_dtype=bf16", &[3, 5]), 12 * 8);
    // Adam in f32 moves 16 B an element: 2 Mi elements are exactly the threshold.
    let at = kernel::PREFETCH_MIN_BYTES / 16;
    for (n, expected) in [(at, true), (at - 1, false)] {
        let (opt, mut p) = stepped::<f32>("adam", &[n]);
        let views: Vec<ParamMut<'_, f32>> = p.iter_mut().map(ParamMut::from).collect();
        assert_eq!(opt.prefetches(&views), expected, "{n} elements");
    }
}

/// The reported learning rate is the step's own: the rule's `lr` times the schedule's
/// factor times `lr_scale`, on applied and skipped steps alike.
#[test]
fn the_report_gives_the_scaled_scheduled_learning_rate() {
    let mut opt = Optimizer::from_spec("sgd:lr=0.1,skip_nonfinite=true").unwrap();
    opt.set_schedule("exp:0.5".parse().unwrap()).unwrap();
    let info = StepInfo {
        lr_scale: 0.5,
        ..StepInfo::default()
    };
    let mut p = one(vec![1.0]);
    let report = opt.step(&mut p, &one(vec![2.0]), &info).unwrap();
    assert_eq!(report.lr, 0.1 * 0.5);
    assert_eq!(p[0].data()[0], 1.0 - 0.1 * 0.5 * 2.0);
    let report = opt.step(&mut p, &one(vec![f64::NAN]), &info).unwrap();
    assert_eq!(report.outcome, StepOutcome::Skipped);
    assert_eq!(report.lr, 0.1 * (0.5 * 0.5));
    let report = opt.step(&mut p, &one(vec![2.0]), &info).unwrap();
    assert_eq!(report.lr, 0.1 * (0.25 * 0.5));
}

/// A model split into two parts, each stepped by its own optimizer with the summed
/// `Totals`, steps as the whole: the same global clipping factor, `normsgd`'s norm and size,
/// bit for bit (each part's sum is one chunk, so the sums add in the whole's order).
#[test]
fn parts_stepped_with_summed_totals_step_as_the_whole() {
    let a = Tensor::new("a", vec![3], vec![3.0, -4.0, 1.0]).unwrap();
    let b = Tensor::new("b", vec![2], vec![0.5, 2.0]).unwrap();
    let ga = Tensor::new("a", vec![3], vec![1.5, -2.0, 0.25]).unwrap();
    let gb = Tensor::new("b", vec![2], vec![-3.0, 0.75]).unwrap();
    for spec in [
        "adamw:lr=0.1,clip_norm=0.5",
        "normsgd:lr=0.1",
        "sgd:lr=0.1,momentum=0.9,clip_norm=1",
        "adam:lr=0.1",
    ] {
        let mut whole = Optimizer::<f64>::from_spec(spec).unwrap();
        let (mut p1, mut p2) = (whole.clone(), whole.clone());
        let mut params = vec![a.clone(), b.clone()];
        let (mut pa, mut pb) = (vec![a.clone()], vec![b.clone()]);
        for _ in 0..3 {
            let r = whole
                .step(&mut params, &[ga.clone(), gb.clone()], &StepInfo::default())
                .unwrap();
            let t = p1.local_totals(&[ga.data()]) + p2.local_totals(&[gb.data()]);
            assert_eq!(t.numel, 5);
            let info = StepInfo {
                totals: Some(t),
                ..StepInfo::default()
            };
            let r1 = p1.step(&mut pa, std::slice::from_ref(&ga), &info).unwrap();
            let r2 = p2.step(&mut pb, std::slice::from_ref(&gb), &info).unwrap();
            assert_eq!(
                (r1.grad_norm, r2.grad_norm),
                (r.grad_norm, r.grad_norm),
                "{spec}"
            );
        }
        assert_eq!((&pa[0], &pb[0]), (&params[0], &params[1]), "{spec}");
    }
}

/// A non-finite gradient in one part: that part names its element, the other refuses with
/// `NonFiniteElsewhere`, or both skip with `skip_nonfinite=true`; nothing changes.
#[test]
fn a_non_finite_part_stops_every_part() {
    let ga = Tensor::new("a", vec![2], vec![1.0, f64::NAN]).unwrap();
    let gb = Tensor::new("b", vec![1], vec![2.0]).unwrap();
    for spec in ["adam:lr=0.1", "adam:lr=0.1,clip_norm=1"] {
        let o = Optimizer::<f64>::from_spec(spec).unwrap();
        let t = o.local_totals(&[ga.data()]) + o.local_totals(&[gb.data()]);
        assert_eq!(t.nonfinite, 1, "{spec}");
        let info = StepInfo {
            totals: Some(t),
            ..StepInfo::default()
        };
        let (mut p1, mut p2) = (o.clone(), o.clone());
        let mut pa = vec![Tensor::new("a", vec![2], vec![1.0, 1.0]).unwrap()];
        let mut pb = vec![Tensor::new("b", vec![1], vec![1.0]).unwrap()];
        let e1 = p1
            .step(&mut pa, std::slice::from_ref(&ga), &info)
            .unwrap_err();
        assert!(matches!(e1, Error::NonFinite { index: 1, .. }), "{e1}");
        let e2 = p2
            .step(&mut pb, std::slice::from_ref(&gb), &info)
            .unwrap_err();
        assert_eq!(e2, Error::NonFiniteElsewhere { parts: 1 });
        assert!(e2.to_string().contains("another process"), "{e2}");
        assert_eq!(
            (pa[0].data(), pb[0].data(), p2.steps()),
            (&[1.0, 1.0][..], &[1.0][..], 0)
        );
        let skip = format!("{spec},skip_nonfinite=true");
        let mut p3 = Optimizer::<f64>::from_spec(&skip).unwrap();
        let r = p3.step(&mut pb, std::slice::from_ref(&gb), &info).unwrap();
        assert_eq!(
            (r.outcome, p3.skipped(), pb[0].data()),
            (StepOutcome::Skipped, 1, &[1.0][..])
        );
    }
    // Without a check or a norm the parts report nothing non-finite and no norm.
    let o = Optimizer::<f64>::from_spec("sgd:check_finite=false").unwrap();
    assert_eq!(
        o.local_totals(&[ga.data()]),
        Totals {
            norm_sq: 0.0,
            nonfinite: 0,
            numel: 2
        }
    );
    // With the norm, a finite part's sum is its Σg².
    let o = Optimizer::<f64>::from_spec("sgd:clip_norm=1").unwrap();
    assert_eq!(o.local_totals(&[gb.data()]).norm_sq, 4.0);
    assert_eq!(
        (Totals::default()
            + Totals {
                norm_sq: 1.0,
                nonfinite: 2,
                numel: 3
            })
        .nonfinite,
        2
    );
}

/// Totals that say another part is not finite (even with a finite norm) stop the step; an
/// infinite summed norm with every part finite is an overflow of the whole model's norm.
#[test]
fn totals_from_other_parts_decide_the_step() {
    let g = vec![Tensor::new("b", vec![1], vec![2.0]).unwrap()];
    let mut p = vec![Tensor::new("b", vec![1], vec![1.0]).unwrap()];
    let mut o = Optimizer::<f64>::from_spec("adam:lr=0.1").unwrap();
    let info = |norm_sq, nonfinite| StepInfo {
        totals: Some(Totals {
            norm_sq,
            nonfinite,
            numel: 3,
        }),
        ..StepInfo::default()
    };
    let e = o.step(&mut p, &g, &info(1.0, 2)).unwrap_err();
    assert_eq!(e, Error::NonFiniteElsewhere { parts: 2 });
    let mut clipped = Optimizer::<f64>::from_spec("sgd:lr=0.1,clip_norm=1").unwrap();
    let e = clipped
        .step(&mut p, &g, &info(f64::INFINITY, 0))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Overflow { what, .. } if what.contains("over every process")),
        "{e}"
    );
    assert_eq!(
        (p[0].data(), o.steps(), clipped.steps()),
        (&[1.0][..], 0, 0)
    );
    // Finite totals: the step clips by their norm, not by its own part's.
    let r = clipped.step(&mut p, &g, &info(16.0, 0)).unwrap();
    assert_eq!(r.grad_norm, Some(4.0));
    let c = 1.0 / (4.0 + 1e-6);
    assert_eq!(p[0].data(), &[1.0 - 0.1 * (2.0 * c)][..]);
}

/// The per-tensor scalars read back: none before the first step, NAdam's μ product after it,
/// empty for a rule without them.
#[test]
fn tensor_scalars_read_back() {
    let mut o = Optimizer::<f64>::from_spec("nadam:lr=0.1,beta1=0.9,momentum_decay=0.004").unwrap();
    assert_eq!(o.tensor_scalars(0), None);
    let mut p = one(vec![1.0]);
    o.step(&mut p, &one(vec![1.0]), &StepInfo::default())
        .unwrap();
    let mu1 = 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.004));
    let got = o.tensor_scalars(0).unwrap();
    assert_eq!(got.len(), 1);
    assert!((got[0] - mu1).abs() < 1e-15, "{got:?} vs {mu1}");
    let mut a = Optimizer::<f64>::from_spec("adam").unwrap();
    a.step(&mut p, &one(vec![1.0]), &StepInfo::default())
        .unwrap();
    assert_eq!(a.tensor_scalars(0), Some(&[][..]));
    assert_eq!(a.tensor_scalars(1), None);
}

/// Finite gradients whose squared norm overflows `f64` are refused by a step that needs the
/// norm (a clipped step would divide by ∞ and step by zero), naming the largest element;
/// nothing changes.
#[test]
fn an_overflowing_norm_is_refused() {
    let mut o = Optimizer::<f64>::from_spec("sgd:lr=0.1,clip_norm=1").unwrap();
    let mut p = one(vec![1.0, 2.0]);
    let e = o
        .step(&mut p, &one(vec![1e200, -3e200]), &StepInfo::default())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Overflow { what, reason } if what.contains("squared 2-norm") && reason.contains("index 1")),
        "{e}"
    );
    assert_eq!((p[0].data(), o.steps()), (&[1.0, 2.0][..], 0));
}

/// [`UpdateRule::linear_in_lr`] is what the audit relies on to measure a drift at η = 1: for
/// every registered rule that declares it, a step from a state built by five steps of
/// irregular gradients moves the parameters by exactly η times the step at η = 1 (to
/// rounding), and for every rule that does not, it does not.
#[test]
fn the_rules_linear_in_the_learning_rate_are_those_that_say_so() {
    let grad = |t: usize| -> Vec<Tensor<f64>> {
        let data = (0..12)
            .map(|i| ((i * 7 + t * 5) % 11) as f64 / 5.0 - 0.9 + 0.03 * t as f64)
            .collect();
        vec![Tensor::new("w", vec![4, 3], data).unwrap()]
    };
    let info = |lr_scale| StepInfo {
        loss: Some(0.7),
        lr_scale,
        ..StepInfo::default()
    };
    for &name in NAMES {
        let mut opt = Optimizer::<f64>::from_spec(&format!("{name}:lr=0.05")).unwrap();
        let start: Vec<f64> = (0..12)
            .map(|i| 0.3 + 0.1 * i as f64 - 0.05 * (i % 3) as f64)
            .collect();
        let mut p = vec![Tensor::new("w", vec![4, 3], start).unwrap()];
        for t in 0..5 {
            opt.step(&mut p, &grad(t), &info(1.0)).unwrap();
        }
        let displacement = |scale: f64| -> Vec<f64> {
            let mut o = opt.clone();
            let mut q = p.clone();
            o.step(&mut q, &grad(9), &info(scale)).unwrap();
            q[0].data()
                .iter()
                .zip(p[0].data())
                .map(|(a, b)| a - b)
                .collect()
        };
        let (unit, small) = (displacement(1.0), displacement(1e-3));
        let size = unit.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let gap = unit
            .iter()
            .zip(&small)
            .fold(0.0f64, |m, (u, s)| m.max((s - 1e-3 * u).abs()))
            / (1e-3 * size);
        let rule = &opt.spec().rule;
        if rule.linear_in_lr() {
            assert!(size > 0.0 && gap < 1e-9, "{name}: relative gap {gap}");
        } else {
            assert!(gap > 1e-8, "{name} is linear in η (gap {gap}): say so");
        }
    }
}
