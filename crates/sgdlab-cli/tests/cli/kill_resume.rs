//! Crash consistency: a training run killed (SIGKILL) at 20+ random moments, each time
//! followed by `--resume`, ends bit for bit where the uninterrupted run ends — or a resume
//! refuses clearly; it never continues from a torn or mixed state.
//!
//! Epochs are short and checkpoints large (a 512-unit MLP, 6 steps per epoch), so that much of
//! the run is spent between and inside checkpoint writes. (A kill cannot tear a single
//! `write(2)`; what it can tear is a state kept in several files, which the one-file
//! checkpoint rules out, or a rename order, which this test would catch.)

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARGS: [&str; 17] = [
    "train",
    "--data",
    "digits",
    "--model",
    "mlp:512",
    "--opt",
    "adam:lr=0.003",
    "--opt",
    "sgd:lr=0.05,momentum=0.9",
    "--batch",
    "256",
    "--epochs",
    "20",
    "--ema-weights",
    "0.9",
    "--seed",
    "11",
];

fn command(out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sgdlab"));
    cmd.args(ARGS).arg("--out").arg(out);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Every tensor of a run's checkpoint (name, shape, bytes), and its metrics without the
/// wall-clock seconds.
type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

fn final_state(out: &Path, run: &str) -> (Tensors, serde_json::Value) {
    let bytes = std::fs::read(out.join(run).join("checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().as_ref().unwrap();
    let mut metrics: serde_json::Value = serde_json::from_str(&metadata["metrics"]).unwrap();
    for m in metrics.as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("seconds");
    }
    (tensors, metrics)
}

/// A small deterministic generator (xorshift64*) for the kill times.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn killed_at_random_moments_and_resumed_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let start = Instant::now();
    let status = command(&straight, false).status().unwrap();
    assert!(status.success());
    let full = start.elapsed();

    let out = dir.path().join("killed");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut kills, mut attempts) = (0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(attempts < 200, "could not land 20 kills in 200 attempts");
        let resume = out.exists();
        let mut child = command(&out, resume).spawn().unwrap();
        // Anywhere from start-up to the final outputs of a resumed run (which has less to do
        // than the uninterrupted one).
        std::thread::sleep(
            full.mul_f64(0.6 * rng.uniform())
                .max(Duration::from_millis(5)),
        );
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error:"),
            "attempt {attempts}: {stderr}"
        );
    }
    eprintln!("uninterrupted run {full:?}; {kills} kills in {attempts} attempts");
    let output = command(&out, true).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for run in ["run0", "run1"] {
        let (a, b) = (final_state(&straight, run), final_state(&out, run));
        assert_eq!(a.1, b.1, "{run}: metrics");
        assert!(a.0 == b.0, "{run}: tensors differ");
    }
    let csv = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                // Drop `seconds`, the fourth column from the end (the optimizer's spec, first,
                // may hold commas).
                let f: Vec<&str> = l.rsplitn(5, ',').collect();
                format!("{},{},{},{}", f[4], f[2], f[1], f[0])
            })
            .collect()
    };
    assert_eq!(csv(&straight), csv(&out));
    let leftovers: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".sgdlab-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
