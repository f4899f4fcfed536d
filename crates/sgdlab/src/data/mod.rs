//! Data sets: numeric CSV files and the bundled digits.
//!
//! A [`Dataset`] is a dense row-major matrix of features with an optional target column.

mod idx;
mod split;

pub use idx::{FASHION_MNIST_DIR, idx_from_reader, load_idx_dir, parse_idx};
pub use split::{Split, stratified_split};

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// A data set: `n` examples of `d` features, and one target per example when the data has a
/// target column.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    features: Vec<f64>,
    targets: Option<Vec<f64>>,
    n: usize,
    d: usize,
}

impl Dataset {
    /// A data set from row-major `features` (`n × d`) and optional `targets` (`n`).
    pub fn new(features: Vec<f64>, targets: Option<Vec<f64>>, d: usize) -> Result<Self> {
        if d == 0 || features.is_empty() || !features.len().is_multiple_of(d) {
            return Err(Error::Data(format!(
                "{} feature values do not form rows of {d} features",
                features.len()
            )));
        }
        let n = features.len() / d;
        if let Some(t) = &targets
            && t.len() != n
        {
            return Err(Error::Data(format!("{} targets for {n} examples", t.len())));
        }
        if let Some(i) = features.iter().position(|x| !x.is_finite()) {
            return Err(Error::Data(format!(
                "feature {} of example {} is not finite",
                i % d,
                i / d
            )));
        }
        Ok(Self {
            features,
            targets,
            n,
            d,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no examples (only a [`Dataset::subset`] can be empty).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of features per example.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The features of example `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.features[i * self.d..(i + 1) * self.d]
    }

    /// The target of example `i`, if the data set has targets.
    pub fn target(&self, i: usize) -> Option<f64> {
        self.targets.as_ref().map(|t| t[i])
    }

    /// All targets.
    pub fn targets(&self) -> Option<&[f64]> {
        self.targets.as_deref()
    }

    /// All features, row-major.
    pub fn features(&self) -> &[f64] {
        &self.features
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let features = indices.iter().flat_map(|&i| self.row(i).to_vec()).collect();
        let targets = self
            .targets
            .as_ref()
            .map(|t| indices.iter().map(|&i| t[i]).collect());
        Self {
            features,
            targets,
            n: indices.len(),
            d: self.d,
        }
    }

    /// Rounds every feature to the nearest `f32`, the values a network trains on, so that an
    /// exact `f64` model of the data (e.g. the noise scale's) sees what training sees.
    pub fn round_features_to_f32(&mut self) {
        for x in &mut self.features {
            *x = f64::from(*x as f32);
        }
    }

    /// Multiplies every feature by `factor` (e.g. 1/16 to scale the digits to [0, 1]).
    pub fn scale_features(&mut self, factor: f64) {
        for x in &mut self.features {
            *x *= factor;
        }
    }
}

/// Parses numeric CSV text. With `has_target` the last column is the target.
///
/// Blank lines and lines starting with `#` are skipped, as is a UTF-8 byte-order mark; a first
/// line whose fields are all non-numeric is taken as a header. Errors name the line: a ragged
/// row, a field that is not a number, not finite, or beyond the range of `f32` (training
/// computes in `f32`, where it would be infinite), or no data at all.
///
/// Hand-written rather than with the `csv` crate: the files are purely numeric (no quoting or
/// escapes to handle), and the error messages need line numbers and the offending field.
pub fn parse_csv(text: &str, has_target: bool) -> Result<Dataset> {
    let mut features = Vec::new();
    let mut targets = has_target.then(Vec::new);
    let mut width = None;
    let mut seen_data_or_header = false;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (k, line) in text.lines().enumerate() {
        let line_no = k + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !seen_data_or_header {
            seen_data_or_header = true;
            if fields.iter().all(|f| f.parse::<f64>().is_err()) {
                continue; // header
            }
        }
        match width {
            None => width = Some(fields.len()),
            Some(w) if w != fields.len() => {
                return Err(Error::Data(format!(
                    "line {line_no}: {} fields, but earlier rows have {w}",
                    fields.len()
                )));
            }
            _ => {}
        }
        let min = if has_target { 2 } else { 1 };
        if fields.len() < min {
            return Err(Error::Data(format!(
                "line {line_no}: {} field(s); need at least {min}{}",
                fields.len(),
                if has_target {
                    " (features, then the target)"
                } else {
                    ""
                }
            )));
        }
        for (c, f) in fields.iter().enumerate() {
            let x: f64 = f.parse().map_err(|_| {
                Error::Data(format!(
                    "line {line_no}, column {}: `{f}` is not a number",
                    c + 1
                ))
            })?;
            if !x.is_finite() {
                return Err(Error::Data(format!(
                    "line {line_no}, column {}: `{f}` is not finite",
                    c + 1
                )));
            }
            if x.abs() > f64::from(f32::MAX) {
                return Err(Error::Data(format!(
                    "line {line_no}, column {}: `{f}` is beyond the range of f32 (±{:e}), in \
                     which training computes; rescale the column",
                    c + 1,
                    f32::MAX
                )));
            }
            match &mut targets {
                Some(t) if c + 1 == fields.len() => t.push(x),
                _ => features.push(x),
            }
        }
    }
    let Some(width) = width else {
        return Err(Error::Data("no data rows".to_string()));
    };
    Dataset::new(features, targets, width - usize::from(has_target))
}

/// Reads a numeric CSV file (see [`parse_csv`]); a `.gz` file is decompressed.
///
/// The file must be a regular file (not a device or FIFO) of at most
/// [`MAX_DATA_FILE_BYTES`](crate::resources::MAX_DATA_FILE_BYTES), and so must its
/// decompressed text.
pub fn read_csv(path: &Path, has_target: bool) -> Result<Dataset> {
    let cap = crate::resources::MAX_DATA_FILE_BYTES;
    let bytes = crate::io::read_regular_file(path, cap, "a data file")
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let raw = bounded_gunzip(&bytes, cap)
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        String::from_utf8(raw).map_err(|_| {
            Error::Data(format!(
                "{}: the decompressed data are not UTF-8 text",
                path.display()
            ))
        })?
    } else {
        String::from_utf8(bytes)
            .map_err(|_| Error::Data(format!("{} is not UTF-8 text", path.display())))?
    };
    parse_csv(&text, has_target).map_err(|e| match e {
        Error::Data(m) => Error::Data(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Decompresses gzip `bytes`, stopping with an error past `max_bytes` of output (a small
/// file can expand a thousandfold).
pub(crate) fn bounded_gunzip(bytes: &[u8], max_bytes: u64) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max_bytes + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt or truncated gzip ({e})"))?;
    if out.len() as u64 > max_bytes {
        return Err(format!(
            "decompresses to more than the limit of {}",
            crate::resources::human_bytes(max_bytes)
        ));
    }
    Ok(out)
}

fn gunzip(bytes: &[u8]) -> std::result::Result<String, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| format!("not a valid gzip text file ({e})"))?;
    Ok(text)
}

/// The bundled digits: 1797 images of 8×8 pixels, features scaled to [0, 1], labels 0–9.
///
/// The test set of the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin,
/// C. Kaynak, 1998; CC BY 4.0), as shipped in scikit-learn.
pub fn digits() -> Result<Dataset> {
    static GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
    let text = gunzip(GZ).map_err(Error::Data)?;
    let mut data = parse_csv(&text, true)?;
    data.scale_features(1.0 / 16.0);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_header_and_target() {
        let d = parse_csv("a,b,y\n1,2,0\n\n# note\n3,4,1\n", true).unwrap();
        assert_eq!((d.len(), d.dim()), (2, 2));
        assert_eq!(d.row(1), &[3.0, 4.0]);
        assert_eq!(d.targets().unwrap(), &[0.0, 1.0]);
        let p = parse_csv("0\n0\n3\n", false).unwrap();
        assert_eq!((p.len(), p.dim(), p.target(0)), (3, 1, None));
    }

    #[test]
    fn malformed_csv_names_the_line() {
        let cases = [
            ("1,2\n3\n", "line 2"),
            ("1,2\n3,x\n", "line 2, column 2"),
            ("1,2\n3,inf\n", "not finite"),
            ("", "no data"),
            ("# only a comment\n", "no data"),
            ("5\n", "need at least 2"),
            (
                "1,2\n1e39,0\n",
                "line 2, column 1: `1e39` is beyond the range of f32",
            ),
        ];
        for (text, needle) in cases {
            let err = parse_csv(text, true).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_number() {
        let d = parse_csv("\u{feff}1,0\n2,1\n", true).unwrap();
        assert_eq!(d.row(0), &[1.0]);
        let h = parse_csv("\u{feff}x,y\n2,1\n", true).unwrap();
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn gzip_output_is_bounded() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b'0'; 1 << 20]).unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(bounded_gunzip(&gz, 1 << 20).unwrap().len(), 1 << 20);
        let err = bounded_gunzip(&gz, 1000).unwrap_err();
        assert!(err.contains("more than the limit"), "{err}");
    }

    #[test]
    fn digits_are_bundled() {
        let d = digits().unwrap();
        assert_eq!((d.len(), d.dim()), (1797, 64));
        assert!(d.features().iter().all(|&x| (0.0..=1.0).contains(&x)));
        let labels = d.targets().unwrap();
        assert!(
            labels
                .iter()
                .all(|&y| y == y.round() && (0.0..10.0).contains(&y))
        );
    }
}
