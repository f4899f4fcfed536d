//! `sgdlab audit` end to end: the documented numbers, JSON, and error paths.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn normsgd_on_0_0_3_gives_the_documented_drift() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(&dir, "p.csv", "0\n0\n3\n");
    let json = dir.path().join("audit.json");
    sgdlab()
        .args([
            "audit",
            "--model",
            "points",
            "--opt",
            "normsgd:eps=1",
            "--opt",
            "sgd:lr=0.1",
        ])
        .args([
            "--opt",
            "sgd:lr=0.01,momentum=0.9",
            "--steps",
            "4000",
            "--burn-in",
            "500",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--json")
        .arg(&json)
        .assert()
        .success()
        .stdout(predicate::str::contains("-0.173262"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["minimizer"][0], 1.0);
    let opts = v["optimizers"].as_array().unwrap();
    assert_eq!(opts[0]["optimizer"], "normsgd:eps=1");
    assert!((opts[0]["drift"][0].as_f64().unwrap() + 0.173262).abs() < 1e-6);
    assert_eq!(opts[0]["consistent"], false);
    assert_eq!(opts[1]["consistent"], true);
    assert_eq!(opts[2]["method"], "simulation");
    for key in [
        "drift_norm",
        "fixed_point",
        "fixed_point_distance",
        "stderr",
    ] {
        assert!(opts[2].get(key).is_some(), "{key}");
    }
}

#[test]
fn logistic_regression_audit_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(
        &dir,
        "l.csv",
        "x,y\n0.5,1\n2,0\n-1,1\n0.1,0\n1.5,1\n-0.3,0\n",
    );
    sgdlab()
        .args([
            "audit",
            "--model",
            "logreg",
            "--opt",
            "multiplicative:lr=0.01",
            "--data",
        ])
        .arg(&data)
        .assert()
        .success()
        .stdout(predicate::str::contains("yes"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ragged = write(&dir, "r.csv", "1,2\n3\n");
    sgdlab()
        .args(["audit", "--model", "linreg", "--opt", "sgd", "--data"])
        .arg(&ragged)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 2"));
    let ok = write(&dir, "ok.csv", "0\n3\n");
    sgdlab()
        .args([
            "audit",
            "--model",
            "points",
            "--opt",
            "adam:beta1=1.5",
            "--data",
        ])
        .arg(&ok)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("beta1"));
    let separable = write(&dir, "s.csv", "0,0\n1,1\n");
    sgdlab()
        .args(["audit", "--model", "logreg", "--opt", "sgd", "--data"])
        .arg(&separable)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("minimiser"));
    sgdlab()
        .args([
            "audit",
            "--model",
            "points",
            "--opt",
            "sgd",
            "--data",
            "/no/such.csv",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read"));
    sgdlab()
        .args(["audit", "--model", "points", "--data"])
        .arg(&ok)
        .assert()
        .code(2);
}

#[test]
fn the_readmes_audit_example_runs_from_a_clone() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("sgdlab audit --data "))
        .expect("the README shows an audit command");
    let args: Vec<&str> = line
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    let out = assert_cmd::Command::cargo_bin("sgdlab")
        .unwrap()
        .current_dir(&root)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-0.173262"));
}

#[test]
fn simulated_drift_shows_its_standard_error_in_every_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.csv");
    std::fs::write(&path, "0,1\n1,0\n2,2\n0,0\n").unwrap();
    let out = assert_cmd::Command::cargo_bin("sgdlab")
        .unwrap()
        .args(["audit", "--model", "points", "--opt", "adam", "--data"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("adam")).unwrap();
    assert_eq!(row.matches('±').count(), 2, "{row}");
}
