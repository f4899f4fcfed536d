//! Problem 5 (= 8): the learning rate against the scale of the loss.
//!
//! 5a: a loss in bits is the loss in nats over $\ln 2$, so $\eta' = \eta\ln 2$ gives the
//! identical trajectory. 5b: with RMSProp's exact per-coordinate $\sigma$, doubling the loss
//! doubles $g$ and $\sigma$, so $\eta' = \eta$ keeps the stationary distribution
//! ("temperature"); plain SGD needs $\eta' = \eta/2$.

use rand::RngExt;

use super::sequences::nan_max;
use super::{Claim, VerifyOptions};
use crate::Result;
use crate::data::digits;
use crate::lab::montecarlo::{Measurement, chain_rng};
use crate::lab::temperature::NoisyQuadratic;
use crate::model::{Classifier, LossUnit, Model};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = vec![nats_and_bits(options)?];
    claims.extend(temperature(options)?);
    Ok(claims)
}

/// Per-example SGD on softmax regression over the bundled digits, with the same example
/// order, in nats at `lr` and in bits at `lr_bits`; returns the trajectories.
fn softmax_trajectory(unit: LossUnit, spec: &str, order: &[usize]) -> Result<Vec<f64>> {
    let model = Classifier::softmax(digits()?, 10, unit)?;
    let dim = Model::<f64>::dim(&model);
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let mut params = [Tensor::vector("W", vec![0.0; dim])];
    let mut grads = [Tensor::vector("W", vec![0.0; dim])];
    let mut trajectory = Vec::with_capacity(order.len() * dim);
    for &i in order {
        model.loss_grad(params[0].data(), i, grads[0].data_mut());
        opt.step(&mut params, &grads, &StepInfo::default())?;
        trajectory.extend_from_slice(params[0].data());
    }
    Ok(trajectory)
}

fn nats_and_bits(options: &VerifyOptions) -> Result<Claim> {
    let (lr, steps) = (0.5f64, if options.quick { 300 } else { 1_500 });
    let mut rng = chain_rng(options.derive_seed("p5.order"), 0);
    let order: Vec<usize> = (0..steps).map(|_| rng.random_range(0..1797)).collect();
    let nats = softmax_trajectory(LossUnit::Nats, &format!("sgd:lr={lr}"), &order)?;
    let bits = softmax_trajectory(
        LossUnit::Bits,
        &format!("sgd:lr={}", lr * std::f64::consts::LN_2),
        &order,
    )?;
    let unmapped = softmax_trajectory(LossUnit::Bits, &format!("sgd:lr={lr}"), &order)?;
    let scale = nats.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let worst = |other: &[f64]| {
        nats.iter()
            .zip(other)
            .fold(0.0, |w, (a, b)| nan_max(w, (a - b).abs() / scale))
    };
    Ok(Claim::identity(
        "5a",
        "loss in bits with η' = η·ln 2 retraces the nats trajectory (softmax regression, digits)",
        &[("lr", lr), ("t", steps as f64), ("classes", 10.0)],
        0.0,
        worst(&bits),
        1e-10,
    )
    .reject("bits at the same η (no mapping)", worst(&unmapped)))
}

fn temperature(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (c, sigma, lr) = (0.25f64, 2.0f64, 0.2f64);
    let base = NoisyQuadratic::new(c, sigma)?;
    let doubled = NoisyQuadratic::new(2.0 * c, sigma)?;
    let chains = 20_000;
    let sgd = |lr: f64| -> Result<OptimizerSpec> { format!("sgd:lr={lr}").parse() };
    // Exact-σ RMSProp: SGD with rate η/σ_g, σ_g = cσ the gradient's exact standard deviation.
    let exact_rms = |q: &NoisyQuadratic, lr: f64| sgd(lr / q.gradient_std());
    let burn = |rate: f64| (25.0 / rate).ceil() as usize;
    let measure = |tag: &str, q: &NoisyQuadratic, spec: OptimizerSpec, rate: f64| {
        let mc = options.monte_carlo(tag, chains)?;
        q.stationary(&spec, burn(rate), mc).map(|e| e.variance())
    };
    let sgd_l = measure("p5.sgd.L", &base, sgd(lr)?, lr * c)?;
    let sgd_2l_half = measure("p5.sgd.2L.half", &doubled, sgd(lr / 2.0)?, lr * c)?;
    let sgd_2l = measure("p5.sgd.2L", &doubled, sgd(lr)?, 2.0 * lr * c)?;
    let rms_rate = lr / sigma;
    let rms_l = measure("p5.rms.L", &base, exact_rms(&base, lr)?, rms_rate)?;
    let rms_2l = measure("p5.rms.2L", &doubled, exact_rms(&doubled, lr)?, rms_rate)?;
    // The library's RMSProp (running average of g², α = 0.99): scale-invariant too.
    let lib: OptimizerSpec = format!("rmsprop:lr={lr},alpha=0.99").parse()?;
    let lib_l = measure("p5.lib.L", &base, lib.clone(), 0.05)?;
    let lib_2l = measure("p5.lib.2L", &doubled, lib, 0.05)?;

    let chains = options.monte_carlo("p5", chains)?.chains() as f64;
    let params = [
        ("c", c),
        ("sigma2", sigma * sigma),
        ("lr", lr),
        ("chains", chains),
    ];
    let sgd_unmapped_ratio = doubled.sgd_variance(lr) / base.sgd_variance(lr);
    let ratio = |a: Measurement, b: Measurement| a.ratio(b);
    Ok(vec![
        Claim::monte_carlo(
            "5b.sgd.temp",
            "SGD's stationary Var Φ on c(Φ-x)²/2 = ηcσ²/(2-ηc)",
            &params,
            base.sgd_variance(lr),
            sgd_l,
        )
        .reject("ησ²/(2-ηc)", lr * sigma * sigma / (2.0 - lr * c)),
        Claim::monte_carlo(
            "5b.rms.temp",
            "exact-σ RMSProp's stationary Var Φ = ησ/(2-η/σ), whatever c",
            &params,
            base.exact_rmsprop_variance(lr),
            rms_l,
        )
        .reject("ησ²/(2-ησ)", lr * sigma * sigma / (2.0 - lr * sigma)),
        Claim::monte_carlo(
            "5b",
            "exact-σ RMSProp, loss ×2: η' = η keeps the temperature (Var ratio 2L/L)",
            &params,
            1.0,
            ratio(rms_2l, rms_l),
        )
        .reject("the ratio SGD shows at unchanged η", sgd_unmapped_ratio),
        Claim::monte_carlo(
            "5b.sgd",
            "plain SGD, loss ×2: η' = η/2 keeps the temperature (Var ratio)",
            &params,
            1.0,
            ratio(sgd_2l_half, sgd_l),
        )
        .reject("the ratio at unchanged η", sgd_unmapped_ratio),
        Claim::monte_carlo(
            "5b.sgd.same-lr",
            "plain SGD, loss ×2 at unchanged η: the temperature changes, ratio 2(2-ηc)/(2-2ηc)",
            &params,
            sgd_unmapped_ratio,
            ratio(sgd_2l, sgd_l),
        )
        .reject("1 (unchanged)", 1.0),
        Claim::monte_carlo(
            "5b.lib",
            "the library's rmsprop (α=0.99), loss ×2 at unchanged η: same temperature",
            &params,
            1.0,
            ratio(lib_2l, lib_l),
        )
        .reject("the ratio SGD shows at unchanged η", sgd_unmapped_ratio),
    ])
}
