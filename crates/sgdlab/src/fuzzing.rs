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
pub const TARGETS: [&str; 5] = ["spec", "csv", "idx", "checkpoint", "replay"];

/// Runs the target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "spec" => spec(data),
        "csv" => csv(data),
        "idx" => idx(data),
        "checkpoint" => checkpoint(data),
        "replay" => replay(data),
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
