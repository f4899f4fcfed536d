//! Throughput measurements for `sgdlab bench`: optimizer steps against the machine's
//! read-modify-write memory bandwidth, measured in the same process and run.
//!
//! Figures are ratios measured in one run (fraction of the measured bandwidth), because
//! absolute timings on a shared machine are noisy.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::optim::kernel::{CHUNK, SimdLevel, multiversion};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Real, Result};

/// Median of `samples` (sorted in place).
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Times `f` `reps` times after 3 warm-up calls; returns the median seconds.
fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok(median(&mut samples))
}

#[inline(always)]
fn rmw<T: Real>(b: &mut [T], c: &[T], s: T) {
    for (b, &c) in b.iter_mut().zip(c) {
        *b = *b + s * c;
    }
}

multiversion!(fn rmw_dispatch<T: Real>(b: &mut [T], c: &[T], s: T) = rmw);

/// The in-process read-modify-write bandwidth in GB/s: `b[i] += s·c[i]` over two f32 arrays
/// (12 bytes moved per element) whose footprint is `footprint_bytes`, chunked over the rayon
/// pool like the optimizer kernels, median of `reps` passes.
///
/// Give it the optimizer's own footprint (Adam: 28 bytes per parameter): the bandwidth a
/// machine sustains depends on which cache level the working set fits in, and the ratio is
/// only fair at equal working sets.
pub fn rmw_bandwidth_gbps(footprint_bytes: usize, reps: usize) -> Result<f64> {
    let n = footprint_bytes / 8;
    if n == 0 {
        return Err(Error::invalid(
            "footprint",
            footprint_bytes,
            "must be at least 8 bytes",
        ));
    }
    let mut b = vec![1.0f32; n];
    let c = vec![1e-7f32; n];
    let level = SimdLevel::current();
    let secs = time_median(reps, || {
        b.par_chunks_mut(CHUNK)
            .zip(c.par_chunks(CHUNK))
            .for_each(|(b, c)| rmw_dispatch(level, b, c, 0.5));
        Ok(())
    })?;
    std::hint::black_box(&b);
    Ok(12.0 * n as f64 / secs / 1e9)
}

/// One optimizer's step throughput.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchResult {
    /// The optimizer spec.
    pub optimizer: String,
    /// Parameters in all.
    pub params: usize,
    /// Number of tensors they are split into.
    pub tensors: usize,
    /// Median milliseconds per step.
    pub ms_per_step: f64,
    /// Bytes moved per parameter by the fused pass: read and write the parameter and each
    /// state buffer, read the gradient (f32: Adam 28). The pre-pass re-read of the gradient
    /// (finiteness, norms) is in the time but not in this count.
    pub bytes_per_param: usize,
    /// `bytes_per_param · params / time`, GB/s.
    pub gbps: f64,
    /// `gbps` over the measured read-modify-write bandwidth.
    pub fraction_of_bandwidth: f64,
}

/// Times `reps` f32 steps of `spec` on `params` parameters split into `tensors` equal tensors.
pub fn bench_optimizer(
    spec: &OptimizerSpec,
    params: usize,
    tensors: usize,
    reps: usize,
    bandwidth_gbps: f64,
) -> Result<BenchResult> {
    if tensors == 0 || params < tensors {
        return Err(Error::invalid(
            "tensors",
            tensors,
            format!("must be between 1 and the number of parameters ({params})"),
        ));
    }
    let per = params / tensors;
    let make = |k: usize, f: &dyn Fn(usize) -> f32| {
        Tensor::vector(format!("t{k}"), (0..per).map(f).collect::<Vec<f32>>())
    };
    let mut p: Vec<Tensor<f32>> = (0..tensors)
        .map(|k| make(k, &|i| ((i % 1000) as f32) * 1e-3 - 0.5))
        .collect();
    let g: Vec<Tensor<f32>> = (0..tensors)
        .map(|k| make(k, &|i| (((i * 7 + 3) % 1000) as f32) * 1e-6 - 5e-4))
        .collect();
    let mut opt = Optimizer::<f32>::new(spec.clone())?;
    let info = StepInfo::with_loss(1.0);
    let secs = time_median(reps, || opt.step(&mut p, &g, &info).map(|_| ()))?;
    let bytes_per_param = (3 + 2 * opt.slot_names().len()) * std::mem::size_of::<f32>();
    let total = per * tensors;
    let gbps = (bytes_per_param * total) as f64 / secs / 1e9;
    Ok(BenchResult {
        optimizer: spec.to_string(),
        params: total,
        tensors,
        ms_per_step: secs * 1e3,
        bytes_per_param,
        gbps,
        fraction_of_bandwidth: gbps / bandwidth_gbps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_reports_consistent_figures() {
        let bw = rmw_bandwidth_gbps(28 * 100_000, 3).unwrap();
        assert!(bw > 0.0);
        let r = bench_optimizer(&"adam".parse().unwrap(), 100_000, 4, 3, bw).unwrap();
        assert_eq!((r.params, r.tensors, r.bytes_per_param), (100_000, 4, 28));
        assert!((r.gbps / bw - r.fraction_of_bandwidth).abs() < 1e-12);
        assert!(bench_optimizer(&"sgd".parse().unwrap(), 10, 0, 3, bw).is_err());
    }
}
