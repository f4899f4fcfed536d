//! # sgdlab
//!
//! Stochastic gradient descent built from running averages, and a laboratory that measures
//! what optimizer theory claims.
//!
//! * [`average`] — the running averages of the problem set (EMA in both parameterisations,
//!   sum-form momentum, power and horizon bias correction, running moments);
//! * [`optim`] — the optimizers: the `sgdlab-optim` crate, re-exported (PyTorch semantics
//!   where PyTorch has them, and the problem set's own rules), specs, fused multi-threaded
//!   SIMD kernels, checkpoint/resume; usable on its own;
//! * [`rng`] — the seeded random streams everything else draws from;
//! * [`model`] — exact per-example models (points, linear and logistic regression, softmax and
//!   ReLU networks) with batched gradients;
//! * [`data`] — CSV and MNIST-format IDX loaders, the bundled digits, stratified splits;
//! * [`lab`] — seeded parallel Monte Carlo ([`lab::montecarlo`]), the drift/fixed-point audit
//!   ([`lab::audit`]), the temperature meter, the claims of the problem set, each checked by
//!   measurement ([`lab::claims::verify`]), and the data of the report's figures;
//! * [`train`] — the training loop with schedules, weight averaging and exact resume;
//! * [`bench`](mod@bench) — optimizer throughput against the measured memory bandwidth (from
//!   `sgdlab-optim`).
//!
//! All computation is deterministic given a seed, whatever the number of threads.
//!
//! ## A training loop
//!
//! The optimizer steps tensors the caller owns, in place; parameter groups, the schedule and
//! clipping are properties of the optimizer, and its state (schedule position included) saves
//! and resumes exactly:
//!
//! ```
//! use sgdlab::optim::{GradRef, GroupSpec, Optimizer, ParamMut, Schedule, StepInfo};
//!
//! // y ≈ 2x + 1 on four points; the parameters are plain vectors.
//! let (xs, ys) = ([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]);
//! let (mut w, mut b) = (vec![0.0f64], vec![0.0f64]);
//! let mut opt = Optimizer::<f64>::with_groups(
//!     "adamw:lr=0.1,weight_decay=1e-4,clip_norm=10".parse()?,
//!     vec!["b:weight_decay=0".parse::<GroupSpec>()?],   // no decay for the bias
//! )?;
//! opt.set_schedule(Schedule::warmup_cosine(10, 490, 0.0))?;
//! for _ in 0..500 {
//!     let (mut gw, mut gb) = (0.0, 0.0);
//!     for (x, y) in xs.iter().zip(&ys) {
//!         let r = w[0] * x + b[0] - y;
//!         gw += r * x / 4.0;
//!         gb += r / 4.0;
//!     }
//!     opt.step_views(
//!         &mut [ParamMut::vector("w", &mut w), ParamMut::vector("b", &mut b)],
//!         &[GradRef::vector("w", &[gw]), GradRef::vector("b", &[gb])],
//!         &StepInfo::default(),
//!     )?;
//! }
//! assert!((w[0] - 2.0).abs() < 1e-2 && (b[0] - 1.0).abs() < 1e-2);
//! let saved = opt.to_bytes()?;                      // or opt.save(path)
//! assert_eq!(Optimizer::<f64>::from_bytes(&saved)?, opt);
//! # Ok::<(), sgdlab::Error>(())
//! ```
//!
//! More in `crates/sgdlab/examples/`: linear regression on the caller's vectors, an MLP with
//! parameter groups, warm-up + cosine and gradient accumulation, and save/kill/resume.

pub mod average;

/// The repository's README, compiled as a doctest so that its Rust quickstart cannot fall
/// behind.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub mod data;
pub mod fuzzing;
pub mod lab;
pub mod linalg;
pub mod model;
pub mod resources;
pub mod rng;
pub mod train;

pub use sgdlab_optim as optim;
pub use sgdlab_optim::{Error, Real, Result, bench, error, io, lowp, replay};
