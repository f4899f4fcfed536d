//! `sgdlab critical-batch` end to end: the table, the JSON and its fit, and error paths.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

const SMALL: [&str; 10] = [
    "critical-batch",
    "--model",
    "softmax",
    "--target-loss",
    "0.5",
    "--lrs",
    "0.1,0.3,0.9",
    "--eval-examples",
    "500",
    "--checks-per-epoch=4",
];

#[test]
fn a_scan_prints_its_points_and_fit_and_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cb.json");
    sgdlab()
        .args(SMALL)
        .args([
            "--opt",
            "sgd",
            "--batches",
            "8,32,128",
            "--noise-examples",
            "300",
            "--json",
        ])
        .arg(&out)
        .arg("--plot")
        .arg(dir.path().join("cb"))
        .assert()
        .success()
        .stdout(predicate::str::contains("B_crit = E_min/S_min"))
        .stdout(predicate::str::contains("examples E"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{v}");
    let mut fit_points = Vec::new();
    for p in points {
        let (b, s) = (p["batch"].as_u64().unwrap(), p["steps"].as_u64().unwrap());
        assert_eq!(p["examples"].as_u64().unwrap(), b * s);
        fit_points.push((b as f64, s as f64));
    }
    // The fit's B_crit is E_min/S_min, and its line passes near the points.
    let fit = &v["fit"];
    let (s_min, e_min) = (
        fit["s_min"].as_f64().unwrap(),
        fit["e_min"].as_f64().unwrap(),
    );
    assert!((fit["b_crit"].as_f64().unwrap() - e_min / s_min).abs() < 1e-9 * e_min / s_min);
    for (b, s) in fit_points {
        assert!(((s_min + e_min / b) - s).abs() < 0.5 * s, "{b} {s} {fit}");
    }
    assert!(v["median_b_simple"].as_f64().unwrap() > 0.0);
    assert_eq!(v["opt"], "sgd");
    let svg = std::fs::read_to_string(dir.path().join("cb.svg")).unwrap();
    assert!(svg.contains("B_crit"), "the fit's legend");
    assert!(dir.path().join("cb.png").metadata().unwrap().len() > 0);
}

#[test]
fn bad_settings_are_named() {
    for (args, message) in [
        (
            vec!["--batches", "100000"],
            "batch size must lie in [1, 1438]",
        ),
        (vec!["--lrs", "0.1,0"], "a learning rate must be positive"),
        (vec!["--max-steps", "0"], "max-steps"),
        (vec!["--opt", "sgd:momentum=2"], "momentum"),
    ] {
        sgdlab()
            .args(SMALL)
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
}
