//! The laboratory: Monte Carlo machinery, the drift/fixed-point audit, the temperature
//! meter, and the claims of the problem set.

pub mod audit;
pub mod calibrate;
pub mod claims;
pub mod figures;
pub mod montecarlo;
pub mod noise;
pub mod stats;
pub mod temperature;
