//! Optimizer state kept in 8 bits (`state_dtype=q8`): the kernel against an independent path
//! (an f32 optimizer whose state is quantized between steps with `quant`'s whole-tensor
//! functions), determinism across threads and resume, checkpoints and state dicts, and
//! refused input.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab_optim::lowp::Rounding;
use sgdlab_optim::quant::{self, CodeBook};
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
        // Shorter than a block.
        Tensor::vector("b", (0..37).map(|_| next()).collect()),
    ]
}

fn grads(ps: &[Tensor<f32>], t: u64) -> Vec<Tensor<f32>> {
    ps.iter()
        .map(|p| {
            let data = (0..p.len())
                .map(|i| ((i as f32 * 0.37 + t as f32 * 1.3).sin()) * 0.01 * (1.0 + (i % 7) as f32))
                .collect();
            Tensor::new(p.name(), p.shape().to_vec(), data).unwrap()
        })
        .collect()
}

/// The buffers a running square or magnitude fills: the unsigned book's.
fn nonnegative(slot: &str) -> bool {
    matches!(
        slot,
        "exp_avg_sq" | "max_exp_avg_sq" | "square_avg" | "sum" | "exp_inf"
    )
}

/// Round to nearest, step by step: the 8-bit kernel equals an f32 optimizer whose state is
/// quantized and dequantized after every step with `quant::quantize` over the whole tensor
/// (blocks of 256 from its start), through its state dict.
#[test]
fn nearest_equals_f32_steps_with_state_quantized_between_them() {
    for spec in [
        "adam:lr=0.01",
        "adam:lr=0.01,amsgrad=true,weight_decay=0.01",
        "adamw:lr=0.01,debias=none",
        "rmsprop:lr=0.01,momentum=0.5,centered=true",
        "lion:lr=0.001",
        "sgd:lr=0.1,momentum=0.9,nesterov=true",
        "adagrad:lr=0.1,initial_accumulator_value=0.1",
        "adamax:lr=0.01",
        "nadam:lr=0.01",
        "radam:lr=0.01",
        "ademamix:lr=0.01,beta3=0.99",
        "adopt:lr=0.01",
        "adan:lr=0.01",
        "adamw:lr=0.01,cautious=true",
    ] {
        // 300k parameters: many units, on several threads; 5k: one unit a tensor, on the
        // calling thread.
        for n in [300_000, 5_000] {
            reference_run(spec, n);
        }
    }
}

/// One spec's run of [`nearest_equals_f32_steps_with_state_quantized_between_them`] on `n`
/// parameters.
fn reference_run(spec: &str, n: usize) {
    let mut a = params(n, 1);
    let mut b = a.clone();
    let mut q8 =
        Optimizer::<f32>::from_spec(&format!("{spec},state_dtype=q8,rounding=nearest")).unwrap();
    let mut reference = Optimizer::<f32>::from_spec(spec).unwrap();
    for t in 0..5 {
        let g = grads(&a, t);
        q8.step(&mut a, &g, &StepInfo::default()).unwrap();
        reference.step(&mut b, &g, &StepInfo::default()).unwrap();
        let mut sd = reference.state_dict().unwrap();
        for (name, (_, data)) in sd.buffers.iter_mut() {
            let slot = name.split('/').next().unwrap();
            let book = CodeBook::for_buffer(nonnegative(slot));
            let mut codes = vec![0u8; data.len()];
            let mut absmax = vec![0f32; data.len().div_ceil(quant::BLOCK_SIZE)];
            quant::quantize(book, data, Rounding::Nearest, &mut codes, &mut absmax);
            if nonnegative(slot) {
                // A positive second moment never rounds to 0: the smallest positive code.
                for (q, &x) in codes.iter_mut().zip(data.iter()) {
                    if x > 0.0 && book.value(*q) == 0.0 {
                        *q += 1;
                    }
                }
            }
            quant::dequantize(book, &codes, &absmax, data);
        }
        reference.load_state_dict(&sd).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.data(), y.data(), "{spec}: params at step {t}");
        }
        let mine = q8.state_dict().unwrap().buffers;
        for (name, buf) in &sd.buffers {
            assert_eq!(mine.get(name), Some(buf), "{spec}: {name} at step {t}");
        }
        // Beside the values: one scale per block of each buffer.
        assert_eq!(mine.len(), 2 * sd.buffers.len(), "{spec}");
    }
}

/// Stochastic rounding of buffer k draws from stream 3 + k of (sr_seed, step, tensor)
/// (`lowp::stream_key`), past the bfloat16 parameters' stream 2: the codes of every buffer of
/// AMSGrad (three) after one step are those of `quant::quantize` on an f32 optimizer's state
/// with that stream's key.
#[test]
fn each_buffer_draws_its_own_stream_past_the_parameters() {
    let spec = "adam:lr=0.01,amsgrad=true";
    let mut a = params(300_000, 4);
    let mut b = a.clone();
    let mut q8 = Optimizer::<f32>::from_spec(&format!("{spec},state_dtype=q8,sr_seed=11")).unwrap();
    let mut reference = Optimizer::<f32>::from_spec(spec).unwrap();
    let g = grads(&a, 0);
    q8.step(&mut a, &g, &StepInfo::default()).unwrap();
    reference.step(&mut b, &g, &StepInfo::default()).unwrap();
    for (t, name) in ["w", "b"].into_iter().enumerate() {
        for (k, slot) in ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
            .into_iter()
            .enumerate()
        {
            let data = reference.state(slot, t).unwrap();
            let book = CodeBook::for_buffer(nonnegative(slot));
            // The first step is step 1.
            let key = sgdlab_optim::lowp::stream_key(11, 1, t as u64, 3 + k as u64);
            let mut codes = vec![0u8; data.len()];
            let mut absmax = vec![0f32; data.len().div_ceil(256)];
            quant::quantize(
                book,
                data,
                Rounding::Stochastic { key },
                &mut codes,
                &mut absmax,
            );
            if nonnegative(slot) {
                quant::keep_positive(book, data, &mut codes);
            }
            let (mine, scales) = q8.state_q8(slot, t).unwrap();
            assert_eq!(scales, &absmax[..], "{slot}/{name}");
            assert_eq!(mine, &codes[..], "{slot}/{name}");
        }
    }
}

fn run(spec: &str, threads: usize, steps: u64) -> (Vec<Tensor<f32>>, Vec<u8>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut p = params(300_000, 2);
        let mut opt = Optimizer::<f32>::from_spec(spec).unwrap();
        for t in 0..steps {
            let g = grads(&p, t);
            opt.step(&mut p, &g, &StepInfo::default()).unwrap();
        }
        (p, opt.to_bytes().unwrap())
    })
}

const SR: &str = "adamw:lr=0.01,state_dtype=q8,sr_seed=7";

#[test]
fn the_state_is_the_same_for_any_thread_count() {
    for spec in [
        SR,
        "adam:lr=0.01,state_dtype=q8,rounding=nearest,block_size=64",
    ] {
        let one = run(spec, 1, 4);
        let three = run(spec, 3, 4);
        assert_eq!(one.1, three.1, "{spec}");
        for (x, y) in one.0.iter().zip(&three.0) {
            assert_eq!(x.data(), y.data(), "{spec}");
        }
    }
}

/// Stochastic rounding draws from the seed: another seed gives other codes, the same seed
/// the same ones.
#[test]
fn stochastic_rounding_follows_its_seed() {
    let a = run(SR, 2, 2).1;
    assert_eq!(a, run(SR, 2, 2).1);
    assert_ne!(a, run(&SR.replace("sr_seed=7", "sr_seed=8"), 2, 2).1);
}

#[test]
fn a_resumed_run_is_the_uninterrupted_one_and_the_file_keeps_codes_and_scales() {
    let (full, full_state) = run(SR, 2, 8);
    let mut p = params(300_000, 2);
    let mut opt = Optimizer::<f32>::from_spec(SR).unwrap();
    for t in 0..3 {
        let g = grads(&p, t);
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    let bytes = opt.to_bytes().unwrap();
    // One byte per state element and 4 per block of 256, plus a small header.
    let elems: usize = p.iter().map(Tensor::len).sum();
    assert!(
        bytes.len() < 2 * (elems + 4 * elems.div_ceil(256) + 8) + 4096,
        "{} bytes",
        bytes.len()
    );
    let mut opt = Optimizer::<f32>::from_bytes(&bytes).unwrap();
    assert!(opt.state("exp_avg", 0).is_none() && opt.state_bf16("exp_avg", 0).is_none());
    let (codes, absmax) = opt.state_q8("exp_avg", 0).unwrap();
    assert_eq!(
        (codes.len(), absmax.len()),
        (p[0].len(), p[0].len().div_ceil(256))
    );
    for t in 3..8 {
        let g = grads(&p, t);
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    assert_eq!(opt.to_bytes().unwrap(), full_state);
    for (x, y) in p.iter().zip(&full) {
        assert_eq!(x.data(), y.data());
    }
}

/// The state dict holds each buffer's values x̂ = c[q]·a and its scales; it loads back to
/// the same codes, and a value that no code of its block gives is refused, by name.
#[test]
fn the_state_dict_holds_values_and_scales_and_loads_back_exactly() {
    let (_, bytes) = run(SR, 2, 3);
    let opt = Optimizer::<f32>::from_bytes(&bytes).unwrap();
    let sd = opt.state_dict().unwrap();
    let again = Optimizer::<f32>::from_state_dict(&sd).unwrap();
    assert_eq!(again.to_bytes().unwrap(), bytes);
    // The values are the codes' values times their block's scale.
    let (codes, absmax) = opt.state_q8("exp_avg_sq", 0).unwrap();
    let values = &sd.buffers["exp_avg_sq/w"].1;
    let scales = &sd.buffers["exp_avg_sq.absmax/w"].1;
    assert_eq!(scales, absmax);
    let book = CodeBook::unsigned();
    for (i, (&v, &q)) in values.iter().zip(codes).enumerate() {
        assert_eq!(v, book.value(q) * absmax[i / 256], "element {i}");
    }
    assert!(values.iter().all(|&v| v >= 0.0));
    // A block's largest second moment is its scale exactly (code 1).
    assert_eq!(values[..256].iter().fold(0f32, |m, &v| m.max(v)), absmax[0]);
    let mut edited = sd.clone();
    edited.buffers.get_mut("exp_avg/w").unwrap().1[5] *= 1.001;
    let err = Optimizer::<f32>::from_state_dict(&edited)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exp_avg/w") && err.contains("element 5") && err.contains("8-bit"),
        "{err}"
    );
    let mut edited = sd.clone();
    edited.buffers.get_mut("exp_avg.absmax/w").unwrap().1[0] = -1.0;
    let err = Optimizer::<f32>::from_state_dict(&edited)
        .unwrap_err()
        .to_string();
    assert!(err.contains("negative"), "{err}");
    let mut edited = sd.clone();
    edited.buffers.remove("exp_avg.absmax/b");
    let err = Optimizer::<f32>::from_state_dict(&edited)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exp_avg.absmax/b"), "{err}");
}

/// f64 parameters: the scales stay f32 in the file and widen exactly in the state dict.
#[test]
fn f64_parameters_keep_f32_scales() {
    let mut p: Vec<Tensor<f64>> = vec![Tensor::vector(
        "x",
        (0..1000).map(|i| f64::from(i) * 1e-3).collect(),
    )];
    let g: Vec<Tensor<f64>> = vec![Tensor::vector(
        "x",
        (0..1000).map(|i| (f64::from(i) * 0.1).cos()).collect(),
    )];
    let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.01,state_dtype=q8").unwrap();
    for _ in 0..3 {
        opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    let bytes = opt.to_bytes().unwrap();
    let back = Optimizer::<f64>::from_bytes(&bytes).unwrap();
    assert_eq!(back.to_bytes().unwrap(), bytes);
    let sd = back.state_dict().unwrap();
    assert_eq!(
        Optimizer::<f64>::from_state_dict(&sd)
            .unwrap()
            .to_bytes()
            .unwrap(),
        bytes
    );
    assert_eq!(sd.buffers["exp_avg.absmax/x"].1.len(), 4);
}

/// The zero-point rule: a second moment 10⁻¹² of its block's largest, which the nearest code
/// would store as 0, is stored as the smallest positive code (3.25·10⁻⁷ of the absmax); a
/// zero stays 0; the first moment keeps its plain nearest code. So the next step of that
/// element, on a zero gradient, is short (m̂/√v̂ ≤ 1/√(1 − β₂)·…), not m̂/ε.
#[test]
fn a_positive_second_moment_is_never_stored_as_zero() {
    for rounding in ["nearest", "stochastic"] {
        let mut p = vec![Tensor::vector("x", vec![0.0f32; 256])];
        let mut g = vec![0.0f32; 256];
        g[0] = 1.0;
        g[1] = 1e-6;
        let gs = vec![Tensor::vector("x", g)];
        let spec = format!("adam:lr=0.001,state_dtype=q8,rounding={rounding}");
        let mut opt = Optimizer::<f32>::from_spec(&spec).unwrap();
        opt.step(&mut p, &gs, &StepInfo::default()).unwrap();
        let v = opt.state_values("exp_avg_sq", 0).unwrap();
        let a = 1e-3_f32;
        assert_eq!(v[0], f64::from(a), "{rounding}");
        assert_eq!(
            v[1],
            f64::from(CodeBook::unsigned().values()[1] * a),
            "{rounding}"
        );
        assert_eq!(v[2], 0.0, "{rounding}");
        // Element 1's first moment, 10⁻⁷ of 0.1 = 10⁻⁶ of the block's: a code of its own.
        let m = opt.state_values("exp_avg", 0).unwrap();
        assert!(m[1] >= 0.0 && m[1] < 1e-6, "{rounding}: {}", m[1]);
        // A step on a zero gradient moves element 1 by at most lr·m̂/√v̂, not lr·m̂/ε.
        let before = p[0].data()[1];
        let zero = vec![Tensor::vector("x", vec![0.0f32; 256])];
        opt.step(&mut p, &zero, &StepInfo::default()).unwrap();
        let moved = (p[0].data()[1] - before).abs();
        assert!(moved < 1e-3, "{rounding}: moved {moved}");
    }
}

/// A NaN in the state (the finiteness check off, a NaN gradient) turns its whole block into
/// NaN, never into finite numbers.
#[test]
fn a_nan_in_the_state_poisons_its_block() {
    let mut p = vec![Tensor::vector("x", vec![0.5f32; 600])];
    let mut g = vec![0.1f32; 600];
    g[300] = f32::NAN;
    let g = vec![Tensor::vector("x", g)];
    let mut opt =
        Optimizer::<f32>::from_spec("adam:lr=0.01,state_dtype=q8,check_finite=false").unwrap();
    opt.step(&mut p, &g, &StepInfo::default()).unwrap();
    let m = opt.state_values("exp_avg", 0).unwrap();
    assert!(m[..256].iter().all(|x| x.is_finite()));
    assert!(m[256..512].iter().all(|x| x.is_nan()));
    assert!(m[512..].iter().all(|x| x.is_finite()));
}

#[test]
fn bad_settings_are_errors() {
    for (spec, what) in [
        ("muon:state_dtype=q8", "muon"),
        ("sf-adamw:state_dtype=q8", "sf-adamw"),
        ("prodigy:state_dtype=q8", "prodigy"),
        ("adam:block_size=128", "needs state_dtype=q8"),
        (
            "adam:state_dtype=bf16,block_size=128",
            "needs state_dtype=q8",
        ),
        ("adam:state_dtype=q8,block_size=100", "power of two"),
        ("adam:state_dtype=q8,block_size=8", "power of two"),
        ("adam:state_dtype=q8,block_size=65536", "power of two"),
        ("adam:state_dtype=q8,block_size=-1", "whole number"),
        ("adam:state_dtype=q4", "q8"),
    ] {
        let err = spec
            .parse::<sgdlab_optim::OptimizerSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{spec}: {err}");
    }
    let spec: sgdlab_optim::OptimizerSpec = "adam:state_dtype=q8,block_size=32768".parse().unwrap();
    assert_eq!(spec.to_string(), "adam:state_dtype=q8,block_size=32768");
    let mut opt = Optimizer::<f32>::from_spec("adam:state_dtype=q8").unwrap();
    assert!(opt.set("state_dtype", "bf16").is_err());
    opt.set("rounding", "nearest").unwrap();
    opt.set("lr", "0.1").unwrap();
    // A checkpoint of 8-bit state does not load under another block size.
    let (_, bytes) = run(SR, 1, 1);
    let path = std::env::temp_dir().join(format!("sgdlab-q8-{}.safetensors", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let err = Optimizer::<f32>::load_as(&path, &format!("{SR},block_size=128").parse().unwrap())
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("state"), "{err}");
}
