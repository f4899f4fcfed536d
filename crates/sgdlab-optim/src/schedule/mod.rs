//! Learning-rate schedules: the factor sₜ by which step t (from 0) multiplies the
//! optimizer's `lr`, as a value attached to the optimizer
//! ([`Optimizer::set_schedule`](super::Optimizer::set_schedule)).
//!
//! A schedule's position is the optimizer's own step count, so it is saved with the
//! optimizer's state and a resumed run continues the exact sequence of learning rates of the
//! uninterrupted one — including inside a [`Schedule::Sequence`], whose bookkeeping PyTorch's
//! `SequentialLR` loses on reload.
//!
//! | schedule | sₜ | spec |
//! |---|---|---|
//! | [`Constant`](Schedule::Constant) | 1 | `constant` |
//! | [`Warmup`](Schedule::Warmup) | min(1, (t + 1)/S) | `warmup:S` |
//! | [`Linear`](Schedule::Linear) | a + (b − a) min(t, T)/T | `linear:A,B,T` |
//! | [`Cosine`](Schedule::Cosine) | m + (1 − m)½(1 + cos(π min(t, T)/T)) | `cosine[:T[,M]]` |
//! | warm-up then cosine ([`Schedule::warmup_cosine`]) | `warmup:W`, then `cosine:T,M` from W | `warmup-cosine:W[,T[,M]]` |
//! | [`StepDecay`](Schedule::StepDecay) | γ^(⌊t/E⌋) | `decay:E,γ` |
//! | [`Exponential`](Schedule::Exponential) | γᵗ | `exp:γ` |
//! | [`Wsd`](Schedule::Wsd) | warm-up (t + 1)/W, then 1 for S steps, then linear to m over D | `wsd:W,S,D[,M]` |
//! | [`Sequence`](Schedule::Sequence) | part k at t − tₖ for tₖ ≤ t < tₖ₊₁ | `seq[A;B;...]@t1,t2,...` |
//! | [`Product`](Schedule::Product) | ∏ₖs⁽ᵏ⁾ₜ | `prod[A;B;...]` |
//! | [`Custom`](Schedule::Custom) | any `Fn(u64) -> f64` | `custom:NAME` (not parsed back) |
//!
//! Lengths are whole steps. A training run (`train --schedule`, or any [`ScheduleSpec`]
//! resolved against a [`Horizon`]) also takes lengths in epochs (`3ep`) and `*`, the rest of
//! the run or of a `seq` part, which an omitted `T` of `cosine` and `warmup-cosine` means
//! too: `cosine` decays over the whole run, `wsd:100,*,200` holds the rate between its
//! warm-up and its last 200 steps ([`grammar`]).
//!
//! ```
//! use sgdlab_optim::schedule::Schedule;
//!
//! // 100 steps of linear warm-up, then a cosine decay over the next 900 (PyTorch's
//! // SequentialLR of LinearLR and CosineAnnealingLR with milestone 100).
//! let s: Schedule = "seq[warmup:100;cosine:900]@100".parse()?;
//! assert_eq!(s.factor(0), 0.01);
//! assert_eq!(s.factor(100), 1.0);
//! assert!((s.factor(550) - 0.5).abs() < 1e-15);
//! assert_eq!(s.to_string().parse::<Schedule>()?, s);
//! # Ok::<(), sgdlab_optim::Error>(())
//! ```

use std::f64::consts::PI;
use std::fmt;
use std::sync::Arc;

pub mod grammar;
pub use grammar::{Horizon, MAX_NESTING, ScheduleSpec};

use super::spec::SpecValue;
use crate::{Error, Result};

/// A learning-rate schedule (see the [module docs](self) for the formulas).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Schedule {
    /// sₜ = 1.
    #[default]
    Constant,
    /// sₜ = min(1, (t + 1)/S): linear warm-up over S ≥ 1 steps.
    Warmup {
        /// Warm-up steps.
        steps: u64,
    },
    /// sₜ = a + (b − a) min(t, T)/T (PyTorch's `LinearLR` with `start_factor` a,
    /// `end_factor` b, `total_iters` T).
    Linear {
        /// Factor at t = 0.
        from: f64,
        /// Factor from t = T on.
        to: f64,
        /// Steps T ≥ 1.
        steps: u64,
    },
    /// sₜ = m + (1 − m)½(1 + cos(π min(t, T)/T)) (PyTorch's
    /// `CosineAnnealingLR` with `eta_min` = mη).
    Cosine {
        /// Steps T ≥ 1 of the decay.
        steps: u64,
        /// Final factor m ∈ \[0, 1\].
        min: f64,
    },
    /// sₜ = γ^(⌊t/E⌋) (PyTorch's `StepLR`, counted in steps).
    StepDecay {
        /// Steps E ≥ 1 between decays.
        every: u64,
        /// Decay factor γ ∈ (0, 1\].
        gamma: f64,
    },
    /// sₜ = γᵗ (PyTorch's `ExponentialLR`, per step).
    Exponential {
        /// Decay factor γ ∈ (0, 1\].
        gamma: f64,
    },
    /// Warmup–stable–decay: (t + 1)/W for t < W, then 1 for S steps, then linear from 1
    /// to m over D steps, then m.
    Wsd {
        /// Warm-up steps W (0 for none).
        warmup: u64,
        /// Steps S at the full rate.
        stable: u64,
        /// Decay steps D ≥ 1.
        decay: u64,
        /// Final factor m ∈ \[0, 1\].
        min: f64,
    },
    /// Schedules one after another: part k runs from milestone tₖ (with t₀ = 0) and
    /// sees the step t − tₖ (PyTorch's `SequentialLR`).
    Sequence {
        /// The parts, one more than milestones.
        parts: Vec<Schedule>,
        /// Increasing steps at which the next part starts.
        milestones: Vec<u64>,
    },
    /// The product of the factors of several schedules (PyTorch's `ChainedScheduler` of
    /// multiplicative schedules).
    Product(Vec<Schedule>),
    /// Any function of the step. It is not saved with the optimizer: after loading, attach it
    /// again ([`Optimizer::set_schedule`](super::Optimizer::set_schedule)); until then a step
    /// is an error naming it.
    Custom {
        /// A name, saved in checkpoints and shown in errors.
        name: String,
        /// t ↦ sₜ (must be finite and ≥ 0).
        f: Arc<dyn Fn(u64) -> f64 + Send + Sync>,
    },
    /// A custom schedule read back from a checkpoint, waiting to be attached again.
    Detached {
        /// The custom schedule's name.
        name: String,
    },
}

impl Schedule {
    /// A [`Schedule::Custom`] from a closure.
    pub fn custom(name: impl Into<String>, f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule::Custom {
            name: name.into(),
            f: Arc::new(f),
        }
    }

    /// Linear warm-up over `warmup` steps, then a cosine decay to `min` over the next
    /// `decay` steps (optax's `warmup_cosine_decay_schedule`, as factors).
    pub fn warmup_cosine(warmup: u64, decay: u64, min: f64) -> Self {
        Schedule::Sequence {
            parts: vec![
                Schedule::Warmup { steps: warmup },
                Schedule::Cosine { steps: decay, min },
            ],
            milestones: vec![warmup],
        }
    }

    /// The factor sₜ at step `t` (the number of steps before this one).
    pub fn factor(&self, t: u64) -> f64 {
        match self {
            Schedule::Constant | Schedule::Detached { .. } => 1.0,
            Schedule::Warmup { steps } => (t.saturating_add(1) as f64 / *steps as f64).min(1.0),
            Schedule::Linear { from, to, steps } => {
                from + (to - from) * t.min(*steps) as f64 / *steps as f64
            }
            Schedule::Cosine { steps, min } => {
                let c = 0.5 * (1.0 + (PI * t.min(*steps) as f64 / *steps as f64).cos());
                if *min == 0.0 {
                    c
                } else {
                    min + (1.0 - min) * c
                }
            }
            Schedule::StepDecay { every, gamma } => {
                crate::math::powi(*gamma, (t / every).min(i32::MAX as u64) as i32)
            }
            Schedule::Exponential { gamma } => gamma.powf(t as f64),
            Schedule::Wsd {
                warmup,
                stable,
                decay,
                min,
            } => {
                let decay_start = warmup.saturating_add(*stable);
                if t < *warmup {
                    (t + 1) as f64 / *warmup as f64
                } else if t < decay_start {
                    1.0
                } else {
                    let into = (t - decay_start).min(*decay) as f64 / *decay as f64;
                    1.0 - (1.0 - min) * into
                }
            }
            Schedule::Sequence { parts, milestones } => {
                let k = milestones.iter().take_while(|&&m| t >= m).count();
                let start = if k == 0 { 0 } else { milestones[k - 1] };
                parts[k].factor(t - start)
            }
            Schedule::Product(parts) => parts.iter().map(|s| s.factor(t)).product(),
            Schedule::Custom { f, .. } => f(t),
        }
    }

    /// Checks the parameters (and every part of a composition).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::invalid("schedule", self, why));
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        match self {
            Schedule::Constant | Schedule::Custom { .. } | Schedule::Detached { .. } => Ok(()),
            Schedule::Warmup { steps } if *steps == 0 => bad("warm-up steps must be at least 1"),
            Schedule::Linear { from, to, steps }
                if *steps == 0
                    || !(from.is_finite() && to.is_finite() && *from >= 0.0 && *to >= 0.0) =>
            {
                bad("needs T >= 1 and finite factors >= 0")
            }
            Schedule::Cosine { steps, min } if *steps == 0 || !unit(*min) => {
                bad("needs T >= 1 and a final factor in [0, 1]")
            }
            Schedule::StepDecay { every, gamma }
                if *every == 0 || !(*gamma > 0.0 && *gamma <= 1.0) =>
            {
                bad("needs E >= 1 and 0 < γ <= 1")
            }
            Schedule::Exponential { gamma } if !(*gamma > 0.0 && *gamma <= 1.0) => {
                bad("needs 0 < γ <= 1")
            }
            Schedule::Wsd { decay, min, .. } if *decay == 0 || !unit(*min) => {
                bad("needs D >= 1 and a final factor in [0, 1]")
            }
            Schedule::Sequence { parts, milestones } => {
                if parts.len() != milestones.len() + 1
                    || milestones.windows(2).any(|w| w[0] >= w[1])
                {
                    return bad("a sequence needs one milestone fewer than parts, increasing");
                }
                parts.iter().try_for_each(Schedule::validate)
            }
            Schedule::Product(parts) => {
                if parts.is_empty() {
                    return bad("a product needs at least one schedule");
                }
                parts.iter().try_for_each(Schedule::validate)
            }
            // Every arm named: a variant added later must be decided on here.
            Schedule::Warmup { .. }
            | Schedule::Linear { .. }
            | Schedule::Cosine { .. }
            | Schedule::StepDecay { .. }
            | Schedule::Exponential { .. }
            | Schedule::Wsd { .. } => Ok(()),
        }
    }

    /// The name of a custom schedule that must be attached again, if any (a
    /// [`Schedule::Detached`] anywhere inside).
    pub fn detached(&self) -> Option<&str> {
        match self {
            Schedule::Detached { name } => Some(name),
            Schedule::Sequence { parts, .. } | Schedule::Product(parts) => {
                parts.iter().find_map(Schedule::detached)
            }
            _ => None,
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

/// Custom schedules compare by name.
impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |parts: &[Schedule]| {
            parts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";")
        };
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Warmup { steps } => write!(f, "warmup:{steps}"),
            Schedule::Linear { from, to, steps } => {
                write!(f, "linear:{},{},{steps}", from.show(), to.show())
            }
            Schedule::Cosine { steps, min } if *min == 0.0 => write!(f, "cosine:{steps}"),
            Schedule::Cosine { steps, min } => write!(f, "cosine:{steps},{}", min.show()),
            Schedule::StepDecay { every, gamma } => write!(f, "decay:{every},{}", gamma.show()),
            Schedule::Exponential { gamma } => write!(f, "exp:{}", gamma.show()),
            Schedule::Wsd {
                warmup,
                stable,
                decay,
                min,
            } => write!(f, "wsd:{warmup},{stable},{decay},{}", min.show()),
            Schedule::Sequence { parts, milestones } => {
                let m: Vec<String> = milestones.iter().map(u64::to_string).collect();
                write!(f, "seq[{}]@{}", join(parts), m.join(","))
            }
            Schedule::Product(parts) => write!(f, "prod[{}]", join(parts)),
            Schedule::Custom { name, .. } | Schedule::Detached { name } => {
                write!(f, "custom:{name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_at_their_landmarks() {
        let s = |t: &str| t.parse::<Schedule>().unwrap();
        assert_eq!(s("constant").factor(1_000_000), 1.0);
        assert_eq!(
            (
                s("warmup:4").factor(0),
                s("warmup:4").factor(3),
                s("warmup:4").factor(99)
            ),
            (0.25, 1.0, 1.0)
        );
        assert_eq!(
            (
                s("linear:0.5,1,10").factor(0),
                s("linear:0.5,1,10").factor(5),
                s("linear:0.5,1,10").factor(20)
            ),
            (0.5, 0.75, 1.0)
        );
        let c = s("cosine:100,0.1");
        assert!((c.factor(0) - 1.0).abs() < 1e-15 && (c.factor(50) - 0.55).abs() < 1e-15);
        assert!((c.factor(100) - 0.1).abs() < 1e-15 && c.factor(1000) == c.factor(100));
        assert_eq!(
            (
                s("decay:10,0.5").factor(9),
                s("decay:10,0.5").factor(10),
                s("decay:10,0.5").factor(25)
            ),
            (1.0, 0.5, 0.25)
        );
        assert_eq!(s("exp:0.5").factor(3), 0.125);
        let w = s("wsd:2,3,4");
        let f: Vec<f64> = (0..11).map(|t| w.factor(t)).collect();
        assert_eq!(f, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        let w = s("wsd:2,3,4,0.5");
        let f: Vec<f64> = (4..11).map(|t| w.factor(t)).collect();
        assert_eq!(f, [1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.5]);
        let seq = s("seq[warmup:2;decay:1,0.5]@2");
        let f: Vec<f64> = (0..5).map(|t| seq.factor(t)).collect();
        assert_eq!(f, [0.5, 1.0, 1.0, 0.5, 0.25]);
        assert_eq!(s("prod[exp:0.5;decay:2,0.5]").factor(2), 0.125);
        assert_eq!(Schedule::custom("half", |_| 0.5).factor(7), 0.5);
    }

    #[test]
    fn display_round_trips_and_bad_specs_are_refused() {
        for text in [
            "constant",
            "warmup:5",
            "linear:0.1,1,7",
            "cosine:9",
            "cosine:9,0.25",
            "decay:3,0.1",
            "exp:0.99",
            "wsd:1,2,3,0.5",
            "seq[warmup:10;cosine:90]@10",
            "prod[seq[warmup:1;constant]@1;exp:0.9]",
            "seq[seq[warmup:2;constant]@2;prod[exp:0.5;constant];constant]@5,9",
        ] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
        }
        for bad in [
            "warmup:0",
            "cosine",
            "cosine:0",
            "cosine:5,2",
            "decay:0,0.5",
            "decay:2,1.5",
            "exp:0",
            "seq[warmup:2;constant]@",
            "seq[warmup:2;constant]@3,4",
            "seq[a;b]@1",
            "prod[]",
            "linear",
            "wsd:1,1,0",
            "wsd:1,1,3,1.5",
            "nonsense",
            "linear:1,1,0",
            "linear:1,inf,5",
            "linear:inf,1,5",
            "linear:-1,1,5",
            "linear:1,-1,5",
            "cosine:5,-0.5",
            "decay:2,0",
            "exp:1.5",
            "seq[constant;constant;constant]@5,5",
            "custom:",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        let d: Schedule = "custom:mine".parse().unwrap();
        assert_eq!(d.detached(), Some("mine"));
        assert_eq!(Schedule::custom("mine", |_| 1.0), d);
        // A placeholder anywhere inside a composition must be attached again.
        for text in ["seq[warmup:2;custom:mine]@2", "prod[exp:0.5;custom:mine]"] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!((s.detached(), s.to_string().as_str()), (Some("mine"), text));
        }
        assert_eq!(
            "seq[warmup:2;constant]@2"
                .parse::<Schedule>()
                .unwrap()
                .detached(),
            None
        );
        let parse = |t: &str| t.parse::<Schedule>().unwrap();
        assert_ne!(parse("warmup:4"), parse("warmup:5"));
        assert_eq!(format!("{:?}", parse("warmup:4")), "Schedule(warmup:4)");
        assert_ne!(
            Schedule::custom("mine", |_| 1.0),
            Schedule::custom("yours", |_| 1.0)
        );
    }

    /// A composition built in code (not parsed, so its parts were not checked on the way)
    /// is validated part by part, and an empty product or a sequence with the wrong number of
    /// milestones is refused.
    #[test]
    fn compositions_built_in_code_are_validated() {
        let bad_part = Schedule::Warmup { steps: 0 };
        assert!(Schedule::Product(vec![]).validate().is_err());
        assert!(
            Schedule::Product(vec![Schedule::Constant, bad_part.clone()])
                .validate()
                .is_err()
        );
        let seq =
            |parts: Vec<Schedule>, milestones: Vec<u64>| Schedule::Sequence { parts, milestones };
        assert!(
            seq(vec![Schedule::Constant, bad_part], vec![3])
                .validate()
                .is_err()
        );
        assert!(seq(vec![Schedule::Constant], vec![3]).validate().is_err());
        assert!(
            seq(
                vec![Schedule::Constant, Schedule::Warmup { steps: 2 }],
                vec![3]
            )
            .validate()
            .is_ok()
        );
        assert!(
            Schedule::Product(vec![Schedule::Constant])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn warmup_cosine_is_a_sequence() {
        let s = Schedule::warmup_cosine(10, 90, 0.0);
        assert_eq!(s.to_string(), "seq[warmup:10;cosine:90]@10");
        assert_eq!((s.factor(9), s.factor(10), s.factor(100)), (1.0, 1.0, 0.0));
        let floor = Schedule::warmup_cosine(10, 90, 0.1);
        assert!((floor.factor(55) - 0.55).abs() < 1e-15 && (floor.factor(100) - 0.1).abs() < 1e-15);
    }
}
