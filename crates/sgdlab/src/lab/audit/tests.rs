//! Tests of the audit: the Newton solver, exact drift, simulation, statistics and report.

use super::exact::*;
use super::simulate::*;
use super::*;
use crate::data::parse_csv;
use crate::lab::montecarlo::chain_rng;
use crate::lab::stats::*;
use crate::model::{LinReg, LossUnit};
use rand::RngExt;

/// AR(1) with coefficient ρ has τ = (1+ρ)/(1−ρ); independent draws have τ = 1; and the
/// batch-means SE of an AR(1) mean matches the exact asymptotic one.
#[test]
fn autocorrelation_time_of_known_series() {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = chain_rng(3, 0);
    let n = 400_000;
    let white: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let tau = integrated_autocorrelation_time(&white);
    assert!((tau - 1.0).abs() < 0.05, "{tau}");
    let rho = 0.9;
    let mut x = 0.0;
    let ar: Vec<f64> = white
        .iter()
        .map(|e| {
            x = rho * x + e;
            x
        })
        .collect();
    let tau = integrated_autocorrelation_time(&ar);
    let want = (1.0 + rho) / (1.0 - rho);
    assert!((tau / want - 1.0).abs() < 0.1, "{tau} vs {want}");
    // Batches of 390 steps ≫ τ: the SE is σ_x·sqrt(τ/n), σ_x² = 1/(1−ρ²).
    let mut bm = BatchMeans::new(1, n);
    for v in &ar {
        bm.push(&[*v]);
    }
    let (_, se) = bm.finish();
    let exact = (want / (1.0 - rho * rho) / n as f64).sqrt();
    assert!((se[0] / exact - 1.0).abs() < 0.1, "{} vs {exact}", se[0]);
    // Slow chains (ρ = 0.9995, τ ≈ 4000 steps, 1024 batches of 390 steps), started in
    // the stationary distribution: over 8 runs the mean SE is the exact one within 12%
    // (a single estimate is noisy: its window spans few batches).
    let rho: f64 = 0.9995;
    let want = (1.0 + rho) / (1.0 - rho);
    let exact = (want / (1.0 - rho * rho) / n as f64).sqrt();
    let mut ratios = 0.0;
    for seed in 0..8 {
        let mut rng = chain_rng(100 + seed, 0);
        let start: f64 = StandardNormal.sample(&mut rng);
        let mut x = start * (1.0 / (1.0 - rho * rho)).sqrt();
        let mut bm = BatchMeans::new(1, n);
        for _ in 0..n {
            let e: f64 = StandardNormal.sample(&mut rng);
            x = rho * x + e;
            bm.push(&[x]);
        }
        ratios += bm.finish().1[0] / exact / 8.0;
    }
    assert!((ratios - 1.0).abs() < 0.12, "{ratios}");
}

fn points(text: &str) -> AuditModel {
    AuditModel::Points(Points::new(parse_csv(text, false).unwrap()))
}

#[test]
fn normsgd_drift_on_0_0_3_is_the_documented_number() {
    let m = points("0\n0\n3\n");
    let spec: OptimizerSpec = "normsgd:eps=1".parse().unwrap();
    let a = audit(&m, &[spec], &SimulationOptions::default()).unwrap();
    assert_eq!(a.minimizer, vec![1.0]);
    let o = &a.optimizers[0];
    assert!((o.drift[0] - (-0.173262)).abs() < 5e-7, "{}", o.drift[0]);
    assert!(!o.consistent);
    assert!(o.residual.unwrap() < 1e-12);
    assert!(o.fixed_point[0] < 1.0 && o.fixed_point[0] > 0.0);
}

#[test]
fn plain_sgd_is_consistent_and_its_fixed_point_is_the_minimiser() {
    let m = points("0\n0\n3\n");
    let a = audit(
        &m,
        &["sgd:lr=0.1".parse().unwrap()],
        &SimulationOptions::default(),
    )
    .unwrap();
    let o = &a.optimizers[0];
    assert!(o.consistent && o.drift_norm < 1e-15);
    assert!(o.fixed_point_distance < 1e-12);
}

#[test]
fn logistic_minimiser_has_zero_gradient() {
    let data = parse_csv("0.5,1\n2,0\n-1,1\n0.1,0\n1.5,1\n", true).unwrap();
    let m = AuditModel::LogReg(LogReg::new(data, true, LossUnit::Nats).unwrap());
    let star = m.minimizer().unwrap();
    let mut g = vec![0.0; 2];
    m.model().mean_loss_grad(&star, &mut g);
    assert!(norm(&g) <= 1e-12);
    let separable = parse_csv("0,0\n1,1\n", true).unwrap();
    let m = AuditModel::LogReg(LogReg::new(separable, true, LossUnit::Nats).unwrap());
    assert!(m.minimizer().is_err());
}

#[test]
fn stateful_rules_are_simulated() {
    let m = points("0\n0\n3\n");
    let opts = SimulationOptions {
        burn_in: 2_000,
        steps: 20_000,
        seed: 3,
    };
    let a = audit(&m, &["sgd:lr=0.01,momentum=0.9".parse().unwrap()], &opts).unwrap();
    let o = &a.optimizers[0];
    assert_eq!(o.method, "simulation");
    // Momentum SGD on a quadratic is unbiased: the drift is zero up to noise.
    assert!(o.consistent, "{o:?}");
    let se = o.stderr.as_ref().unwrap()[0];
    assert!((o.fixed_point[0] - 1.0).abs() < 5.0 * se + 1e-3, "{o:?}");
}

/// `points` takes every column as a coordinate; the other models need the target column.
#[test]
fn only_points_builds_without_a_target_column() {
    let data = || parse_csv("1,2\n3,4\n", false).unwrap();
    let points = AuditModel::build("points", data(), false, LossUnit::Nats).unwrap();
    assert_eq!(points.minimizer().unwrap(), vec![2.0, 3.0]);
    for kind in ["linreg", "logreg", "softmax"] {
        let err = AuditModel::build(kind, data(), true, LossUnit::Nats)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("the {kind} model needs a target column")),
            "{kind}: {err}"
        );
    }
    let labelled = parse_csv("1,0\n3,1\n", true).unwrap();
    let err = AuditModel::build("ridge", labelled, false, LossUnit::Nats)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("points, linreg, logreg, softmax"), "{err}");
}

/// The simulation steps with the loss (loss-proportional rules need it) and at
/// `lr_scale`·η: at scale 0 the iterate never leaves its start.
#[test]
fn the_simulation_passes_the_loss_and_the_learning_rate_scale() {
    let data = parse_csv("0,0\n2,0\n0,2\n", false).unwrap();
    let model = AuditModel::build("points", data, false, LossUnit::Nats).unwrap();
    let options = SimulationOptions {
        burn_in: 10,
        steps: 1000,
        seed: 1,
    };
    let start = [5.0, -1.0];
    let sgd: OptimizerSpec = "sgd:lr=0.1".parse().unwrap();
    let (fp, se) = simulated_fixed_point(model.model(), &sgd, &start, 0.0, &options).unwrap();
    assert_eq!(fp, start);
    assert_eq!(se, [0.0, 0.0]);
    let (fp, _) = simulated_fixed_point(model.model(), &sgd, &start, 1.0, &options).unwrap();
    assert!(distance(&fp, &[2.0 / 3.0, 2.0 / 3.0]) < 0.5, "{fp:?}");
    let lossprop: OptimizerSpec = "lossprop:lr=0.1".parse().unwrap();
    let (fp, _) = simulated_fixed_point(model.model(), &lossprop, &start, 1.0, &options).unwrap();
    assert!(fp.iter().all(|x| x.is_finite()), "{fp:?}");
}

/// A model of one example whose loss and gradient a closure gives.
struct Analytic<F>(usize, F);

impl<F: Fn(&[f64], &mut [f64]) -> f64 + Sync> Model<f64> for Analytic<F> {
    fn dim(&self) -> usize {
        self.0
    }
    fn examples(&self) -> usize {
        1
    }
    fn loss_grad(&self, phi: &[f64], _: usize, grad: &mut [f64]) -> f64 {
        (self.1)(phi, grad)
    }
    fn parameter_names(&self) -> Vec<String> {
        (0..self.0).map(|j| format!("x{j}")).collect()
    }
}

/// The helpers of the Newton iterations against hand values: the 2-norm, the symmetric
/// part of a 3×3 matrix, and a central-difference Jacobian of a non-polynomial map at a
/// point far from the origin (where the relative step size matters).
#[test]
fn norm_symmetrize_and_jacobian_by_hand() {
    assert_eq!(norm(&[3.0, -4.0]), 5.0);
    let mut a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    symmetrize(&mut a, 3);
    assert_eq!(a, [1.0, 3.0, 5.0, 3.0, 5.0, 7.0, 5.0, 7.0, 9.0]);
    // f(x) = (10⁻¹² x0³ + 2 x1, exp(x1/10) x0):
    // J = [[3·10⁻¹² x0², 2], [exp(x1/10), x0 exp(x1/10)/10]].
    let x = [1.0e4, 3.0];
    let jac = jacobian(&x, |p, out| {
        out[0] = 1e-12 * p[0].powi(3) + 2.0 * p[1];
        out[1] = (p[1] / 10.0).exp() * p[0];
    });
    let e = (0.3f64).exp();
    let want = [3.0e-4, 2.0, e, 1.0e4 * e / 10.0];
    for (k, (got, want)) in jac.iter().zip(want).enumerate() {
        assert!(
            (got / want - 1.0).abs() < 1e-7,
            "entry {k}: {got} vs {want}"
        );
    }
}

/// Σⱼ√(1 + (xⱼ − cⱼ)²) (pseudo-Huber), minimised at `c`: from more than one
/// unit away, Newton's undamped step overshoots (x − c ↦ −(x − c)³), so only the
/// damping (raised on a failed step, lowered again on success) reaches the minimiser.
fn pseudo_huber(c: [f64; 2]) -> Analytic<impl Fn(&[f64], &mut [f64]) -> f64 + Sync> {
    Analytic(2, move |p: &[f64], g: &mut [f64]| {
        let mut loss = 0.0;
        for j in 0..2 {
            let r = (1.0 + (p[j] - c[j]).powi(2)).sqrt();
            g[j] = (p[j] - c[j]) / r;
            loss += r;
        }
        loss
    })
}

#[test]
fn minimize_damps_newton_steps_that_overshoot() {
    let c = [3.0, -2.0];
    let star = minimize(&pseudo_huber(c), &[0.0, 0.0]).unwrap();
    assert!(distance(&star, &c) < 1e-9, "{star:?}");
    // The same far out: the damping must first grow by many decades, then shrink again.
    let c = [40.0, 25.0];
    let star = minimize(&pseudo_huber(c), &[0.0, 0.0]).unwrap();
    assert!(distance(&star, &c) < 1e-9, "{star:?}");
}

/// e⁻ˣ has no minimiser: Newton walks off by one unit a step while the gradient
/// vanishes. The error says so, and the walk is not taken for a minimiser even though the
/// gradient drops below the tolerance (its Newton step stays 1, not tiny).
#[test]
fn minimize_refuses_a_loss_that_only_vanishes_at_infinity() {
    let model = Analytic(1, |p: &[f64], g: &mut [f64]| {
        g[0] = -(-p[0]).exp();
        (-p[0]).exp()
    });
    let err = minimize(&model, &[0.0]).unwrap_err().to_string();
    assert!(
        err.contains("its gradient vanishes only as the parameters grow"),
        "{err}"
    );
}

/// A loss that falls linearly forever has no curvature to stop the damped Newton step
/// −g/μ, which grows as the damping μ shrinks after each success: it is refused
/// once ‖Φ‖ passes 10⁸, within a few steps, not after 500 (each
/// costs a Jacobian over the data).
#[test]
fn minimize_refuses_a_loss_without_curvature_promptly() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = AtomicUsize::new(0);
    let linear = Analytic(1, |p: &[f64], g: &mut [f64]| {
        calls.fetch_add(1, Ordering::Relaxed);
        g[0] = -1.0;
        -p[0]
    });
    let err = minimize(&linear, &[0.0]).unwrap_err().to_string();
    assert!(err.contains("the loss has no finite minimiser"), "{err}");
    let calls = calls.into_inner();
    assert!(calls < 50, "{calls} gradient evaluations");
}

/// The audit refuses lr = 0 for what it is, not by some later failure.
#[test]
fn zero_lr_is_refused_by_name() {
    let m = points("0\n3\n");
    for spec in ["sgd:lr=0", "sgd:lr=0,momentum=0.9"] {
        let err = audit(&m, &[spec.parse().unwrap()], &SimulationOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lr must be > 0"), "{spec}: {err}");
    }
}

/// τ and the batch-means SE in the small cases worked by hand: four values (one per
/// batch; τ = 1.5 from ρ₁ = 1/4), a constant series (τ = 1, SE 0), and an alternating one
/// (anticorrelated: τ floored at 1/n).
#[test]
fn batch_means_and_autocorrelation_by_hand() {
    let mut bm = BatchMeans::new(1, 4);
    for x in [1.0, 2.0, 3.0, 4.0] {
        bm.push(&[x]);
    }
    assert_eq!(integrated_autocorrelation_time(&[1.0, 2.0, 3.0, 4.0]), 1.5);
    let (mean, se) = bm.finish();
    assert_eq!(mean, [2.5]);
    // Sample variance 5/3, τ = 1.5, 4 batches: SE² = (5/3)(1.5)/4 = 0.625.
    assert!((se[0] - 0.625f64.sqrt()).abs() < 1e-15, "{se:?}");
    assert_eq!(integrated_autocorrelation_time(&[7.0; 10]), 1.0);
    let mut bm = BatchMeans::new(2, 6);
    for _ in 0..6 {
        bm.push(&[7.0, -1.0]);
    }
    assert_eq!(bm.finish(), (vec![7.0, -1.0], vec![0.0, 0.0]));
    let alternating: Vec<f64> = (0..10)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    assert_eq!(integrated_autocorrelation_time(&alternating), 0.1);
}

/// For a stateless rule there is no state to average over: with at most 64 examples the
/// simulated drift is the exact expected update, every sample alike (SE 0 up to rounding). With more,
/// one drawn example per sample: unbiased, with a positive SE.
#[test]
fn the_simulated_drift_of_a_stateless_rule_is_the_exact_one() {
    let options = SimulationOptions {
        burn_in: 100,
        steps: 2_000,
        seed: 5,
    };
    let spec: OptimizerSpec = "normsgd:lr=0.1,eps=1".parse().unwrap();
    let m = points("0\n0\n3\n");
    let (exact, _) = expected_update(m.model(), &spec, &[1.0]).unwrap();
    assert!(exact[0] < -0.1, "{exact:?}");
    let (drift, se) = stationary_drift(m.model(), &spec, &[1.0], &options).unwrap();
    assert!(
        (drift[0] - exact[0]).abs() < 1e-12,
        "{drift:?} vs {exact:?}"
    );
    assert!(se[0] < 1e-12, "{se:?}");
    let many: String = (0..65).map(|i| format!("{}\n", (i % 3) as f64)).collect();
    let m = points(&many);
    let star = m.minimizer().unwrap();
    let (exact, _) = expected_update(m.model(), &spec, &star).unwrap();
    let (drift, se) = stationary_drift(m.model(), &spec, &star, &options).unwrap();
    assert!(se[0] > 1e-3, "{se:?}");
    assert!(
        (drift[0] - exact[0]).abs() < 4.5 * se[0],
        "{drift:?} vs {exact:?} ± {se:?}"
    );
}

/// SGD with momentum μ held at the minimiser of points {0, 0, 3}: the drift sample is
/// −μbₜ with bₜ = μbₜ₋₁ + gₜ, an AR(1) of innovation variance σ² = 2, so the
/// SE of its mean over N samples is μσ/((1 − μ)√N).
#[test]
fn the_drift_standard_error_of_momentum_is_the_exact_asymptotic_one() {
    let options = SimulationOptions {
        burn_in: 1_000,
        steps: 200_000,
        seed: 2,
    };
    let spec: OptimizerSpec = "sgd:lr=0.1,momentum=0.5".parse().unwrap();
    let m = points("0\n0\n3\n");
    let (drift, se) = stationary_drift(m.model(), &spec, &[1.0], &options).unwrap();
    let exact = 0.5 * 2f64.sqrt() / (0.5 * (options.steps as f64).sqrt());
    assert!((se[0] / exact - 1.0).abs() < 0.15, "{} vs {exact}", se[0]);
    assert!(drift[0].abs() < 4.5 * exact, "{drift:?}");
}

/// Newton on the expected update backtracks when the full step overshoots (normsgd with
/// a small ε saturates like a sign, so its Newton step from the mean lands far beyond the
/// root), and reports convergence against a tolerance that scales with the step size.
#[test]
fn fixed_point_backtracks_and_reports_convergence() {
    let spec: OptimizerSpec = "normsgd:lr=0.1,eps=0.01".parse().unwrap();
    let m = points("0\n0\n3\n");
    let fp = fixed_point(m.model(), &spec, &[1.0]).unwrap();
    assert!(fp.converged && fp.residual <= 1e-12, "{fp:?}");
    assert!(fp.point[0] > 0.0 && fp.point[0] < 0.2, "{fp:?}");
    let (f, _) = expected_update(m.model(), &spec, &fp.point).unwrap();
    assert_eq!(f[0].abs(), fp.residual);
    // Steps of ~10⁶: converged means a residual within 10⁻¹² of that, not of 1.
    let m = points("1e6\n2e6\n4e6\n");
    let spec: OptimizerSpec = "sgd:lr=0.1".parse().unwrap();
    let star = m.minimizer().unwrap();
    let fp = fixed_point(m.model(), &spec, &star).unwrap();
    assert!(fp.converged && fp.residual <= 1e-6, "{fp:?}");
    let a = audit(&m, &[spec], &SimulationOptions::default()).unwrap();
    assert!(a.optimizers[0].consistent, "{:?}", a.optimizers[0]);
}

/// A stateful audit's parts are the measurements they are documented to be: the drift
/// and fixed point of `stationary_drift` and `simulated_fixed_point`, the half-rate run with
/// twice the burn-in and steps on the next seed, and the extrapolation 2Φ̄\_(η/2) − Φ̄\_η.
#[test]
fn a_stateful_audit_is_made_of_its_documented_parts() {
    let m = points("0\n0\n3\n");
    let spec: OptimizerSpec = "sgd:lr=0.05,momentum=0.5".parse().unwrap();
    let options = SimulationOptions {
        burn_in: 300,
        steps: 3_000,
        seed: 9,
    };
    let a = audit(&m, std::slice::from_ref(&spec), &options).unwrap();
    let o = &a.optimizers[0];
    let star = [1.0];
    let (drift, drift_se) = stationary_drift(m.model(), &spec, &star, &options).unwrap();
    let (fp, se) = simulated_fixed_point(m.model(), &spec, &star, 1.0, &options).unwrap();
    let half = SimulationOptions {
        burn_in: 600,
        steps: 6_000,
        seed: 10,
    };
    let (fp_half, _) = simulated_fixed_point(m.model(), &spec, &star, 0.5, &half).unwrap();
    assert_eq!(o.drift, drift);
    assert_eq!(o.drift_stderr.as_ref(), Some(&drift_se));
    assert_eq!(o.fixed_point, fp);
    assert_eq!(o.stderr.as_ref(), Some(&se));
    assert_eq!(o.fixed_point_half_lr.as_ref(), Some(&fp_half));
    assert_eq!(o.extrapolated, Some(vec![2.0 * fp_half[0] - fp[0]]));
    assert_eq!(o.fixed_point_distance, (fp[0] - 1.0).abs());
    assert_eq!(o.drift_norm, drift[0].abs());
}

/// Consistency of a stateful rule: RMSprop with a short memory divides each example's
/// gradient by a root mean square that includes it, so the large gradient is damped more
/// and the drift at the minimiser is far outside its error bars; SGD momentum where every
/// example's gradient is exactly 0 has drift 0 with SE 0, and is consistent.
#[test]
fn stateful_consistency_by_the_error_bars() {
    let options = SimulationOptions {
        burn_in: 500,
        steps: 5_000,
        seed: 4,
    };
    let m = points("0\n0\n3\n");
    let spec: OptimizerSpec = "rmsprop:lr=0.01,alpha=0.5".parse().unwrap();
    let a = audit(&m, &[spec], &options).unwrap();
    let o = &a.optimizers[0];
    assert!(!o.consistent && o.drift[0] < -0.05, "{o:?}");
    let m = points("5\n5\n");
    let spec: OptimizerSpec = "sgd:lr=0.1,momentum=0.9".parse().unwrap();
    let a = audit(&m, &[spec], &options).unwrap();
    let o = &a.optimizers[0];
    assert_eq!(
        (o.drift_norm, o.drift_stderr.as_deref()),
        (0.0, Some(&[0.0][..]))
    );
    assert!(o.consistent, "{o:?}");
}

/// The audit takes up to [`MAX_AUDIT_PARAMS`] parameters, inclusive.
#[test]
fn the_parameter_limit_is_inclusive() {
    let row = |v: f64, d: usize| vec![format!("{v}"); d].join(",");
    for (d, ok) in [(MAX_AUDIT_PARAMS, true), (MAX_AUDIT_PARAMS + 1, false)] {
        let m = points(&format!("{}\n{}\n", row(0.0, d), row(2.0, d)));
        let r = audit(
            &m,
            &["sgd:lr=0.1".parse().unwrap()],
            &SimulationOptions::default(),
        );
        match r {
            Ok(a) => {
                assert!(ok, "{d} parameters accepted");
                assert_eq!(a.minimizer, vec![1.0; d]);
            }
            Err(e) => {
                assert!(!ok, "{d}: {e}");
                assert!(e.to_string().contains("accepts at most 1024"), "{e}");
            }
        }
    }
}

/// 1 − 1/(1 + x²): minimum 0 at 0, flat far out (the loss rises to 1 while the gradient
/// falls to 0). From x = 2 the curvature is negative, so the undamped Newton step points
/// uphill to where the gradient is smaller: it must be refused for raising the loss, and
/// the damping raised until the step goes downhill.
#[test]
fn minimize_refuses_steps_that_raise_the_loss_however_flat_they_land() {
    let model = Analytic(1, |p: &[f64], g: &mut [f64]| {
        let q = 1.0 + p[0] * p[0];
        g[0] = 2.0 * p[0] / (q * q);
        1.0 - 1.0 / q
    });
    let star = minimize(&model, &[2.0]).unwrap();
    assert!(star[0].abs() < 1e-9, "{star:?}");
}

/// The damping grows and shrinks geometrically, so it adapts to the loss's scale: the
/// pseudo-Huber loss times 10⁸ (curvature 10⁸ at the minimiser) takes as few steps as
/// the loss itself, not a million.
#[test]
fn minimize_damping_adapts_to_the_loss_scale() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = AtomicUsize::new(0);
    let inner = pseudo_huber([3.0, -2.0]);
    let scaled = Analytic(2, |p: &[f64], g: &mut [f64]| {
        calls.fetch_add(1, Ordering::Relaxed);
        let l = (inner.1)(p, g);
        g.iter_mut().for_each(|v| *v *= 1e8);
        l * 1e8
    });
    let star = minimize(&scaled, &[0.0, 0.0]).unwrap();
    assert!(distance(&star, &[3.0, -2.0]) < 1e-9, "{star:?}");
    let calls = calls.into_inner();
    assert!(calls < 1_000, "{calls} gradient evaluations");
}

/// A gradient that no step can follow (the loss is constant, the gradient is not: a
/// model with a wrong gradient) makes every trial fail; the damping then grows past
/// 10¹² and the minimiser stops with an error instead of searching forever.
#[test]
fn minimize_stops_when_no_step_can_lower_the_loss() {
    let broken = Analytic(1, |_: &[f64], g: &mut [f64]| {
        g[0] = 1.0;
        0.0
    });
    let err = minimize(&broken, &[0.0]).unwrap_err().to_string();
    assert!(
        err.contains("minimisation stalled at gradient norm 1.000e0"),
        "{err}"
    );
}

/// The step per unit learning rate of a rule linear in η is taken at rate 1 (`lr_scale` =
/// 1/η), so the exact and the simulated drift of such rules are the same at η = 10⁻²⁰⁰ as at η = 0.1
/// (dividing a step taken at η by η would underflow to 0).
#[test]
fn drifts_are_measured_at_unit_rate_whatever_the_learning_rate() {
    let m = points("0\n0\n3\n");
    let options = SimulationOptions {
        burn_in: 100,
        steps: 2_000,
        seed: 6,
    };
    for (rule, stateful) in [("normsgd:eps=1", false), ("sgd:momentum=0.5", true)] {
        let at = |lr: &str| -> Vec<f64> {
            let spec: OptimizerSpec = format!("{rule},lr={lr}").parse().unwrap();
            if stateful {
                stationary_drift(m.model(), &spec, &[1.0], &options)
                    .unwrap()
                    .0
            } else {
                expected_update(m.model(), &spec, &[1.0]).unwrap().0
            }
        };
        let (usual, tiny) = (at("0.1"), at("1e-200"));
        assert!(usual[0].abs() > 1e-3, "{rule}: {usual:?}");
        assert!(
            (tiny[0] - usual[0]).abs() < 1e-12,
            "{rule}: {tiny:?} vs {usual:?}"
        );
    }
}

/// The floor is 10⁻¹² of the largest per-example gradient component, over the first
/// 1,000 examples only, and positive when every gradient is 0.
#[test]
fn the_rounding_floor_by_hand() {
    let m = points("0\n0\n3\n");
    assert_eq!(rounding_floor(m.model(), &[1.0]), 2e-12);
    let mut many: String = (0..1000).map(|_| "1\n").collect();
    many.push_str("1000\n");
    let m = points(&many);
    assert_eq!(rounding_floor(m.model(), &[2.0]), 1e-12);
    let m = points("5\n5\n");
    assert_eq!(rounding_floor(m.model(), &[5.0]), 1e-12 * f64::MIN_POSITIVE);
}

/// With SGD at lr = 1 on points every iterate is the example just drawn, so the
/// simulated fixed point is the mean of the examples drawn after burn-in, drawn by
/// `chain_rng(seed, 1)` (steps = 2 × 1,024: every batch is full).
#[test]
fn the_simulation_averages_the_iterates_after_burn_in() {
    let m = points("0\n1\n10\n100\n");
    let options = SimulationOptions {
        burn_in: 7,
        steps: 2048,
        seed: 11,
    };
    let spec: OptimizerSpec = "sgd:lr=1".parse().unwrap();
    let (fp, _) = simulated_fixed_point(m.model(), &spec, &[0.5], 1.0, &options).unwrap();
    let mut rng = chain_rng(options.seed, 1);
    let xs = [0.0, 1.0, 10.0, 100.0];
    let drawn: Vec<f64> = (0..options.burn_in + options.steps)
        .map(|_| xs[rng.random_range(0..4)])
        .collect();
    let want = drawn[options.burn_in..].iter().sum::<f64>() / options.steps as f64;
    assert!((fp[0] - want).abs() < 1e-12, "{fp:?} vs {want}");
}

/// Prodigy audited at Φ* starts there, so its estimate of the distance stays d₀ and its
/// averages (which its reference freezes at lr 0) advance at the smallest normal lr: its
/// drift is Adam's (stationary, so bias correction is 1) times d₀, with a standard error
/// (a state frozen at lr 0 would give the same step every time, and a standard error of 0).
#[test]
fn prodigy_at_the_minimiser_drifts_as_adam_scaled_by_its_initial_estimate() {
    // A burn-in long enough for Adam's bias correction 1 − β₂ᵗ to reach 1.
    let options = SimulationOptions {
        burn_in: 40_000,
        steps: 4_000,
        seed: 9,
    };
    let m = points("0\n0\n3\n");
    let drift =
        |spec: &str| stationary_drift(m.model(), &spec.parse().unwrap(), &[1.0], &options).unwrap();
    let (adam, adam_se) = drift("adam:lr=0.01");
    let (prodigy, prodigy_se) = drift("prodigy:lr=0.01,d0=0.001");
    assert!(prodigy_se[0] > 0.0);
    assert!(
        (prodigy[0] - 1e-3 * adam[0]).abs() <= 1e-9 * adam[0].abs(),
        "{prodigy:?} {adam:?}"
    );
    assert!((prodigy_se[0] - 1e-3 * adam_se[0]).abs() <= 1e-6 * adam_se[0]);
}

/// A rule nonlinear in η is probed at its own η. Madam's step at Φ* = 1 on (0, 0, 3) is
/// Φ·(exp(−ηĝ) − 1) per example: per unit η, −E\[ĝ\] + ½ηE\[ĝ²\] − ⅙η²E\[ĝ³\], with
/// −E\[ĝ\] = ½(1 − β)E\[g³\]/E\[g²\]^{3/2} (problem 6c's bias; v contains the current g²) and
/// E\[ĝ²\] ≈ 1 − ½(1 − β)(E\[g⁴\]/E\[g²\]² − 1) (claim 10i.madam). Probed at η = 1 instead, the step of the example
/// at 3 is clamped at 3·RMS(Φ₀) and the drift reads 0.329 at every η.
#[test]
fn a_rule_nonlinear_in_the_learning_rate_is_probed_at_its_own() {
    let m = points("0\n0\n3\n");
    let options = SimulationOptions {
        burn_in: 20_000,
        steps: 200_000,
        seed: 4,
    };
    let skew = -2.0 / 2f64.powf(1.5);
    let beta = sgdlab_optim::madam::MADAM_BETA;
    for lr in [0.01, 0.002] {
        let spec: OptimizerSpec = format!("madam:lr={lr}").parse().unwrap();
        let (drift, se) = stationary_drift(m.model(), &spec, &[1.0], &options).unwrap();
        let predicted = 0.5 * (1.0 - beta) * skew + 0.5 * lr * (1.0 - (1.0 - beta) * 0.25)
            - lr * lr * skew / 6.0;
        assert!(
            (drift[0] - predicted).abs() < 4.0 * se[0] + 1e-6,
            "lr {lr}: {} ± {} against {predicted}",
            drift[0],
            se[0]
        );
    }
}

/// One of the library's rules driven as a foreign [`Stepper`] gives the native audit's
/// fixed points bit for bit (the same example streams and batch means), and its drift to
/// rounding (probed at η, where the native audit of a rule linear in η probes at 1).
/// RMSProp at α = 0.99 on (0, 0, 3) has a drift well away from 0,
/// ½(1 − α)E[g³]/E[g²]^{3/2} ≈ −0.0035.
#[test]
fn a_library_rule_driven_as_a_stepper_audits_as_itself() {
    let m = points("0\n0\n3\n");
    let options = SimulationOptions {
        burn_in: 2_000,
        steps: 100_000,
        seed: 3,
    };
    let spec: OptimizerSpec = "rmsprop:lr=0.01,alpha=0.99".parse().unwrap();
    let native = audit_optimizer(m.model(), &spec, &[1.0], &options).unwrap();
    let mut make = || -> Result<Box<dyn Stepper>> {
        Ok(Box::new(OptimizerStepper::new(Optimizer::new(
            spec.clone(),
        )?)))
    };
    let foreign = audit_stepper(m.model(), "mine", &mut make, &[1.0], &options).unwrap();
    assert_eq!(foreign.optimizer, "mine");
    assert_eq!(foreign.fixed_point, native.fixed_point);
    assert_eq!(foreign.fixed_point_half_lr, native.fixed_point_half_lr);
    assert_eq!(foreign.stderr, native.stderr);
    let (a, b) = (foreign.drift[0], native.drift[0]);
    let (sa, sb) = (
        foreign.drift_stderr.as_ref().unwrap()[0],
        native.drift_stderr.as_ref().unwrap()[0],
    );
    assert!(b < -0.002 && a < -0.002, "{a} {b}");
    assert!(
        (a - b).abs() < 1e-12 * b.abs(),
        "{a} ± {sa} against {b} ± {sb}"
    );
    assert!((sa - sb).abs() < 1e-9 * sb, "{sa} against {sb}");
    assert!(
        !foreign.consistent && !native.consistent,
        "{a} ± {sa}, {b} ± {sb}"
    );
}

/// A stepper whose learning rate is not positive, or whose step is not finite, is an error
/// naming the problem.
#[test]
fn a_bad_stepper_is_an_error() {
    struct Bad(f64, f64);
    impl Stepper for Bad {
        fn lr(&self) -> f64 {
            self.0
        }
        fn step(&mut self, p: &mut [f64], _: &[f64], _: f64, scale: f64) -> Result<()> {
            p[0] += self.1 * scale;
            Ok(())
        }
        fn save(&mut self) -> Result<()> {
            Ok(())
        }
        fn restore(&mut self) -> Result<()> {
            Ok(())
        }
    }
    let m = points("0\n0\n3\n");
    let options = SimulationOptions {
        burn_in: 10,
        steps: 100,
        seed: 3,
    };
    let err = stepper_drift(m.model(), &mut Bad(0.0, 1.0), &[1.0], &options).unwrap_err();
    assert!(err.to_string().contains("lr must be > 0"), "{err}");
    let err = stepper_drift(m.model(), &mut Bad(0.1, f64::NAN), &[1.0], &options).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    let (drift, se) = stepper_drift(m.model(), &mut Bad(0.5, 1.0), &[1.0], &options).unwrap();
    assert_eq!((drift[0], se[0]), (2.0, 0.0));
}

/// A stepper is handed each example's loss: the loss-proportional rule driven as a stepper
/// drifts as its exact expected update (problem 7b's two examples, where the drift is not 0).
#[test]
fn a_stepper_is_handed_the_loss() {
    let model = LinReg::new(parse_csv("1,1\n2,0\n", true).unwrap(), false).unwrap();
    let spec: OptimizerSpec = "lossprop:lr=0.01".parse().unwrap();
    let star = model.least_squares().unwrap();
    let (exact, _) = expected_update(&model, &spec, &star).unwrap();
    let options = SimulationOptions {
        burn_in: 10,
        steps: 200,
        seed: 1,
    };
    let mut stepper = OptimizerStepper::new(Optimizer::new(spec).unwrap());
    let (drift, _) = stepper_drift(&model, &mut stepper, &star, &options).unwrap();
    assert!(exact[0].abs() > 1e-3, "{exact:?}");
    assert!(
        (drift[0] - exact[0]).abs() < 1e-12,
        "{drift:?} against {exact:?}"
    );
}
