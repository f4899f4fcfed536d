//! The library's error type.
//!
//! Every fallible function of the library returns [`Result`]. Messages name the offending
//! quantity and what would have been accepted, so that a command-line front end can show them
//! to a user as they are.

/// A result whose error is the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in sgdlab.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter or configuration value lies outside its allowed range.
    #[error("invalid {name} = {value}: {allowed}")]
    InvalidParameter {
        /// Name of the parameter, as the user wrote it (`beta`, `lr`, `horizon`, ...).
        name: String,
        /// The offending value, as text.
        value: String,
        /// What would have been accepted, e.g. `must lie in [0, 1)`.
        allowed: String,
    },
    /// A NaN or an infinity where finite numbers are required.
    #[error("non-finite value {value} in {what} at index {index}")]
    NonFinite {
        /// What held the value (`input`, `gradient of layer1.weight`, ...).
        what: String,
        /// Position of the first non-finite element.
        index: usize,
        /// The value itself (NaN, inf or -inf).
        value: f64,
    },
    /// A distributed step ([`Totals`](crate::Totals)) where this process's gradients are
    /// finite and those of other processes are not: every process refuses (or, with
    /// `skip_nonfinite=true`, skips) the step together.
    #[error(
        "non-finite gradient in {parts} other part(s) of the model (another process): every \
         process refuses the step"
    )]
    NonFiniteElsewhere {
        /// How many parts of the model (processes) hold a non-finite gradient.
        parts: u64,
    },
    /// Finite values whose result does not fit the number type (a squared norm past
    /// `f64::MAX`), where going on would give a silently wrong step.
    #[error("{what} overflows: {reason}")]
    Overflow {
        /// The quantity that overflows.
        what: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// Two buffers that must have the same length do not.
    #[error("shape mismatch in {what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// What was being combined.
        what: String,
        /// The required length.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// Tensors matched by position whose names differ.
    #[error("name mismatch in {what}: expected `{expected}`, got `{got}`")]
    NameMismatch {
        /// What was being matched.
        what: String,
        /// The name expected at that position.
        expected: String,
        /// The name passed.
        got: String,
    },
    /// An optimizer that needs the step's loss (`lossprop`) was stepped without one.
    #[error("{optimizer} needs the loss of each step (StepInfo::loss), but none was given")]
    MissingLoss {
        /// The optimizer's spec.
        optimizer: String,
    },
    /// A checkpoint file that cannot be read, or does not fit what it is loaded into.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A data file or data set that cannot be used (malformed CSV, wrong labels, ...).
    #[error("{0}")]
    Data(String),
    /// A request the library cannot carry out, e.g. an unknown problem number.
    #[error("{0}")]
    Unsupported(String),
    /// A file or directory that cannot be read or written (the operating system's reason).
    #[error("{what}: {reason}")]
    Io {
        /// What was being done, naming the path (`cannot write runs/a/metrics.csv`).
        what: String,
        /// The operating system's error.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`]: `what` (naming the path) failed with `err`.
    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            reason: err.to_string(),
        }
    }

    /// Builds an [`Error::InvalidParameter`].
    pub fn invalid(
        name: impl Into<String>,
        value: impl ToString,
        allowed: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            name: name.into(),
            value: shortest_number(value.to_string()),
            allowed: allowed.into(),
        }
    }
}

/// A number as `Display` prints an `f64` (every digit: `-1e308` as 309 of them, `-1e-8` as
/// `-0.00000001`) in its shortest round-trip form (`-1e308`, `-1e-8`); other text, and whole
/// numbers of up to 20 digits (every `u64`), as they are.
fn shortest_number(text: String) -> String {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.');
    if !plain || !(text.contains('.') || digits > 20) {
        return text;
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => {
            let short = format!("{x:?}");
            let short = short.strip_suffix(".0").unwrap_or(&short).to_string();
            if short.len() < text.len() {
                short
            } else {
                text
            }
        }
        _ => text,
    }
}

/// Returns an error naming the first non-finite element of `values`, if any.
pub fn check_finite<T: crate::Real>(what: &str, values: &[T]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            what: what.to_string(),
            index,
            value: values[index].as_f64(),
        }),
    }
}

/// Returns an error unless `got == expected`.
pub fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: what.to_string(),
            expected,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `Display`'s long renderings of an `f64` are shortened: text as a user wrote it
    /// (`1.000e3`), whole numbers of up to 20 digits, and numbers past `f64` stay as they are.
    #[test]
    fn only_long_float_renderings_are_shortened() {
        let shown = |text: &str| shortest_number(text.to_string());
        assert_eq!(shown(&(-1e308f64).to_string()), "-1e308");
        assert_eq!(shown(&(-1e-8f64).to_string()), "-1e-8");
        assert_eq!(shown("0.1"), "0.1");
        assert_eq!(shown("1.000e3"), "1.000e3");
        assert_eq!(shown("10000000000000000000"), "10000000000000000000");
        assert_eq!(shown("100000000000000000000"), "1e20");
        let huge = format!("1{}", "0".repeat(400));
        assert_eq!(shown(&huge), huge);
        assert_eq!(shown("adam"), "adam");
    }
}
