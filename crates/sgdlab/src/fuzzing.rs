//! Entry points of the fuzz targets (`fuzz/`), one per parser or loader of untrusted input.
//!
//! Each takes arbitrary bytes and must return — never panic, never allocate beyond what the
//! input's own size justifies — whatever the bytes are. They live in the library so that the
//! same code runs under the coverage-guided fuzzer (`cargo fuzz run NAME -s none`) and, over
//! the checked-in corpus (`fuzz/corpus/NAME/`), in the test suite.

use crate::model::{LossUnit, Network};
use crate::optim::{Optimizer, OptimizerSpec};
use crate::train::{CheckpointMeta, checkpoint_from_bytes};

/// The names of the fuzz targets, as in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 8] = [
    "spec",
    "csv",
    "idx",
    "checkpoint",
    "replay",
    "state",
    "state_dict",
    "schedule",
];

/// Runs the target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "spec" => spec(data),
        "csv" => csv(data),
        "idx" => idx(data),
        "checkpoint" => checkpoint(data),
        "replay" => replay(data),
        "state" => state(data),
        "state_dict" => state_dict(data),
        "schedule" => schedule(data),
        _ => return false,
    }
    true
}

/// Optimizer specs: parsing never panics, and a parsed spec's `Display` parses back to it.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = text.parse::<OptimizerSpec>() {
        let shown = spec.to_string();
        let again: OptimizerSpec = shown
            .parse()
            .unwrap_or_else(|e| panic!("`{text}` printed as `{shown}`, which fails: {e}"));
        assert_eq!(again, spec, "`{text}` printed as `{shown}`");
        let _ = Optimizer::<f32>::new(spec);
    }
}

/// CSV text, with and without a target column (the first byte chooses).
pub fn csv(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(set) = crate::data::parse_csv(text, first & 1 == 1)
        && let Some(labels) = set.targets()
    {
        let _ = crate::resources::class_count(labels);
        let _ = crate::data::stratified_split(&set, 0.25, 0);
    }
}

/// IDX bytes, raw and as a gzip stream read the way files are (bounded by the header).
pub fn idx(data: &[u8]) {
    let _ = crate::data::parse_idx(data, "fuzz");
    let _ = crate::data::idx_from_reader(data, "fuzz");
}

/// Optimizer state (f32 and f64) and training checkpoints (for a fixed small network); a
/// loaded optimizer state re-serialises to bytes that load back to the same bytes.
pub fn checkpoint(data: &[u8]) {
    // The checksum is checked first; the parser behind it is fuzzed too.
    let _ = Optimizer::<f32>::from_bytes(data);
    if let Ok(opt) = Optimizer::<f32>::from_bytes_unverified(data) {
        // Re-serialising what was loaded gives bytes that load to the same bytes again (bit
        // for bit: a NaN in a buffer is kept, though NaN != NaN under `==`).
        let bytes = opt.to_bytes().expect("a loaded state serialises");
        let again = Optimizer::<f32>::from_bytes(&bytes).expect("a saved state loads");
        assert!(again.to_bytes().ok().as_deref() == Some(&bytes[..]));
    }
    let _ = Optimizer::<f64>::from_bytes_unverified(data);
    if let Ok(net) = Network::new(3, &[2], 2, LossUnit::Nats) {
        let _ = checkpoint_from_bytes(data, &fuzz_meta(&net), &net);
    }
}

/// The run identity of the `checkpoint` target's training checkpoints.
pub fn fuzz_meta(net: &Network) -> CheckpointMeta {
    CheckpointMeta {
        optimizer: "adam".into(),
        groups: Vec::new(),
        widths: net.widths().to_vec(),
        loss_unit: "nats".into(),
        seed: 0,
        batch: 4,
        schedule: "constant".into(),
        epochs: 3,
        ema_weights: Some(0.9),
        data: "fuzz".into(),
        data_sha256: "0".repeat(64),
    }
}

/// Replay cases: parsing never panics; small ones are run in f64 and f32.
pub fn replay(data: &[u8]) {
    if let Ok(case) = crate::replay::Case::from_json(data)
        && case.init.len() <= 64
        && case.grads.len() <= 64
    {
        let _ = case.replay::<f64>();
        let _ = case.replay::<f32>();
    }
}

/// The most elements a fuzz target steps after loading a state (a bound on its time).
const STEP_LIMIT: usize = 4096;

/// Steps a loaded optimizer once on zero parameters and unit gradients of its layout (if it
/// has one and it is small): whatever a state holds, a step returns (an error or a report).
fn step_loaded<T: crate::Real>(opt: &mut Optimizer<T>) {
    use crate::optim::{StepInfo, Tensor};
    let Some(layout) = opt.layout().map(<[_]>::to_vec) else {
        return;
    };
    let numel = layout.iter().try_fold(0usize, |n, (_, shape)| {
        n.checked_add(shape.iter().try_fold(1usize, |m, &d| m.checked_mul(d))?)
    });
    if numel.is_none_or(|n| n > STEP_LIMIT) {
        return;
    }
    let tensors = |x: f64| -> Option<Vec<Tensor<T>>> {
        layout
            .iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                Tensor::new(name.clone(), shape.clone(), vec![T::from_f64(x); n]).ok()
            })
            .collect()
    };
    if let (Some(mut params), Some(grads)) = (tensors(0.0), tensors(1.0)) {
        let _ = opt.step(&mut params, &grads, &StepInfo::with_loss(1.0));
    }
}

/// Optimizer-state bytes as the Python package loads them (`Optimizer.from_bytes`, `load`,
/// unpickling): the element type from the metadata, the checksum, then the state itself (also
/// past the checksum, so that the parser behind it is reached); a loaded state converts to a
/// state dict and back unchanged, and takes a step.
pub fn state(data: &[u8]) {
    let _ = Optimizer::<f64>::from_bytes(data);
    match crate::optim::stored_dtype(data) {
        Ok("f32") => state_of::<f32>(data),
        Ok(_) => state_of::<f64>(data),
        Err(_) => {}
    }
}

fn state_of<T: crate::Real>(data: &[u8]) {
    if let Ok(mut opt) = Optimizer::<T>::from_bytes_unverified(data) {
        let through_dict = |o: &Optimizer<T>| {
            let sd = o.state_dict().expect("a loaded state has a state dict");
            Optimizer::<T>::from_state_dict(&sd).expect("a state dict loads back")
        };
        let back = through_dict(&opt);
        // Bit for bit (NaNs included) in f32; in f64 a signalling NaN in bfloat16 state comes
        // back quiet (the widening to f64 quiets it), so there the round trip must be a fixed
        // point from the first one on.
        if T::BYTES == 4 {
            assert!(back.to_bytes().ok() == opt.to_bytes().ok());
        }
        assert!(through_dict(&back).to_bytes().ok() == back.to_bytes().ok());
        step_loaded(&mut opt);
    }
}

/// A state dict as the Python package receives one (`load_state_dict`): string metadata and
/// named buffers, here from JSON `{"metadata": {...}, "buffers": {name: [shape, values]}}`;
/// loading never panics, and a loaded state takes a step.
pub fn state_dict(data: &[u8]) {
    use crate::optim::StateDict;
    use std::collections::BTreeMap;
    #[derive(serde::Deserialize)]
    struct Raw {
        metadata: BTreeMap<String, String>,
        buffers: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    }
    let Ok(raw) = serde_json::from_slice::<Raw>(data) else {
        return;
    };
    let f64s = StateDict {
        metadata: raw.metadata.clone(),
        buffers: raw.buffers.clone(),
    };
    if let Ok(mut opt) = Optimizer::<f64>::from_state_dict(&f64s) {
        step_loaded(&mut opt);
    }
    let f32s = StateDict {
        metadata: raw.metadata,
        buffers: raw
            .buffers
            .into_iter()
            .map(|(k, (s, v))| (k, (s, v.into_iter().map(|x| x as f32).collect())))
            .collect(),
    };
    if let Ok(mut opt) = Optimizer::<f32>::from_state_dict(&f32s) {
        step_loaded(&mut opt);
    }
}

/// Schedule text (the one grammar, closed and with a run's open lengths): parsing never panics or
/// overflows the stack, a parsed schedule prints back to itself, and its factor is defined at
/// every step, the last a counter can hold included.
pub fn schedule(data: &[u8]) {
    use crate::optim::Schedule;
    use crate::train::ScheduleSpec;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = text.parse::<Schedule>() {
        let shown = s.to_string();
        let again: Schedule = shown
            .parse()
            .unwrap_or_else(|e| panic!("`{text}` printed as `{shown}`, which fails: {e}"));
        assert_eq!(again, s, "`{text}` printed as `{shown}`");
        for t in [0, 1, 2, 1000, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let _ = s.factor(t);
        }
    }
    if let Ok(spec) = text.parse::<ScheduleSpec>() {
        for (steps, epochs) in [(1, 1), (10, 3), (u64::MAX, u64::MAX)] {
            if let Ok(s) = spec.for_run(steps, epochs) {
                let _ = s.factor(steps.saturating_sub(1));
            }
        }
    }
}
