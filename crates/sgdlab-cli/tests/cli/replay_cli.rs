//! `sgdlab replay` against the PyTorch reference trajectories, and its error paths.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

fn conformance(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sgdlab-optim/tests/data/conformance")
        .join(name)
}

#[test]
fn replay_reproduces_pytorch_adamw() {
    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(conformance("torch-adamw.json")).unwrap()).unwrap();
    let out = sgdlab()
        .args(["replay", "--case"])
        .arg(conformance("torch-adamw.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = got["params"].as_array().unwrap();
    let expected = case["expected"].as_array().unwrap();
    assert_eq!(got.len(), expected.len());
    for (a, e) in got.iter().zip(expected) {
        for (a, e) in a.as_array().unwrap().iter().zip(e.as_array().unwrap()) {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!((a - e).abs() <= 1e-10 * e.abs().max(1.0), "{a} vs {e}");
        }
    }
}

#[test]
fn replay_writes_json_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    sgdlab()
        .args(["replay", "--dtype", "f32", "--case"])
        .arg(conformance("torch-sgd.json"))
        .arg("--json")
        .arg(&path)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["params"].as_array().unwrap().len(), 40);
}

/// `--json /dev/stdout` (a pipe here) is written in place: the JSON reaches stdout, and no
/// temporary file is renamed over the device.
#[test]
fn json_to_a_device_is_written_in_place() {
    let out = sgdlab()
        .args(["replay", "--json", "/dev/stdout", "--case"])
        .arg(conformance("torch-sgd.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"].as_array().unwrap().len(), 40);
}

fn replay_case(json: &str) -> assert_cmd::assert::Assert {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.json");
    std::fs::write(&path, json).unwrap();
    sgdlab().args(["replay", "--case"]).arg(&path).assert()
}

#[test]
fn bad_cases_are_clear_errors() {
    replay_case(r#"{"optimizer": "adamx", "init": [1], "grads": [[1]]}"#)
        .code(2)
        .stderr(predicate::str::contains("unknown optimizer"));
    replay_case(r#"{"optimizer": "adam:beta1=2", "init": [1], "grads": [[1]]}"#)
        .code(2)
        .stderr(predicate::str::contains("beta1"));
    replay_case(r#"{"optimizer": "sgd", "init": [1, 2], "grads": [[1, 2], [1]]}"#)
        .code(2)
        .stderr(predicate::str::contains("grads[1]"));
    replay_case(r#"{"optimizer": "sgd", "init": [1], "grads": [[1e999]]}"#).code(2);
    replay_case(r#"{"optimizer": "lossprop", "init": [1], "grads": [[1]]}"#)
        .code(2)
        .stderr(predicate::str::contains("loss"));
    replay_case(r#"{"optimizer": "sgd", "init": [1], "grads": [[1]], "losses": [1, 2]}"#)
        .code(2)
        .stderr(predicate::str::contains("losses"));
    replay_case(r#"{"optimizer": "sgd:lr=1e300", "init": [1], "grads": [[1e300]]}"#)
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(
            "in the parameters (as f64) after step 1",
        ));
    replay_case("not json")
        .code(2)
        .stderr(predicate::str::contains("not a valid case"));
    sgdlab()
        .args(["replay", "--case", "/no/such/file.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read"));
}

#[test]
fn compare_checks_the_parameters_and_schedule_free_s_x() {
    let dir = tempfile::tempdir().unwrap();
    sgdlab()
        .args(["replay", "--compare", "1e-10", "--json"])
        .arg(dir.path().join("out.json"))
        .arg("--case")
        .arg(conformance("sf-adamw.json"))
        .assert()
        .success()
        .stderr(predicate::str::contains("params: worst relative error"))
        .stderr(predicate::str::contains("eval: worst relative error"));
    // A tolerance no float meets fails, naming the comparison.
    sgdlab()
        .args(["replay", "--dtype", "f32", "--compare", "1e-12", "--case"])
        .arg(conformance("torch-muon.json"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("FAIL"));
    let out = sgdlab()
        .args(["replay", "--case"])
        .arg(conformance("sf-sgd.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["eval"].as_array().unwrap().len(), 40);
}
