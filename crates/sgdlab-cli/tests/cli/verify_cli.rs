//! End-to-end tests of `sgdlab verify`: exit codes, arguments, JSON schema, determinism.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").expect("the sgdlab binary is built")
}

fn verify_json(extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verify.json");
    sgdlab()
        .args(["verify", "--quick", "--json"])
        .arg(&path)
        .args(extra)
        .assert()
        .success();
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn json_follows_the_schema() {
    let v = verify_json(&["--problem", "2"]);
    let claims = v["claims"].as_array().unwrap();
    assert!(!claims.is_empty());
    assert_eq!(v["failed"], 0);
    assert_eq!(v["passed"].as_u64().unwrap() as usize, claims.len());
    let c2a = claims.iter().find(|c| c["id"] == "2a").expect("claim 2a");
    for key in [
        "title",
        "params",
        "expected",
        "measured",
        "stderr",
        "tolerance",
        "passed",
    ] {
        assert!(c2a.get(key).is_some(), "2a lacks {key}");
    }
    // A reader can recompute the expected value from the params: σ²/(2N-1).
    let n = c2a["params"]["N"].as_f64().unwrap();
    let sigma2 = c2a["params"]["sigma2"].as_f64().unwrap();
    let expected = c2a["expected"].as_f64().unwrap();
    assert!((expected - sigma2 / (2.0 * n - 1.0)).abs() < 1e-15);
    assert!(c2a["stderr"].as_f64().unwrap() > 0.0);
    assert!(
        claims
            .iter()
            .all(|c| c["id"].as_str().unwrap().starts_with('2'))
    );
}

#[test]
fn seed_changes_the_measurements() {
    let a = verify_json(&["--problem", "2", "--seed", "1"]);
    let b = verify_json(&["--problem", "2", "--seed", "2"]);
    assert_ne!(a["claims"][0]["measured"], b["claims"][0]["measured"]);
}

/// The whole of `verify --quick` through the CLI, at 1 and 2 threads (the two full runs of
/// this suite): every claim passes and the table says so; the JSON is the same for both
/// thread counts; and one problem run alone gives the numbers it gives in the full run.
#[test]
fn quick_verify_passes_the_same_for_any_thread_count_and_problem_selection() {
    let run = |threads: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verify.json");
        let out = sgdlab()
            .args(["--threads", threads, "verify", "--quick", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8(out.stdout).unwrap();
        assert!(
            table.contains("0 failed") && table.contains("2a"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one["failed"], 0);
    assert_eq!(one, two);
    let p4 = verify_json(&["--problem", "4"]);
    let from_all: Vec<_> = one["claims"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["problem"] == 4)
        .cloned()
        .collect();
    assert_eq!(&from_all, p4["claims"].as_array().unwrap());
}

#[test]
fn unknown_problem_is_a_clear_error() {
    sgdlab()
        .args(["verify", "--problem", "14"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no problem 14"));
}

#[test]
fn bad_arguments_exit_2() {
    sgdlab()
        .args(["verify", "--seed", "minus-one"])
        .assert()
        .code(2);
    sgdlab().args(["verify", "--bogus"]).assert().code(2);
    sgdlab().args(["frobnicate"]).assert().code(2);
    sgdlab()
        .args(["--threads", "0", "verify", "--quick"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--threads"));
}

#[test]
fn unwritable_json_path_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("out.json");
    sgdlab()
        .args(["verify", "--quick", "--problem", "3", "--json"])
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot write"));
    assert!(!path.exists());
}

#[test]
fn help_and_version_succeed() {
    sgdlab()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("verify"));
    sgdlab().arg("--version").assert().success();
}

#[test]
fn the_table_fits_100_columns_and_explains_its_symbols() {
    let out = Command::cargo_bin("sgdlab")
        .unwrap()
        .args(["verify", "--quick", "--problem", "2", "--problem", "6"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for line in text.lines() {
        // Characters as a terminal shows them (combining marks take no column).
        let width = line
            .chars()
            .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
            .count();
        assert!(width <= 100, "{width} columns: {line}");
    }
    assert!(
        text.contains("Symbols:") && text.contains("Φ* the loss minimiser"),
        "{text}"
    );
}

#[test]
fn an_unwritable_report_fails_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = Command::cargo_bin("sgdlab")
        .unwrap()
        .args(["verify", "--quick", "--report"])
        .arg(file.join("report"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "no claim ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create"));
}

#[test]
fn calibrate_reports_z_statistics_per_claim_and_refuses_one_seed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cal.json");
    sgdlab()
        .args([
            "verify",
            "--quick",
            "--problem",
            "2",
            "--calibrate",
            "3",
            "--json",
        ])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("KS p"))
        .stdout(predicate::str::contains("2a "));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let claims = v["claims"].as_array().unwrap();
    assert!(
        claims
            .iter()
            .all(|c| c["k"] == 3 && c["sd_z"].as_f64().unwrap() > 0.0)
    );
    sgdlab()
        .args(["verify", "--quick", "--problem", "2", "--calibrate", "1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("calibrate"));
}

#[test]
fn section_10_runs_alone() {
    sgdlab()
        .args(["verify", "--quick", "--problem", "10"])
        .assert()
        .success()
        .stdout(predicate::str::contains("10d.scale"))
        .stdout(predicate::str::contains("0 failed"));
}

#[test]
fn section_11_runs_alone() {
    sgdlab()
        .args(["verify", "--quick", "--problem", "11"])
        .assert()
        .success()
        .stdout(predicate::str::contains("11e"))
        .stdout(predicate::str::contains("6 passed, 0 failed"));
}
