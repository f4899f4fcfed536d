//! A run's checkpoint: one file holding the weights, their EMA, the optimizer state, the
//! metrics so far and what identifies the run, with a SHA-256 of all of it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::{EpochMetrics, Run, ScheduleSpec};
use crate::data::Split;
use crate::model::Network;
use crate::optim::{Optimizer, OptimizerSpec, Tensor};
use crate::{Error, Result};

/// What identifies a run: every setting that changes its numbers. A checkpoint records it,
/// and resuming with anything different is refused, naming the differences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The optimizer spec.
    pub optimizer: String,
    /// Its parameter groups ([`GroupSpec`](crate::optim::GroupSpec) Display form).
    pub groups: Vec<String>,
    /// Network layer widths.
    pub widths: Vec<usize>,
    /// Loss unit (`nats` or `bits`).
    pub loss_unit: String,
    /// Seed.
    pub seed: u64,
    /// Batch size (after clamping to the training set).
    pub batch: usize,
    /// Schedule (Display form).
    pub schedule: String,
    /// Epochs the run is configured for (only the cosine schedule depends on it; more epochs
    /// may be asked for on resume otherwise).
    pub epochs: usize,
    /// EMA decay of the weights.
    pub ema_weights: Option<f64>,
    /// Data set description, for messages (not compared: the content hash is).
    pub data: String,
    /// SHA-256 of the training and test sets as trained on ([`split_sha256`]).
    pub data_sha256: String,
}

/// SHA-256 of a split's contents: the number of classes, then for the training and the test
/// set their shape, features and labels as little-endian `f64`. Two paths to the same data
/// give the same hash; a changed file gives another.
pub fn split_sha256(split: &Split) -> String {
    let mut h = crate::io::Sha256::new();
    h.update((split.classes as u64).to_le_bytes());
    for set in [&split.train, &split.test] {
        h.update((set.len() as u64).to_le_bytes());
        h.update((set.dim() as u64).to_le_bytes());
        for x in set.features() {
            h.update(x.to_le_bytes());
        }
        for y in set.targets().unwrap_or(&[]) {
            h.update(y.to_le_bytes());
        }
    }
    h.hex()
}

impl CheckpointMeta {
    /// The settings in which `self` (a checkpoint's) and `asked` (a resuming command's)
    /// differ, in words; empty when the run may be resumed with `asked`.
    pub fn differences(&self, asked: &CheckpointMeta) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |what: &str, saved: String, now: String| {
            if saved != now {
                out.push(format!(
                    "{what}: the checkpoint has {saved}, this command asks for {now}"
                ));
            }
        };
        diff(
            "optimizer",
            format!("`{}`", self.optimizer),
            format!("`{}`", asked.optimizer),
        );
        let groups = |g: &[String]| match g {
            [] => "no parameter groups".to_string(),
            g => g
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        diff(
            "parameter groups",
            groups(&self.groups),
            groups(&asked.groups),
        );
        diff(
            "layer widths",
            format!("{:?}", self.widths),
            format!("{:?}", asked.widths),
        );
        diff("loss unit", self.loss_unit.clone(), asked.loss_unit.clone());
        diff("seed", self.seed.to_string(), asked.seed.to_string());
        diff(
            "batch size",
            self.batch.to_string(),
            asked.batch.to_string(),
        );
        diff("schedule", self.schedule.clone(), asked.schedule.clone());
        let ema = |e: Option<f64>| e.map_or("none".to_string(), |b| b.to_string());
        diff(
            "EMA of the weights",
            ema(self.ema_weights),
            ema(asked.ema_weights),
        );
        if self.data_sha256 != asked.data_sha256 {
            out.push(format!(
                "data: the checkpoint was trained on {} (SHA-256 {}), this command's data {} \
                 have other contents (SHA-256 {})",
                self.data,
                &self.data_sha256[..self.data_sha256.len().min(12)],
                asked.data,
                &asked.data_sha256[..asked.data_sha256.len().min(12)]
            ));
        }
        let length_matters = self
            .schedule
            .parse::<ScheduleSpec>()
            .map_or(true, |s| s.depends_on_length());
        if length_matters && self.epochs != asked.epochs {
            out.push(format!(
                "epochs: the {} schedule of the checkpoint spans {} epochs, this command asks \
                 for {} (the learning rate of every step would change)",
                self.schedule, self.epochs, asked.epochs
            ));
        }
        out
    }
}

/// The name of a run's checkpoint file in its directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const CHECKPOINT_FORMAT: &str = "sgdlab-train-checkpoint";
const CHECKPOINT_VERSION: &str = "2";

/// Serialises `run` as one checkpoint: tensors `weights/{name}`, `ema/{name}` and the
/// optimizer's `optimizer/{slot}/{name}`; metadata with the format, [`CheckpointMeta`], epoch,
/// step, metrics, divergence, the optimizer's own metadata (`optimizer.*`) and a SHA-256 of
/// all of it.
pub fn checkpoint_bytes(run: &Run, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    let fail = |e: String| Error::Unsupported(format!("cannot encode the checkpoint: {e}"));
    let json = |v: serde_json::Result<String>| v.map_err(|e| fail(e.to_string()));
    let (opt_meta, opt_entries) = run.optimizer.to_parts("optimizer.")?;
    let mut metadata: HashMap<String, String> = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("version".to_string(), CHECKPOINT_VERSION.to_string()),
        ("meta".to_string(), json(serde_json::to_string(meta))?),
        ("epoch".to_string(), run.epoch.to_string()),
        ("step".to_string(), run.step.to_string()),
        (
            "metrics".to_string(),
            json(serde_json::to_string(&run.metrics))?,
        ),
        (
            "diverged".to_string(),
            json(serde_json::to_string(&run.diverged))?,
        ),
    ]);
    metadata.extend(opt_meta);
    let le =
        |t: &Tensor<f32>| -> Vec<u8> { t.data().iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in &run.params {
        owned.push((format!("weights/{}", t.name()), t.shape().to_vec(), le(t)));
    }
    for t in run.ema.iter().flatten() {
        owned.push((format!("ema/{}", t.name()), t.shape().to_vec(), le(t)));
    }
    crate::optim::checkpoint::encode_hashed(metadata, || {
        owned
            .iter()
            .map(|(n, s, r)| (n.as_str(), s.as_slice(), r.as_slice(), Dtype::F32))
            .chain(
                opt_entries
                    .iter()
                    .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d)),
            )
    })
    .map_err(fail)
}

/// Saves `run` to `dir/checkpoint.safetensors` (the directory is created if needed) in one
/// atomic write: after a crash the directory holds the previous checkpoint or this one.
pub fn save_checkpoint(dir: &Path, run: &Run, meta: &CheckpointMeta) -> Result<()> {
    let fail = |e: String| Error::Checkpoint {
        path: dir.display().to_string(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
    let blob = checkpoint_bytes(run, meta)?;
    crate::io::write_atomic(&dir.join(CHECKPOINT_FILE), &blob)
        .map_err(|e| fail(format!("cannot write {CHECKPOINT_FILE}: {e}")))
}

/// Whether `dir` holds a checkpoint file (valid or not).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(CHECKPOINT_FILE).is_file()
}

/// Loads a run saved by [`save_checkpoint`] to continue it with the settings `meta` up to
/// `meta.epochs` epochs.
///
/// Refuses, naming the problem: a file that is not a checkpoint, is truncated or corrupt (its
/// SHA-256 does not match), has another format version, is internally inconsistent (the
/// optimizer's step count or layout against the weights', metrics against the epoch), has
/// tensors of the wrong shape for `net`, was made with other settings (each difference listed
/// in words), or has more epochs done than `meta.epochs` asks for.
pub fn load_checkpoint(dir: &Path, meta: &CheckpointMeta, net: &Network) -> Result<Run> {
    let path = dir.join(CHECKPOINT_FILE);
    // What the network's checkpoint can hold: weights and their EMA in f32, and at most
    // eight f64 optimizer buffers per parameter (state slots and a master copy) — a bound
    // checked against the file's header before its data are read.
    let max_data = (net.num_params() as u64).saturating_mul(2 * 4 + 8 * 8);
    let blob = crate::io::read_safetensors_file(&path, max_data, "a checkpoint").map_err(|e| {
        Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        }
    })?;
    checkpoint_from_bytes(&blob, meta, net).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// Reads the checkpoint in `dir` as it is, to use its weights rather than resume it: its
/// settings and the run (every check of [`load_checkpoint`] but the comparison with a
/// command's settings). Refuses a checkpoint of another network, naming both widths.
pub fn read_checkpoint(dir: &Path, net: &Network) -> Result<(CheckpointMeta, Run)> {
    let path = dir.join(CHECKPOINT_FILE);
    let fail = |reason: String| Error::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let max_data = (net.num_params() as u64).saturating_mul(2 * 4 + 8 * 8);
    let blob = crate::io::read_safetensors_file(&path, max_data, "a checkpoint")
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(&blob).map_err(|e| fail(format!("corrupt header ({e})")))?;
    let mut meta: CheckpointMeta = header
        .metadata()
        .as_ref()
        .and_then(|md| md.get("meta"))
        .ok_or_else(|| fail("no metadata: not an sgdlab training checkpoint".to_string()))
        .and_then(|m| serde_json::from_str(m).map_err(|e| fail(format!("bad meta: {e}"))))?;
    if meta.widths != net.widths() {
        return Err(fail(format!(
            "is a network of widths {:?}, not {:?}",
            meta.widths,
            net.widths()
        )));
    }
    let epochs = meta.epochs;
    meta.epochs = usize::MAX;
    let run = checkpoint_from_bytes(&blob, &meta, net).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => fail(reason),
        other => other,
    })?;
    meta.epochs = epochs;
    Ok((meta, run))
}

/// [`load_checkpoint`] from the file's bytes (errors name the path `(bytes)`).
pub fn checkpoint_from_bytes(blob: &[u8], meta: &CheckpointMeta, net: &Network) -> Result<Run> {
    let fail = |e: String| Error::Checkpoint {
        path: "(bytes)".to_string(),
        reason: e,
    };
    let st = SafeTensors::deserialize(blob)
        .map_err(|e| fail(format!("not a valid safetensors file ({e})")))?;
    let (_, header) =
        SafeTensors::read_metadata(blob).map_err(|e| fail(format!("corrupt header ({e})")))?;
    let md = header
        .metadata()
        .as_ref()
        .ok_or_else(|| fail("no metadata: not an sgdlab training checkpoint".to_string()))?;
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| fail(format!("metadata lacks `{k}`")))
    };
    if get("format")? != CHECKPOINT_FORMAT {
        return Err(fail("not an sgdlab training checkpoint".to_string()));
    }
    if get("version")? != CHECKPOINT_VERSION {
        return Err(fail(format!(
            "format version {} is not supported (this build reads version {CHECKPOINT_VERSION})",
            get("version")?
        )));
    }
    let data = crate::optim::checkpoint::data_section(blob)
        .ok_or_else(|| fail("no data section".to_string()))?;
    if crate::optim::checkpoint::content_hash(md, data) != *get("sha256")? {
        return Err(fail(
            "its SHA-256 does not match its contents: the file is corrupt; delete it to restart \
             this run, or restore it from a copy"
                .to_string(),
        ));
    }
    let saved: CheckpointMeta =
        serde_json::from_str(get("meta")?).map_err(|e| fail(format!("bad meta: {e}")))?;
    let differences = saved.differences(meta);
    if !differences.is_empty() {
        return Err(fail(format!(
            "was made with other settings, so it cannot be resumed by this command:\n  - {}",
            differences.join("\n  - ")
        )));
    }
    let count = |k: &str| -> Result<u64> {
        get(k)?
            .parse()
            .map_err(|_| fail(format!("`{k}` is not a number")))
    };
    let epoch = usize::try_from(count("epoch")?).map_err(|_| fail("bad epoch".to_string()))?;
    let step = count("step")?;
    if epoch > meta.epochs {
        return Err(fail(format!(
            "has {epoch} epochs done, more than the {} this command asks for; resuming would \
             discard them: ask for --epochs {epoch} or more",
            meta.epochs
        )));
    }
    let read = |name: &str, shape: &[usize]| -> Result<Tensor<f32>> {
        let view = st
            .tensor(name)
            .map_err(|_| fail(format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(fail(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let plain = name.split_once('/').map_or(name, |(_, n)| n);
        Tensor::new(plain, shape.to_vec(), data)
    };
    let shapes = net.shapes();
    let params = shapes
        .iter()
        .map(|(n, s)| read(&format!("weights/{n}"), s))
        .collect::<Result<Vec<_>>>()?;
    let ema = match meta.ema_weights {
        Some(_) => Some(
            shapes
                .iter()
                .map(|(n, s)| read(&format!("ema/{n}"), s))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let expected_tensors = shapes.len() * (1 + usize::from(meta.ema_weights.is_some()));
    let own_tensors = st
        .names()
        .iter()
        .filter(|n| !n.starts_with("optimizer."))
        .count();
    if own_tensors != expected_tensors {
        return Err(fail(format!(
            "holds {own_tensors} weight tensors, expected {expected_tensors}"
        )));
    }
    let optimizer = Optimizer::<f32>::from_parts(md, &st, "optimizer.").map_err(|e| match e {
        Error::Checkpoint { reason, .. } => fail(format!("optimizer state: {reason}")),
        other => fail(format!("optimizer state: {other}")),
    })?;
    let spec: OptimizerSpec = meta.optimizer.parse()?;
    let groups: Vec<String> = optimizer.groups().iter().map(ToString::to_string).collect();
    if *optimizer.spec() != spec || groups != meta.groups {
        return Err(fail(format!(
            "holds the optimizer state of `{}`, not of `{spec}` with groups {:?}",
            optimizer.describe(),
            meta.groups
        )));
    }
    if optimizer.steps().checked_add(optimizer.skipped()) != Some(step) {
        return Err(fail(format!(
            "the optimizer has taken {} steps, the weights {step}: the parts belong to different \
             moments",
            optimizer.steps() + optimizer.skipped()
        )));
    }
    if optimizer.layout().is_some_and(|l| l != shapes.as_slice()) {
        return Err(fail(
            "the optimizer's tensors are not the network's".to_string(),
        ));
    }
    let metrics: Vec<EpochMetrics> =
        serde_json::from_str(get("metrics")?).map_err(|e| fail(format!("bad metrics: {e}")))?;
    let diverged: Option<String> = serde_json::from_str(get("diverged")?)
        .map_err(|e| fail(format!("bad diverged flag: {e}")))?;
    // A run that diverged stopped inside an epoch, after its last metrics.
    let steps_agree = metrics.last().is_none_or(|m| match diverged {
        Some(_) => m.step <= step,
        None => m.step == step,
    });
    if metrics.len() != epoch || !steps_agree {
        return Err(fail(format!(
            "holds metrics of {} epochs for {epoch} epochs and {step} steps done",
            metrics.len()
        )));
    }
    Ok(Run {
        params,
        ema,
        optimizer,
        epoch,
        step,
        metrics,
        diverged,
    })
}
