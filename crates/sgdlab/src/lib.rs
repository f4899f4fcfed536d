//! # sgdlab
//!
//! Stochastic gradient descent built from running averages, and a laboratory that measures
//! what optimizer theory claims.
//!
//! * [`average`] — the running averages of the problem set (EMA in both parameterisations,
//!   sum-form momentum, power and horizon bias correction, running moments);
//! * [`lab`] — seeded parallel Monte Carlo ([`lab::montecarlo`]) and the claims of the problem
//!   set, each checked by measurement ([`lab::claims::verify`]).
//!
//! All computation is deterministic given a seed, whatever the number of threads.

pub mod average;
pub mod bench;
pub mod data;
pub mod error;
pub mod io;
pub mod lab;
pub mod linalg;
pub mod model;
pub mod optim;
mod real;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;
