//! Problem 5 (= 8): the learning rate against the scale of the loss.
//!
//! 5a: a loss in bits is the loss in nats over ln 2, so η′ = η ln 2 gives the
//! identical trajectory. 5b: with RMSProp's exact per-coordinate σ, doubling the loss
//! doubles g and σ, so η′ = η keeps the stationary distribution
//! ("temperature"); plain SGD needs η′ = η/2. "Exact" σ is measured: the
//! standard deviation of a million fresh gradients (a quarter with `--quick`) of the loss at
//! hand, so that doubling the loss must double what is measured.

use rand::RngExt;

use super::sequences::nan_max;
use super::{Claim, VerifyOptions};
use crate::data::digits;
use crate::lab::montecarlo::{Estimate, Measurement, chain_rng};
use crate::lab::temperature::NoisyQuadratic;
use crate::model::{Classifier, LossUnit, Model};
use crate::optim::{Optimizer, OptimizerSpec, StepInfo, Tensor};
use crate::{Error, Result};

pub(crate) fn claims(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let mut claims = vec![nats_and_bits(options)?, bits_unit(options)?];
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
    let mapped = format!("sgd:lr={}", lr * std::f64::consts::LN_2);
    let nats = softmax_trajectory(LossUnit::Nats, &format!("sgd:lr={lr}"), &order)?;
    let bits = softmax_trajectory(LossUnit::Bits, &mapped, &order)?;
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
    .reject("bits at the same η (no mapping)", worst(&unmapped))
    .optimizer(format!("sgd:lr={lr}"))
    .optimizer(mapped))
}

/// −log₂p\_y of softmax regression computed from scratch (logits z = Wx + b, W row-major
/// classes × inputs then b, the layout of [`Classifier::softmax`]), independent of the
/// library's [`LossUnit`] scaling.
fn independent_bits(phi: &[f64], x: &[f64], y: usize, classes: usize) -> f64 {
    let d = x.len();
    let logits: Vec<f64> = (0..classes)
        .map(|k| {
            let w = &phi[k * d..(k + 1) * d];
            w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + phi[classes * d + k]
        })
        .collect();
    let top = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z));
    let total: f64 = logits.iter().map(|z| (z - top).exp()).sum();
    -((logits[y] - top).exp() / total).log2()
}

/// 5a's premise, measured: the model's loss in bits, and its gradient (what SGD steps on), are
/// those of −log₂p\_y computed from scratch — at random parameters, on random digits,
/// the gradient by central differences along random directions.
fn bits_unit(options: &VerifyOptions) -> Result<Claim> {
    let data = digits()?;
    let classes = 10;
    let model = Classifier::softmax(data.clone(), classes, LossUnit::Bits)?;
    let nats = Classifier::softmax(data.clone(), classes, LossUnit::Nats)?;
    let dim = Model::<f64>::dim(&model);
    let mut rng = chain_rng(options.derive_seed("p5.bits"), 0);
    let (mut worst_loss, mut worst_nats, mut worst_slope) = (0.0f64, 0.0f64, 0.0f64);
    let mut grad = vec![0.0; dim];
    for _ in 0..20 {
        let phi: Vec<f64> = (0..dim).map(|_| rng.random_range(-0.1..0.1)).collect();
        let i = rng.random_range(0..data.len());
        let y = data
            .target(i)
            .ok_or_else(|| Error::Data("the digits have no labels".into()))?
            as usize;
        let x = data.row(i);
        let want = independent_bits(&phi, x, y, classes);
        let got = model.loss_grad(&phi, i, &mut grad);
        worst_loss = nan_max(worst_loss, (got - want).abs() / want);
        worst_nats = nan_max(
            worst_nats,
            (Model::<f64>::loss(&nats, &phi, i) - want).abs() / want,
        );
        let dir: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h = 1e-5;
        let at = |s: f64| {
            let p: Vec<f64> = phi.iter().zip(&dir).map(|(a, b)| a + s * b).collect();
            independent_bits(&p, x, y, classes)
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        let analytic: f64 = grad.iter().zip(&dir).map(|(a, b)| a * b).sum();
        worst_slope = nan_max(
            worst_slope,
            (numeric - analytic).abs() / numeric.abs().max(1.0),
        );
    }
    Ok(Claim::identity(
        "5a.unit",
        "the bits loss is -log₂ p_y from scratch, its gradient that loss's (worst relative error)",
        &[("points", 20.0), ("classes", 10.0), ("h", 1e-5)],
        0.0,
        worst_loss.max(worst_slope),
        1e-7,
    )
    .reject("the loss in nats (no conversion): its error", worst_nats))
}

fn temperature(options: &VerifyOptions) -> Result<Vec<Claim>> {
    let (c, sigma, lr) = (0.25f64, 2.0f64, 0.2f64);
    let base = NoisyQuadratic::new(c, sigma)?;
    let doubled = NoisyQuadratic::new(2.0 * c, sigma)?;
    let chains = 20_000;
    let sgd = |lr: f64| -> Result<OptimizerSpec> { format!("sgd:lr={lr}").parse() };
    // Exact-σ RMSProp: SGD with rate η/σ̂_g, σ̂_g the gradient's standard deviation *measured*
    // on the loss's own gradient stream (not the formula cσ), from `draws` fresh gradients.
    let draws = if options.quick { 250_000 } else { 1_000_000 };
    let measured_std = |tag: &str, q: &NoisyQuadratic| -> Result<f64> {
        let mut rng = chain_rng(options.derive_seed(tag), 0);
        let grads = q.gradient_samples(0.0, draws, &mut rng)?;
        Ok(Estimate::from_samples(&grads).variance.sqrt())
    };
    let (sigma_l, sigma_2l) = (
        measured_std("p5.sigma.L", &base)?,
        measured_std("p5.sigma.2L", &doubled)?,
    );
    // σ̂'s relative SE, 1/sqrt(2·draws) for normal gradients, moves Var Φ by a factor
    // 2/(2-a) of it (a = η c/σ̂): added in quadrature to the Monte Carlo SE.
    let sigma_rel = 1.0 / (2.0 * draws as f64).sqrt();
    let with_sigma_error = |v: Measurement, a: f64| {
        Measurement::new(
            v.value,
            v.stderr.hypot(v.value * 2.0 / (2.0 - a) * sigma_rel),
        )
    };
    let burn = |rate: f64| (25.0 / rate).ceil() as usize;
    let measure = |tag: &str, q: &NoisyQuadratic, spec: OptimizerSpec, rate: f64| {
        let mc = options.monte_carlo(tag, chains)?;
        q.stationary(&spec, burn(rate), mc).map(|e| e.variance())
    };
    let sgd_l = measure("p5.sgd.L", &base, sgd(lr)?, lr * c)?;
    let rms_specs = [sgd(lr / sigma_l)?, sgd(lr / sigma_2l)?];
    let sgd_2l_half = measure("p5.sgd.2L.half", &doubled, sgd(lr / 2.0)?, lr * c)?;
    let sgd_2l = measure("p5.sgd.2L", &doubled, sgd(lr)?, 2.0 * lr * c)?;
    let rms_rate = lr / sigma;
    let rms_l = with_sigma_error(
        measure("p5.rms.L", &base, rms_specs[0].clone(), rms_rate)?,
        lr * c / sigma_l,
    );
    let rms_2l = with_sigma_error(
        measure("p5.rms.2L", &doubled, rms_specs[1].clone(), rms_rate)?,
        2.0 * lr * c / sigma_2l,
    );
    // The library's RMSProp (running average of g², α = 0.99): scale-invariant too.
    let lib: OptimizerSpec = format!("rmsprop:lr={lr},alpha=0.99").parse()?;
    let lib_l = measure("p5.lib.L", &base, lib.clone(), 0.05)?;
    let lib_2l = measure("p5.lib.2L", &doubled, lib.clone(), 0.05)?;

    let chains = options.monte_carlo("p5", chains)?.chains() as f64;
    let params = [
        ("c", c),
        ("sigma2", sigma * sigma),
        ("lr", lr),
        ("chains", chains),
        ("sigma_g_measured", sigma_l),
        ("sigma_g_measured_2L", sigma_2l),
        ("gradient_draws", draws as f64),
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
        .reject("ησ²/(2-ηc)", lr * sigma * sigma / (2.0 - lr * c))
        .optimizer(sgd(lr)?),
        Claim::monte_carlo(
            "5b.rms.temp",
            "exact-σ RMSProp (the library's SGD at η/σ̂, σ̂ measured on the gradients): \
             stationary Var Φ = ησ/(2-η/σ), whatever c",
            &params,
            base.exact_rmsprop_variance(lr),
            rms_l,
        )
        .reject("ησ²/(2-ησ)", lr * sigma * sigma / (2.0 - lr * sigma))
        .optimizer(&rms_specs[0]),
        Claim::monte_carlo(
            "5b",
            "exact-σ RMSProp, loss ×2: η' = η keeps the temperature (Var ratio 2L/L)",
            &params,
            1.0,
            ratio(rms_2l, rms_l),
        )
        .reject("the ratio SGD shows at unchanged η", sgd_unmapped_ratio)
        .optimizer(&rms_specs[0])
        .optimizer(&rms_specs[1]),
        Claim::monte_carlo(
            "5b.sgd",
            "plain SGD, loss ×2: η' = η/2 keeps the temperature (Var ratio)",
            &params,
            1.0,
            ratio(sgd_2l_half, sgd_l),
        )
        .reject("the ratio at unchanged η", sgd_unmapped_ratio)
        .optimizer(sgd(lr)?)
        .optimizer(sgd(lr / 2.0)?),
        Claim::monte_carlo(
            "5b.sgd.same-lr",
            "plain SGD, loss ×2 at unchanged η: the temperature changes, ratio 2(2-ηc)/(2-2ηc)",
            &params,
            sgd_unmapped_ratio,
            ratio(sgd_2l, sgd_l),
        )
        .reject("1 (unchanged)", 1.0)
        .optimizer(sgd(lr)?),
        Claim::monte_carlo(
            "5b.lib",
            "the library's rmsprop (α=0.99), loss ×2 at unchanged η: same temperature",
            &params,
            1.0,
            ratio(lib_2l, lib_l),
        )
        .reject("the ratio SGD shows at unchanged η", sgd_unmapped_ratio)
        .optimizer(&lib),
    ])
}
