//! Throughput measurements for `sgdlab bench`: optimizer steps against the machine's
//! read-modify-write memory bandwidth, measured in the same process and run.
//!
//! A shared machine's bandwidth drifts by ±15% within seconds, so absolute figures taken a
//! minute apart are not comparable. Every optimizer step here is therefore timed *paired*
//! with a pass of the reference loop bᵢ ← bᵢ + s cᵢ over the same working set,
//! back to back, round after round; the reported fraction of bandwidth is the median of the
//! per-round ratios, which cancels the drift that both share.
//!
//! The working set is the memory a step touches, not the bytes it moves: for Adam the
//! parameters, the gradient and two state buffers, 16 bytes per f32 parameter. The reference
//! loop runs over two arrays of that total size. Matching it matters because how fast a
//! machine streams depends on which cache level the working set fits in.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::kernel::{CHUNK, SimdLevel, is_small, multiversion};
use crate::{Error, Real, Result};
use crate::{Optimizer, OptimizerSpec, StepInfo, Tensor};

/// Steps (and reference passes) run before timing starts: the first step allocates state.
const WARMUP: usize = 3;

/// Median of `samples` (sorted in place); `NaN` for none.
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

#[inline(always)]
fn rmw<T: Real>(b: &mut [T], c: &[T], s: T) {
    for (b, &c) in b.iter_mut().zip(c) {
        *b = *b + s * c;
    }
}

multiversion!(fn rmw_dispatch<T: Real>(b: &mut [T], c: &[T], s: T) = rmw);

/// The reference loop: bᵢ ← bᵢ + s cᵢ over two f32 arrays, 12 bytes moved
/// per element, in the kernels' chunks over the rayon pool (no software prefetch: it stands
/// for what a plain loop gets from the machine).
struct Reference {
    b: Vec<f32>,
    c: Vec<f32>,
}

/// `[f(0), …, f(n−1)]`, or an error naming the size if the memory cannot be had (instead of
/// the allocator's abort); `params` is the benchmark's size, for the message.
fn filled(n: usize, params: usize, f: impl Fn(usize) -> f32) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::invalid(
            "params",
            params,
            format!(
                "the benchmark cannot allocate {:.1} GB for one of its arrays",
                n as f64 * 4e-9
            ),
        )
    })?;
    v.extend((0..n).map(f));
    Ok(v)
}

impl Reference {
    /// Arrays for working sets up to `bytes`.
    fn new(bytes: usize, params: usize) -> Result<Self> {
        let n = bytes.div_ceil(8);
        Ok(Self {
            b: filled(n, params, |_| 1.0)?,
            c: filled(n, params, |_| 1e-7)?,
        })
    }

    /// One pass over a working set of `bytes`, on the rayon pool or (for steps that the
    /// optimizers run on the calling thread) sequentially; returns (seconds, bytes moved).
    fn pass(&mut self, bytes: usize, parallel: bool) -> (f64, f64) {
        let n = bytes.div_ceil(8).min(self.b.len());
        let level = SimdLevel::current();
        let (b, c) = (&mut self.b[..n], &self.c[..n]);
        let start = Instant::now();
        if parallel {
            b.par_chunks_mut(CHUNK)
                .zip(c.par_chunks(CHUNK))
                .for_each(|(b, c)| rmw_dispatch(level, b, c, 0.5f32));
        } else {
            rmw_dispatch(level, b, c, 0.5f32);
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(&self.b);
        (secs, 12.0 * n as f64)
    }
}

/// The most timed rounds a benchmark may ask for (each round's timings are kept).
pub const MAX_REPS: usize = 1_000_000;

/// What `sgdlab bench` measures.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Parameters in all (f32).
    pub params: usize,
    /// Layouts to measure: the parameters split into this many equal tensors.
    pub tensors: Vec<usize>,
    /// The optimizers.
    pub specs: Vec<OptimizerSpec>,
    /// Timed rounds (each one reference pass and one step) per optimizer and layout.
    pub reps: usize,
}

impl BenchPlan {
    /// Checks sizes, layouts and counts (what [`run`] checks first).
    pub fn validate(&self) -> Result<()> {
        if self.params == 0 {
            return Err(Error::invalid("params", 0, "must be at least 1"));
        }
        if self.reps == 0 || self.reps > MAX_REPS {
            return Err(Error::invalid(
                "reps",
                self.reps,
                format!("must lie in 1..={MAX_REPS}"),
            ));
        }
        if self.specs.is_empty() {
            return Err(Error::invalid(
                "opt",
                "(none)",
                "give at least one optimizer",
            ));
        }
        if self.tensors.is_empty() {
            return Err(Error::invalid(
                "tensors",
                "(none)",
                "give at least one layout",
            ));
        }
        for &k in &self.tensors {
            if k == 0 || k > self.params {
                return Err(Error::invalid(
                    "tensors",
                    k,
                    format!(
                        "must be between 1 and the number of parameters ({})",
                        self.params
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One optimizer's step throughput on one layout.
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
    /// state buffer, read the gradient (f32 Adam: 28; 8-bit state: 1 byte an element, its
    /// scales left out). The default NaN/Inf check re-reads the
    /// gradient in a pre-pass (4 more bytes); that read is in the time but not in this count.
    pub bytes_per_param: usize,
    /// `bytes_per_param · params / ms_per_step`, GB/s.
    pub gbps: f64,
    /// Median bandwidth of the reference loop over the same working set, timed alternately
    /// with this optimizer's steps, GB/s.
    pub bandwidth_gbps: f64,
    /// Median over rounds of (this round's step GB/s) / (this round's reference GB/s).
    pub fraction_of_bandwidth: f64,
}

/// A whole `sgdlab bench` run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// Median of every reference pass of the run, GB/s.
    pub bandwidth_gbps: f64,
    /// Worker threads.
    pub threads: usize,
    /// The instruction-set level the kernels ran at.
    pub simd: &'static str,
    /// One entry per layout and optimizer, layouts outermost.
    pub results: Vec<BenchResult>,
}

/// The squarest matrix shape of `n` elements: `[r, n / r]` with `r` the largest divisor of
/// `n` not above √n (1024 × 1024 for 2²⁰).
pub fn squarest(n: usize) -> [usize; 2] {
    let mut r = n.isqrt().max(1);
    while !n.is_multiple_of(r) {
        r -= 1;
    }
    [r, n / r]
}

/// `count` f32 tensors of `per` elements each, filled by `f(i)`, each shaped as the
/// squarest matrix of its size (matrix rules such as Muon need a matrix; elementwise rules
/// do not see the shape).
fn layout(count: usize, per: usize, f: impl Fn(usize) -> f32 + Copy) -> Result<Vec<Tensor<f32>>> {
    (0..count)
        .map(|k| {
            Tensor::new(
                format!("t{k}"),
                squarest(per).to_vec(),
                filled(per, per * count, f)?,
            )
        })
        .collect()
}

/// The benchmark's problem: `params` f32 parameters in `tensors` equal tensors with a fixed
/// gradient, one copy per optimizer (so that no step finds another's data in cache), each
/// stepped on demand. `sgdlab bench --serve` uses it to let another process
/// (`bench/compare_torch.py`) interleave its own steps with these one by one, so that both
/// see the same machine.
pub struct Workload {
    problems: Vec<Problem>,
}

/// One optimizer with its own parameters and gradient.
struct Problem {
    params: Vec<Tensor<f32>>,
    grads: Vec<Tensor<f32>>,
    optimizer: Optimizer<f32>,
}

impl Workload {
    /// Builds the tensors and the optimizers (their state is allocated at the first step).
    pub fn new(params: usize, tensors: usize, specs: &[OptimizerSpec]) -> Result<Self> {
        BenchPlan {
            params,
            tensors: vec![tensors],
            specs: specs.to_vec(),
            reps: 1,
        }
        .validate()?;
        let per = params / tensors;
        let problems = specs
            .iter()
            .map(|spec| {
                Ok(Problem {
                    params: layout(tensors, per, |i| ((i % 1000) as f32) * 1e-3 - 0.5)?,
                    grads: layout(tensors, per, |i| {
                        (((i * 7 + 3) % 1000) as f32) * 1e-6 - 5e-4
                    })?,
                    optimizer: Optimizer::new(spec.clone())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { problems })
    }

    /// Number of optimizers.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Whether there are no optimizers.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// One step of optimizer `k`; returns its wall-clock seconds.
    pub fn step(&mut self, k: usize) -> Result<f64> {
        let n = self.problems.len();
        let Problem {
            params,
            grads,
            optimizer,
        } = self
            .problems
            .get_mut(k)
            .ok_or_else(|| Error::invalid("optimizer index", k, format!("must be below {n}")))?;
        let start = Instant::now();
        optimizer.step(params, grads, &StepInfo::with_loss(1.0))?;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Runs `plan`: for every layout and optimizer, 3 untimed rounds, then `reps`
/// rounds of one reference pass and one step; calls `progress` after each optimizer.
pub fn run(plan: &BenchPlan, mut progress: impl FnMut(&BenchResult)) -> Result<BenchReport> {
    plan.validate()?;
    let mut max_slots = 0;
    for spec in &plan.specs {
        max_slots = max_slots.max(Optimizer::<f32>::new(spec.clone())?.slot_names().len());
    }
    let mut reference = Reference::new((2 + max_slots) * 4 * plan.params, plan.params)?;
    let mut all_reference = Vec::new();
    let mut results = Vec::new();
    for &count in &plan.tensors {
        let per = plan.params / count;
        let total = per * count;
        for spec in &plan.specs {
            // A fresh problem per optimizer and layout: the same values every time.
            let mut work = Workload::new(plan.params, count, std::slice::from_ref(spec))?;
            let n_slots = work.problems[0].optimizer.slot_names().len();
            // Parameters read and written, the gradient read, each state element read and
            // written: 4 bytes each in f32, 2 for bf16 state, 1 for 8-bit state (whose scales,
            // 4 bytes a block, 1.6 % more at 256, are left out).
            let state_bytes = match spec.state_dtype {
                crate::StateDtype::Bf16 => 2,
                crate::StateDtype::Q8 => 1,
                _ => std::mem::size_of::<f32>(),
            };
            let bytes_per_param = 3 * std::mem::size_of::<f32>() + 2 * n_slots * state_bytes;
            let working_set = (2 * std::mem::size_of::<f32>() + n_slots * state_bytes) * total;
            let moved = (bytes_per_param * total) as f64;
            let mut steps = Vec::with_capacity(plan.reps);
            let mut ratios = Vec::with_capacity(plan.reps);
            let mut refs = Vec::with_capacity(plan.reps);
            for round in 0..WARMUP + plan.reps {
                let (ref_secs, ref_bytes) = reference.pass(working_set, !is_small(total));
                let secs = work.step(0)?;
                if round >= WARMUP {
                    let ref_gbps = ref_bytes / ref_secs / 1e9;
                    steps.push(secs);
                    refs.push(ref_gbps);
                    ratios.push(moved / secs / 1e9 / ref_gbps);
                }
            }
            all_reference.extend_from_slice(&refs);
            let secs = median(&mut steps);
            let result = BenchResult {
                optimizer: spec.to_string(),
                params: total,
                tensors: count,
                ms_per_step: secs * 1e3,
                bytes_per_param,
                gbps: moved / secs / 1e9,
                bandwidth_gbps: median(&mut refs),
                fraction_of_bandwidth: median(&mut ratios),
            };
            progress(&result);
            results.push(result);
        }
    }
    Ok(BenchReport {
        bandwidth_gbps: median(&mut all_reference),
        threads: rayon::current_num_threads(),
        simd: SimdLevel::current().name(),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(params: usize, tensors: Vec<usize>, specs: &[&str]) -> BenchPlan {
        BenchPlan {
            params,
            tensors,
            specs: specs.iter().map(|s| s.parse().unwrap()).collect(),
            reps: 3,
        }
    }

    #[test]
    fn bench_reports_consistent_figures() {
        let mut seen = 0;
        let report = run(&plan(100_000, vec![1, 4], &["adam", "sgd"]), |_| seen += 1).unwrap();
        assert_eq!(seen, 4);
        assert!(report.bandwidth_gbps > 0.0);
        let layouts: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.optimizer.as_str(), r.tensors, r.bytes_per_param))
            .collect();
        assert_eq!(
            layouts,
            [
                ("adam", 1, 28),
                ("sgd", 1, 12),
                ("adam", 4, 28),
                ("sgd", 4, 12)
            ]
        );
        for r in &report.results {
            assert_eq!(r.params, 100_000);
            let implied = r.bytes_per_param as f64 * 1e5 / (r.ms_per_step * 1e-3) / 1e9;
            assert!((r.gbps - implied).abs() <= 1e-9 * implied);
            assert!(r.fraction_of_bandwidth > 0.0 && r.bandwidth_gbps > 0.0);
        }
    }

    #[test]
    fn squarest_shapes() {
        assert_eq!(squarest(1 << 20), [1024, 1024]);
        assert_eq!(squarest(10_000_000), [3125, 3200]);
        assert_eq!(squarest(7), [1, 7]);
        assert_eq!(squarest(1), [1, 1]);
    }

    #[test]
    fn bad_plans_are_errors() {
        assert!(run(&plan(10, vec![0], &["sgd"]), |_| ()).is_err());
        assert!(run(&plan(10, vec![11], &["sgd"]), |_| ()).is_err());
        assert!(run(&plan(0, vec![1], &["sgd"]), |_| ()).is_err());
        assert!(run(&plan(10, vec![], &["sgd"]), |_| ()).is_err());
        assert!(run(&plan(10, vec![1], &[]), |_| ()).is_err());
        let mut p = plan(10, vec![1], &["sgd"]);
        p.reps = 0;
        assert!(run(&p, |_| ()).is_err());
    }
}
