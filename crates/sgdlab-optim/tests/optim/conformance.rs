//! Conformance with PyTorch: the reference trajectories in `tests/data/conformance/` were
//! computed with PyTorch in float64 (see each file's `source`). sgdlab must reproduce them to
//! 1e-10 relative in f64 and, in f32, to what single precision allows (1e-6; 3e-6 for Muon's
//! matrix products).

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sgdlab_optim::Real;
use sgdlab_optim::replay::worst_relative_error;

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// A reference file: its name and the library's replay case (shape, expected trajectories).
struct Case {
    name: String,
    case: sgdlab_optim::replay::Case,
}

fn load(path: &Path) -> Case {
    let bytes = std::fs::read(path).unwrap();
    let named: Named = serde_json::from_slice(&bytes).unwrap();
    Case {
        name: named.name,
        case: sgdlab_optim::replay::Case::from_json(&bytes).unwrap(),
    }
}

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 28, "conformance files missing in {dir:?}");
    files.iter().map(|f| load(f)).collect()
}

/// Worst relative error of the replay in `T` against the reference: the parameters, and the
/// evaluation point where the reference recorded one (which the rule must then have).
fn error<T: Real>(c: &Case) -> f64 {
    let traj = c.case.run::<T>().unwrap();
    let mut err = worst_relative_error(&traj.params, c.case.expected.as_ref().unwrap());
    if let Some(want) = &c.case.expected_eval {
        let got = traj
            .eval
            .as_ref()
            .expect("the rule has an evaluation point");
        err = err.max(worst_relative_error(got, want));
    }
    err
}

/// The f64 tolerance of a reference file: 1e-10, except for the shared NAdam file, which CPU
/// torch 2.15.0 itself misses by 1.4e-10 (it was recorded with a CUDA build); sgdlab equals
/// CPU torch on it bit for bit (`cpu_torch_nadam_is_matched_exactly`).
fn f64_tolerance(name: &str) -> f64 {
    if name == "torch-nadam" { 2e-10 } else { 1e-10 }
}

#[test]
fn f64_matches_pytorch_to_1e_10() {
    for case in cases() {
        let err = error::<f64>(&case);
        let tol = f64_tolerance(&case.name);
        assert!(
            err <= tol,
            "{} ({}): {err:e}",
            case.name,
            case.case.optimizer
        );
    }
}

#[test]
fn cpu_torch_nadam_is_matched_exactly() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference/torch-cpu-nadam.json");
    let case = load(&path);
    assert_eq!(Some(case.case.replay::<f64>().unwrap()), case.case.expected);
}

/// The f32 tolerance of a reference file: what single precision allows, ~8 ulps
/// (2⁻²³ ≈ 1.2·10⁻⁷) accumulated over the file's 40 steps. Every element-wise
/// rule measures at most 7.8e-7 (AdamW); Muon's five Newton–Schulz iterations of matrix
/// products measure 1.3e-6. (1e-5, the earlier bound, was ten times looser than needed.)
///
/// Cautious masking recovers the rule's update from its step (s p − p′, exact by
/// Sterbenz's lemma but carrying the step's own rounding of p′), so its parameters take one
/// rounding more per step than the reference's: 1.1e-6 measured (ADOPT with decoupled decay).
///
/// Prodigy without momentum and with L2 decay steps by η̂d g/(√v + dε), with d the
/// ratio r/Σ|s| of two float32 sums in which r cancels: prodigyopt's own float32 run misses
/// its float64 reference by 1.3e-4 on `prodigy-options-l2.json`, sgdlab's (sums in f64) by
/// 7.3e-5.
///
/// SOAP rotates into eigenbases by products of small matrices, which add their roundings to
/// the element-wise ones: pytorch-optimizer's own float32 run misses its float64 reference by
/// 1.5e-6 (`po-soap-square`) and 1.1e-6 (`po-soap-options`).
fn f32_tolerance(name: &str) -> f64 {
    if name == "prodigy-options-l2" {
        1e-4
    } else if name.starts_with("po-soap") || name == "torch-muon" {
        3e-6
    } else if name.contains("cautious") {
        2e-6
    } else {
        1e-6
    }
}

#[test]
fn f32_matches_pytorch_to_what_f32_allows() {
    for case in cases() {
        let err = error::<f32>(&case);
        if std::env::var_os("SGDLAB_SHOW_ERRORS").is_some() {
            eprintln!("{}: f32 {err:e}, f64 {:e}", case.name, error::<f64>(&case));
        }
        assert!(
            err <= f32_tolerance(&case.name),
            "{} ({}): {err:e}",
            case.name,
            case.case.optimizer
        );
    }
}
