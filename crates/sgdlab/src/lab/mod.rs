//! The laboratory: Monte Carlo machinery and the claims of the problem set.

pub mod claims;
pub mod montecarlo;
