//! # sgdlab
//!
//! Stochastic gradient descent built from running averages, and a laboratory that measures
//! what optimizer theory claims.
//!
//! * [`average`] — the running averages of the problem set (EMA in both parameterisations,
//!   sum-form momentum, power and horizon bias correction, running moments);
//! * [`optim`] — the optimizers (PyTorch semantics where PyTorch has them, and the problem
//!   set's own rules), specs, fused multi-threaded SIMD kernels, checkpoint/resume;
//! * [`model`] — exact per-example models (points, linear and logistic regression, softmax and
//!   ReLU networks) with batched gradients;
//! * [`data`] — CSV and MNIST-format IDX loaders, the bundled digits, stratified splits;
//! * [`lab`] — seeded parallel Monte Carlo ([`lab::montecarlo`]), the drift/fixed-point audit
//!   ([`lab::audit`]), the temperature meter, the claims of the problem set, each checked by
//!   measurement ([`lab::claims::verify`]), and the data of the report's figures;
//! * [`train`] — the training loop with schedules, weight averaging and exact resume;
//! * [`bench`](mod@bench) — optimizer throughput against the measured memory bandwidth.
//!
//! All computation is deterministic given a seed, whatever the number of threads.

pub mod average;
pub mod bench;
pub mod data;
pub mod error;
pub mod fuzzing;
pub mod io;
pub mod lab;
pub mod linalg;
pub mod model;
pub mod optim;
mod real;
pub mod replay;
pub mod resources;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;
