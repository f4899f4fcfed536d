//! Save, kill, resume: a training process checkpoints its parameters and optimizer state every
//! 25 steps and is killed (aborted) at step 60; a second process resumes from the last
//! checkpoint and ends bit for bit where an uninterrupted run ends — schedule included.
//!
//! ```sh
//! cargo run --release -p sgdlab --example save_kill_resume
//! ```

use std::path::Path;

use sgdlab::optim::{Optimizer, Schedule, StepInfo, Tensor};

const STEPS: u64 = 100;

/// The gradient of ½‖w − target‖² plus a deterministic wobble, at step `t`.
fn gradient(w: &Tensor<f64>, t: u64) -> Tensor<f64> {
    let g = w
        .data()
        .iter()
        .enumerate()
        .map(|(i, x)| x - (i as f64 + 1.0) + 0.1 * ((t * 7 + i as u64) as f64).sin())
        .collect();
    Tensor::vector("w", g)
}

fn fresh() -> Result<(Vec<Tensor<f64>>, Optimizer<f64>), sgdlab::Error> {
    let mut opt = Optimizer::from_spec("adam:lr=0.2")?;
    opt.set_schedule(Schedule::warmup_cosine(10, STEPS - 10, 0.0))?;
    Ok((vec![Tensor::vector("w", vec![0.0; 4])], opt))
}

/// Trains from step `opt.steps()` up to `until`, checkpointing into `dir` every 25 steps;
/// with `crash_at`, aborts the process there (no clean-up, like a kill).
fn train(
    dir: Option<&Path>,
    params: &mut [Tensor<f64>],
    opt: &mut Optimizer<f64>,
    until: u64,
    crash_at: Option<u64>,
) -> Result<(), sgdlab::Error> {
    while opt.steps() < until {
        let t = opt.steps();
        if crash_at == Some(t) {
            std::process::abort();
        }
        let g = [gradient(&params[0], t)];
        opt.step(params, &g, &StepInfo::default())?;
        if let Some(dir) = dir.filter(|_| opt.steps().is_multiple_of(25)) {
            // Parameters first, optimizer second: the optimizer's step count says which
            // parameters belong to it, so a crash between the two writes is detected below.
            let bytes: Vec<u8> = params[0]
                .data()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            sgdlab::io::write_atomic(&dir.join(format!("w-{}.bin", opt.steps())), &bytes)
                .map_err(|e| sgdlab::Error::Unsupported(e.to_string()))?;
            opt.save(&dir.join("optimizer.safetensors"))?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = args.as_slice()
        && flag == "--crash"
    {
        // The child: trains, checkpointing, and dies at step 60.
        let (mut params, mut opt) = fresh()?;
        train(Some(Path::new(dir)), &mut params, &mut opt, STEPS, Some(60))?;
        unreachable!("the child aborts at step 60");
    }

    let dir = std::env::temp_dir().join(format!("sgdlab-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--crash")
        .arg(&dir)
        .status()?;
    assert!(!status.success(), "the child was to be killed");

    // Resume: the optimizer's step count names the parameters saved with it.
    let mut opt = Optimizer::<f64>::load(&dir.join("optimizer.safetensors"))?;
    let bytes = std::fs::read(dir.join(format!("w-{}.bin", opt.steps())))?;
    let w: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect();
    println!(
        "killed at step 60; resuming from the checkpoint of step {}",
        opt.steps()
    );
    assert_eq!(opt.steps(), 50);
    let mut params = vec![Tensor::vector("w", w)];
    train(None, &mut params, &mut opt, STEPS, None)?;

    let (mut straight, mut reference) = fresh()?;
    train(None, &mut straight, &mut reference, STEPS, None)?;
    println!(
        "resumed: {:?}\nstraight: {:?}",
        params[0].data(),
        straight[0].data()
    );
    assert_eq!(params, straight, "bit for bit");
    assert_eq!(opt, reference);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
