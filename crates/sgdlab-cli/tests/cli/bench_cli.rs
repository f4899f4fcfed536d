//! End-to-end tests of `sgdlab bench`: the JSON schema, layouts, and argument errors. (Speed
//! itself is measured, never asserted: these runs are tiny.)

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").expect("the sgdlab binary is built")
}

#[test]
fn json_has_every_layout_and_optimizer_with_consistent_figures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    sgdlab()
        .args([
            "--threads",
            "2",
            "bench",
            "--params",
            "70000",
            "--reps",
            "3",
            "--tensors",
            "1",
            "--tensors",
            "7",
            "--opt",
            "adam",
            "--opt",
            "lion:check_finite=false",
            "--json",
        ])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("lion:check_finite=false"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(json["bandwidth_gbps"].as_f64().unwrap() > 0.0);
    assert_eq!(json["threads"], 2);
    let results = json["results"].as_array().unwrap();
    let rows: Vec<(&str, u64, u64)> = results
        .iter()
        .map(|r| {
            (
                r["optimizer"].as_str().unwrap(),
                r["tensors"].as_u64().unwrap(),
                r["bytes_per_param"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("adam", 1, 28),
            ("lion:check_finite=false", 1, 20),
            ("adam", 7, 28),
            ("lion:check_finite=false", 7, 20)
        ]
    );
    for r in results {
        let f = |k: &str| r[k].as_f64().unwrap();
        assert_eq!(r["params"], 70_000);
        let gbps = f("bytes_per_param") * 70_000.0 / (f("ms_per_step") * 1e-3) / 1e9;
        assert!((f("gbps") - gbps).abs() <= 1e-9 * gbps);
        assert!(f("bandwidth_gbps") > 0.0 && f("fraction_of_bandwidth") > 0.0);
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&["--tensors", "0"], "tensors"),
        (&["--params", "10", "--tensors", "11"], "tensors"),
        (&["--params", "0"], "params"),
        (&["--reps", "0"], "reps"),
        (&["--opt", "adam:beta1=2"], "beta1"),
        (&["--simd", "avx9000"], "--simd"),
    ];
    for (args, needle) in cases {
        sgdlab()
            .arg("bench")
            .args(args)
            .assert()
            .code(2)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains(needle));
    }
    // More memory than any address space: an error naming the size, not an allocator abort.
    sgdlab()
        .args(["bench", "--params", "1000000000000000", "--opt", "sgd"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot allocate"));
}

#[test]
fn serve_answers_one_step_per_request_and_rejects_bad_ones() {
    let out = sgdlab()
        .args([
            "bench", "--serve", "--params", "1000", "--opt", "adam", "--opt", "sgd",
        ])
        .write_stdin("0\n1\n1\n")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ready");
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines[1..] {
        let secs: f64 = line.parse().unwrap();
        assert!(secs > 0.0 && secs < 10.0, "{line}");
    }
    for (request, needle) in [("2\n", "below 2"), ("adam\n", "invalid request")] {
        sgdlab()
            .args([
                "bench", "--serve", "--params", "1000", "--opt", "adam", "--opt", "sgd",
            ])
            .write_stdin(request)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle));
    }
}
