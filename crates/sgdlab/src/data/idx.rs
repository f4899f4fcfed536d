//! MNIST-format IDX files (Fashion-MNIST, MNIST, ...), gzip-compressed or raw.
//!
//! An IDX file is two zero bytes, a type code (`0x08` = unsigned byte), the number of
//! dimensions, each dimension as a big-endian `u32`, then the data. Images are
//! `[n, rows, cols]`, labels `[n]`. Every header field and the exact data length are checked,
//! so a truncated or corrupt file is an error naming the file, never a short data set.

use std::path::{Path, PathBuf};

use std::io::{BufRead, BufReader, Read};

use super::{Dataset, Split};
use crate::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Parses an IDX byte array of unsigned bytes; returns the dimensions and the data.
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |m: String| Error::Data(format!("{what}: {m}"));
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes: too short for an IDX header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic number: not an IDX file".to_string()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported (expected 0x08, unsigned bytes)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(bad(format!("{ndim} dimensions (expected 1 to 4)")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated header".to_string()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            let b = &bytes[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let got = bytes.len() - header;
    if got != expected {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected} data bytes, the file has {got} ({})",
            if got < expected {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Reads `limit` bytes from `reader`, or fewer at its end.
fn read_up_to(reader: &mut impl Read, limit: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    reader.take(limit).read_to_end(out).map(|_| ())
}

/// The bytes of the IDX file `path` (decompressed when it starts with the gzip magic number),
/// read no further than its header declares plus one byte: a file that holds more than it
/// declares is refused by [`parse_idx`] without being decompressed whole. Only regular files
/// are read, and a declared size beyond
/// [`MAX_DATA_FILE_BYTES`](crate::resources::MAX_DATA_FILE_BYTES) or the available memory is
/// refused before it is allocated.
pub(crate) fn read_idx_file(path: &Path) -> Result<Vec<u8>> {
    let what = path.display().to_string();
    let io_err = |e: std::io::Error| Error::Data(format!("{what}: cannot read ({e})"));
    let file = std::fs::File::open(path).map_err(io_err)?;
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(Error::Data(format!(
            "{what}: an IDX file must be a regular file, not a device, FIFO or directory"
        )));
    }
    read_idx_bounded(file, &what)
}

/// Parses an IDX stream (gzip-compressed or raw) the way files are read: no further than its
/// header declares plus one byte. `what` names the stream in errors.
pub fn idx_from_reader(reader: impl Read, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx(&read_idx_bounded(reader, what)?, what)
}

fn read_idx_bounded(reader: impl Read, what: &str) -> Result<Vec<u8>> {
    let io_err = |e: std::io::Error| Error::Data(format!("{what}: cannot read ({e})"));
    let mut buffered = BufReader::new(reader);
    let gzip = buffered
        .fill_buf()
        .map_err(io_err)?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let gz_err = |e: std::io::Error| {
        if gzip {
            Error::Data(format!("{what}: corrupt or truncated gzip ({e})"))
        } else {
            Error::Data(format!("{what}: cannot read ({e})"))
        }
    };
    let mut bytes = Vec::new();
    read_up_to(&mut reader, 4, &mut bytes).map_err(gz_err)?;
    if bytes.len() < 4 {
        return Ok(bytes); // parse_idx names the problem
    }
    let ndim = u64::from(bytes[3]);
    read_up_to(&mut reader, 4 * ndim, &mut bytes).map_err(gz_err)?;
    let declared = bytes[4..]
        .chunks_exact(4)
        .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        .try_fold(1u64, |n, d| n.checked_mul(d));
    let cap = crate::resources::MAX_DATA_FILE_BYTES;
    let declared = match declared {
        Some(n) if n <= cap => n,
        _ => {
            return Err(Error::Data(format!(
                "{what}: the header declares more data than the limit of {}",
                crate::resources::human_bytes(cap)
            )));
        }
    };
    crate::resources::check_memory(&format!("{what} (as its header declares)"), declared)?;
    read_up_to(&mut reader, declared + 1, &mut bytes).map_err(gz_err)?;
    Ok(bytes)
}

fn load_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let (idims, pixels) = parse_idx(&read_idx_file(images)?, &images.display().to_string())?;
    let (ldims, labels_raw) = parse_idx(&read_idx_file(labels)?, &labels.display().to_string())?;
    if idims.len() < 2 {
        return Err(Error::Data(format!(
            "{}: images need at least 2 dimensions, found {idims:?}",
            images.display()
        )));
    }
    if ldims.len() != 1 {
        return Err(Error::Data(format!(
            "{}: labels need 1 dimension, found {ldims:?}",
            labels.display()
        )));
    }
    if idims[0] != ldims[0] {
        return Err(Error::Data(format!(
            "{} has {} images but {} has {} labels",
            images.display(),
            idims[0],
            labels.display(),
            ldims[0]
        )));
    }
    let d: usize = idims[1..].iter().product();
    let features = pixels.iter().map(|&p| f64::from(p) / 255.0).collect();
    let targets = labels_raw.iter().map(|&l| f64::from(l)).collect();
    Dataset::new(features, Some(targets), d)
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// Loads the four MNIST-format files of `dir` (`train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
/// optionally `.gz`), pixels scaled to [0, 1].
pub fn load_idx_dir(dir: &Path) -> Result<Split> {
    let stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let mut paths = Vec::new();
    for stem in stems {
        match find(dir, stem) {
            Some(p) => paths.push(p),
            None => {
                let hint = if dir == Path::new(FASHION_MNIST_DIR) {
                    "; install Fashion-MNIST with: apt-get install dataset-fashion-mnist"
                } else {
                    ""
                };
                return Err(Error::Data(format!(
                    "{} lacks {stem} (or {stem}.gz){hint}",
                    dir.display()
                )));
            }
        }
    }
    let train = load_pair(&paths[0], &paths[1])?;
    let test = load_pair(&paths[2], &paths[3])?;
    if train.dim() != test.dim() {
        return Err(Error::Data(format!(
            "{}: training images have {} pixels, test images {}",
            dir.display(),
            train.dim(),
            test.dim()
        )));
    }
    Split::new(train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_validates() {
        let (dims, data) = parse_idx(&idx(&[2, 2], &[1, 2, 3, 4]), "t").unwrap();
        assert_eq!((dims, data), (vec![2, 2], vec![1, 2, 3, 4]));
        let cases: [(Vec<u8>, &str); 5] = [
            (idx(&[2, 2], &[1, 2, 3]), "truncated"),
            (idx(&[2, 2], &[1, 2, 3, 4, 5]), "trailing"),
            (vec![1, 0, 8, 1], "magic"),
            (vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0], "element type"),
            (vec![0, 0], "too short"),
        ];
        for (bytes, needle) in cases {
            let err = parse_idx(&bytes, "f").unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn loads_a_directory_of_gzip_and_raw_files() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("sgdlab-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gz = |name: &str, bytes: &[u8]| {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        };
        gz(
            "train-images-idx3-ubyte",
            &idx(&[3, 1, 2], &[0, 255, 10, 20, 30, 40]),
        );
        gz("train-labels-idx1-ubyte", &idx(&[3], &[0, 1, 2]));
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx(&[1, 1, 2], &[5, 6])).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(&[1], &[1])).unwrap();
        let split = load_idx_dir(&dir).unwrap();
        assert_eq!(
            (split.train.len(), split.test.len(), split.train.dim()),
            (3, 1, 2)
        );
        assert_eq!(split.train.row(0), &[0.0, 1.0]);
        assert_eq!(split.classes, 3);
        // A label count that does not match the images.
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(&[2], &[1, 0])).unwrap();
        assert!(
            load_idx_dir(&dir)
                .unwrap_err()
                .to_string()
                .contains("labels")
        );
        // A truncated gzip file.
        let full = std::fs::read(dir.join("train-images-idx3-ubyte.gz")).unwrap();
        std::fs::write(
            dir.join("train-images-idx3-ubyte.gz"),
            &full[..full.len() / 2],
        )
        .unwrap();
        assert!(load_idx_dir(&dir).is_err());
        // A gzip bomb: the header declares 2 bytes, the stream holds 4 MB.
        let mut bomb = idx(&[2], &[0, 1]);
        bomb.extend(std::iter::repeat_n(7u8, 4 << 20));
        gz("train-labels-idx1-ubyte", &bomb);
        let got = read_idx_file(&dir.join("train-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(
            got.len(),
            8 + 2 + 1,
            "read stops one byte past the declared size"
        );
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            idx(&[2, 1, 2], &[1, 2, 3, 4]),
        )
        .unwrap();
        std::fs::remove_file(dir.join("train-images-idx3-ubyte.gz")).unwrap();
        let err = load_idx_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("trailing bytes"), "{err}");
        // An empty file is named in the error.
        std::fs::remove_file(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), b"").unwrap();
        let err = load_idx_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("train-labels-idx1-ubyte") && err.contains("too short"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = load_idx_dir(Path::new(FASHION_MNIST_DIR).join("nope").as_path());
        assert!(missing.unwrap_err().to_string().contains("lacks"));
    }
}
