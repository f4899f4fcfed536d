//! bfloat16 parameters and gradients (`Optimizer::step_bf16`): with a master copy, against an
//! f32 optimizer stepping the same values; without, against rounding done by hand; unbiased
//! stochastic rounding of the parameters; determinism across threads and resume; errors
//! that change nothing.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::lowp::{bf16_nearest, bf16_stochastic, bf16_to_f32, counter_bits, stream_key};
use sgdlab_optim::{GradRef, Optimizer, ParamMut, StepInfo, StepOutcome};

/// Two tensors of bfloat16 bits: a 2-D `w` (many chunks) and a short `b`.
fn params(n: usize, seed: u64) -> Vec<Vec<u16>> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bf16_nearest(((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5)
    };
    vec![
        (0..n).map(|_| next()).collect(),
        (0..37).map(|_| next()).collect(),
    ]
}

fn grads(ps: &[Vec<u16>], t: u64) -> Vec<Vec<f32>> {
    ps.iter()
        .map(|p| {
            (0..p.len())
                .map(|i| ((i as f32 * 0.37 + t as f32 * 1.3).sin()) * 0.01)
                .collect()
        })
        .collect()
}

const NAMES: [&str; 2] = ["w", "b"];

fn shapes(ps: &[Vec<u16>]) -> Vec<Vec<usize>> {
    vec![vec![ps[0].len() / 100, 100], vec![ps[1].len()]]
}

/// The library's views of parameter tensors named [`NAMES`].
fn param_views<'a, T>(ps: &'a mut [Vec<T>], shapes: &'a [Vec<usize>]) -> Vec<ParamMut<'a, T>> {
    ps.iter_mut()
        .zip(NAMES)
        .zip(shapes)
        .map(|((p, n), s)| ParamMut::new(n, s, p).unwrap())
        .collect()
}

/// The library's views of gradient tensors named [`NAMES`].
fn grad_views<'a, T>(gs: &'a [Vec<T>], shapes: &'a [Vec<usize>]) -> Vec<GradRef<'a, T>> {
    gs.iter()
        .zip(NAMES)
        .zip(shapes)
        .map(|((g, n), s)| GradRef::new(n, s, g).unwrap())
        .collect()
}

/// One `step_bf16_params` (bf16 parameters, f32 gradients).
fn step(opt: &mut Optimizer<f32>, ps: &mut [Vec<u16>], gs: &[Vec<f32>]) -> StepOutcome {
    let shapes = shapes(ps);
    let mut views = param_views(ps, &shapes);
    let gviews = grad_views(gs, &shapes);
    opt.step_bf16_params(&mut views, &gviews, &StepInfo::default())
        .unwrap()
        .outcome
}

fn widen(p: &[u16]) -> Vec<f32> {
    p.iter().map(|&b| bf16_to_f32(b)).collect()
}

/// With a master copy the optimizer steps exactly what an f32 optimizer steps from the
/// same start (bit for bit, bf16 state or not), and the parameters are its nearest
/// bfloat16 after every step.
#[test]
fn master_weights_step_like_f32_and_round_to_nearest() {
    for spec in [
        "adamw:lr=0.01",
        "adam:lr=0.01,state_dtype=bf16",
        "sgd:lr=0.1,momentum=0.9",
    ] {
        let mut ps = params(300_000, 1);
        let mut master: Vec<Vec<f32>> = ps.iter().map(|p| widen(p)).collect();
        let mut opt = Optimizer::<f32>::from_spec(&format!("{spec},master_weights=true")).unwrap();
        let mut reference = Optimizer::<f32>::from_spec(spec).unwrap();
        for t in 0..5 {
            let g = grads(&ps, t);
            assert_eq!(step(&mut opt, &mut ps, &g), StepOutcome::Applied);
            let shapes = shapes(&ps);
            let mut views = param_views(&mut master, &shapes);
            let gviews = grad_views(&g, &shapes);
            reference
                .step_views(&mut views, &gviews, &StepInfo::default())
                .unwrap();
            for k in 0..2 {
                let m = opt.master(k).unwrap();
                assert!(
                    m.iter()
                        .zip(&master[k])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{spec}: master of tensor {k} at step {t}"
                );
                let nearest: Vec<u16> = m.iter().map(|&x| bf16_nearest(x)).collect();
                assert_eq!(ps[k], nearest, "{spec}: parameters = rn(master)");
            }
        }
        // The master copy holds what bf16 cannot: it differs from the parameters.
        assert!(opt.master(0).unwrap() != widen(&ps[0]).as_slice());
    }
}

/// Steps `spec` (no master copy) on bfloat16 parameters beside an f32 Adam stepping their
/// widening, and checks after each step t that the parameters are the f32 step rounded by
/// `round(t, tensor, element, value)` (done here by hand), over tensors of several chunks.
fn check_rounded_steps(spec: &str, seed: u64, round: impl Fn(u64, usize, u64, f32) -> u16) {
    let mut ps = params(100_000, seed);
    let mut opt = Optimizer::<f32>::from_spec(spec).unwrap();
    let mut reference = Optimizer::<f32>::from_spec("adam:lr=0.01").unwrap();
    let mut wide: Vec<Vec<f32>> = ps.iter().map(|p| widen(p)).collect();
    for t in 1..=4u64 {
        let g = grads(&ps, t);
        step(&mut opt, &mut ps, &g);
        let shapes = shapes(&ps);
        let mut views = param_views(&mut wide, &shapes);
        let gviews = grad_views(&g, &shapes);
        reference
            .step_views(&mut views, &gviews, &StepInfo::default())
            .unwrap();
        drop(views);
        for (k, (w, p)) in wide.iter_mut().zip(&ps).enumerate() {
            let rounded: Vec<u16> = (0u64..)
                .zip(w.iter())
                .map(|(i, &x)| round(t, k, i, x))
                .collect();
            assert!(rounded == *p, "{spec}: step {t}, tensor {k}");
            *w = widen(p);
        }
        assert_eq!(opt.master(0), None, "no master copy without master_weights");
    }
}

/// Without a master copy and with `rounding=nearest`, a step is the f32 step of the widened
/// parameters rounded to nearest.
#[test]
fn without_master_nearest_is_the_f32_step_rounded() {
    check_rounded_steps("adam:lr=0.01,rounding=nearest", 2, |_, _, _, x| {
        bf16_nearest(x)
    });
}

/// Without a master copy and with stochastic rounding (the default), a step is the f32 step
/// of the widened parameters rounded with the documented bits: element i of tensor k at
/// step t takes `counter_bits(stream_key(sr_seed, t, k, 2), i)` (stream 2: the state's
/// pairs of buffers take 0 and 1) — across the chunks of a tensor of several, so that a
/// resumed or re-threaded run draws the same bits.
#[test]
fn without_master_stochastic_is_the_f32_step_rounded_with_the_documented_bits() {
    check_rounded_steps("adam:lr=0.01,sr_seed=77", 4, |t, k, i, x| {
        bf16_stochastic(x, counter_bits(stream_key(77, t, k as u64, 2), i))
    });
}

/// An update of a quarter ulp: round to nearest never moves the parameter; stochastic
/// rounding moves it by the update on average (within 5 standard errors over 200k
/// elements), and a master copy accumulates it exactly.
#[test]
fn small_updates_survive_stochastic_rounding_and_master_weights() {
    let n = 200_000;
    // ulp(1) in bf16 is 2^-7; lr * g = 2^-9 is a quarter of it.
    let g = vec![vec![1.0f32; n], vec![1.0f32; 37]];
    let start = || vec![vec![bf16_nearest(1.0); n], vec![bf16_nearest(1.0); 37]];
    let lr = 2f64.powi(-9);
    let run = |spec: &str, steps: u64| {
        let mut ps = start();
        let mut opt = Optimizer::<f32>::from_spec(&format!("sgd:lr={lr},{spec}")).unwrap();
        for _ in 0..steps {
            step(&mut opt, &mut ps, &g);
        }
        let mean = widen(&ps[0]).iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        (mean, opt)
    };
    let (nearest, _) = run("rounding=nearest", 3);
    assert_eq!(
        nearest, 1.0,
        "round to nearest drops every quarter-ulp update"
    );
    let (sr, _) = run("rounding=stochastic", 3);
    // After one step each element is 1 - 2^-7 with probability 1/4: sd of the mean
    // 2^-7 * sqrt(3/16) / sqrt(n); three steps add up (variance at most 3x).
    let want = 1.0 - 3.0 * lr;
    let se = 2f64.powi(-7) * (3.0f64 * 3.0 / 16.0).sqrt() / (n as f64).sqrt();
    assert!((sr - want).abs() < 5.0 * se, "{sr} vs {want} (se {se})");
    assert!((sr - 1.0).abs() > 20.0 * se, "it moved");
    let (_, opt) = run("master_weights=true", 3);
    assert!(opt.master(0).unwrap().iter().all(|&x| f64::from(x) == want));
}

fn run_sr(threads: usize, steps: u64, ps: &mut [Vec<u16>]) -> Vec<u8> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut opt = Optimizer::<f32>::from_spec("adam:lr=0.01,state_dtype=bf16").unwrap();
        for t in 0..steps {
            let g = grads(ps, t);
            step(&mut opt, ps, &g);
        }
        opt.to_bytes().unwrap()
    })
}

#[test]
fn stochastic_parameters_are_the_same_for_any_thread_count() {
    let mut one = params(300_000, 3);
    let mut three = one.clone();
    let a = run_sr(1, 3, &mut one);
    let b = run_sr(3, 3, &mut three);
    assert_eq!(one, three);
    assert_eq!(a, b);
}

/// A run saved and resumed (master copy included) is the uninterrupted run, bit for bit.
#[test]
fn a_resumed_master_weights_run_is_the_uninterrupted_one() {
    let spec = "adamw:lr=0.01,state_dtype=bf16,master_weights=true";
    let mut full = params(70_000, 4);
    let mut opt = Optimizer::<f32>::from_spec(spec).unwrap();
    for t in 0..6 {
        let g = grads(&full, t);
        step(&mut opt, &mut full, &g);
    }
    let mut resumed = params(70_000, 4);
    let mut first = Optimizer::<f32>::from_spec(spec).unwrap();
    for t in 0..3 {
        let g = grads(&resumed, t);
        step(&mut first, &mut resumed, &g);
    }
    let bytes = first.to_bytes().unwrap();
    let mut second = Optimizer::<f32>::from_bytes(&bytes).unwrap();
    assert_eq!(second.master(0), first.master(0));
    for t in 3..6 {
        let g = grads(&resumed, t);
        step(&mut second, &mut resumed, &g);
    }
    assert_eq!(resumed, full);
    assert_eq!(second.to_bytes().unwrap(), opt.to_bytes().unwrap());
    // The file holds the master copy; one without it is refused, naming it.
    let mut dict = first.state_dict().unwrap();
    dict.buffers.remove("master/w").unwrap();
    let err = Optimizer::<f32>::from_state_dict(&dict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("master/"), "{err}");
    // Nor one whose master copy has the wrong shape.
    let mut dict = first.state_dict().unwrap();
    dict.buffers.get_mut("master/w").unwrap().0 = vec![100, 700];
    let err = Optimizer::<f32>::from_state_dict(&dict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("master/w"), "{err}");
}

/// bf16 gradients: the same step as their f32 widening.
#[test]
fn bf16_gradients_are_their_exact_widening() {
    let mut a = params(50_000, 5);
    let mut b = a.clone();
    let mut oa = Optimizer::<f32>::from_spec("adam:lr=0.01").unwrap();
    let mut ob = oa.clone();
    for t in 0..3 {
        let g16: Vec<Vec<u16>> = grads(&a, t)
            .iter()
            .map(|g| g.iter().map(|&x| bf16_nearest(x)).collect())
            .collect();
        let g32: Vec<Vec<f32>> = g16.iter().map(|g| widen(g)).collect();
        step(&mut ob, &mut b, &g32);
        let shapes = shapes(&a);
        let mut views = param_views(&mut a, &shapes);
        let gviews = grad_views(&g16, &shapes);
        oa.step_bf16(&mut views, &gviews, &StepInfo::default())
            .unwrap();
    }
    assert_eq!(a, b);
    assert_eq!(oa, ob);
}

/// Errors name the problem and change nothing: parameters, master copy and state.
#[test]
fn errors_change_nothing() {
    let mut ps = params(1000, 6);
    let mut opt = Optimizer::<f32>::from_spec("adam:lr=0.01,master_weights=true").unwrap();
    let g = grads(&ps, 0);
    step(&mut opt, &mut ps, &g);
    let (before_p, before_opt) = (ps.clone(), opt.clone());

    // A NaN gradient.
    let mut bad = grads(&ps, 1);
    bad[0][17] = f32::NAN;
    let shapes = shapes(&ps);
    let mut views = param_views(&mut ps, &shapes);
    let gviews = grad_views(&bad, &shapes);
    let err = opt
        .step_bf16_params(&mut views, &gviews, &StepInfo::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gradient of w") && err.contains("17"), "{err}");
    // One tensor too few.
    let err = opt
        .step_bf16_params(&mut views[..1], &gviews[..1], &StepInfo::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 tensors"), "{err}");
    drop(views);
    assert_eq!(ps, before_p);
    assert_eq!(opt, before_opt);

    // f32 parameters on an optimizer that keeps a master copy of bf16 ones.
    let mut w = vec![0.5f32; 4];
    let gw = vec![0.1f32; 4];
    let mut fresh = Optimizer::<f32>::from_spec("adam:master_weights=true").unwrap();
    let err = fresh
        .step_views(
            &mut [ParamMut::vector("w", &mut w)],
            &[GradRef::vector("w", &gw)],
            &StepInfo::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("master_weights") && err.contains("step_bf16"),
        "{err}"
    );

    // Schedule-Free evaluates at a point that bf16 parameters cannot hold.
    let mut sf = Optimizer::<f32>::from_spec("sf-sgd:lr=0.1").unwrap();
    let mut w16 = vec![bf16_nearest(0.5); 4];
    let err = sf
        .step_bf16_params(
            &mut [ParamMut::vector("w", &mut w16)],
            &[GradRef::vector("w", &gw)],
            &StepInfo::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("sf-sgd"), "{err}");
    assert_eq!(w16, vec![bf16_nearest(0.5); 4]);
}
