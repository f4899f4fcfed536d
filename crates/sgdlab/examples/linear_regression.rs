//! Linear regression from scratch on the caller's own `Vec`s: the gradient by hand, Adam
//! stepping the vectors in place through borrowed views, and a warm-up + cosine schedule
//! attached to the optimizer.
//!
//! ```sh
//! cargo run --release -p sgdlab --example linear_regression
//! ```

use rand::{RngExt, SeedableRng};
use sgdlab::optim::{GradRef, Optimizer, ParamMut, Schedule, StepInfo};

fn main() -> Result<(), sgdlab::Error> {
    // y = 3 x₀ − 2 x₁ + 0.5 + noise.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 1000;
    let xs: Vec<[f64; 2]> = (0..n)
        .map(|_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)])
        .collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|x| 3.0 * x[0] - 2.0 * x[1] + 0.5 + 0.01 * rng.random_range(-1.0..1.0))
        .collect();

    // The model's parameters live in the caller's vectors.
    let (mut w, mut b) = (vec![0.0f64; 2], vec![0.0f64]);
    let (mut gw, mut gb) = (vec![0.0f64; 2], vec![0.0f64]);
    let mut opt = Optimizer::<f64>::from_spec("adam:lr=0.1")?;
    let steps = 300;
    opt.set_schedule(Schedule::warmup_cosine(20, steps - 20, 0.01))?;

    for step in 0..steps {
        // Full-batch gradient of the mean squared error ½(w·x + b − y)².
        gw.fill(0.0);
        gb.fill(0.0);
        let mut loss = 0.0;
        for (x, y) in xs.iter().zip(&ys) {
            let r = w[0] * x[0] + w[1] * x[1] + b[0] - y;
            loss += 0.5 * r * r / n as f64;
            gw[0] += r * x[0] / n as f64;
            gw[1] += r * x[1] / n as f64;
            gb[0] += r / n as f64;
        }
        let report = opt.step_views(
            &mut [ParamMut::vector("w", &mut w), ParamMut::vector("b", &mut b)],
            &[GradRef::vector("w", &gw), GradRef::vector("b", &gb)],
            &StepInfo::with_loss(loss),
        )?;
        if step % 50 == 0 {
            println!("step {step:>3}  loss {loss:.6}  lr {:.4}", report.lr);
        }
    }
    println!("w = {w:?}, b = {b:?}");
    assert!((w[0] - 3.0).abs() < 1e-2 && (w[1] + 2.0).abs() < 1e-2 && (b[0] - 0.5).abs() < 1e-2);
    Ok(())
}
