//! Bounds on what one request may take: memory, threads, classes, input sizes.
//!
//! A small input must never take a large machine. Every size a user controls (layer widths,
//! batch, repetitions, parameters of an audit, labels) is turned into the bytes it needs
//! *before* anything is allocated, with checked arithmetic, and compared with the memory this
//! machine has available; a request that does not fit is an error that says how much it
//! needs. The limits on inputs are documented constants.

use crate::{Error, Result};

/// The most bytes a data file (CSV, or an IDX file after decompression) may hold: 4 GiB.
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

/// The most classes a labelled data set may have.
pub const MAX_CLASSES: usize = 65_536;

/// The most classes allowed per example: a data set of n examples may have up to
/// max(1024, 10n) classes, so that a stray large label cannot make a tiny file allocate a
/// huge output layer.
pub const CLASSES_PER_EXAMPLE: usize = 10;

pub use crate::io::human_bytes;

/// The memory available to a new allocation, in bytes: `MemAvailable` of `/proc/meminfo`
/// (Linux), or `None` where the system does not say.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The number of bytes of `count` elements of `elem_bytes` bytes each, `copies` times, or an
/// error naming `what` when the product does not fit in 64 bits.
pub fn bytes_for(what: &str, count: u128, elem_bytes: u128, copies: u128) -> Result<u64> {
    count
        .checked_mul(elem_bytes)
        .and_then(|b| b.checked_mul(copies))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{what} is too large: it would need more than 2^64 bytes of memory"
            ))
        })
}

/// Errors unless `bytes` fit in the memory available now (when the system reports it), with
/// a message naming `what` and both figures.
pub fn check_memory(what: &str, bytes: u64) -> Result<()> {
    check_memory_against(what, bytes, available_memory())
}

/// [`check_memory`] against a given amount of available memory (`None`: unknown, any size
/// passes).
pub fn check_memory_against(what: &str, bytes: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(avail) if bytes > avail => Err(Error::Unsupported(format!(
            "{what} needs {} of memory, but this machine has {} available",
            human_bytes(bytes),
            human_bytes(avail)
        ))),
        _ => Ok(()),
    }
}

/// The most worker threads accepted: four per core the system reports (at least 16). More
/// threads than that only cost start-up time, and results do not depend on the count.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(16)
}

/// The number of classes K of integer labels 0..K − 1: the largest label plus one (at least
/// 2). Errors name the first label that is negative, not an integer, or too large
/// ([`MAX_CLASSES`], or more than [`CLASSES_PER_EXAMPLE`] per example beyond 1024), before
/// anything of size K is allocated.
pub fn class_count(labels: &[f64]) -> Result<usize> {
    let cap = MAX_CLASSES.min((CLASSES_PER_EXAMPLE.saturating_mul(labels.len())).max(1024));
    let mut largest = 0usize;
    for (i, &y) in labels.iter().enumerate() {
        if !(y >= 0.0 && y == y.round()) {
            return Err(Error::Data(format!(
                "example {} has the label {y}: class labels must be integers 0, 1, ..., K-1",
                i + 1
            )));
        }
        if y >= cap as f64 {
            return Err(Error::Data(format!(
                "example {} has the label {y}: at most {cap} classes are allowed for {} \
                 examples (labels 0..{}); class labels must be integers 0, 1, ..., K-1",
                i + 1,
                labels.len(),
                cap - 1
            )));
        }
        largest = largest.max(y as usize);
    }
    Ok((largest + 1).max(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(40_000_000_000), "40.0 GB");
    }

    #[test]
    fn memory_checks_name_both_figures() {
        assert!(check_memory_against("x", 10, Some(100)).is_ok());
        assert!(check_memory_against("x", 10, None).is_ok());
        let err = check_memory_against("the model", 40_000_000_000, Some(8_000_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the model needs 40.0 GB") && err.contains("8.0 GB"),
            "{err}"
        );
        assert!(bytes_for("t", u128::MAX / 2, 4, 1).is_err());
        assert_eq!(bytes_for("t", 10, 4, 3).unwrap(), 120);
        assert!(available_memory().is_none_or(|m| m > 0));
    }

    #[test]
    fn labels_are_checked_before_classes_are_counted() {
        assert_eq!(class_count(&[0.0, 3.0, 1.0]).unwrap(), 4);
        assert_eq!(class_count(&[0.0, 0.0]).unwrap(), 2);
        for (labels, needle) in [
            (vec![0.0, -1.0], "label -1"),
            (vec![0.5], "label 0.5"),
            (vec![1e300], "at most 1024 classes"),
            (vec![1e18, 0.0], "at most 1024 classes"),
            (vec![f64::NAN], "label NaN"),
        ] {
            let err = class_count(&labels).unwrap_err().to_string();
            assert!(err.contains(needle), "{labels:?}: {err}");
        }
        let many = vec![5000.0; 1000];
        assert_eq!(class_count(&many).unwrap(), 5001);
        assert!(class_count(&[70_000.0; 10_000]).is_err());
    }
}
