//! Optimizer behaviour: problem 3's equivalence, debias modes, SIMD levels and threads,
//! clipping and accumulation, weight decay, slot names and built specs.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::Real;
use sgdlab_optim::{Optimizer, StepInfo, Tensor};

/// Every optimizer, with non-default settings that exercise all of its state.
pub(crate) const ALL: &[&str] = &[
    "sgd:lr=0.05",
    "sgd:lr=0.02,momentum=0.9,dampening=0.1,weight_decay=0.01",
    "sgd:lr=0.02,momentum=0.8,nesterov=true",
    "ema-momentum:lr=0.1,beta=0.9,debias=power",
    "ema-momentum:lr=0.1,beta=0.9,debias=horizon",
    "adam:lr=0.01",
    "adam:lr=0.01,amsgrad=true,weight_decay=0.1",
    "adam:lr=0.01,debias=horizon",
    "adamw:lr=0.01,debias=none",
    "rmsprop:lr=0.01,centered=true,momentum=0.9,weight_decay=0.01",
    "rmsprop:lr=0.01",
    "adagrad:lr=0.1,lr_decay=0.01,initial_accumulator_value=0.1",
    "lion:lr=0.001",
    "madam:lr=0.05",
    "normsgd:lr=0.1,eps=0.5",
    "multiplicative:lr=0.1,eps=0.01",
    "lossprop:lr=0.1",
    "adam:lr=0.01,clip_norm=0.5",
    "adamax:lr=0.01,weight_decay=0.01",
    "nadam:lr=0.01,weight_decay=0.01",
    "nadam:lr=0.01,weight_decay=0.01,decoupled_weight_decay=true",
    "radam:lr=0.01,weight_decay=0.01,decoupled_weight_decay=true",
    "ademamix:lr=0.01,beta3=0.99,weight_decay=0.01",
    "adopt:lr=0.01,weight_decay=0.01",
    "adopt:lr=0.01,weight_decay=0.01,decoupled_weight_decay=true,clip=0.5",
    "adamw:lr=0.01,weight_decay=0.1,cautious=true",
    "lion:lr=0.001,weight_decay=0.1,state_dtype=bf16,cautious=true",
    "adan:lr=0.01,weight_decay=0.01",
    "sf-sgd:lr=0.1,warmup_steps=2,weight_decay=0.01",
    "sf-adamw:lr=0.01,warmup_steps=2,weight_decay=0.01,r=1",
    "prodigy:weight_decay=0.01,use_bias_correction=true",
    "prodigy:beta1=0,weight_decay=0.01,decouple=false,growth_rate=1.1,cautious=true",
    "soap:lr=0.01,weight_decay=0.1",
];

/// A deterministic two-tensor problem: gradient of ½‖p − target‖² plus a wobble.
fn grads_for<T: Real>(params: &[Tensor<T>], t: usize) -> (Vec<Tensor<T>>, f64) {
    let mut loss = 0.0;
    let grads = params
        .iter()
        .map(|p| {
            let mut g = p.zeros_like();
            for (i, (gi, &pi)) in g.data_mut().iter_mut().zip(p.data()).enumerate() {
                let target = (i as f64 * 0.7).sin() + 0.3 * ((t * 7 + i) as f64).cos();
                let d = pi.as_f64() - target;
                loss += 0.5 * d * d;
                *gi = T::from_f64(d);
            }
            g
        })
        .collect();
    (grads, loss)
}

pub(crate) fn init<T: Real>() -> Vec<Tensor<T>> {
    let v = |n: usize, k: f64| {
        (0..n)
            .map(|i| T::from_f64(k * (1.0 + i as f64).ln() - 0.4))
            .collect()
    };
    vec![
        Tensor::new("layer.weight", vec![2, 3], v(6, 1.1)).unwrap(),
        Tensor::vector("layer.bias", v(2, -0.6)),
    ]
}

pub(crate) fn run<T: Real>(
    opt: &mut Optimizer<T>,
    params: &mut [Tensor<T>],
    from: usize,
    to: usize,
) {
    for t in from..to {
        let (grads, loss) = grads_for(params, t);
        opt.step(params, &grads, &StepInfo::with_loss(loss))
            .unwrap();
    }
}

#[test]
fn ema_momentum_reproduces_sgd_momentum() {
    // Problem 3: lr = η/(1-β) with the EMA form equals sgd:lr=η,momentum=β.
    let (eta, beta) = (0.02, 0.9);
    let mut sgd = Optimizer::<f64>::from_spec(&format!("sgd:lr={eta},momentum={beta}")).unwrap();
    let mut ema = Optimizer::<f64>::from_spec(&format!(
        "ema-momentum:lr={},beta={beta}",
        eta / (1.0 - beta)
    ))
    .unwrap();
    let (mut a, mut b) = (init::<f64>(), init::<f64>());
    for t in 0..200 {
        run(&mut sgd, &mut a, t, t + 1);
        run(&mut ema, &mut b, t, t + 1);
        for (x, y) in a.iter().zip(&b) {
            for (x, y) in x.data().iter().zip(y.data()) {
                assert!(
                    (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                    "step {t}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn horizon_debias_is_the_running_mean_for_the_first_steps() {
    // ema-momentum with debias=horizon and beta = 1 - 1/N: for t <= N the buffer is the mean
    // of the gradients so far, so the step is lr · mean(g_1..g_t).
    let mut opt =
        Optimizer::<f64>::from_spec("ema-momentum:lr=1,beta=0.75,debias=horizon").unwrap();
    let mut p = vec![Tensor::vector("p", vec![0.0])];
    let gs = [4.0, 8.0, 0.0, 12.0];
    let mut sum = 0.0;
    for (t, g) in gs.iter().enumerate() {
        let before = p[0].data()[0];
        opt.step(
            &mut p,
            &[Tensor::vector("p", vec![*g])],
            &StepInfo::default(),
        )
        .unwrap();
        sum += g;
        assert_eq!(before - p[0].data()[0], sum / (t + 1) as f64);
    }
}

/// ema-momentum with debias=power steps by η mₜ/(1 − βᵗ), by hand with
/// β = 1/2 and gradients 4, 8, 2: m = 2, 5, 3.5 over 1 − βᵗ = 1/2, 3/4, 7/8,
/// steps 4, 20/3, 4 (the first step is the gradient itself).
#[test]
fn power_debias_divides_ema_momentum_by_one_minus_beta_to_the_t() {
    let mut opt = Optimizer::<f64>::from_spec("ema-momentum:lr=1,beta=0.5,debias=power").unwrap();
    let mut p = vec![Tensor::vector("p", vec![0.0])];
    for (g, step) in [(4.0, 4.0), (8.0, 20.0 / 3.0), (2.0, 4.0)] {
        let before = p[0].data()[0];
        let grad = [Tensor::vector("p", vec![g])];
        opt.step(&mut p, &grad, &StepInfo::default()).unwrap();
        assert!((before - p[0].data()[0] - step).abs() < 1e-12, "{g}");
    }
}

#[test]
fn power_debias_makes_the_first_adam_step_lr_sized() {
    // With power debiasing Adam's first step is lr·g/(|g| + eps) = ±lr (nearly); without it,
    // lr·(1-β1)·g/(sqrt(1-β2)|g|+eps).
    for (spec, expected) in [
        ("adam:lr=0.1", 0.1),
        ("adam:lr=0.1,debias=horizon", 0.1),
        ("adam:lr=0.1,debias=none", 0.1 * 0.1 / 0.001f64.sqrt()),
    ] {
        let mut opt = Optimizer::<f64>::from_spec(spec).unwrap();
        let mut p = vec![Tensor::vector("p", vec![0.0])];
        opt.step(
            &mut p,
            &[Tensor::vector("p", vec![3.0])],
            &StepInfo::default(),
        )
        .unwrap();
        assert!(
            (-p[0].data()[0] - expected).abs() < 1e-6,
            "{spec}: {}",
            p[0].data()[0]
        );
    }
}

/// RAdam rectifies only when ρₜ > 5, as PyTorch's `if rho_t > 5.0`: with
/// β₂ = 0.8397685748659791, ρ₆ = ρ\_∞−2·6 β₂⁶/(1 − β₂⁶) is
/// exactly 5 in float64 (found by scanning the ulps around the root), so steps 1–6 take the
/// unadapted step η m̂ₜ (= η for a constant gradient of 1) and step 7 the
/// rectified one, r₇ ≈ 0.36 times smaller.
#[test]
fn radam_rectifies_only_above_rho_five() {
    let beta2 = 0.8397685748659791f64;
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho = |t: f64| rho_inf - 2.0 * t * beta2.powf(t) / (1.0 - beta2.powf(t));
    assert_eq!(rho(6.0), 5.0, "the boundary case this test is about");
    assert!(rho(7.0) > 5.0);
    let lr = 0.01;
    let mut opt = Optimizer::<f64>::from_spec(&format!("radam:lr={lr},beta2={beta2}")).unwrap();
    let mut p = vec![Tensor::vector("p", vec![0.0])];
    let g = [Tensor::vector("p", vec![1.0])];
    for t in 1..=7 {
        let before = p[0].data()[0];
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        let moved = before - p[0].data()[0];
        if t <= 6 {
            assert!((moved - lr).abs() < 1e-12 * lr, "step {t}: {moved}");
        } else {
            assert!(moved > 0.2 * lr && moved < 0.5 * lr, "step {t}: {moved}");
        }
    }
}

#[test]
fn every_simd_level_and_thread_count_gives_the_same_bits() {
    use sgdlab_optim::kernel::{CHUNK, SimdLevel};
    // Three tensors: one spanning several chunks (parallel path), one ragged, one tiny; at 1,
    // 3 and 8 threads (the pool's size enters how units are handed out).
    fn tensors<T: Real>() -> Vec<Tensor<T>> {
        [3 * CHUNK + 17, CHUNK / 2 + 3, 5]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let v = (0..n)
                    .map(|i| T::from_f64(((i * 37 + k * 11) % 101) as f64 / 50.0 - 1.0))
                    .collect();
                Tensor::vector(format!("t{k}"), v)
            })
            .collect()
    }
    fn run_all<T: Real>(spec: &str) -> Vec<Tensor<T>> {
        let mut p = tensors::<T>();
        let mut opt = Optimizer::<T>::from_spec(spec).unwrap();
        for t in 0..4 {
            let g: Vec<Tensor<T>> = p
                .iter()
                .map(|x| {
                    let mut g = x.zeros_like();
                    for (i, gi) in g.data_mut().iter_mut().enumerate() {
                        *gi = T::from_f64((((i + t * 13) % 29) as f64 - 14.0) * 0.01);
                    }
                    g
                })
                .collect();
            opt.step(&mut p, &g, &StepInfo::with_loss(0.7)).unwrap();
        }
        p
    }
    fn check<T: Real>(spec: &str) {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        SimdLevel::force(Some(SimdLevel::Baseline));
        let reference = pool(1).install(|| run_all::<T>(spec));
        for level in SimdLevel::available() {
            SimdLevel::force(Some(level));
            for threads in [1, 3, 8] {
                let got = pool(threads).install(|| run_all::<T>(spec));
                for (a, b) in reference.iter().zip(&got) {
                    let same = a
                        .data()
                        .iter()
                        .zip(b.data())
                        .all(|(x, y)| x.as_f64().to_bits() == y.as_f64().to_bits());
                    assert!(same, "{spec} {} {level:?} {threads} threads", T::NAME);
                }
            }
        }
        SimdLevel::force(None);
    }
    for spec in ALL {
        check::<f32>(spec);
        check::<f64>(spec);
    }
}

/// A step large enough to prefetch (working set over 32 MiB) computes exactly what many
/// small optimizers, each stepping a slice too small to prefetch, compute: the elementwise
/// rules do not depend on how the loop is cut.
#[test]
fn prefetching_steps_give_the_same_bits_as_small_ones() {
    const N: usize = 3_000_000;
    const PIECE: usize = 100_000;
    let value = |i: usize, k: usize| ((i * 31 + k * 7) % 199) as f32 / 99.0 - 1.0;
    for spec in [
        "adam:lr=0.01",
        "sgd:lr=0.02,momentum=0.8,nesterov=true",
        "rmsprop:lr=0.01,centered=true,momentum=0.9",
        "lion:lr=0.001",
    ] {
        let mut big = Optimizer::<f32>::from_spec(spec).unwrap();
        let mut p_big = vec![Tensor::vector("p", (0..N).map(|i| value(i, 0)).collect())];
        let mut small: Vec<Optimizer<f32>> = (0..N / PIECE)
            .map(|_| Optimizer::from_spec(spec).unwrap())
            .collect();
        let mut p_small: Vec<Vec<Tensor<f32>>> = p_big[0]
            .data()
            .chunks(PIECE)
            .map(|c| vec![Tensor::vector("p", c.to_vec())])
            .collect();
        for t in 1..=3 {
            let g: Vec<f32> = (0..N).map(|i| value(i, t) * 0.1).collect();
            big.step(
                &mut p_big,
                &[Tensor::vector("p", g.clone())],
                &StepInfo::default(),
            )
            .unwrap();
            for ((opt, p), g) in small.iter_mut().zip(&mut p_small).zip(g.chunks(PIECE)) {
                opt.step(p, &[Tensor::vector("p", g.to_vec())], &StepInfo::default())
                    .unwrap();
            }
        }
        let joined: Vec<u32> = p_small
            .iter()
            .flat_map(|p| p[0].data().iter().map(|x| x.to_bits()))
            .collect();
        let whole: Vec<u32> = p_big[0].data().iter().map(|x| x.to_bits()).collect();
        assert!(joined == whole, "{spec}");
    }
}

/// `a` and `b` agree to `tol` relative, element by element.
fn assert_close(a: &[Tensor<f64>], b: &[Tensor<f64>], tol: f64, what: &str) {
    for (x, y) in a.iter().zip(b) {
        for (x, y) in x.data().iter().zip(y.data()) {
            assert!(
                (x - y).abs() <= tol * x.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    }
}

/// Steps of the tests that check a gradient scale or weight decay against its definition
/// for every optimizer: more than 5, since RAdam takes its rectified step only from the
/// step where ρₜ > 5, the 6th at the earliest (ρₜ ≤ t for every β₂).
const SCALE_STEPS: usize = 8;

/// Checks that clipping and accumulation are scales of the gradient for the optimizer of
/// `spec` on the parameters `init` makes, for [`SCALE_STEPS`] steps: a step with
/// `clip_norm=0.5` is the unclipped step on the gradient that [`clip_grad_norm`] clips (to
/// 1e-12), and a step on the sum of 4 micro-batches (`micro_batches=4`, every gradient ×4) is
/// the step on one, bit for bit (×4 and ×¼ are exact). Returns the gradient norms the clip
/// saw, each > 0.6, so the clip binds at every step.
///
/// [`clip_grad_norm`]: sgdlab_optim::clip_grad_norm
fn assert_clip_and_accumulation(spec: &str, init: impl Fn() -> Vec<Tensor<f64>>) -> Vec<f64> {
    use sgdlab_optim::clip_grad_norm;
    let mut clipped = Optimizer::<f64>::from_spec(&format!("{spec},clip_norm=0.5")).unwrap();
    let mut on_clipped = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut plain = Optimizer::<f64>::from_spec(spec).unwrap();
    let mut summed = Optimizer::<f64>::from_spec(spec).unwrap();
    let (mut a, mut b, mut c, mut d) = (init(), init(), init(), init());
    let mut norms = Vec::new();
    for t in 0..SCALE_STEPS {
        let (g, loss) = grads_for(&a, t);
        let report = clipped
            .step(&mut a, &g, &StepInfo::with_loss(loss))
            .unwrap();
        let (mut g, loss) = grads_for(&b, t);
        let mut views: Vec<&mut [f64]> = g.iter_mut().map(|t| t.data_mut()).collect();
        let norm = clip_grad_norm(&mut views, 0.5).unwrap();
        assert!(
            norm > 0.6 && report.grad_norm == Some(norm),
            "{spec}: {norm}"
        );
        norms.push(norm);
        on_clipped
            .step(&mut b, &g, &StepInfo::with_loss(loss))
            .unwrap();
        assert_close(&a, &b, 1e-12, &format!("{spec}, clipped, step {t}"));

        let (g, loss) = grads_for(&c, t);
        plain.step(&mut c, &g, &StepInfo::with_loss(loss)).unwrap();
        let (mut g, loss) = grads_for(&d, t);
        g.iter_mut()
            .for_each(|t| t.data_mut().iter_mut().for_each(|x| *x *= 4.0));
        let info = StepInfo {
            micro_batches: 4,
            ..StepInfo::with_loss(loss)
        };
        summed.step(&mut d, &g, &info).unwrap();
        assert_eq!(c, d, "{spec}, 4 micro-batches, step {t}");
    }
    norms
}

/// Clipping and accumulation are scales of the gradient, for every optimizer (see
/// [`assert_clip_and_accumulation`]). Each rule multiplies its gradient by the step's scale,
/// which no rule's own reference trajectory pins unless it was recorded with clipping.
#[test]
fn clipping_and_accumulation_scale_the_gradient_of_every_optimizer() {
    for spec in ALL.iter().filter(|s| !s.contains("clip_norm")) {
        assert_clip_and_accumulation(spec, init);
    }
}

/// Muon too (it takes matrices only, so not in [`ALL`]). Its orthogonalised update is
/// invariant to one scale of the gradient, so only a clip scale that changes from step to
/// step shows, through the momentum buffer: the norms the clip saw must differ.
#[test]
fn muon_takes_the_clipped_and_accumulated_gradient() {
    let matrix = |name: &str, rows: usize, cols: usize, k: f64| {
        let v = (0..rows * cols)
            .map(|i| k * (1.0 + i as f64).ln() - 0.4)
            .collect();
        Tensor::new(name, vec![rows, cols], v).unwrap()
    };
    let init = || vec![matrix("w", 4, 6, 0.9), matrix("v", 5, 3, -0.7)];
    let norms = assert_clip_and_accumulation("muon:lr=0.05,momentum=0.9", init);
    assert!(
        norms.windows(2).all(|w| (w[0] - w[1]).abs() > 1e-3),
        "{norms:?}"
    );
}

/// Weight decay by its definition, for every optimizer that has it: coupled (L2) decay
/// λ is the step without decay on the gradient g + λΦ; decoupled decay
/// is the step without decay from the parameters shrunk first, Φ(1 − ηλ), on
/// the gradient taken before (PyTorch's AdamW, NAdam and RAdam with
/// `decoupled_weight_decay`, Lion, AdEMAMix). A rule's reference trajectory, where it has
/// one, is recorded with one of the two at most.
#[test]
fn weight_decay_is_a_gradient_term_or_a_shrink_for_every_optimizer() {
    let coupled = [
        "sgd:lr=0.05",
        "sgd:lr=0.02,momentum=0.9,dampening=0.1",
        "sgd:lr=0.02,momentum=0.8,nesterov=true",
        "adam:lr=0.01,amsgrad=true",
        "rmsprop:lr=0.01,centered=true,momentum=0.9",
        "adagrad:lr=0.1,lr_decay=0.01,initial_accumulator_value=0.1",
        "adamax:lr=0.01",
        "nadam:lr=0.01",
        "radam:lr=0.01",
    ];
    let decoupled = [
        ("adamw:lr=0.01", "adamw:lr=0.01,weight_decay=0"),
        ("nadam:lr=0.01,decoupled_weight_decay=true", "nadam:lr=0.01"),
        ("radam:lr=0.01,decoupled_weight_decay=true", "radam:lr=0.01"),
        ("lion:lr=0.001", "lion:lr=0.001,weight_decay=0"),
        (
            "ademamix:lr=0.01,beta3=0.99",
            "ademamix:lr=0.01,beta3=0.99,weight_decay=0",
        ),
    ];
    let lambda = 0.05;
    let cases = coupled
        .iter()
        .map(|s| (*s, *s, true))
        .chain(decoupled.iter().map(|(s, base)| (*s, *base, false)));
    for (spec, base, is_coupled) in cases {
        let mut decayed =
            Optimizer::<f64>::from_spec(&format!("{spec},weight_decay={lambda}")).unwrap();
        let mut by_hand = Optimizer::<f64>::from_spec(base).unwrap();
        let lr = by_hand.spec().rule.lr();
        let (mut a, mut b) = (init::<f64>(), init::<f64>());
        for t in 0..SCALE_STEPS {
            let (g, _) = grads_for(&a, t);
            decayed.step(&mut a, &g, &StepInfo::default()).unwrap();
            let (mut g, _) = grads_for(&b, t);
            for (g, p) in g.iter_mut().zip(b.iter_mut()) {
                if is_coupled {
                    for (g, &p) in g.data_mut().iter_mut().zip(p.data()) {
                        *g += lambda * p;
                    }
                } else {
                    p.data_mut()
                        .iter_mut()
                        .for_each(|p| *p *= 1.0 - lr * lambda);
                }
            }
            by_hand.step(&mut b, &g, &StepInfo::default()).unwrap();
            assert_close(&a, &b, 1e-12, &format!("{spec}, step {t}"));
        }
        assert_ne!(a, init::<f64>(), "{spec}");
    }
}

/// The state buffers' names, which checkpoints and state dicts use as keys: PyTorch's where
/// it has the optimizer (`momentum_buffer`, `square_avg`, `grad_avg`, `sum`, `exp_inf`, ...),
/// and the per-tensor scalars (Madam's clamp bound, NAdam's `mu_product`, Schedule-Free's
/// `lr_max`, `weight_sum` and `ckp1`, as in `schedulefree`). And every rule
/// checks its learning rate.
#[test]
fn slot_names_are_pytorchs_and_every_rule_checks_its_lr() {
    let table: &[(&str, &[&str])] = &[
        ("sgd", &[]),
        ("sgd:momentum=0.9", &["momentum_buffer"]),
        ("ema-momentum", &["exp_avg"]),
        ("adam", &["exp_avg", "exp_avg_sq"]),
        (
            "adam:amsgrad=true",
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        ),
        ("adamw", &["exp_avg", "exp_avg_sq"]),
        (
            "adamw:amsgrad=true",
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        ),
        ("rmsprop", &["square_avg"]),
        ("rmsprop:momentum=0.9", &["square_avg", "momentum_buffer"]),
        ("rmsprop:centered=true", &["square_avg", "grad_avg"]),
        (
            "rmsprop:centered=true,momentum=0.9",
            &["square_avg", "momentum_buffer", "grad_avg"],
        ),
        ("adagrad", &["sum"]),
        ("lion", &["exp_avg"]),
        ("madam", &["exp_avg_sq"]),
        ("normsgd", &[]),
        ("multiplicative", &[]),
        ("lossprop", &[]),
        ("adamax", &["exp_avg", "exp_inf"]),
        ("nadam", &["exp_avg", "exp_avg_sq"]),
        ("radam", &["exp_avg", "exp_avg_sq"]),
        ("adopt", &["exp_avg", "exp_avg_sq"]),
        (
            "adan",
            &["exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"],
        ),
        ("ademamix", &["exp_avg_fast", "exp_avg_slow", "exp_avg_sq"]),
        ("muon", &["momentum_buffer"]),
        ("sf-sgd", &["z", "x"]),
        ("sf-adamw", &["z", "x", "exp_avg_sq"]),
        ("prodigy", &["exp_avg", "exp_avg_sq", "s", "p0"]),
        (
            "soap",
            &["exp_avg", "exp_avg_sq", "GG_0", "GG_1", "Q_0", "Q_1"],
        ),
    ];
    for (spec, slots) in table {
        let opt = Optimizer::<f64>::from_spec(spec).unwrap();
        assert_eq!(opt.slot_names(), *slots, "{spec}");
        let name = spec.split(':').next().unwrap();
        let rule = &opt.spec().rule;
        let scalars: &[&str] = match name {
            "madam" => &["max"],
            "nadam" => &["mu_product"],
            "sf-sgd" | "sf-adamw" => &["lr_max", "weight_sum", "ckp1"],
            "prodigy" => &["d", "d_max", "d_numerator", "k"],
            _ => &[],
        };
        assert_eq!(rule.tensor_scalars(), scalars, "{spec}");
        // The decay rates whose powers a step takes (0 where the rule has none), at the
        // defaults, and what else a rule tells the optimizer about itself.
        let decays: &[f64] = match name {
            "adam" | "adamw" | "radam" | "ademamix" => &[0.9, 0.999],
            "adan" => &[0.98, 0.92, 0.99],
            "ema-momentum" | "adamax" => &[0.9, 0.0],
            "madam" => &[0.999, 0.0],
            "nadam" | "sf-adamw" => &[0.0, 0.999],
            _ => &[],
        };
        assert_eq!(rule.decays()[..], *decays, "{spec}");
        assert_eq!(rule.needs_loss(), name == "lossprop", "{spec}");
        assert_eq!(rule.needs_norm(), name == "normsgd", "{spec}");
        assert_eq!(
            rule.whole_tensor(),
            name == "muon" || name == "soap",
            "{spec}"
        );
        let sf = name.starts_with("sf-");
        assert_eq!(rule.eval_slot(), sf.then_some(1), "{spec}");
        let starts: Vec<bool> = (0..slots.len())
            .map(|s| rule.slot_starts_at_params(s))
            .collect();
        assert_eq!(
            starts,
            (0..slots.len())
                .map(|s| (sf && s < 2) || (name == "prodigy" && s == 3))
                .collect::<Vec<_>>(),
            "{spec}"
        );
    }
    for name in sgdlab_optim::spec::NAMES {
        assert!(
            table.iter().any(|(s, _)| s.split(':').next() == Some(name)),
            "{name}"
        );
        let err = Optimizer::<f64>::from_spec(&format!("{name}:lr=-1")).unwrap_err();
        assert!(err.to_string().contains("lr"), "{name}: {err}");
    }
}

#[test]
fn built_specs_have_the_spec_strings_defaults() {
    use sgdlab_optim::OptimizerSpec;
    for name in sgdlab_optim::spec::NAMES {
        let built = OptimizerSpec::named(name).unwrap();
        assert_eq!(built, name.parse::<OptimizerSpec>().unwrap(), "{name}");
        assert_eq!(built.to_string(), *name);
    }
    let adamw = OptimizerSpec::named("adamw")
        .unwrap()
        .with("lr", 0.01)
        .unwrap();
    assert_eq!(adamw, "adamw:lr=0.01".parse().unwrap());
    let sgdlab_optim::Rule::AdamW(c) = &adamw.rule else {
        panic!("not adamw")
    };
    assert_eq!(c.weight_decay, 0.01);
    assert!(
        OptimizerSpec::named("adamw")
            .unwrap()
            .with("beta1", 2)
            .is_err()
    );
    assert!(OptimizerSpec::named("nope").is_err());
}
