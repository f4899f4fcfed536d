//! Optimizer state on disk: safetensors with JSON metadata, written atomically.
//!
//! Layout: one tensor `"{slot}/{parameter}"` per state buffer (dtype and shape of the
//! parameter; BF16 with `state_dtype=bf16`; with `state_dtype=q8`, the codes as U8 and the
//! scales, one per block, as F32 `"{slot}.absmax/{parameter}"`), `"master/{parameter}"` for
//! the master copy of bfloat16 parameters (`master_weights=true`), and string metadata:
//!
//! | key | value |
//! |---|---|
//! | `format` | `sgdlab-optimizer-state` |
//! | `version` | [`FORMAT_VERSION`] |
//! | `spec` | the optimizer spec (Display form) |
//! | `dtype` | `f32` or `f64` |
//! | `step`, `skipped` | step counts |
//! | `layout` | JSON `[[name, [shape...]], ...]`, or `null` before the first step |
//! | `tensor_scalars` | JSON `[[x, ...], ...]` per parameter tensor (exact: shortest round-trip decimal) |
//!
//! Every buffer is stored bit for bit, and the per-step scalars are recomputed from the step
//! count, so a resumed run reproduces the uninterrupted one exactly. The header's keys are
//! written sorted, so that equal states give byte-identical files.

use crate::{
    Error, Optimizer, OptimizerSpec, Real, Result, checks::check_unique_names,
    optimizer::TensorState, optimizer::scalars_of, optimizer::slots_of,
};

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

mod decode;

/// The checkpoint format's name in the metadata.
pub const FORMAT: &str = "sgdlab-optimizer-state";
/// The name under which the master copy of bfloat16 parameters is stored
/// (`master/{tensor}`, with `master_weights=true`).
pub const MASTER: &str = "master";

/// The version of the format written. Version 2 carries a SHA-256 of the file (metadata key
/// `sha256`), checked on every load; version 1 files (without one) are still read.
pub const FORMAT_VERSION: &str = "2";

/// The versions of the format read.
const READ_VERSIONS: [&str; 2] = ["1", "2"];

/// SHA-256 over a safetensors file's metadata (every key but `sha256`, sorted, as JSON) and
/// its data section: the checksum of optimizer-state files and training checkpoints.
pub fn content_hash(metadata: &HashMap<String, String>, data: &[u8]) -> String {
    use sha2::Digest;
    let sorted: std::collections::BTreeMap<&String, &String> = metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "sha256")
        .collect();
    let mut h = sha2::Sha256::new();
    h.update(serde_json::to_vec(&sorted).unwrap_or_default());
    h.update(data);
    crate::io::hex(&h.finalize())
}

/// The data section of safetensors bytes (after the 8-byte length and the header).
pub fn data_section(bytes: &[u8]) -> Option<&[u8]> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    bytes.get(8usize.checked_add(usize::try_from(len).ok()?)?..)
}

/// Reads an optimizer-state file ([`Optimizer::save`]) with its sizes checked before its data
/// are read (see [`crate::io::read_safetensors_file`]): a device, a FIFO, a truncated file or
/// one longer than its header declares is refused at once.
pub fn read_state_file(path: &Path) -> Result<Vec<u8>> {
    crate::io::read_safetensors_file(path, u64::MAX, "an optimizer-state file").map_err(|e| {
        Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        }
    })
}

/// A JSON array of at most [`MAX_TENSORS`](crate::MAX_TENSORS) elements, refused as soon as
/// the parser meets one more (so that a crafted header cannot make millions of them).
struct Bounded<T>(Vec<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Bounded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of at most {} entries", crate::MAX_TENSORS)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    if out.len() == crate::MAX_TENSORS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {} tensors (the most one optimizer steps)",
                            crate::MAX_TENSORS
                        )));
                    }
                    out.push(x);
                }
                Ok(Bounded(out))
            }
        }
        de.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// Parses bounded JSON array text.
fn bounded<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<Option<Vec<T>>> {
    serde_json::from_str::<Option<Bounded<T>>>(text).map(|o| o.map(|b| b.0))
}

/// The safetensors element type of `T`.
pub(crate) fn dtype_of<T: Real>() -> Dtype {
    if T::BYTES == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

type Layout = Vec<(String, Vec<usize>)>;

/// String metadata: key, value.
pub type Metadata = Vec<(String, String)>;

/// An optimizer's state in memory, as a checkpoint file holds it: string metadata (format,
/// spec, step counts, layout, schedule, groups) and every state buffer by name
/// (`{slot}/{tensor}`, e.g. `exp_avg/fc.weight`), to inspect, edit, or serialise
/// ([`Optimizer::from_state_dict`], then [`Optimizer::to_bytes`] or [`Optimizer::save`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StateDict<T> {
    /// The metadata, by key.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The buffers: shape and elements, by name.
    pub buffers: std::collections::BTreeMap<String, (Vec<usize>, Vec<T>)>,
}

/// A tensor to write: name, shape, little-endian bytes, element type.
pub type Entry = (String, Vec<usize>, Vec<u8>, Dtype);

/// A state buffer read back: in the parameters' type, bfloat16 bits, 8-bit codes, or `f32`
/// scales of 8-bit state (where the parameters are `f64`).
pub(crate) enum Buffer<T> {
    Full(Vec<T>),
    Bf16(Vec<u16>),
    Codes(Vec<u8>),
    Scales(Vec<f32>),
}

impl<T> Buffer<T> {
    fn len(&self) -> usize {
        match self {
            Buffer::Full(v) => v.len(),
            Buffer::Bf16(v) => v.len(),
            Buffer::Codes(v) => v.len(),
            Buffer::Scales(v) => v.len(),
        }
    }
}

/// The suffix of the slot name under which the block scales of 8-bit state are stored
/// (`exp_avg.absmax/{tensor}` beside the codes `exp_avg/{tensor}`).
pub const ABSMAX: &str = ".absmax";

/// Serialises tensors `(name, shape, little-endian bytes, dtype)` with `metadata` to
/// safetensors bytes whose header has sorted keys (equal contents, equal bytes).
pub fn encode_with<'a>(
    metadata: HashMap<String, String>,
    entries: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8], Dtype)>,
) -> std::result::Result<Vec<u8>, String> {
    let views = entries
        .into_iter()
        .map(|(name, shape, raw, dtype)| {
            TensorView::new(dtype, shape.to_vec(), raw)
                .map(|v| (name.to_string(), v))
                .map_err(|e| format!("cannot encode {name}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| e.to_string())
        .and_then(crate::io::canonical_safetensors)
}

/// [`encode_with`], with a `sha256` key added to `metadata`: the [`content_hash`] of the
/// metadata and the data section, which the loaders check. The data section does not depend
/// on the metadata, so the tensors (`entries()`, called twice) are encoded once to hash them,
/// then again with the hash in the header.
pub fn encode_hashed<'a, I>(
    mut metadata: HashMap<String, String>,
    entries: impl Fn() -> I,
) -> std::result::Result<Vec<u8>, String>
where
    I: IntoIterator<Item = (&'a str, &'a [usize], &'a [u8], Dtype)>,
{
    let first = encode_with(metadata.clone(), entries())?;
    let data = data_section(&first).ok_or("no data section")?;
    metadata.insert("sha256".to_string(), content_hash(&metadata, data));
    drop(first);
    encode_with(metadata, entries())
}

/// The element type, `"f32"` or `"f64"`, of the optimizer state serialised in `bytes` (by
/// [`Optimizer::to_bytes`] or [`Optimizer::save`]), read from its metadata: the type to load
/// it as when the caller does not know it (the Python package). Errors as
/// [`Optimizer::from_bytes`] does on bytes that are not an sgdlab optimizer state.
pub fn stored_dtype(bytes: &[u8]) -> Result<&'static str> {
    let meta = metadata_of(bytes)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bytes_error(format!(
            "not an sgdlab optimizer state (format is not `{FORMAT}`)"
        )));
    }
    match meta.get("dtype").map(String::as_str) {
        Some("f32") => Ok("f32"),
        Some("f64") => Ok("f64"),
        other => Err(bytes_error(format!("dtype is {other:?}, not f32 or f64"))),
    }
}

/// A checkpoint error about bytes that came from no file.
fn bytes_error(reason: String) -> Error {
    Error::Checkpoint {
        path: "(bytes)".to_string(),
        reason,
    }
}

/// The string metadata of safetensors `bytes`; an error if they are not safetensors or carry
/// none (then they are not an sgdlab optimizer state).
fn metadata_of(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bytes_error(format!("not a valid safetensors file ({e})")))?;
    header
        .metadata()
        .clone()
        .ok_or_else(|| bytes_error("no metadata: not an sgdlab optimizer state".into()))
}

impl<T: Real> Optimizer<T> {
    /// Serialises the optimizer (spec, step counts, every state buffer) to safetensors bytes.
    ///
    /// The metadata carry a SHA-256 of the whole (key `sha256`, format version 2), which
    /// [`Optimizer::from_bytes`] checks.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let fail = |e: String| Error::Unsupported(format!("cannot encode optimizer state: {e}"));
        let (metadata, entries) = self.to_parts("")?;
        encode_hashed(metadata.into_iter().collect(), || {
            entries
                .iter()
                .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d))
        })
        .map_err(fail)
    }

    /// The state as string metadata and safetensors entries `(name, shape, little-endian
    /// bytes)`, every key and tensor name prefixed with `prefix` (so that a training checkpoint
    /// can hold the optimizer beside the weights in one file).
    pub fn to_parts(&self, prefix: &str) -> Result<(Metadata, Vec<Entry>)> {
        self.parts(prefix, false)
    }

    /// [`Optimizer::to_parts`], with 8-bit state as it is kept (`widen` false: codes and
    /// `f32` scales) or widened to the parameters' type (`widen` true: the values
    /// x̂ = c\[q\]·a and the scales, for a [`StateDict`]).
    fn parts(&self, prefix: &str, widen: bool) -> Result<(Metadata, Vec<Entry>)> {
        let layout = self.layout.as_ref();
        let scalars: Vec<&Vec<f64>> = self.tensors.iter().map(|t| &t.scalars).collect();
        let json = |v: serde_json::Result<String>| {
            v.map_err(|e| Error::Unsupported(format!("cannot encode optimizer state: {e}")))
        };
        let mut metadata = vec![
            ("format", FORMAT.to_string()),
            ("version", FORMAT_VERSION.to_string()),
            ("spec", self.spec.to_string()),
            ("dtype", T::NAME.to_string()),
            ("step", self.step.to_string()),
            ("skipped", self.skipped.to_string()),
            ("layout", json(serde_json::to_string(&layout))?),
            ("tensor_scalars", json(serde_json::to_string(&scalars))?),
            ("schedule", self.schedule.to_string()),
        ];
        if self.eval_mode {
            // The parameters hold the evaluation point: train_mode after a load must know.
            metadata.push(("eval_mode", "true".to_string()));
        }
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(ToString::to_string).collect();
            let tensor_groups: Vec<usize> = self.tensors.iter().map(|t| t.group).collect();
            metadata.push(("groups", json(serde_json::to_string(&groups))?));
            metadata.push((
                "tensor_groups",
                json(serde_json::to_string(&tensor_groups))?,
            ));
        }
        let metadata = metadata
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
        let mut entries: Vec<Entry> = Vec::new();
        if let Some(layout) = layout {
            for (t, ((name, shape), state)) in layout.iter().zip(&self.tensors).enumerate() {
                let rule = &self.spec_of(t).rule;
                for (k, (slot, buffer)) in
                    self.slot_names_of(t).iter().zip(&state.slots).enumerate()
                {
                    let mut raw = Vec::with_capacity(buffer.len() * T::BYTES);
                    for &x in buffer {
                        x.write_le(&mut raw);
                    }
                    let name = format!("{prefix}{slot}/{name}");
                    entries.push((name, rule.slot_shape(k, shape), raw, dtype_of::<T>()));
                }
                for (slot, buffer) in self.slot_names_of(t).iter().zip(&state.lowp) {
                    let raw = buffer.iter().flat_map(|b| b.to_le_bytes()).collect();
                    let name = format!("{prefix}{slot}/{name}");
                    entries.push((name, shape.clone(), raw, Dtype::BF16));
                }
                let block = self.spec_of(t).block_size;
                for (slot, q) in self.slot_names_of(t).iter().zip(&state.quant) {
                    let codes = format!("{prefix}{slot}/{name}");
                    let scales = format!("{prefix}{slot}{ABSMAX}/{name}");
                    let n_blocks = vec![q.absmax.len()];
                    if widen {
                        let wide = |xs: &mut dyn Iterator<Item = f32>| {
                            let mut raw = Vec::new();
                            for x in xs {
                                T::from_f64(f64::from(x)).write_le(&mut raw);
                            }
                            raw
                        };
                        let values = wide(&mut q.values(block).into_iter());
                        entries.push((codes, shape.clone(), values, dtype_of::<T>()));
                        let absmax = wide(&mut q.absmax.iter().copied());
                        entries.push((scales, n_blocks, absmax, dtype_of::<T>()));
                    } else {
                        entries.push((codes, shape.clone(), q.codes.clone(), Dtype::U8));
                        let raw = q.absmax.iter().flat_map(|a| a.to_le_bytes()).collect();
                        entries.push((scales, n_blocks, raw, Dtype::F32));
                    }
                }
                if !state.master.is_empty() {
                    let mut raw = Vec::with_capacity(state.master.len() * T::BYTES);
                    for &x in &state.master {
                        x.write_le(&mut raw);
                    }
                    let name = format!("{prefix}{MASTER}/{name}");
                    entries.push((name, shape.clone(), raw, dtype_of::<T>()));
                }
            }
        }
        Ok((metadata, entries))
    }

    /// Saves the optimizer to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::io::write_atomic(path, &bytes).map_err(|e| Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        })
    }

    /// Loads an optimizer saved by [`Optimizer::save`].
    ///
    /// Errors name the file and the problem: unreadable, not a safetensors file, truncated,
    /// another format or version, another dtype, or inconsistent buffers.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_state_file(path)?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint { reason, .. } => Error::Checkpoint {
                path: path.display().to_string(),
                reason,
            },
            other => Error::Checkpoint {
                path: path.display().to_string(),
                reason: other.to_string(),
            },
        })
    }

    /// Loads an optimizer saved by [`Optimizer::save`] and continues it with `spec`, which may
    /// differ from the saved spec in hyper-parameters that keep the state's shape (`lr`,
    /// `weight_decay`, betas, ...): the explicit way to change them across a restart. Another
    /// rule, or a change of the state's buffers, is an error.
    pub fn load_as(path: &Path, spec: &OptimizerSpec) -> Result<Self> {
        let mut opt = Self::load(path)?;
        opt.replace_spec(spec.clone())
            .map_err(|e| Error::Checkpoint {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(opt)
    }

    /// Loads an optimizer saved by [`Optimizer::save`] and checks that it was saved for
    /// `spec`: resuming with another optimizer or other hyper-parameters is an error (see
    /// [`Optimizer::load_as`] to allow hyper-parameter changes).
    pub fn load_for(path: &Path, spec: &OptimizerSpec) -> Result<Self> {
        let opt = Self::load(path)?;
        if opt.spec != *spec {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                reason: format!("holds the state of `{}`, not of `{spec}`", opt.spec),
            });
        }
        Ok(opt)
    }

    /// Parses the bytes written by [`Optimizer::to_bytes`], checking their SHA-256 (a flipped
    /// byte anywhere is an error, not a wrong state).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bytes_error(format!("not a valid safetensors file ({e})")))?;
        let meta = metadata_of(bytes)?;
        if meta.get("version").map(String::as_str) != Some("1") {
            let data = data_section(bytes).ok_or_else(|| bytes_error("no data section".into()))?;
            match meta.get("sha256") {
                None => {
                    return Err(bytes_error(
                        "metadata lacks `sha256` (the checksum of format version 2)".into(),
                    ));
                }
                Some(sum) if *sum != content_hash(&meta, data) => {
                    return Err(bytes_error(
                        "its SHA-256 does not match its contents: the state is corrupt".into(),
                    ));
                }
                Some(_) => {}
            }
        }
        Self::from_parts(&meta, &st, "")
    }

    /// [`Optimizer::from_bytes`] without the checksum, so that a fuzz target reaches the
    /// parser behind it. Not for loading files: nothing detects a corrupt one.
    #[doc(hidden)]
    pub fn from_bytes_unverified(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bytes_error(format!("not a valid safetensors file ({e})")))?;
        Self::from_parts(&metadata_of(bytes)?, &st, "")
    }

    /// Rebuilds an optimizer from [`Optimizer::to_parts`]'s metadata and tensors (with the
    /// same `prefix`), checking every field. Tensors without the prefix are ignored.
    pub fn from_parts(
        meta: &HashMap<String, String>,
        st: &SafeTensors<'_>,
        prefix: &str,
    ) -> Result<Self> {
        let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        let lookup = |key: &str| {
            st.tensor(key).ok().map(|view| {
                let raw = view.data();
                if view.dtype() == dtype_of::<T>() {
                    let data = raw.chunks_exact(T::BYTES).map(T::read_le).collect();
                    Ok((view.shape().to_vec(), Buffer::Full(data)))
                } else if view.dtype() == Dtype::BF16 {
                    let data = raw
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    Ok((view.shape().to_vec(), Buffer::Bf16(data)))
                } else if view.dtype() == Dtype::U8 {
                    Ok((view.shape().to_vec(), Buffer::Codes(raw.to_vec())))
                } else if view.dtype() == Dtype::F32 {
                    let data = raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    Ok((view.shape().to_vec(), Buffer::Scales(data)))
                } else {
                    Err(format!("{:?} {:?}", view.dtype(), view.shape()))
                }
            })
        };
        Self::from_source(meta, &names, &lookup, prefix)
    }

    /// The state in memory ([`StateDict`]): the metadata and buffers a checkpoint holds.
    pub fn state_dict(&self) -> Result<StateDict<T>> {
        let (metadata, entries) = self.parts("", true)?;
        // bfloat16 buffers are widened (exactly), 8-bit ones dequantized (with their scales);
        // from_state_dict narrows them back.
        let buffers = entries
            .into_iter()
            .map(|(name, shape, raw, dtype)| {
                let data = if dtype == Dtype::BF16 {
                    raw.chunks_exact(2)
                        .map(|b| T::from_bf16(u16::from_le_bytes([b[0], b[1]])))
                        .collect()
                } else {
                    raw.chunks_exact(T::BYTES).map(T::read_le).collect()
                };
                (name, (shape, data))
            })
            .collect();
        Ok(StateDict {
            metadata: metadata.into_iter().collect(),
            buffers,
        })
    }

    /// Rebuilds an optimizer from a [`StateDict`] (as from a file: every field checked).
    pub fn from_state_dict(state: &StateDict<T>) -> Result<Self> {
        let meta: HashMap<String, String> = state.metadata.clone().into_iter().collect();
        let names: Vec<String> = state.buffers.keys().cloned().collect();
        let lookup = |key: &str| {
            state
                .buffers
                .get(key)
                .map(|(s, d)| Ok((s.clone(), Buffer::Full(d.clone()))))
        };
        Self::from_source(&meta, &names, &lookup, "")
    }

    /// Replaces this optimizer's state by `state` (PyTorch's `load_state_dict`); on error
    /// nothing changes.
    pub fn load_state_dict(&mut self, state: &StateDict<T>) -> Result<()> {
        *self = Self::from_state_dict(state)?;
        Ok(())
    }
}
