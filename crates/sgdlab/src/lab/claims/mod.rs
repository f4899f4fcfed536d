//! The claims of the problem set, each checked by an independent measurement.
//!
//! A [`Claim`] pairs the value the theory predicts (`expected`) with a value obtained by
//! *running* the recurrence, optimizer or model (`measured`), never by evaluating the formula a
//! second time. Two kinds of check:
//!
//! * **Monte Carlo** — `measured` carries a standard error; the claim passes when
//!   |z| = |measured − expected|/SE < 4 ([`Z_PASS`]).
//! * **Identity** — a deterministic quantity (often a worst-case relative residual over
//!   adversarial inputs); the claim passes when |measured − expected| ≤
//!   `tolerance`.
//!
//! Where a plausible wrong answer exists the claim also carries [`Rejection`]s: the measurement
//! must lie at least [`Z_REJECT`] standard errors (or tolerances) away from each wrong value,
//! which shows that the measurement is sharp enough to tell the answers apart. For an identity
//! that is a statement about the tolerance (a loose one fails it); where the wrong value is
//! itself *measured* by running the alternative (5a's unmapped rate, 5a.unit's nats loss,
//! 11a's f64 EMA), it is a second measurement.
//!
//! Every problem draws its random numbers from a seed derived from the run's seed and the
//! problem's own tag, so running one problem alone gives the same numbers as running all.

mod p1;
pub(crate) mod p10;
pub(crate) mod p11;
pub(crate) mod p12;
pub(crate) mod p13;
mod p2;
mod p3;
mod p4;
mod p5;
pub(crate) mod p6;
mod p7;
mod real;
mod sequences;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lab::montecarlo::{Measurement, MonteCarlo};
use crate::optim::{Optimizer, StepInfo, Tensor};
use crate::{Error, Result};

/// A Monte Carlo claim passes when |z| is below this.
pub const Z_PASS: f64 = 4.0;
/// A wrong answer counts as rejected when the measurement lies at least this many standard
/// errors (or tolerances, for identities) away from it.
pub const Z_REJECT: f64 = 10.0;

/// How a claim is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Independent seeded replications; `measured` has a standard error.
    MonteCarlo,
    /// A deterministic computation compared to a tolerance.
    Identity,
    /// A deterministic computation that must not exceed `expected` (an upper bound), by more
    /// than the rounding `tolerance`.
    AtMost,
    /// A deterministic computation that must reach `expected` (a lower bound).
    AtLeast,
}

/// A plausible wrong answer and how decisively the measurement rules it out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    /// What the wrong answer is, e.g. `σ²/N`.
    pub label: String,
    /// Its value for the claim's parameters.
    pub value: f64,
    /// Distance of the measurement from it, in standard errors (Monte Carlo) or tolerances
    /// (identity).
    pub z: f64,
    /// Whether `|z| >= Z_REJECT`.
    pub rejected: bool,
}

/// One checked claim of the problem set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    /// Identifier: the sub-problem (`"2a"`), with a suffix for further checks (`"2a.t"`).
    pub id: String,
    /// The problem number (1–7).
    pub problem: u8,
    /// What is claimed, in words and symbols.
    pub title: String,
    /// How it is measured.
    pub method: Method,
    /// The parameters a reader needs to recompute `expected` (and the sample sizes).
    pub params: BTreeMap<String, f64>,
    /// The predicted value.
    pub expected: f64,
    /// The measured value.
    pub measured: f64,
    /// Standard error of `measured` (Monte Carlo only).
    pub stderr: Option<f64>,
    /// The largest |measured − expected| that passes: 4 SE for
    /// Monte Carlo claims, the numerical tolerance for identities.
    pub tolerance: f64,
    /// z-score against `expected` (Monte Carlo only).
    pub z: Option<f64>,
    /// Wrong answers the measurement must reject.
    pub rejects: Vec<Rejection>,
    /// The specs of the library optimizers whose steps the measurement runs, usually one
    /// (empty when it runs none: an identity of the averages, or of a formula's premises).
    pub optimizer: Vec<String>,
    /// Whether the claim holds: within tolerance, and every wrong answer rejected.
    pub passed: bool,
}

impl Claim {
    fn new(
        id: &str,
        title: &str,
        params: &[(&str, f64)],
        expected: f64,
        measured: f64,
        stderr: Option<f64>,
        tolerance: f64,
    ) -> Self {
        let method = if stderr.is_some() {
            Method::MonteCarlo
        } else {
            Method::Identity
        };
        let within = (measured - expected).abs() <= tolerance;
        let z = stderr.map(|se| (measured - expected) / se);
        let digits: String = id.chars().take_while(char::is_ascii_digit).collect();
        let problem = digits.parse().unwrap_or(0);
        Self {
            id: id.to_string(),
            problem,
            title: title.to_string(),
            method,
            params: params.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            expected,
            measured,
            stderr,
            tolerance,
            z,
            rejects: Vec::new(),
            optimizer: Vec::new(),
            passed: within && measured.is_finite(),
        }
    }

    /// A Monte Carlo claim: passes when |z| < 4.
    pub(crate) fn monte_carlo(
        id: &str,
        title: &str,
        params: &[(&str, f64)],
        expected: f64,
        measured: Measurement,
    ) -> Self {
        Self::new(
            id,
            title,
            params,
            expected,
            measured.value,
            Some(measured.stderr),
            Z_PASS * measured.stderr,
        )
    }

    /// A deterministic claim: passes when |measured − expected| ≤ `tolerance`.
    pub(crate) fn identity(
        id: &str,
        title: &str,
        params: &[(&str, f64)],
        expected: f64,
        measured: f64,
        tolerance: f64,
    ) -> Self {
        Self::new(id, title, params, expected, measured, None, tolerance)
    }

    /// A bound: passes when `measured` ≤ `bound` + `tolerance` (`Method::AtMost`).
    pub(crate) fn at_most(
        id: &str,
        title: &str,
        params: &[(&str, f64)],
        bound: f64,
        measured: f64,
        tolerance: f64,
    ) -> Self {
        let mut claim = Self::new(id, title, params, bound, measured, None, tolerance);
        claim.method = Method::AtMost;
        claim.passed = measured <= bound + tolerance;
        claim
    }

    /// A bound: passes when `measured` ≥ `bound` − `tolerance` (`Method::AtLeast`).
    pub(crate) fn at_least(
        id: &str,
        title: &str,
        params: &[(&str, f64)],
        bound: f64,
        measured: f64,
        tolerance: f64,
    ) -> Self {
        let mut claim = Self::new(id, title, params, bound, measured, None, tolerance);
        claim.method = Method::AtLeast;
        claim.passed = measured >= bound - tolerance;
        claim
    }

    /// Names a library optimizer (its spec) whose steps the measurement runs.
    pub(crate) fn optimizer(mut self, spec: impl std::fmt::Display) -> Self {
        self.optimizer.push(spec.to_string());
        self
    }

    /// Adds a wrong answer that the measurement must reject.
    pub(crate) fn reject(mut self, label: &str, value: f64) -> Self {
        let scale = self.stderr.unwrap_or(self.tolerance);
        let z = (self.measured - value) / scale;
        let rejected = z.abs() >= Z_REJECT;
        self.passed &= rejected;
        self.rejects.push(Rejection {
            label: label.to_string(),
            value,
            z,
            rejected,
        });
        self
    }
}

/// Settings shared by all claims of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Seed of every random draw.
    pub seed: u64,
    /// Fewer samples (wider confidence intervals), for CI.
    pub quick: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            seed: 20_231,
            quick: false,
        }
    }
}

impl VerifyOptions {
    /// A Monte Carlo run for the claim group `tag`: `chains` replications (a quarter of them
    /// with `quick`), seeded from the run's seed and the tag.
    pub(crate) fn monte_carlo(&self, tag: &str, chains: usize) -> Result<MonteCarlo> {
        let chains = if self.quick { chains / 4 } else { chains };
        MonteCarlo::new(self.derive_seed(tag), chains)
    }

    /// A seed for the claim group `tag`, independent of which other groups run.
    pub(crate) fn derive_seed(&self, tag: &str) -> u64 {
        // FNV-1a over the tag, mixed with the run's seed: distinct tags give unrelated
        // ChaCha keys because `seed_from_u64` expands the seed through PCG.
        tag.bytes().fold(0xcbf2_9ce4_8422_2325 ^ self.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// Runs `spec` on one tensor of `init`, feeding `grad(t, params, out)` for `steps` steps;
/// calls `after(t, optimizer, params)` after each.
pub(crate) fn drive(
    spec: &str,
    init: Vec<f64>,
    steps: usize,
    mut grad: impl FnMut(usize, &[f64], &mut [f64]),
    mut after: impl FnMut(usize, &Optimizer<f64>, &[f64]) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut opt = Optimizer::<f64>::from_spec(spec)?;
    let n = init.len();
    let mut params = [Tensor::vector("p", init)];
    let mut grads = [Tensor::vector("p", vec![0.0; n])];
    for t in 1..=steps {
        grad(t, params[0].data(), grads[0].data_mut());
        opt.step(&mut params, &grads, &StepInfo::default())?;
        after(t, &opt, params[0].data())?;
    }
    Ok(params[0].data().to_vec())
}

/// The problems whose claims are implemented, in order; 10 to 13 are sections beyond the
/// problem set (the newer optimizers; bfloat16 state; batch-size scaling rules; 8-bit state).
pub const PROBLEMS: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13];

/// The title of problem (or section) `problem`.
pub fn title(problem: u8) -> &'static str {
    match problem {
        1 => "Two running averages",
        2 => "Variance of an exponential moving average",
        3 => "Momentum as an exponential moving average",
        4 => "Bias correction with rate 1/min(t, N)",
        5 | 8 => "Learning rate against the scale of the loss",
        6 => "Per-example adaptive SGD",
        7 | 9 => "Multiplicative and loss-proportional updates",
        10 => {
            "Beyond the problem set: Schedule-Free, AdEMAMix, Muon, Adam's counterexample and cautious masking"
        }
        11 => "Beyond the problem set: an EMA in bfloat16, rounded to nearest or stochastically",
        12 => "Beyond the problem set: batch-size scaling rules for SGD and Adam",
        13 => "Beyond the problem set: 8-bit blockwise state, rounded to nearest or stochastically",
        _ => "(no such problem)",
    }
}

/// Maps a problem number of the set to the problem whose claims check it (8 repeats 5 and 9
/// repeats 7) and rejects numbers that are not implemented.
pub fn canonical_problem(problem: u8) -> Result<u8> {
    let canonical = match problem {
        8 => 5,
        9 => 7,
        p => p,
    };
    if PROBLEMS.contains(&canonical) {
        Ok(canonical)
    } else if (1..=13).contains(&problem) {
        Err(Error::Unsupported(format!(
            "problem {problem}: its claims are not implemented yet (implemented: {})",
            list(PROBLEMS)
        )))
    } else {
        Err(Error::Unsupported(format!(
            "there is no problem {problem}: the problem set has problems 1-9, and 10 to 13 \
             are sections beyond it (implemented: {})",
            list(PROBLEMS)
        )))
    }
}

fn list(problems: &[u8]) -> String {
    problems
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outcome of a `verify` run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Every claim checked, in problem order.
    pub claims: Vec<Claim>,
    /// How many passed.
    pub passed: usize,
    /// How many failed.
    pub failed: usize,
}

/// Checks the claims of `problems` (all implemented problems when empty).
///
/// Problems are deduplicated and run in ascending order; 8 and 9 are aliases of 5 and 7.
pub fn verify(problems: &[u8], options: &VerifyOptions) -> Result<Report> {
    verify_with_progress(problems, options, |_, _, _| {})
}

/// [`verify`], calling `progress(done, total, problem)` before each problem is run (`done`
/// of the `total` selected problems are finished) and `progress(total, total, 0)` at the end,
/// so that a front end can show how far it is.
pub fn verify_with_progress(
    problems: &[u8],
    options: &VerifyOptions,
    mut progress: impl FnMut(usize, usize, u8),
) -> Result<Report> {
    let mut selected = problems
        .iter()
        .map(|&p| canonical_problem(p))
        .collect::<Result<Vec<_>>>()?;
    if selected.is_empty() {
        selected = PROBLEMS.to_vec();
    }
    selected.sort_unstable();
    selected.dedup();
    let mut claims = Vec::new();
    let total = selected.len();
    for (done, problem) in selected.into_iter().enumerate() {
        progress(done, total, problem);
        claims.extend(match problem {
            1 => p1::claims(options)?,
            2 => p2::claims(options)?,
            3 => p3::claims(options)?,
            4 => p4::claims(options)?,
            5 => p5::claims(options)?,
            6 => p6::claims(options)?,
            7 => p7::claims(options)?,
            10 => p10::claims(options)?,
            11 => p11::claims(options)?,
            12 => p12::claims(options)?,
            13 => p13::claims(options)?,
            other => unreachable!("canonical_problem admitted {other}"),
        });
    }
    progress(total, total, 0);
    let passed = claims.iter().filter(|c| c.passed).count();
    Ok(Report {
        failed: claims.len() - passed,
        passed,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_passes_and_fails_on_z() {
        let ok = Claim::monte_carlo("1a", "t", &[], 1.0, Measurement::new(1.03, 0.01));
        assert!(ok.passed);
        let bad = Claim::monte_carlo("1a", "t", &[], 1.0, Measurement::new(1.05, 0.01));
        assert!(!bad.passed);
        assert_eq!(bad.problem, 1);
    }

    #[test]
    fn a_wrong_answer_too_close_fails_the_claim() {
        let c = Claim::monte_carlo("2a", "t", &[], 1.0, Measurement::new(1.0, 0.01));
        assert!(c.clone().reject("far", 2.0).passed);
        assert!(!c.reject("near", 1.05).passed);
    }

    #[test]
    fn an_identity_too_loose_to_tell_a_wrong_answer_apart_fails() {
        let c = Claim::identity("3a", "t", &[], 15.0, 15.0, 1e-11);
        assert!(c.clone().reject("(N-1)·c", 13.5).passed);
        let loose = Claim::identity("3a", "t", &[], 15.0, 15.0, 0.5);
        assert!(loose.passed);
        assert!(!loose.reject("(N-1)·c", 13.5).passed);
    }

    #[test]
    fn identity_uses_tolerance() {
        assert!(Claim::identity("3a", "t", &[], 0.0, 1e-13, 1e-12).passed);
        assert!(!Claim::identity("3a", "t", &[], 0.0, 1e-11, 1e-12).passed);
        assert!(!Claim::identity("3a", "t", &[], 0.0, f64::NAN, 1e-12).passed);
    }

    #[test]
    fn every_problem_has_its_own_title_and_aliases_share_theirs() {
        let titles: Vec<&str> = PROBLEMS.iter().map(|&p| title(p)).collect();
        for t in &titles {
            assert!(t.len() > 10 && !t.starts_with('('), "{t}");
        }
        let mut distinct = titles.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), PROBLEMS.len());
        assert_eq!(title(8), title(5));
        assert_eq!(title(9), title(7));
        assert!(title(2).contains("Variance"));
        assert_eq!(title(14), "(no such problem)");
    }

    #[test]
    fn unknown_problems_are_errors() {
        let zero = canonical_problem(0).unwrap_err().to_string();
        assert!(
            zero.contains("there is no problem 0") && zero.contains("implemented: 1, 2, 3, 4, 5"),
            "{zero}"
        );
        assert!(canonical_problem(14).is_err());
        assert_eq!(canonical_problem(13).unwrap(), 13);
        assert_eq!(canonical_problem(12).unwrap(), 12);
        assert_eq!(canonical_problem(10).unwrap(), 10);
        assert_eq!(canonical_problem(11).unwrap(), 11);
        let c = Claim::identity("10d.uv", "t", &[], 0.0, 0.0, 1.0);
        assert_eq!(c.problem, 10);
        assert_eq!(canonical_problem(2).unwrap(), 2);
    }

    /// FNV-1a over the tag from the seed XOR the offset basis: values computed
    /// independently (Python, 64-bit wrap-around).
    #[test]
    fn derived_seeds_are_fnv1a() {
        let at = |seed| VerifyOptions { seed, quick: false };
        assert_eq!(at(0).derive_seed("p1"), 636_580_981_707_762_362);
        assert_eq!(at(20_231).derive_seed("p1"), 63_480_340_474_506_245);
        assert_eq!(at(7).derive_seed("p10.sf"), 1_288_710_438_256_980_210);
    }

    #[test]
    fn quick_runs_a_quarter_of_the_chains() {
        let full = VerifyOptions::default();
        let quick = VerifyOptions {
            quick: true,
            ..full
        };
        assert_eq!(full.monte_carlo("t", 4000).unwrap().chains(), 4000);
        assert_eq!(quick.monte_carlo("t", 4000).unwrap().chains(), 1000);
        assert_eq!(
            quick.monte_carlo("t", 4000).unwrap().seed(),
            full.derive_seed("t")
        );
    }

    #[test]
    fn derived_seeds_differ_by_tag_and_seed() {
        let a = VerifyOptions::default();
        let b = VerifyOptions { seed: 1, ..a };
        assert_ne!(a.derive_seed("p1"), a.derive_seed("p2"));
        assert_ne!(a.derive_seed("p1"), b.derive_seed("p1"));
    }
}
