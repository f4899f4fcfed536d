//! Tests of the kernels: the pre-pass, blocked loops, bfloat16 paths and SIMD levels.

use super::bf16::*;
use super::blocks::*;
use super::reduce::*;
use super::*;
use crate::{Optimizer, StepContext};

/// `reduce` on every path — short slices, the 64-lane loop with a tail, several chunks,
/// and the threaded path from `PARALLEL_MIN` elements — in both precisions: 0 exactly for
/// finite gradients without the norm, Σg² with it (against a plain sum), and the
/// first non-finite element by (tensor, index, value) wherever it lies: first, last, in
/// the lanes, in a lane loop's tail, in a later chunk, in the second tensor.
#[test]
fn reduce_sums_squares_and_finds_the_first_non_finite_element() {
    fn check<T: Real>() {
        for n in [3, 255, 256, 300, CHUNK + 5, PARALLEL_MIN + 77] {
            let a: Vec<T> = (0..n)
                .map(|i| T::from_f64(((i * 7919) % 1009) as f64 / 500.0 - 1.0))
                .collect();
            let b: Vec<T> = (0..17).map(|i| T::from_f64(i as f64 * 0.25)).collect();
            assert_eq!(reduce(&[&a, &b], false), Ok(0.0), "n = {n}");
            let want: f64 = a.iter().chain(&b).map(|x| x.as_f64() * x.as_f64()).sum();
            let got = reduce(&[&a, &b], true).unwrap();
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "n = {n}: {got} vs {want}"
            );
            let mut spots = vec![(0, 0), (0, n - 1), (0, n / 2), (1, 16)];
            if n > 2 * CHUNK {
                spots.push((0, CHUNK + 3));
            }
            for (t, i) in spots {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let (mut a, mut b) = (a.clone(), b.clone());
                    [&mut a, &mut b][t][i] = T::from_f64(bad);
                    if t == 1 {
                        a[n - 1] = T::from_f64(f64::INFINITY);
                        b[i] = T::from_f64(bad);
                    }
                    for norm in [false, true] {
                        let (gt, gi, gv) = reduce(&[&a, &b], norm).unwrap_err();
                        // With the second tensor poisoned, the first tensor's last
                        // element comes first.
                        let (wt, wi, wv) = if t == 1 {
                            (0, n - 1, f64::INFINITY)
                        } else {
                            (t, i, bad)
                        };
                        assert_eq!((gt, gi), (wt, wi), "n = {n}, {bad}, norm {norm}");
                        assert!(gv == wv || (gv.is_nan() && wv.is_nan()), "{gv}");
                    }
                }
            }
        }
    }
    check::<f32>();
    check::<f64>();
    // Finite values whose squares overflow: the squared norm is +∞.
    let huge = [1e200, -1e200, 1.0];
    assert_eq!(reduce::<f64>(&[&huge], true), Ok(f64::INFINITY));
    assert_eq!(reduce::<f64>(&[&huge], false), Ok(0.0));
}

/// The levels on offer are the baseline and what the CPU reports, in order; a forced
/// level is the one steps use until `force(None)` restores the widest; each has its name.
/// (The only lib test that forces a level: the levels give the same bits, so other tests
/// running meanwhile see no difference.)
#[test]
fn simd_levels_are_detected_forced_and_named() {
    let available = SimdLevel::available();
    assert_eq!(available.first(), Some(&SimdLevel::Baseline));
    assert!(available.windows(2).all(|w| w[0] < w[1]), "{available:?}");
    #[cfg(target_arch = "x86_64")]
    {
        let has = |l| available.contains(&l);
        assert_eq!(has(SimdLevel::Avx2), is_x86_feature_detected!("avx2"));
        assert_eq!(has(SimdLevel::Avx512), is_x86_feature_detected!("avx512f"));
    }
    for &level in &available {
        SimdLevel::force(Some(level));
        assert_eq!(SimdLevel::current(), level);
        // A forced level is every loop's level.
        assert_eq!(SimdLevel::plain(), level);
    }
    SimdLevel::force(None);
    assert_eq!(Some(&SimdLevel::current()), available.last());
    // The plain loops run at the widest level, or at AVX2 on a Zen 3/4 with AVX-512.
    let zen = simd::cpu().zen_avx512_halves && SimdLevel::current() == SimdLevel::Avx512;
    let want = if zen {
        SimdLevel::Avx2
    } else {
        SimdLevel::current()
    };
    assert_eq!(SimdLevel::plain(), want);
    let names = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512].map(SimdLevel::name);
    assert_eq!(names, ["baseline", "avx2", "avx512"]);
}

/// The prefetching block loop computes exactly what one pass over the whole slice does,
/// for every rule and slot layout, on a length that is not a multiple of the block.
#[test]
fn blocked_and_whole_loops_give_the_same_bits() {
    let specs = [
        "sgd:lr=0.05",
        "sgd:lr=0.02,momentum=0.9,nesterov=true,weight_decay=0.01",
        "ema-momentum:lr=0.1,debias=power",
        "adam:lr=0.01",
        "adam:lr=0.01,amsgrad=true,weight_decay=0.1",
        "adamw:lr=0.01",
        "rmsprop:lr=0.01",
        "rmsprop:lr=0.01,momentum=0.9",
        "rmsprop:lr=0.01,centered=true",
        "rmsprop:lr=0.01,centered=true,momentum=0.9",
        "adagrad:lr=0.1",
        "lion:lr=0.01",
        "madam:lr=0.01",
        "normsgd:lr=0.1",
        "multiplicative:lr=0.1",
        "lossprop:lr=0.1",
    ];
    let n = 5 * BLOCK_BYTES / 4 + 7;
    let g: Vec<f32> = (0..n)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01)
        .collect();
    for spec in specs {
        let opt = Optimizer::<f32>::from_spec(spec).unwrap();
        let rule = &opt.spec().rule;
        let run = |prefetch: bool| {
            let ctx = StepContext {
                t: 3,
                lr: rule.lr(),
                grad_scale: 1.0,
                loss: Some(0.5),
                grad_norm_sq: 2.0,
                numel: n,
                beta_pow: rule.decays().iter().map(|b| b.powf(3.0)).collect(),
                prefetch,
                global: Default::default(),
            };
            let mut p: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
            let mut slots: Vec<Vec<f32>> = (0..opt.slot_names().len())
                .map(|k| (0..n).map(|i| ((i + k) % 5) as f32 * 0.01).collect())
                .collect();
            let mut views: Vec<&mut [f32]> = slots.iter_mut().map(|s| &mut s[..]).collect();
            rule.step_tensor(&ctx, &mut p, &g, &mut views, &[2.0]);
            (p, slots)
        };
        let (whole, blocked) = (run(false), run(true));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&whole.0), bits(&blocked.0), "{spec}: parameters");
        for (a, b) in whole.1.iter().zip(&blocked.1) {
            assert_eq!(bits(a), bits(b), "{spec}: state");
        }
    }
}

/// A rule's fused bfloat16 loop (Adam's) computes the same bits as the generic path that
/// widens into scratch, calls the f32-state element loop and narrows back: both rounding
/// modes, two and three buffers, f32 and f64 parameters, with and without the prefetching
/// blocks, from a unit that does not start at element 0 of its tensor.
#[test]
fn fused_bf16_loop_matches_the_scratch_path() {
    fn check<T: Real>(spec: &str, rounding: StateRounding, prefetch: bool, t: u64) {
        let opt = Optimizer::<T>::from_spec(spec).unwrap();
        let rule = &opt.spec().rule;
        let n_slots = rule.slots().len();
        let n = 3 * LOWP_BLOCK + 77;
        let ctx = StepContext {
            t,
            lr: rule.lr(),
            grad_scale: 0.75,
            loss: None,
            grad_norm_sq: 0.0,
            numel: n,
            beta_pow: rule.decays().iter().map(|b| b.powi(t as i32)).collect(),
            prefetch,
            global: Default::default(),
        };
        let g: Vec<T> = (0..n)
            .map(|i| T::from_f64(((i * 37 % 101) as f64 - 50.0) * 1e-3))
            .collect();
        let p0: Vec<T> = (0..n)
            .map(|i| T::from_f64(((i % 17) as f64 - 8.0) * 0.1))
            .collect();
        let s0: Vec<Vec<u16>> = (0..n_slots)
            .map(|k| {
                (0..n)
                    .map(|i| crate::lowp::bf16_nearest(((i + 3 * k) % 11) as f32 * 1e-3))
                    .collect()
            })
            .collect();
        let run = |fused: bool| {
            let mut p = p0.clone();
            let mut s = s0.clone();
            let bufs: Bufs<'_, u16> = s.iter_mut().map(Vec::as_mut_slice).collect();
            let mut unit = Unit {
                rule,
                ctx: &ctx,
                p: &mut p,
                g: &g,
                slots: Bufs::new(),
                n_slots,
                scalars: &[],
                lowp: Some(Lowp {
                    slots: bufs,
                    rounding,
                    keys: smallvec::smallvec![0x1234_5678_9abc_def0, 42],
                    offset: 5 * CHUNK as u64,
                }),
                quant: None,
                cautious: None,
            };
            let mut scratch = vec![T::zero(); LOWP_BLOCK * n_slots];
            if fused {
                let lowp = unit.lowp.as_mut().unwrap();
                assert!(rule.step_tensor_bf16(&ctx, unit.p, unit.g, lowp, &[]));
            } else {
                rule.run_lowp_scratch(&ctx, &mut unit, &mut scratch);
            }
            drop(unit);
            let bits: Vec<u64> = p.iter().map(|x| x.as_f64().to_bits()).collect();
            (bits, s)
        };
        let (fused, scratch) = (run(true), run(false));
        assert_eq!(fused.0, scratch.0, "{spec} {rounding:?} t={t}: parameters");
        assert_eq!(fused.1, scratch.1, "{spec} {rounding:?} t={t}: state");
        assert_ne!(fused.1, s0, "{spec}: the state moved");
    }
    // Every rule with a fused loop, in each of its buffer layouts; t = 1 takes SGD's
    // first-step branch.
    for spec in [
        "adam:lr=0.01,weight_decay=0.1",
        "adam:lr=0.01,amsgrad=true",
        "adamw:lr=0.01",
        "sgd:lr=0.1,momentum=0.9,dampening=0.2,weight_decay=0.01",
        "sgd:lr=0.1,momentum=0.9,nesterov=true",
        "ema-momentum:lr=0.1,beta=0.8,debias=power",
        "lion:lr=0.01,weight_decay=0.1",
        "rmsprop:lr=0.01,weight_decay=0.01",
        "rmsprop:lr=0.01,momentum=0.9",
        "rmsprop:lr=0.01,centered=true",
        "rmsprop:lr=0.01,momentum=0.9,centered=true",
        "adopt:lr=0.01,weight_decay=0.1",
        "adopt:lr=0.01,decoupled_weight_decay=true,weight_decay=0.1,clip=none",
    ] {
        for rounding in [StateRounding::Nearest, StateRounding::Stochastic] {
            for prefetch in [false, true] {
                for t in [1, 4] {
                    check::<f32>(spec, rounding, prefetch, t);
                    check::<f64>(spec, rounding, prefetch, t);
                }
            }
        }
    }
}

/// `SGDLAB_PREFETCH`'s values: `off`, `l1:BYTES`, `l2:BYTES` (a multiple of 64); anything else
/// is ignored (the CPU's default applies).
#[test]
fn prefetch_policies_parse() {
    assert_eq!(
        parse_prefetch("off"),
        Some(Prefetch {
            level: None,
            ahead_bytes: 0
        })
    );
    assert_eq!(
        parse_prefetch("l1:1024"),
        Some(Prefetch {
            level: Some(PrefetchLevel::L1),
            ahead_bytes: 1024
        })
    );
    assert_eq!(
        parse_prefetch("l2:4096"),
        Some(Prefetch {
            level: Some(PrefetchLevel::L2),
            ahead_bytes: 4096
        })
    );
    for bad in ["", "on", "l3:1024", "l1:100", "l1:", "l2:-64", "L1:1024"] {
        assert_eq!(parse_prefetch(bad), None, "{bad}");
    }
    // The process's policy is one of them, or the CPU's default.
    let policy = prefetch_policy();
    assert!(policy.level.is_none() || policy.ahead_bytes.is_multiple_of(64));
    if std::env::var("SGDLAB_PREFETCH").is_err() {
        assert_eq!(policy, default_prefetch());
        assert_eq!(policy.level.is_none(), simd::cpu().zen_avx512_halves);
    }
}
