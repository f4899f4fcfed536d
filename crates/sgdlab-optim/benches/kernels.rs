//! Criterion benchmarks of the fused optimizer kernels: one tensor and many, 10k to 10M f32
//! parameters. Run with `cargo bench -p sgdlab-optim`; `sgdlab bench` gives the same figures
//! against the machine's measured memory bandwidth.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sgdlab_optim::{Optimizer, StepInfo, Tensor};

fn tensors(total: usize, count: usize, scale: f32) -> Vec<Tensor<f32>> {
    let per = total / count;
    (0..count)
        .map(|k| {
            let data = (0..per)
                .map(|i| ((i % 997) as f32 - 498.0) * scale)
                .collect();
            Tensor::vector(format!("t{k}"), data)
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("step");
    group.sample_size(20);
    for spec in ["adam", "adamw", "sgd:momentum=0.9", "rmsprop", "lion"] {
        for (total, count) in [
            (10_000, 1),
            (1_000_000, 1),
            (10_000_000, 1),
            (10_000_000, 100),
        ] {
            let mut params = tensors(total, count, 1e-3);
            let grads = tensors(total, count, 1e-6);
            let mut opt = Optimizer::<f32>::from_spec(spec).expect("valid spec");
            group.throughput(Throughput::Elements(total as u64));
            group.bench_function(BenchmarkId::new(spec, format!("{total}x{count}")), |b| {
                b.iter(|| {
                    opt.step(&mut params, &grads, &StepInfo::default())
                        .expect("finite gradients")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
