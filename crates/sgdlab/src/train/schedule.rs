//! `train --schedule`: the schedule forms of a training run.

use std::str::FromStr;

use crate::{Error, Result};

/// A training run's learning-rate schedule, as `train --schedule` writes it: the forms that
/// depend on the run's length or count in epochs, and any library [`optim::Schedule`]
/// (counted in steps). It becomes an [`optim::Schedule`] attached to each run's optimizer
/// ([`ScheduleSpec::for_run`]).
///
/// | form | meaning |
/// |---|---|
/// | `constant` | $s_t = 1$ |
/// | `step:E,γ` | $\gamma^{\lfloor e/E\rfloor}$ in epoch $e$ (from 0) |
/// | `cosine` | cosine decay to 0 over the whole run |
/// | `warmup-cosine:S` | linear warm-up over $S$ steps, then cosine decay to 0 over the rest |
/// | `wsd:W,D` | warm-up over $W$ steps, constant, linear decay to 0 over the last $D$ steps |
/// | anything else | an [`optim::Schedule`] spec in steps, e.g. `warmup:500`, `exp:0.999`, `seq[warmup:100;cosine:900]@100` |
///
/// [`optim::Schedule`]: crate::optim::Schedule
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleSpec {
    /// `step:E,γ`: decay by $\gamma$ every $E$ epochs.
    StepEpochs {
        /// Epochs between decays, $E \ge 1$.
        every: usize,
        /// Decay factor $\gamma \in (0, 1]$.
        gamma: f64,
    },
    /// `cosine`: over all the run's steps.
    Cosine,
    /// `warmup-cosine:S`: warm-up, then cosine over the rest of the run.
    WarmupCosine {
        /// Warm-up steps.
        warmup: u64,
    },
    /// `wsd:W,D`: warm-up, stable, decay over the last $D$ steps of the run.
    Wsd {
        /// Warm-up steps.
        warmup: u64,
        /// Decay steps.
        decay: u64,
    },
    /// A library schedule, in steps.
    Steps(crate::optim::Schedule),
}

impl ScheduleSpec {
    /// Whether the schedule depends on the run's total length (so that `--epochs` may not
    /// change on resume).
    pub fn depends_on_length(&self) -> bool {
        matches!(
            self,
            ScheduleSpec::Cosine | ScheduleSpec::WarmupCosine { .. } | ScheduleSpec::Wsd { .. }
        )
    }

    /// The library schedule of a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn for_run(&self, steps_per_epoch: u64, epochs: usize) -> Result<crate::optim::Schedule> {
        use crate::optim::Schedule as S;
        let total = steps_per_epoch.saturating_mul(epochs as u64).max(1);
        let schedule = match self {
            ScheduleSpec::StepEpochs { every, gamma } => S::StepDecay {
                every: steps_per_epoch.saturating_mul(*every as u64).max(1),
                gamma: *gamma,
            },
            ScheduleSpec::Cosine => S::Cosine {
                steps: total,
                min: 0.0,
            },
            ScheduleSpec::WarmupCosine { warmup } => {
                if *warmup >= total {
                    return Err(Error::invalid(
                        "schedule",
                        self,
                        format!("the warm-up must be shorter than the run ({total} steps)"),
                    ));
                }
                S::warmup_cosine(*warmup, total - warmup, 0.0)
            }
            ScheduleSpec::Wsd { warmup, decay } => {
                if warmup.checked_add(*decay).is_none_or(|n| n > total) {
                    return Err(Error::invalid(
                        "schedule",
                        self,
                        format!("warm-up and decay exceed the run ({total} steps)"),
                    ));
                }
                S::Wsd {
                    warmup: *warmup,
                    stable: total - warmup - decay,
                    decay: (*decay).max(1),
                    min: 0.0,
                }
            }
            ScheduleSpec::Steps(s) => s.clone(),
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

impl FromStr for ScheduleSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("schedule", s, why);
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        let int = |t: &str, what: &str| t.trim().parse::<u64>().map_err(|_| bad(what));
        match name {
            "cosine" if args.is_empty() => Ok(ScheduleSpec::Cosine),
            "step" => {
                let (e, g) = args
                    .split_once(',')
                    .ok_or_else(|| bad("step needs step:E,GAMMA, e.g. step:10,0.1"))?;
                let every: usize = e.trim().parse().map_err(|_| bad("E must be an integer"))?;
                let gamma: f64 = g
                    .trim()
                    .parse()
                    .map_err(|_| bad("GAMMA must be a number"))?;
                if every == 0 || !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(bad("needs E >= 1 and 0 < GAMMA <= 1"));
                }
                Ok(ScheduleSpec::StepEpochs { every, gamma })
            }
            "warmup-cosine" => {
                let warmup = int(
                    args,
                    "warmup-cosine needs warmup-cosine:S with S whole steps",
                )?;
                if warmup == 0 {
                    return Err(bad(
                        "the warm-up needs at least 1 step (for none, use cosine)",
                    ));
                }
                Ok(ScheduleSpec::WarmupCosine { warmup })
            }
            "wsd" if args.split(',').count() == 2 => {
                let (w, d) = args.split_once(',').unwrap_or_default();
                let decay = int(d, "wsd needs wsd:W,D with whole steps")?;
                if decay == 0 {
                    return Err(bad("the decay needs at least 1 step"));
                }
                Ok(ScheduleSpec::Wsd {
                    warmup: int(w, "wsd needs wsd:W,D with whole steps")?,
                    decay,
                })
            }
            // A form of the library's grammar: its own error says what is wrong with it.
            _ if is_library_form(s) => s.parse().map(ScheduleSpec::Steps),
            _ => s.parse().map(ScheduleSpec::Steps).map_err(|_| {
                bad(
                    "must be constant, step:E,GAMMA (epochs), cosine, warmup-cosine:S, wsd:W,D, \
                     or a schedule in steps: warmup:S, linear:A,B,T, cosine:T[,M], decay:E,GAMMA, \
                     exp:GAMMA, wsd:W,S,D[,M], seq[A;B;...]@T1,..., prod[A;B;...]",
                )
            }),
        }
    }
}

/// Whether `text` starts like one of the library schedule's forms (`exp:`, `seq[`, ...), so
/// that a parse error is the library's own (which names the problem) rather than the list of
/// every form.
fn is_library_form(text: &str) -> bool {
    let text = text.trim();
    let name = text.split([':', '[']).next().unwrap_or(text);
    let bracketed = text[name.len()..].starts_with('[');
    match name {
        "seq" | "prod" => bracketed,
        "constant" | "warmup" | "linear" | "cosine" | "decay" | "exp" | "wsd" | "custom" => {
            !bracketed
        }
        _ => false,
    }
}

impl std::fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleSpec::StepEpochs { every, gamma } => write!(f, "step:{every},{gamma}"),
            ScheduleSpec::Cosine => write!(f, "cosine"),
            ScheduleSpec::WarmupCosine { warmup } => write!(f, "warmup-cosine:{warmup}"),
            ScheduleSpec::Wsd { warmup, decay } => write!(f, "wsd:{warmup},{decay}"),
            ScheduleSpec::Steps(s) => write!(f, "{s}"),
        }
    }
}
