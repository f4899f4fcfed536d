//! The command line against careless and hostile input: `--force` deletes only what `train`
//! wrote, no write goes through a planted symbolic link, counts that would wrap or run for
//! ever are refused at once, and schedule errors name their problem.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use assert_cmd::Command;
use predicates::prelude::*;

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

fn train(out: &std::path::Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    sgdlab()
        .args([
            "train",
            "--data",
            "digits",
            "--model",
            "softmax",
            "--opt",
            "sgd:lr=0.1",
        ])
        .args(["--batch", "64", "--out"])
        .arg(out)
        .args(extra)
        .assert()
}

#[test]
fn force_removes_only_what_train_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    train(&out, &["--epochs", "1"]).success();
    // Directories whose names parse as "run" + a number, but are not train's.
    for name in ["run+1", "run007", "run01"] {
        std::fs::create_dir_all(out.join(name)).unwrap();
        std::fs::write(out.join(name).join("notes.txt"), "mine").unwrap();
    }
    // A file of the user's inside a run directory of train's.
    std::fs::write(out.join("run0").join("notes.txt"), "mine too").unwrap();
    train(&out, &["--epochs", "1", "--force"]).success();
    for name in ["run+1", "run007", "run01"] {
        assert_eq!(
            std::fs::read_to_string(out.join(name).join("notes.txt")).unwrap(),
            "mine"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("run0").join("notes.txt")).unwrap(),
        "mine too"
    );
    assert!(out.join("run0").join("checkpoint.safetensors").is_file());
}

#[cfg(unix)]
#[test]
fn no_write_goes_through_a_planted_symlink() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    train(&out, &["--epochs", "1"]).success();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::remove_file(out.join("metrics.csv")).unwrap();
    symlink(&victim, out.join("metrics.csv")).unwrap();
    train(&out, &["--epochs", "2", "--resume"])
        .failure()
        .stderr(predicate::str::contains("metrics.csv is a symbolic link"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(out.join("metrics.csv")).unwrap();

    // A run directory that links elsewhere: --force writes nothing there.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(out.join("run0")).unwrap();
    symlink(&elsewhere, out.join("run0")).unwrap();
    train(&out, &["--epochs", "1", "--force"])
        .failure()
        .stderr(predicate::str::contains("run0 is a symbolic link"));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    std::fs::remove_file(out.join("run0")).unwrap();

    // A checkpoint that links elsewhere.
    std::fs::create_dir(out.join("run0")).unwrap();
    symlink(&victim, out.join("run0").join("checkpoint.safetensors")).unwrap();
    train(&out, &["--epochs", "1", "--force"])
        .failure()
        .stderr(predicate::str::contains(
            "checkpoint.safetensors is a symbolic link",
        ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn audit_counts_that_wrap_or_never_end_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("points.csv");
    std::fs::write(&data, "0\n0\n3\n").unwrap();
    for steps in ["18446744073709551615", "4611686018427387904"] {
        sgdlab()
            .args(["audit", "--model", "points", "--data"])
            .arg(&data)
            .args(["--opt", "adam", "--steps", steps])
            .timeout(std::time::Duration::from_secs(20))
            .assert()
            .failure()
            .stderr(predicate::str::contains(
                "burn-in and steps together may be at most",
            ));
    }
}

#[test]
fn schedule_errors_name_their_problem() {
    let dir = tempfile::tempdir().unwrap();
    for (schedule, needle) in [
        ("exp:0", "needs 0 < γ <= 1"),
        ("cosine:0", "needs T >= 1"),
        (
            "warmup-cosine:0",
            "warmup-cosine:0: the warm-up needs at least 1 step",
        ),
        ("wsd:18446744073709551615,*,1", "exceed the run"),
        ("wsd:10,20", "wsd:W,*,D"),
        ("step:2,0.1", "decay:E,GAMMA"),
        ("wsd:100,*,18446744073709551600", "exceed the run"),
    ] {
        train(
            &dir.path().join("out"),
            &["--epochs", "1", "--schedule", schedule],
        )
        .failure()
        .stderr(predicate::str::contains(needle));
    }
    // Nested 8,000 deep: an error, not a stack overflow.
    let deep = format!("{}exp:0.5{}", "prod[".repeat(8000), "]".repeat(8000));
    train(
        &dir.path().join("out"),
        &["--epochs", "1", "--schedule", &deep],
    )
    .failure()
    .stderr(predicate::str::contains("nest at most 16 deep"));
}

#[test]
fn numbers_in_errors_are_short() {
    let dir = tempfile::tempdir().unwrap();
    train(
        &dir.path().join("out"),
        &["--epochs", "1", "--opt", "adam:lr=-1e308"],
    )
    .failure()
    .stderr(predicate::str::contains("lr = -1e308:"));
}
