//! The schedule grammar: one parser for every place a schedule is written (spec strings,
//! the Python package, `train --schedule`).
//!
//! A length in a schedule is a whole number of steps (`500`), a whole number of epochs
//! (`3ep`), or `*`: the rest of the run, which inside a `seq[...]` part is that part's span
//! (up to the next milestone, or to the end of the run for the last part). `cosine` without
//! `T` and `warmup-cosine:W` without `T` decay over the rest. Epochs and the rest are known
//! only to a training run, so a [`Schedule`] parsed on its own refuses them; a
//! [`ScheduleSpec`] keeps them open until [`ScheduleSpec::resolve`] is given the run's
//! [`Horizon`].

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use super::Schedule;
use crate::{Error, Result};

/// The deepest nesting of `seq[...]` and `prod[...]` a schedule spec may have: deeper text
/// is refused before it is parsed, so that no input can exhaust the stack.
pub const MAX_NESTING: usize = 16;

/// What the open lengths of a [`ScheduleSpec`] resolve against: the length of a training
/// run and of its epochs, in optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// Optimizer steps of the whole run (≥ 1).
    pub steps: u64,
    /// Optimizer steps of one epoch (≥ 1).
    pub steps_per_epoch: u64,
}

impl Horizon {
    /// The horizon of a run of `epochs` epochs of `steps_per_epoch` steps each (both at
    /// least 1; a product past `u64` saturates).
    pub fn run(steps_per_epoch: u64, epochs: u64) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1);
        Horizon {
            steps: steps_per_epoch.saturating_mul(epochs).max(1),
            steps_per_epoch,
        }
    }
}

/// A schedule as written, with lengths that may be open: counted in epochs (`3ep`) or the
/// rest of the run (`*`, or the omitted `T` of `cosine` and `warmup-cosine:W`). It becomes a
/// [`Schedule`] once the run's [`Horizon`] is known.
///
/// | written | for a run of 10 epochs of 100 steps |
/// |---|---|
/// | `cosine` | `cosine:1000` |
/// | `warmup-cosine:50` | `seq[warmup:50;cosine:950]@50` |
/// | `wsd:100,*,200` | `wsd:100,700,200` |
/// | `decay:3ep,0.1` | `decay:300,0.1` |
/// | `seq[constant;cosine]@8ep` | `seq[constant;cosine:200]@800` |
///
/// ```
/// use sgdlab_optim::schedule::{Horizon, Schedule, ScheduleSpec};
///
/// let spec: ScheduleSpec = "wsd:100,*,200".parse()?;
/// assert!(spec.depends_on_length());
/// let schedule = spec.resolve(Horizon::run(100, 10))?;
/// assert_eq!(schedule, "wsd:100,700,200".parse::<Schedule>()?);
/// // Without a run, the open length is an error that says so.
/// assert!("wsd:100,*,200".parse::<Schedule>().is_err());
/// # Ok::<(), sgdlab_optim::Error>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct ScheduleSpec {
    text: String,
    open: Open,
    /// The schedule itself when no length is open.
    closed: Option<Schedule>,
}

/// Which kinds of open length a spec uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Open {
    rest: bool,
    epochs: bool,
}

impl ScheduleSpec {
    /// Whether the schedule depends on the run's total length (it has a `*` or an omitted
    /// `T`), so that a resumed run must keep the same length.
    pub fn depends_on_length(&self) -> bool {
        self.open.rest
    }

    /// Whether a length is counted in epochs.
    pub fn counts_epochs(&self) -> bool {
        self.open.epochs
    }

    /// The schedule for a run of `horizon`, every part validated. A length past the run (a
    /// milestone after its end, warm-up and decay longer than it) is an error.
    pub fn resolve(&self, horizon: Horizon) -> Result<Schedule> {
        if let Some(s) = &self.closed {
            return Ok(s.clone());
        }
        let ctx = Ctx {
            horizon: Some(horizon),
            probe: false,
            open: &Cell::new(Open::default()),
        };
        parse_node(&self.text, &ctx, horizon.steps)
    }

    /// [`ScheduleSpec::resolve`] for a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn for_run(&self, steps_per_epoch: u64, epochs: u64) -> Result<Schedule> {
        self.resolve(Horizon::run(steps_per_epoch, epochs))
    }
}

impl From<Schedule> for ScheduleSpec {
    fn from(schedule: Schedule) -> Self {
        ScheduleSpec {
            text: schedule.to_string(),
            open: Open::default(),
            closed: Some(schedule),
        }
    }
}

impl FromStr for ScheduleSpec {
    type Err = Error;

    /// Parses the grammar of the [module docs](self) and validates what does not depend on
    /// the run; the rest is validated when the spec is resolved.
    fn from_str(text: &str) -> Result<Self> {
        check_nesting(text)?;
        let open = Cell::new(Open::default());
        let ctx = Ctx {
            horizon: None,
            probe: true,
            open: &open,
        };
        let schedule = parse_node(text, &ctx, PROBE_SPAN)?;
        let open = open.get();
        let closed = if open == Open::default() {
            schedule.validate()?;
            Some(schedule)
        } else {
            None
        };
        Ok(ScheduleSpec {
            text: text.trim().to_string(),
            open,
            closed,
        })
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.closed {
            Some(s) => write!(f, "{s}"),
            None => f.write_str(&self.text),
        }
    }
}

impl fmt::Debug for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScheduleSpec({self})")
    }
}

impl FromStr for Schedule {
    type Err = Error;

    /// Parses the spec forms of the [module docs](super) with every length in steps;
    /// `custom:NAME` reads back as a [`Schedule::Detached`] placeholder. Compositions nest
    /// at most [`MAX_NESTING`] deep. Epochs and `*` need a run: see [`ScheduleSpec`].
    fn from_str(text: &str) -> Result<Self> {
        check_nesting(text)?;
        let ctx = Ctx {
            horizon: None,
            probe: false,
            open: &Cell::new(Open::default()),
        };
        parse_node(text, &ctx, PROBE_SPAN)
    }
}

/// The span a probe parse gives `*`: large enough that no closed length is past it.
const PROBE_SPAN: u64 = 1 << 62;

/// The parser's context: the run (if known), whether this is a probe that records open
/// lengths instead of resolving them, and what it recorded.
struct Ctx<'a> {
    horizon: Option<Horizon>,
    probe: bool,
    open: &'a Cell<Open>,
}

impl Ctx<'_> {
    /// A length: `N` steps, `Nep` epochs, or `*` (the `span` left to this part).
    fn length(&self, token: &str, span: u64, bad: &dyn Fn(&str) -> Error) -> Result<u64> {
        let token = token.trim();
        let mut open = self.open.get();
        let value = if token == "*" {
            open.rest = true;
            self.need_run(bad, "`*` (the rest of the run)")?;
            span
        } else if let Some(n) = token.strip_suffix("ep") {
            open.epochs = true;
            let n: u64 = n
                .trim()
                .parse()
                .map_err(|_| bad("an epoch count is whole epochs, e.g. 3ep"))?;
            let per_epoch = self.need_run(bad, "a length in epochs (`Nep`)")?;
            n.checked_mul(per_epoch)
                .ok_or_else(|| bad("the epochs are more steps than fit in 64 bits"))?
        } else {
            token.parse().map_err(|_| {
                bad("expects lengths in whole steps (or, in train --schedule, Nep epochs or *)")
            })?
        };
        self.open.set(open);
        Ok(value)
    }

    /// The steps per epoch of the run; outside a run (and not probing), an error saying
    /// that `what` needs one.
    fn need_run(&self, bad: &dyn Fn(&str) -> Error, what: &str) -> Result<u64> {
        match self.horizon {
            Some(h) => Ok(h.steps_per_epoch),
            None if self.probe => Ok(1),
            None => Err(bad(&format!(
                "{what} needs a training run's length (train --schedule); give whole steps here"
            ))),
        }
    }

    /// What a `*` or a part is given of the run: `left`, what the other lengths leave of it;
    /// without a run (a probe, or a schedule whose `*` is refused anyway), where nothing is
    /// past its end, 1; with a run, no `left` is the error `why`.
    fn left(&self, left: Option<u64>, bad: &dyn Fn(&str) -> Error, why: String) -> Result<u64> {
        match left {
            Some(l) => Ok(l),
            None if self.horizon.is_none() => Ok(1),
            None => Err(bad(&why)),
        }
    }

    /// Validates a parsed schedule. A probe validates what its placeholders cannot make
    /// wrong: every part but the compositions (whose parts it has validated already), whose
    /// milestones may count epochs.
    fn validate(&self, schedule: Schedule) -> Result<Schedule> {
        let composition = matches!(schedule, Schedule::Sequence { .. } | Schedule::Product(_));
        if !(self.probe && composition) {
            schedule.validate()?;
        }
        Ok(schedule)
    }
}

/// Refuses text nested deeper than [`MAX_NESTING`].
fn check_nesting(text: &str) -> Result<()> {
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Error::invalid(
                        "schedule",
                        format!("{}...", text.chars().take(40).collect::<String>()),
                        format!("compositions nest at most {MAX_NESTING} deep"),
                    ));
                }
            }
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Splits `text` at `sep` outside brackets.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The forms, for errors that list them.
const FORMS: &str = "must be constant, warmup:S, linear:A,B,T, cosine[:T[,M]], \
                     warmup-cosine:W[,T[,M]], decay:E,GAMMA, exp:GAMMA, wsd:W,S,D[,M], \
                     seq[A;B;...]@T1,... or prod[A;B;...]";

/// One schedule (a part of a composition, or the whole) of `span` steps.
fn parse_node(text: &str, ctx: &Ctx<'_>, span: u64) -> Result<Schedule> {
    let text = text.trim();
    let bad = |why: &str| Error::invalid("schedule", text, why);
    let num = |s: &str| -> Result<f64> { s.trim().parse().map_err(|_| bad("expects numbers")) };
    let len = |s: &str| ctx.length(s, span, &bad);
    if let Some(rest) = text.strip_prefix("seq[") {
        let (inner, milestones) = rest
            .rsplit_once("]@")
            .ok_or_else(|| bad("a sequence is seq[A;B;...]@T1,T2,..."))?;
        // Epochs resolve to steps only in a run: a probe cannot order steps against them.
        let orderable = !(ctx.probe && milestones.contains("ep"));
        let milestones = milestones
            .split(',')
            .map(|m| match m.trim() {
                "*" => Err(bad("a milestone is a step count or Nep, not *")),
                m => len(m),
            })
            .collect::<Result<Vec<u64>>>()?;
        let texts = split_top(inner, ';');
        if texts.len() != milestones.len() + 1
            || (orderable && milestones.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err(bad(
                "a sequence needs one milestone fewer than parts, increasing",
            ));
        }
        let mut parts = Vec::with_capacity(texts.len());
        for (k, part) in texts.iter().enumerate() {
            let start = if k == 0 { 0 } else { milestones[k - 1] };
            let end = milestones.get(k).copied().unwrap_or(span);
            let part_span = ctx.left(
                end.checked_sub(start).filter(|&s| s > 0),
                &bad,
                format!("the milestone {start} is past the run ({span} steps)"),
            )?;
            parts.push(parse_node(part, ctx, part_span)?);
        }
        return ctx.validate(Schedule::Sequence { parts, milestones });
    }
    if let Some(rest) = text.strip_prefix("prod[") {
        let inner = rest
            .strip_suffix(']')
            .ok_or_else(|| bad("a product is prod[A;B;...]"))?;
        let parts = split_top(inner, ';')
            .into_iter()
            .map(|part| parse_node(part, ctx, span))
            .collect::<Result<_>>()?;
        return ctx.validate(Schedule::Product(parts));
    }
    let (name, args) = text.split_once(':').unwrap_or((text, ""));
    let a: Vec<&str> = if args.is_empty() {
        Vec::new()
    } else {
        args.split(',').collect()
    };
    let schedule = match (name, a.as_slice()) {
        ("constant", []) => Schedule::Constant,
        ("warmup", [s]) => Schedule::Warmup { steps: len(s)? },
        ("linear", [x, y, s]) => Schedule::Linear {
            from: num(x)?,
            to: num(y)?,
            steps: len(s)?,
        },
        ("cosine", []) => Schedule::Cosine {
            steps: len("*")?,
            min: 0.0,
        },
        ("cosine", [s]) => Schedule::Cosine {
            steps: len(s)?,
            min: 0.0,
        },
        ("cosine", [s, m]) => Schedule::Cosine {
            steps: len(s)?,
            min: num(m)?,
        },
        ("warmup-cosine", [w, rest @ ..]) if rest.len() <= 2 => {
            let warmup = len(w)?;
            let left = span.checked_sub(warmup).filter(|&l| l > 0);
            let decay = match rest.first().map(|t| t.trim()) {
                None | Some("*") => {
                    len("*")?;
                    ctx.left(
                        left,
                        &bad,
                        format!("the warm-up must be shorter than the run ({span} steps)"),
                    )?
                }
                Some(t) => len(t)?,
            };
            let min = rest.get(1).map(|m| num(m)).transpose()?.unwrap_or(0.0);
            if warmup == 0 {
                return Err(bad(
                    "the warm-up needs at least 1 step (for none, use cosine)",
                ));
            }
            Schedule::warmup_cosine(warmup, decay, min)
        }
        ("decay", [e, g]) => Schedule::StepDecay {
            every: len(e)?,
            gamma: num(g)?,
        },
        ("exp", [g]) => Schedule::Exponential { gamma: num(g)? },
        ("wsd", [w, s, d, m @ ..]) if m.len() <= 1 => {
            let min = m.first().map(|m| num(m)).transpose()?.unwrap_or(0.0);
            wsd(ctx, span, [w, s, d], min, &bad)?
        }
        ("wsd", [_, _]) => {
            return Err(bad(
                "wsd is wsd:W,S,D[,M]; for a stable phase over the rest of the run, wsd:W,*,D",
            ));
        }
        ("step", _) => {
            return Err(bad(
                "a step decay is decay:E,GAMMA (E in steps, or Nep epochs)",
            ));
        }
        // `args` is not empty here, so neither is a name without commas.
        ("custom", [n]) => Schedule::Detached {
            name: n.to_string(),
        },
        _ => return Err(bad(FORMS)),
    };
    ctx.validate(schedule)
}

/// `wsd:W,S,D[,M]`, where at most one of the three lengths is `*`: what the other two leave
/// of the span.
fn wsd(
    ctx: &Ctx<'_>,
    span: u64,
    lengths: [&&str; 3],
    min: f64,
    bad: &dyn Fn(&str) -> Error,
) -> Result<Schedule> {
    let stars = lengths.iter().filter(|t| t.trim() == "*").count();
    if stars > 1 {
        return Err(bad("at most one of W, S, D may be *"));
    }
    let mut known = [0u64; 3];
    for (k, t) in lengths.iter().enumerate() {
        if t.trim() != "*" {
            known[k] = ctx.length(t, span, bad)?;
        }
    }
    if stars == 1 {
        let star = lengths.iter().position(|t| t.trim() == "*").unwrap_or(1);
        ctx.length("*", span, bad)?;
        let used = known.iter().try_fold(0u64, |a, &b| a.checked_add(b));
        known[star] = ctx.left(
            used.and_then(|u| span.checked_sub(u)),
            bad,
            format!("warm-up, stable and decay exceed the run ({span} steps)"),
        )?;
    }
    Ok(Schedule::Wsd {
        warmup: known[0],
        stable: known[1],
        decay: known[2],
        min,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ScheduleSpec {
        text.parse().unwrap()
    }

    fn resolved(text: &str, per_epoch: u64, epochs: u64) -> String {
        spec(text).for_run(per_epoch, epochs).unwrap().to_string()
    }

    #[test]
    fn open_lengths_resolve_against_the_run() {
        assert_eq!(resolved("cosine", 100, 10), "cosine:1000");
        assert_eq!(resolved("cosine:*,0.1", 100, 10), "cosine:1000,0.1");
        assert_eq!(
            resolved("warmup-cosine:50", 100, 10),
            "seq[warmup:50;cosine:950]@50"
        );
        assert_eq!(
            resolved("warmup-cosine:1ep,*,0.5", 100, 10),
            "seq[warmup:100;cosine:900,0.5]@100"
        );
        assert_eq!(resolved("wsd:100,*,200", 100, 10), "wsd:100,700,200,0");
        assert_eq!(resolved("wsd:*,700,200", 100, 10), "wsd:100,700,200,0");
        assert_eq!(resolved("decay:3ep,0.1", 100, 10), "decay:300,0.1");
        assert_eq!(
            resolved("seq[cosine;constant]@8ep", 100, 10),
            "seq[cosine:800;constant]@800"
        );
        assert_eq!(
            resolved("seq[warmup:10;cosine;linear:1,0,*]@10,600", 100, 10),
            "seq[warmup:10;cosine:590;linear:1,0,400]@10,600"
        );
        assert_eq!(
            resolved("prod[cosine;exp:0.9]", 10, 2),
            "prod[cosine:20;exp:0.9]"
        );
        // A closed spec is the schedule, whatever the run.
        assert_eq!(resolved("cosine:7", 100, 10), "cosine:7");
        assert!(spec("cosine").depends_on_length() && !spec("decay:1ep,0.5").depends_on_length());
        assert!(spec("decay:1ep,0.5").counts_epochs() && !spec("cosine:5").counts_epochs());
    }

    #[test]
    fn lengths_past_the_run_are_errors_naming_the_run() {
        for (text, why) in [
            ("warmup-cosine:200", "shorter than the run (100 steps)"),
            ("wsd:60,*,50", "exceed the run (100 steps)"),
            ("seq[constant;cosine]@100", "past the run (100 steps)"),
            ("decay:18446744073709551615ep,0.5", "more steps than fit"),
        ] {
            let e = spec(text).for_run(10, 10).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        let huge = format!("wsd:{},*,1", u64::MAX);
        assert!(spec(&huge).for_run(10, 10).is_err());
        // A warm-up as long as the run leaves no decay.
        let e = spec("warmup-cosine:100")
            .for_run(10, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than the run (100 steps)"), "{e}");
        // Longer than any probe: parsed, refused only against the run.
        let long = spec(&format!("warmup-cosine:{}", 1u64 << 63));
        assert!(
            long.for_run(10, 10)
                .unwrap_err()
                .to_string()
                .contains("shorter than")
        );
    }

    #[test]
    fn a_schedule_alone_refuses_open_lengths_and_says_why() {
        for text in [
            "cosine",
            "wsd:1,*,2",
            "decay:2ep,0.5",
            "warmup-cosine:5",
            "seq[constant;cosine]@3",
        ] {
            let e = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains("needs a training run's length"), "{text}: {e}");
        }
        let e = |t: &str| t.parse::<ScheduleSpec>().unwrap_err().to_string();
        assert!(e("wsd:10,20").contains("wsd:W,*,D"));
        assert!(e("step:2,0.5").contains("a step decay is decay:E,GAMMA"));
        // Extra arguments are refused, not dropped.
        assert!(e("warmup-cosine:5,10,0.1,9").contains("must be constant"));
        assert!(e("wsd:1,2,3,0.5,7").contains("must be constant"));
        assert!(e("wsd:*,*,2").contains("at most one"));
        assert!(e("seq[constant;constant]@*").contains("not *"));
        assert!(e("decay:xep,0.5").contains("whole epochs"));
        assert!(e("bogus:1").contains("warmup-cosine:W[,T[,M]]"));
        // What does not depend on the run is validated when parsed.
        assert!(e("cosine:5,2").contains("final factor"));
        assert!(e("decay:1ep,2").contains("γ <= 1"));
        assert!(e("decay:0ep,0.5").contains("E >= 1"));
        assert!(e("warmup-cosine:0").contains("at least 1 step"));
        assert!(e("cosine:*,2").contains("final factor"));
        assert!(e("seq[constant;constant]@5,3").contains("increasing"));
        // Steps against epochs are ordered only in a run.
        let mixed = spec("seq[constant;exp:0.9;constant]@100,1ep");
        assert!(mixed.for_run(1000, 2).is_ok());
        assert!(
            mixed
                .for_run(10, 20)
                .unwrap_err()
                .to_string()
                .contains("increasing")
        );
    }

    #[test]
    fn specs_display_as_written_and_round_trip() {
        for text in [
            "cosine",
            "wsd:1,*,2",
            "seq[warmup:2;cosine]@1ep",
            "cosine:9,0.25",
        ] {
            let s = spec(text);
            assert_eq!(s.to_string(), text);
            assert_eq!(s.to_string().parse::<ScheduleSpec>().unwrap(), s);
        }
        assert_eq!(format!("{:?}", spec("cosine")), "ScheduleSpec(cosine)");
        let from: ScheduleSpec = Schedule::Cosine { steps: 4, min: 0.0 }.into();
        assert_eq!(
            (from.to_string(), from.depends_on_length()),
            ("cosine:4".into(), false)
        );
    }

    /// Nesting is counted before parsing: 16 levels parse, 17 are refused, and siblings do
    /// not add up.
    #[test]
    fn nesting_is_bounded_by_depth_not_by_count() {
        let nested =
            |depth: usize| format!("{}exp:0.5{}", "prod[".repeat(depth), "]".repeat(depth));
        let deepest = nested(MAX_NESTING);
        assert!(deepest.parse::<Schedule>().is_ok());
        assert!(deepest.parse::<ScheduleSpec>().is_ok());
        for depth in [MAX_NESTING + 1, MAX_NESTING + 2] {
            let e = nested(depth).parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains("nest at most 16 deep"), "{e}");
            assert!(nested(depth).parse::<ScheduleSpec>().is_err());
        }
        let siblings = format!("prod[{}]", vec![nested(2); 20].join(";"));
        assert!(siblings.parse::<Schedule>().is_ok());
    }
}
