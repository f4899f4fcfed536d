//! The model's weights and the optimizer's state in one file, in one atomic write: after a
//! crash the file holds the previous pair or the new one, never the weights of one step
//! beside the optimizer state of another.
//!
//! Layout: the optimizer state as [`Optimizer::save`] writes it, every key and tensor name
//! prefixed with `optimizer.`; the weights as tensors `weights/{name}` (the parameters' type);
//! metadata `format` = [`BUNDLE_FORMAT`], `version`, `weights` (JSON `[[name, [shape...]],
//! ...]`, in the caller's order) and a SHA-256 of all of it, checked on load.
//!
//! ```
//! use sgdlab_optim::{Optimizer, StepInfo, Tensor};
//!
//! let dir = std::env::temp_dir().join(format!("sgdlab-bundle-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("run.safetensors");
//! let mut weights = vec![Tensor::vector("w", vec![1.0f64, 2.0])];
//! let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.1")?;
//! opt.step(&mut weights, &[Tensor::vector("w", vec![0.5, -0.5])], &StepInfo::default())?;
//! opt.save_with_weights(&path, &weights)?;
//! let (loaded, loaded_weights) = Optimizer::<f64>::load_with_weights(&path)?;
//! assert_eq!((loaded, loaded_weights), (opt, weights));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::SafeTensors;

use crate::checkpoint::{content_hash, data_section, dtype_of, encode_hashed};
use crate::checks::check_unique_names;
use crate::{Error, MAX_TENSORS, Optimizer, Real, Result, Tensor};

/// The format's name in a weights-and-optimizer file's metadata.
pub const BUNDLE_FORMAT: &str = "sgdlab-weights-and-optimizer";

/// The version of the format written (and read).
const BUNDLE_VERSION: &str = "1";

/// The prefix of the optimizer's keys and tensors in the file.
const OPTIMIZER: &str = "optimizer.";

impl<T: Real> Optimizer<T> {
    /// Saves `weights` and the optimizer's state to `path` in one atomic write (a temporary
    /// file, flushed, renamed over `path`, the directory flushed), with a SHA-256 of all of it.
    ///
    /// Refuses, writing nothing, weights with a repeated name, or weights that do not hold
    /// every tensor the optimizer steps with its shape (a pair that could not resume).
    pub fn save_with_weights(&self, path: &Path, weights: &[Tensor<T>]) -> Result<()> {
        let bytes = self.to_bytes_with_weights(weights)?;
        crate::io::write_atomic(path, &bytes).map_err(|e| Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        })
    }

    /// Loads what [`Optimizer::save_with_weights`] wrote: the optimizer and the weights, in
    /// the order they were saved. Errors name the file and the problem (unreadable, corrupt,
    /// another format, another element type, inconsistent parts).
    pub fn load_with_weights(path: &Path) -> Result<(Self, Vec<Tensor<T>>)> {
        let at = |reason: String| Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let bytes =
            crate::io::read_safetensors_file(path, u64::MAX, "a weights-and-optimizer file")
                .map_err(|e| at(format!("cannot read: {e}")))?;
        Self::from_bytes_with_weights(&bytes).map_err(|e| match e {
            Error::Checkpoint { reason, .. } => at(reason),
            other => at(other.to_string()),
        })
    }

    /// [`Optimizer::save_with_weights`]'s bytes.
    pub fn to_bytes_with_weights(&self, weights: &[Tensor<T>]) -> Result<Vec<u8>> {
        let fail = |e: String| Error::Unsupported(format!("cannot encode weights and state: {e}"));
        check_unique_names("weight name", weights.iter().map(Tensor::name))?;
        for (name, shape) in self.layout().unwrap_or_default() {
            if !weights
                .iter()
                .any(|w| w.name() == name && w.shape() == shape.as_slice())
            {
                return Err(Error::Checkpoint {
                    path: "(weights)".to_string(),
                    reason: format!(
                        "the optimizer steps `{name}` of shape {shape:?}, which the weights do \
                         not hold: the pair could not be resumed"
                    ),
                });
            }
        }
        let (opt_meta, opt_entries) = self.to_parts(OPTIMIZER)?;
        let layout: Vec<(&str, &[usize])> = weights.iter().map(|w| (w.name(), w.shape())).collect();
        let mut metadata: HashMap<String, String> = opt_meta.into_iter().collect();
        metadata.insert("format".into(), BUNDLE_FORMAT.into());
        metadata.insert("version".into(), BUNDLE_VERSION.into());
        metadata.insert(
            "weights".into(),
            serde_json::to_string(&layout).map_err(|e| fail(e.to_string()))?,
        );
        let weight_entries: Vec<(String, Vec<u8>)> = weights
            .iter()
            .map(|w| {
                let mut raw = Vec::with_capacity(w.len() * T::BYTES);
                for &x in w.data() {
                    x.write_le(&mut raw);
                }
                (format!("weights/{}", w.name()), raw)
            })
            .collect();
        encode_hashed(metadata, || {
            weights
                .iter()
                .zip(&weight_entries)
                .map(|(w, (n, raw))| (n.as_str(), w.shape(), raw.as_slice(), dtype_of::<T>()))
                .chain(
                    opt_entries
                        .iter()
                        .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d)),
                )
        })
        .map_err(fail)
    }

    /// [`Optimizer::load_with_weights`] from the file's bytes (errors name the path
    /// `(bytes)`).
    pub fn from_bytes_with_weights(bytes: &[u8]) -> Result<(Self, Vec<Tensor<T>>)> {
        let fail = |reason: String| Error::Checkpoint {
            path: "(bytes)".to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| fail(format!("not a valid safetensors file ({e})")))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| fail(format!("corrupt header ({e})")))?;
        let md = header
            .metadata()
            .as_ref()
            .ok_or_else(|| fail("no metadata: not a weights-and-optimizer file".into()))?;
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| fail(format!("metadata lacks `{k}`")))
        };
        if get("format")? != BUNDLE_FORMAT {
            return Err(fail(format!(
                "format `{}` is not `{BUNDLE_FORMAT}`",
                get("format")?
            )));
        }
        if get("version")? != BUNDLE_VERSION {
            return Err(fail(format!(
                "format version {} is not supported (this build reads version {BUNDLE_VERSION})",
                get("version")?
            )));
        }
        let data = data_section(bytes).ok_or_else(|| fail("no data section".into()))?;
        if content_hash(md, data) != *get("sha256")? {
            return Err(fail(
                "its SHA-256 does not match its contents: the file is corrupt".into(),
            ));
        }
        let layout: Vec<(String, Vec<usize>)> = serde_json::from_str(get("weights")?)
            .map_err(|e| fail(format!("bad `weights`: {e}")))?;
        if layout.len() > MAX_TENSORS {
            return Err(fail(format!("more than {MAX_TENSORS} weight tensors")));
        }
        let optimizer = Self::from_parts(md, &st, OPTIMIZER)?;
        let weights = layout
            .into_iter()
            .map(|(name, shape)| {
                let key = format!("weights/{name}");
                let view = st
                    .tensor(&key)
                    .map_err(|_| fail(format!("lacks the tensor `{key}`")))?;
                if view.dtype() != dtype_of::<T>() || view.shape() != shape.as_slice() {
                    return Err(fail(format!(
                        "`{key}` is {:?} {:?}, not {} {shape:?}",
                        view.dtype(),
                        view.shape(),
                        T::NAME
                    )));
                }
                let data = view.data().chunks_exact(T::BYTES).map(T::read_le).collect();
                Tensor::new(name, shape, data)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((optimizer, weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StepInfo;

    fn stepped() -> (Optimizer<f32>, Vec<Tensor<f32>>) {
        let mut w = vec![
            Tensor::new(
                "fc.weight",
                vec![2, 3],
                vec![0.1, -0.2, 0.3, 0.4, -0.5, 0.6],
            )
            .unwrap(),
            Tensor::vector("fc.bias", vec![0.0, 1.0]),
        ];
        let g: Vec<Tensor<f32>> = w.iter().map(|t| t.zeros_like()).collect();
        let g: Vec<Tensor<f32>> = g
            .into_iter()
            .map(|mut t| {
                t.data_mut()
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = 0.1 * i as f32 - 0.2);
                t
            })
            .collect();
        let mut opt = Optimizer::from_spec("adamw:lr=0.01,state_dtype=bf16").unwrap();
        for _ in 0..3 {
            opt.step(&mut w, &g, &StepInfo::default()).unwrap();
        }
        (opt, w)
    }

    /// Saved and loaded, the pair is equal to what was saved (the optimizer's bfloat16 state
    /// and step counts included), and a step after loading is the uninterrupted step.
    #[test]
    fn weights_and_state_round_trip_and_resume_exactly() {
        let (mut opt, mut w) = stepped();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.safetensors");
        opt.save_with_weights(&path, &w).unwrap();
        let (mut opt2, mut w2) = Optimizer::<f32>::load_with_weights(&path).unwrap();
        assert_eq!((&opt2, &w2), (&opt, &w));
        let g: Vec<Tensor<f32>> = w.iter().map(|t| t.zeros_like()).collect();
        opt.step(&mut w, &g, &StepInfo::default()).unwrap();
        opt2.step(&mut w2, &g, &StepInfo::default()).unwrap();
        assert_eq!((opt2, w2), (opt, w));
    }

    /// Every corrupt byte, a pair that could not resume, repeated names, another element type
    /// and another format are refused by name.
    #[test]
    fn bad_pairs_and_files_are_refused() {
        let (opt, w) = stepped();
        let bytes = opt.to_bytes_with_weights(&w).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = Optimizer::<f32>::from_bytes_with_weights(&flipped).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        let err = opt.to_bytes_with_weights(&w[..1]).unwrap_err();
        assert!(err.to_string().contains("`fc.bias`"), "{err}");
        let twice = vec![w[1].clone(), w[1].clone(), w[0].clone()];
        assert!(opt.to_bytes_with_weights(&twice).is_err());
        let err = Optimizer::<f64>::from_bytes_with_weights(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("f64") || err.to_string().contains("dtype"),
            "{err}"
        );
        let err = Optimizer::<f32>::from_bytes_with_weights(&opt.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains(BUNDLE_FORMAT), "{err}");
        let err = Optimizer::<f32>::load_with_weights(Path::new("/nonexistent/pair")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pair"), "{err}");
    }
}
