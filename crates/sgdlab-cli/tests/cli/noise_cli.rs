//! `sgdlab noise` end to end: numbers by hand, a training run's checkpoint, determinism, and
//! error paths.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn points_by_hand() {
    // ½(Φ − x)² at Φ = 0: gradients 0, −1, −5. Mean −2, squared deviations 4 + 1 + 9 = 14:
    // tr Σ = 14/2 = 7, |G|² = 4 − 7/3 = 5/3, B_simple = 4.2.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("p.csv");
    std::fs::write(&data, "0\n1\n5\n").unwrap();
    let out = dir.path().join("n.json");
    sgdlab()
        .args(["noise", "--model", "points", "--data"])
        .arg(&data)
        .arg("--json")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("4.20000"));
    let v = json(&out);
    assert_eq!(v["examples"], 3);
    assert_eq!(v["at"], "init");
    let t = &v["total"];
    assert!((t["trace"].as_f64().unwrap() - 7.0).abs() < 1e-12);
    assert!((t["grad_sq"].as_f64().unwrap() - 5.0 / 3.0).abs() < 1e-12);
    assert!((t["b_simple"].as_f64().unwrap() - 4.2).abs() < 1e-12);
    assert!((t["data_trace"].as_f64().unwrap() - 14.0 / 3.0).abs() < 1e-12);
    assert!((t["data_grad_sq"].as_f64().unwrap() - 4.0).abs() < 1e-12);
    // At the minimiser (the mean) the gradient is below its noise: no noise scale.
    sgdlab()
        .args(["noise", "--model", "points", "--at", "minimum", "--data"])
        .arg(&data)
        .arg("--json")
        .arg(&out)
        .assert()
        .success();
    assert!(json(&out)["total"]["b_simple"].is_null());
}

#[test]
fn a_run_trained_at_lr_0_has_the_initial_weights_noise() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    sgdlab()
        .args([
            "train", "--opt", "sgd:lr=0", "--epochs", "1", "--model", "mlp:8",
        ])
        .arg("--out")
        .arg(&runs)
        .assert()
        .success();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    sgdlab()
        .args(["noise", "--model", "mlp:8", "--at"])
        .arg(runs.join("run0"))
        .arg("--json")
        .arg(&a)
        .assert()
        .success()
        .stdout(predicate::str::contains("layer1.bias"));
    sgdlab()
        .args(["noise", "--model", "mlp:8", "--json"])
        .arg(&b)
        .assert()
        .success();
    let (mut a, b) = (json(&a), json(&b));
    a["at"] = b["at"].clone();
    assert_eq!(a, b);
    assert_eq!(b["groups"].as_array().unwrap().len(), 4);
    assert_eq!(b["examples"], 1438);
    // Another seed is another split: the checkpoint's data differ, and the command says so.
    sgdlab()
        .args(["noise", "--model", "mlp:8", "--seed", "1", "--at"])
        .arg(runs.join("run0"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "pass the data, seed and test fraction",
        ));
    // Another network.
    sgdlab()
        .args(["noise", "--model", "mlp:9", "--at"])
        .arg(runs.join("run0"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "widths [64, 8, 10], not [64, 9, 10]",
        ));
}

#[test]
fn a_sample_is_seeded_and_the_thread_count_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: &str, seed: &str, name: &str| {
        let out = dir.path().join(name);
        sgdlab()
            .args([
                "--threads",
                threads,
                "noise",
                "--examples",
                "300",
                "--seed",
                seed,
            ])
            .arg("--json")
            .arg(&out)
            .assert()
            .success();
        json(&out)
    };
    let one = run("1", "0", "a.json");
    assert_eq!(one["examples"], 300);
    assert_eq!(one, run("2", "0", "b.json"));
    assert_ne!(one["total"], run("1", "5", "c.json")["total"]);
}

#[test]
fn bad_requests_are_named() {
    let fails = |args: &[&str], message: &str| {
        sgdlab()
            .arg("noise")
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    };
    fails(&["--at", "nowhere"], "invalid --at `nowhere`");
    fails(&["--examples", "1"], "at least 2 examples");
    fails(
        &["--model", "mlp:8", "--at", "minimum"],
        "no minimiser the lab can find",
    );
    fails(&["--model", "mlp:0"], "not a positive layer width");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("p.csv");
    std::fs::write(&data, "0,1\n1,2\n").unwrap();
    let d = data.to_str().unwrap();
    let here = dir.path().to_str().unwrap();
    fails(
        &["--model", "points", "--data", d, "--at", here],
        "softmax and mlp",
    );
    fails(
        &["--model", "linreg", "--data", "missing.csv"],
        "missing.csv",
    );
}

#[test]
fn train_records_the_noise_scale_that_noise_measures_at_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Features that f32 does not hold exactly: both commands see them as the network does.
    let data = dir.path().join("d.csv");
    let rows: String = (0..200)
        .map(|i| {
            let t = f64::from(i);
            format!("{},{},{}\n", (t * 0.1).sin(), (t * 0.37).cos() / 3.0, i % 3)
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let runs = dir.path().join("runs");
    sgdlab()
        .args([
            "train",
            "--opt",
            "adam:lr=0.01",
            "--epochs",
            "2",
            "--noise-scale",
            "100",
        ])
        .args(["--model", "mlp:4", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&runs)
        .assert()
        .success();
    assert!(runs.join("noise.svg").is_file());
    let csv = std::fs::read_to_string(runs.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let col = |name: &str| -> f64 {
        let k = header.iter().position(|h| *h == name).unwrap();
        last[k].parse().unwrap()
    };
    let out = dir.path().join("n.json");
    sgdlab()
        .args(["noise", "--examples", "100", "--model", "mlp:4", "--data"])
        .arg(&data)
        .arg("--at")
        .arg(runs.join("run0"))
        .arg("--json")
        .arg(&out)
        .assert()
        .success();
    let t = &json(&out)["total"];
    assert_eq!(col("noise_trace"), t["trace"].as_f64().unwrap());
    assert_eq!(col("noise_grad_sq"), t["grad_sq"].as_f64().unwrap());
    assert_eq!(col("noise_b_simple"), t["b_simple"].as_f64().unwrap());
    // Without the flag the columns are empty.
    sgdlab()
        .args(["train", "--opt", "sgd:lr=0.1", "--epochs", "1", "--force"])
        .arg("--out")
        .arg(&runs)
        .assert()
        .success();
    let csv = std::fs::read_to_string(runs.join("metrics.csv")).unwrap();
    assert!(csv.lines().last().unwrap().ends_with(",,,"), "{csv}");
    assert!(!runs.join("noise.svg").exists());
    sgdlab()
        .args(["train", "--opt", "sgd", "--noise-scale", "1"])
        .arg("--out")
        .arg(dir.path().join("other"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("noise-scale = 1"));
}
