//! The temperature meter: the stationary variance of Φ under SGD noise.
//!
//! On the noisy quadratic with per-example loss (c/2)(Φ − x)², x ∼ N(0, σ²),
//! the gradient is c(Φ − x) and the update of SGD with rate η is the AR(1) process
//! Φ ← (1 − ηc)Φ + ηc x, whose stationary variance is
//! ηcσ²/(2 − ηc). RMSProp with the *exact* gradient standard deviation
//! σ\_g = cσ is SGD with rate η/σ\_g, stationary variance
//! ησ/(2 − η/σ) — independent of the loss scale c.
//!
//! The meter runs many independent chains of a real optimizer (through its public API) to
//! stationarity and estimates the variance across chains, with its standard error.

use rand_distr::{Distribution, Normal};

use crate::lab::montecarlo::{Estimate, MonteCarlo};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Result};

/// The noisy quadratic (c/2)(Φ − x)², x ∼ N(0, σ²).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoisyQuadratic {
    /// Loss scale c > 0.
    pub c: f64,
    /// Noise standard deviation σ > 0.
    pub sigma: f64,
}

impl NoisyQuadratic {
    /// A noisy quadratic; errors unless c > 0 and σ > 0.
    pub fn new(c: f64, sigma: f64) -> Result<Self> {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::invalid("c", c, "must be a finite number > 0"));
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::invalid(
                "sigma",
                sigma,
                "must be a finite number > 0",
            ));
        }
        Ok(Self { c, sigma })
    }

    /// The standard deviation of the gradient over x at any Φ: cσ.
    pub fn gradient_std(&self) -> f64 {
        self.c * self.sigma
    }

    /// The exact stationary variance of SGD with rate `lr`: ηcσ²/(2 − ηc).
    pub fn sgd_variance(&self, lr: f64) -> f64 {
        let a = lr * self.c;
        a * self.sigma * self.sigma / (2.0 - a)
    }

    /// The exact stationary variance of RMSProp with the exact σ\_g:
    /// ησ/(2 − η/σ).
    pub fn exact_rmsprop_variance(&self, lr: f64) -> f64 {
        lr * self.sigma / (2.0 - lr / self.sigma)
    }

    /// The per-example gradient c(Φ − x) and loss (c/2)(Φ − x)² at `phi` for the
    /// draw `x`: what the optimizers are fed.
    fn gradient_and_loss(&self, phi: f64, x: f64) -> (f64, f64) {
        let r = phi - x;
        (self.c * r, 0.5 * self.c * r * r)
    }

    fn noise(&self) -> Result<Normal<f64>> {
        Normal::new(0.0, self.sigma).map_err(|e| Error::invalid("sigma", self.sigma, e.to_string()))
    }

    /// `n` fresh gradients at `phi`, drawn from `rng` exactly as the optimizers receive them:
    /// the input for *measuring* σ\_g rather than taking it from [`Self::gradient_std`].
    pub fn gradient_samples(
        &self,
        phi: f64,
        n: usize,
        rng: &mut impl rand::Rng,
    ) -> Result<Vec<f64>> {
        let noise = self.noise()?;
        Ok((0..n)
            .map(|_| self.gradient_and_loss(phi, noise.sample(rng)).0)
            .collect())
    }

    /// Runs `spec` on this problem in every chain of `mc` for `steps` steps from Φ = 0
    /// and summarises the final Φ across chains.
    pub fn stationary(
        &self,
        spec: &OptimizerSpec,
        steps: usize,
        mc: MonteCarlo,
    ) -> Result<Estimate> {
        Ok(Estimate::from_samples(
            &self.stationary_samples(spec, steps, mc)?,
        ))
    }

    /// The final Φ of every chain (see [`NoisyQuadratic::stationary`]).
    pub fn stationary_samples(
        &self,
        spec: &OptimizerSpec,
        steps: usize,
        mc: MonteCarlo,
    ) -> Result<Vec<f64>> {
        let noise = self.noise()?;
        let template = Optimizer::<f64>::new(spec.clone())?;
        let finals = mc.run(|rng, _| -> Result<f64> {
            let mut opt = template.clone();
            let mut phi = [Tensor::vector("phi", vec![0.0])];
            let mut grad = [Tensor::vector("phi", vec![0.0])];
            for _ in 0..steps {
                let x: f64 = noise.sample(rng);
                let (g, loss) = self.gradient_and_loss(phi[0].data()[0], x);
                grad[0].data_mut()[0] = g;
                opt.step(&mut phi, &grad, &StepInfo::with_loss(loss))?;
            }
            Ok(phi[0].data()[0])
        });
        finals.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient and the loss the optimizers are fed, by hand: c = 0.5, Φ = 1, x = 3.
    /// (The loss reaches only loss-aware rules such as `lossprop`: no claim watches it.)
    #[test]
    fn gradient_and_loss_by_hand() {
        let q = NoisyQuadratic::new(0.5, 2.0).unwrap();
        assert_eq!(q.gradient_and_loss(1.0, 3.0), (-1.0, 1.0));
        assert_eq!(q.gradient_and_loss(3.0, 1.0), (1.0, 1.0));
    }

    #[test]
    fn sgd_temperature_matches_its_prediction() {
        let q = NoisyQuadratic::new(0.5, 2.0).unwrap();
        let mc = MonteCarlo::new(5, 4_000).unwrap();
        let e = q
            .stationary(&"sgd:lr=0.2".parse().unwrap(), 300, mc)
            .unwrap();
        assert!(e.variance().z(q.sgd_variance(0.2)).abs() < 4.5, "{e:?}");
        assert!(NoisyQuadratic::new(0.0, 1.0).is_err());
    }
}
