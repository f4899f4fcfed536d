//! An MLP on the bundled digits with the training loop in the caller's hands: AdamW with two
//! parameter groups (no weight decay for biases), a warm-up + cosine schedule, global gradient
//! clipping, and gradient accumulation over 4 micro-batches per step.
//!
//! ```sh
//! cargo run --release -p sgdlab --example mlp_groups
//! ```

use rand::SeedableRng;
use rand::seq::SliceRandom;
use sgdlab::data::{digits, stratified_split};
use sgdlab::model::{LossUnit, Network, Workspace};
use sgdlab::optim::{GroupSpec, Optimizer, Schedule, StepInfo, Tensor};

fn main() -> Result<(), sgdlab::Error> {
    let split = stratified_split(&digits()?, 0.2, 0)?;
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let labels = |t: Option<&[f64]>| {
        t.unwrap_or(&[])
            .iter()
            .map(|&y| y as usize)
            .collect::<Vec<_>>()
    };
    let (x_train, y_train) = (
        to_f32(split.train.features()),
        labels(split.train.targets()),
    );
    let (x_test, y_test) = (to_f32(split.test.features()), labels(split.test.targets()));
    let d = split.train.dim();

    let net = Network::new(d, &[32], split.classes, LossUnit::Nats)?;
    let mut params: Vec<Tensor<f32>> = net.init(0);
    let mut grads: Vec<Tensor<f32>> = params.iter().map(Tensor::zeros_like).collect();
    let mut micro: Vec<Tensor<f32>> = params.iter().map(Tensor::zeros_like).collect();

    let (micro_batch, accumulate, epochs) = (16, 4, 8);
    let steps_per_epoch = y_train.len().div_ceil(micro_batch * accumulate) as u64;
    let total = steps_per_epoch * epochs;
    let groups: Vec<GroupSpec> = vec!["*.bias:weight_decay=0".parse()?];
    let mut opt = Optimizer::<f32>::with_groups(
        "adamw:lr=0.01,weight_decay=0.05,clip_norm=1".parse()?,
        groups,
    )?;
    opt.set_schedule(Schedule::warmup_cosine(total / 10, total - total / 10, 0.0))?;

    let mut ws = Workspace::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut order: Vec<usize> = (0..y_train.len()).collect();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        for step in order.chunks(micro_batch * accumulate) {
            grads.iter_mut().for_each(|g| g.data_mut().fill(0.0));
            let parts = step.chunks(micro_batch);
            let k = parts.len() as u32;
            for part in parts {
                let xb: Vec<f32> = part
                    .iter()
                    .flat_map(|&i| x_train[i * d..(i + 1) * d].to_vec())
                    .collect();
                let yb: Vec<usize> = part.iter().map(|&i| y_train[i]).collect();
                let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
                let mut g: Vec<&mut [f32]> = micro.iter_mut().map(|t| t.data_mut()).collect();
                net.loss_grad(&p, &xb, &yb, &mut g, &mut ws);
                // Sum the micro-batches' gradients; the step takes their mean.
                for (acc, m) in grads.iter_mut().zip(&micro) {
                    acc.data_mut()
                        .iter_mut()
                        .zip(m.data())
                        .for_each(|(a, b)| *a += b);
                }
            }
            opt.step(
                &mut params,
                &grads,
                &StepInfo {
                    micro_batches: k,
                    ..StepInfo::default()
                },
            )?;
        }
        let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
        let (loss, accuracy) = net.evaluate(&p, &x_test, &y_test, &mut ws);
        println!(
            "epoch {}: test loss {loss:.4}, accuracy {:.2}%, lr {:.5}",
            epoch + 1,
            100.0 * accuracy,
            opt.current_lr()
        );
    }
    let p: Vec<&[f32]> = params.iter().map(|t| t.data()).collect();
    let (_, accuracy) = net.evaluate(&p, &x_test, &y_test, &mut ws);
    assert!(accuracy > 0.93, "test accuracy {accuracy}");
    assert_eq!(
        (opt.group_of(0), opt.group_of(1)),
        (Some(0), Some(1)),
        "weights, then biases"
    );
    Ok(())
}
