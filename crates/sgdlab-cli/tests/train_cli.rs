//! `sgdlab train` end to end on the bundled digits: outputs, resume bit-identity, errors.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

const ARGS: [&str; 12] = [
    "train",
    "--data",
    "digits",
    "--model",
    "mlp:16",
    "--opt",
    "sgd:lr=0.1,momentum=0.9",
    "--opt",
    "adam:lr=0.01",
    "--batch",
    "16",
    "--ema-weights=0.9",
];

#[test]
fn trains_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    sgdlab()
        .args(ARGS)
        .args(["--epochs", "3", "--out"])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("test accuracy"));
    for f in [
        "metrics.csv",
        "summary.json",
        "loss.svg",
        "loss.png",
        "accuracy.svg",
        "accuracy.png",
        "run0/weights.safetensors",
        "run0/optimizer.safetensors",
        "run1/weights.safetensors",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 3);
    let s = summary(dir.path());
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[1]["final"]["test_accuracy"].as_f64().unwrap() > 0.8);
    let png = std::fs::read(dir.path().join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}

#[test]
fn resume_gives_the_uninterrupted_result_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    sgdlab()
        .args(ARGS)
        .args(["--epochs", "4", "--out"])
        .arg(straight.path())
        .assert()
        .success();
    let resumed = tempfile::tempdir().unwrap();
    sgdlab()
        .args(ARGS)
        .args(["--epochs", "2", "--out"])
        .arg(resumed.path())
        .assert()
        .success();
    sgdlab()
        .args(["--threads", "1"])
        .args(ARGS)
        .args(["--epochs", "4", "--resume", "--out"])
        .arg(resumed.path())
        .assert()
        .success();
    let (a, b) = (summary(straight.path()), summary(resumed.path()));
    for k in 0..2 {
        assert_eq!(a["runs"][k]["final"], b["runs"][k]["final"], "run {k}");
        assert_eq!(a["runs"][k]["epochs"], 4);
    }
    let state = |d: &std::path::Path| {
        sgdlab::optim::Optimizer::<f32>::load(&d.join("run1/optimizer.safetensors")).unwrap()
    };
    assert_eq!(state(straight.path()), state(resumed.path()));
    // The optimizer files are byte-identical too (the weights files also hold the metrics,
    // whose wall-clock seconds differ).
    for run in ["run0", "run1"] {
        let read =
            |d: &std::path::Path| std::fs::read(d.join(run).join("optimizer.safetensors")).unwrap();
        assert!(read(straight.path()) == read(resumed.path()), "{run}");
    }
}

#[test]
fn divergence_is_reported_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    sgdlab()
        .args([
            "train",
            "--model",
            "mlp:16",
            "--opt",
            "sgd:lr=1e38",
            "--epochs",
            "2",
            "--out",
        ])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("diverged"));
    assert!(summary(dir.path())["runs"][0]["diverged"].is_string());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--model", "mlp:0"], "layer width"),
        (&["--model", "cnn"], "--model"),
        (&["--schedule", "linear"], "schedule"),
        (&["--data", "/no/such/path"], "--data"),
        (&["--opt", "adam:lr=-1"], "lr"),
        (&["--epochs", "0"], "epochs"),
    ];
    for (extra, needle) in cases {
        let mut cmd = sgdlab();
        cmd.args(["train", "--opt", "sgd", "--out"])
            .arg(dir.path())
            .args(extra);
        cmd.assert()
            .code(2)
            .stderr(predicate::str::contains(needle));
    }
    sgdlab()
        .args(["train", "--opt", "sgd", "--resume"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--out"));
    // Resuming with another seed than the checkpoint's is refused.
    sgdlab()
        .args(["train", "--opt", "sgd", "--epochs", "1", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    sgdlab()
        .args([
            "train", "--opt", "sgd", "--epochs", "2", "--seed", "5", "--resume", "--out",
        ])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("resume"));
}

#[test]
fn csv_data_and_idx_directories_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::new();
    for i in 0..60 {
        let x = i as f64 / 60.0;
        csv.push_str(&format!("{x},{},{}\n", 1.0 - x, i % 2));
    }
    let path = dir.path().join("data.csv");
    std::fs::write(&path, csv).unwrap();
    sgdlab()
        .args(["train", "--opt", "adam:lr=0.05", "--epochs", "2", "--data"])
        .arg(&path)
        .arg("--out")
        .arg(dir.path().join("out"))
        .assert()
        .success();
    // A directory without IDX files says what it lacks.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    sgdlab()
        .args(["train", "--opt", "sgd", "--data"])
        .arg(&empty)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("train-images-idx3-ubyte"));
}
