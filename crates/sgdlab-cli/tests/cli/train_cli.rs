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
        "run0/checkpoint.safetensors",
        "run1/checkpoint.safetensors",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 3);
    let s = summary(dir.path());
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[1]["final"]["test_accuracy"].as_f64().unwrap() > 0.8);
    assert_eq!(
        (
            runs[0]["checkpoint"].as_str(),
            runs[1]["checkpoint"].as_str()
        ),
        (Some("run0"), Some("run1"))
    );
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
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("seconds");
            v
        };
        assert_eq!(
            strip(&a["runs"][k]["final"]),
            strip(&b["runs"][k]["final"]),
            "run {k}"
        );
        assert_eq!(a["runs"][k]["epochs"], 4);
    }
    // Every tensor of both checkpoints (weights, their EMA, optimizer state) is bit-identical;
    // the metrics differ only in their wall-clock seconds.
    for run in ["run0", "run1"] {
        assert_eq!(
            tensors(&straight.path().join(run)),
            tensors(&resumed.path().join(run)),
            "{run}"
        );
    }
}

/// Every tensor of a run's checkpoint: name, shape and bytes.
pub fn tensors(run_dir: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    assert!(out.iter().any(|(n, _, _)| n.starts_with("optimizer.")) || out.len() > 2);
    out
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
    let dir = tempfile::tempdir().unwrap();
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

fn tiny(dir: &std::path::Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    sgdlab()
        .args([
            "train", "--model", "softmax", "--opt", "sgd", "--batch", "64", "--out",
        ])
        .arg(dir)
        .args(extra)
        .assert()
}

#[test]
fn an_existing_run_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sgdlab()
        .args([
            "train", "--model", "softmax", "--batch", "64", "--epochs", "1",
        ])
        .args(["--opt", "sgd", "--opt", "sgd", "--opt", "adam", "--out"])
        .arg(&out)
        .assert()
        .success();
    // Equal specs each name their own directory.
    let runs = summary(&out)["runs"].clone();
    let dirs: Vec<_> = (0..3)
        .map(|k| runs[k]["checkpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dirs, ["run0", "run1", "run2"]);
    tiny(&out, &["--epochs", "1"]).code(2).stderr(
        predicate::str::contains("already holds a run").and(predicate::str::contains("--force")),
    );
    // Resuming with fewer --opt than runs is refused.
    tiny(&out, &["--epochs", "1", "--resume"])
        .code(2)
        .stderr(predicate::str::contains("holds run1"));
    tiny(&out, &["--epochs", "1", "--force"]).success();
    assert!(out.join("run0").is_dir());
    assert!(
        !out.join("run1").exists() && !out.join("run2").exists(),
        "stale runs removed"
    );
    assert_eq!(summary(&out)["runs"].as_array().unwrap().len(), 1);
    // --out naming a file.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    tiny(&file, &["--resume"])
        .code(2)
        .stderr(predicate::str::contains("is a file, not a run directory"));
}

#[test]
fn what_identifies_a_run_is_checked_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let csv = |path: &std::path::Path, flip: bool| {
        let mut text = String::new();
        for i in 0..40 {
            let y = (i % 2 == 0) ^ (flip && i == 7);
            text.push_str(&format!("{},{}\n", i as f64 / 40.0, u8::from(y)));
        }
        std::fs::write(path, text).unwrap();
    };
    csv(&dir.path().join("d.csv"), false);
    let train = |extra: &[&str]| {
        let mut cmd = sgdlab();
        cmd.current_dir(dir.path())
            .args([
                "train", "--model", "softmax", "--opt", "sgd", "--out", "out",
            ])
            .args(extra);
        cmd.assert()
    };
    train(&["--data", "d.csv", "--epochs", "2"]).success();
    // The same content by another path is the same run.
    train(&["--data", "./d.csv", "--epochs", "3", "--resume"]).success();
    // Fewer epochs than done.
    train(&["--data", "d.csv", "--epochs", "2", "--resume"])
        .code(2)
        .stderr(
            predicate::str::contains("3 epochs done").and(predicate::str::contains("--epochs 3")),
        );
    // Another loss unit, in words.
    train(&[
        "--data",
        "d.csv",
        "--epochs",
        "4",
        "--resume",
        "--loss-unit",
        "bits",
    ])
    .code(2)
    .stderr(
        predicate::str::contains("loss unit: the checkpoint has nats, this command asks for bits")
            .and(predicate::str::contains("CheckpointMeta").not()),
    );
    // Changed content at the same path.
    csv(&dir.path().join("d.csv"), true);
    train(&["--data", "d.csv", "--epochs", "4", "--resume"])
        .code(2)
        .stderr(predicate::str::contains("other contents"));
}

#[test]
fn damaged_checkpoints_and_leftovers_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    tiny(out, &["--epochs", "1"]).success();
    // A killed writer's temporary files are removed by the next start.
    let stale = out.join("run0/.checkpoint.safetensors.99999-0.sgdlab-tmp");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let stale_png = out.join(".loss.png.99999-1.sgdlab-tmp.png");
    std::fs::write(&stale_png, b"half a plot").unwrap();
    tiny(out, &["--epochs", "2", "--resume"])
        .success()
        .stderr(predicate::str::contains("removed 2 temporary file"));
    assert!(!stale.exists() && !stale_png.exists());
    // A corrupted checkpoint is refused, not silently resumed.
    let ckpt = out.join("run0/checkpoint.safetensors");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    std::fs::write(&ckpt, &bytes).unwrap();
    tiny(out, &["--epochs", "3", "--resume"])
        .code(2)
        .stderr(predicate::str::contains("SHA-256 does not match"));
    // Another process holding the directory.
    let other = tempfile::tempdir().unwrap();
    let _lock = sgdlab::io::DirLock::acquire(other.path()).unwrap();
    tiny(other.path(), &["--epochs", "1"])
        .code(2)
        .stderr(predicate::str::contains("another sgdlab process"));
}

#[test]
fn hostile_sizes_and_labels_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let base: String = (0..20).map(|i| format!("{},{}\n", i, i % 2)).collect();
    for (label, needle) in [
        ("-1", "label -1"),
        ("0.5", "label 0.5"),
        ("1e18", "label 1000000000000000000"),
        ("1e300", "beyond the range of f32"),
    ] {
        let path = write("labels.csv", &format!("{base}3,{label}\n"));
        sgdlab()
            .args(["train", "--opt", "sgd", "--data"])
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("o"))
            .timeout(std::time::Duration::from_secs(20))
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains(needle).and(predicate::str::contains("panicked").not()),
            );
    }
    let bom = write("bom.csv", &format!("\u{feff}{base}"));
    let out = dir.path().join("bom-out");
    sgdlab()
        .args(["train", "--opt", "sgd", "--epochs", "1", "--data"])
        .arg(&bom)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    for (args, needle) in [
        (vec!["--model", "mlp:18446744073709551615"], "too many"),
        (vec!["--model", "mlp:100000,100000"], "of memory"),
        (vec!["--data", "/dev/zero"], "--data"),
    ] {
        sgdlab()
            .args(["train", "--opt", "sgd", "--out"])
            .arg(dir.path().join("o2"))
            .args(args)
            .timeout(std::time::Duration::from_secs(20))
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains(needle).and(predicate::str::contains("panicked").not()),
            );
    }
    // A batch beyond the data set is the whole set.
    sgdlab()
        .args([
            "train",
            "--opt",
            "sgd",
            "--epochs",
            "1",
            "--batch",
            "1000000000000",
            "--out",
        ])
        .arg(dir.path().join("o3"))
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .success()
        .stderr(predicate::str::contains("each step uses all of them"));
    sgdlab()
        .args(["--threads", "10000", "train", "--opt", "sgd"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid --threads 10000"));
    // audit: a wide CSV and a huge class label.
    let wide: String = (0..3)
        .map(|r| {
            (0..30_001)
                .map(|c| ((r + c) % 5).to_string())
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    let wide = write("wide.csv", &wide);
    sgdlab()
        .args(["audit", "--model", "linreg", "--opt", "sgd", "--data"])
        .arg(&wide)
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at most 1024"));
    let huge_label = write("label.csv", "1,0\n2,1000000000\n3,1\n");
    sgdlab()
        .args(["audit", "--model", "softmax", "--opt", "sgd", "--data"])
        .arg(&huge_label)
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("label 1000000000")
                .and(predicate::str::contains("panicked").not()),
        );
    sgdlab()
        .args(["bench", "--reps", "10000000000000000000"])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("reps"));
}

#[test]
fn parameter_groups_train_checkpoint_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |epochs: &str, resume: bool, groups: &[&str]| {
        let mut cmd = sgdlab();
        cmd.args([
            "train",
            "--model",
            "mlp:8",
            "--opt",
            "adamw:lr=0.01",
            "--epochs",
            epochs,
        ]);
        for g in groups {
            cmd.args(["--group", g]);
        }
        if resume {
            cmd.arg("--resume");
        }
        cmd.arg("--out").arg(&out).assert()
    };
    let groups = [
        "*.bias:weight_decay=0",
        "layer1.*:rule=sgd,lr=0.1,momentum=0.9",
    ];
    run("1", false, &groups)
        .success()
        .stderr(predicate::str::contains(
            "parameter group: *.bias:weight_decay=0",
        ));
    run("2", true, &groups[..1])
        .code(2)
        .stderr(predicate::str::contains(
            "parameter groups: the checkpoint has",
        ));
    run("2", true, &groups).success();
    let straight = dir.path().join("straight");
    let mut cmd = sgdlab();
    cmd.args([
        "train",
        "--model",
        "mlp:8",
        "--opt",
        "adamw:lr=0.01",
        "--epochs",
        "2",
    ]);
    for g in groups {
        cmd.args(["--group", g]);
    }
    cmd.arg("--out").arg(&straight).assert().success();
    assert_eq!(tensors(&out.join("run0")), tensors(&straight.join("run0")));
    sgdlab()
        .args([
            "train",
            "--opt",
            "adamw",
            "--group",
            "*.bais:weight_decay=0",
            "--out",
        ])
        .arg(dir.path().join("typo"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("matches no parameter tensor"));
    sgdlab()
        .args([
            "train",
            "--opt",
            "lion",
            "--group",
            "*.bias:momentum=0.9",
            "--out",
        ])
        .arg(dir.path().join("bad-key"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("momentum"));
}

/// `--schedule` takes the library's grammar with lengths open to the run: a constant rate for
/// two epochs, then a cosine over the rest of the run (`*`, here the last two epochs).
#[test]
fn schedules_count_epochs_and_the_rest_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    tiny(
        dir.path(),
        &["--epochs", "4", "--schedule", "seq[constant;cosine:*]@2ep"],
    )
    .success();
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let lr: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').nth(4).unwrap().parse().unwrap()) // lr, fifth from the end
        .collect();
    assert_eq!(lr.len(), 4, "{csv}");
    assert_eq!(lr[0], lr[1], "{csv}");
    assert!(lr[2] < lr[1] && lr[3] < lr[2], "{csv}");
    assert_eq!(
        summary(dir.path())["schedule"],
        "seq[constant;cosine:*]@2ep"
    );
    // The run's length is part of the schedule: a resume may not change --epochs.
    tiny(
        dir.path(),
        &[
            "--epochs",
            "5",
            "--schedule",
            "seq[constant;cosine:*]@2ep",
            "--resume",
        ],
    )
    .failure()
    .stderr(predicate::str::contains("epochs"));
}
