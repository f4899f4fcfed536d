//! Parameter groups and an attached schedule against PyTorch: `torch.optim.AdamW` with two
//! param groups (no weight decay for biases) under `SequentialLR(LinearLR, CosineAnnealingLR)`,
//! recorded in float64 by `tests/data/reference/record_groups.py`. Also: the schedule's
//! position survives a checkpoint taken mid-run (resume = uninterrupted, bit for bit), which is
//! where `SequentialLR` state is easily lost.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use serde_json::Value;
use sgdlab_optim::{GroupSpec, Optimizer, StepInfo, Tensor};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference/torch-adamw-groups-sequentiallr.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub(crate) fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub(crate) fn setup(r: &Value) -> (Optimizer<f64>, Vec<Tensor<f64>>) {
    let groups: Vec<GroupSpec> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().parse().unwrap())
        .collect();
    let mut opt =
        Optimizer::<f64>::with_groups(r["optimizer"].as_str().unwrap().parse().unwrap(), groups)
            .unwrap();
    opt.set_schedule(r["schedule"].as_str().unwrap().parse().unwrap())
        .unwrap();
    let params = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            Tensor::new(t["name"].as_str().unwrap(), shape, floats(&t["init"])).unwrap()
        })
        .collect();
    (opt, params)
}

pub(crate) fn grads(r: &Value, step: usize, like: &[Tensor<f64>]) -> Vec<Tensor<f64>> {
    like.iter()
        .map(|p| {
            Tensor::new(
                p.name(),
                p.shape().to_vec(),
                floats(&r["grads"][step][p.name()]),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn adamw_with_a_no_decay_group_and_warmup_cosine_matches_pytorch() {
    let r = reference();
    let (mut opt, mut params) = setup(&r);
    let lrs = floats(&r["lrs"]);
    for (t, want_lr) in lrs.iter().enumerate() {
        let g = grads(&r, t, &params);
        let report = opt.step(&mut params, &g, &StepInfo::default()).unwrap();
        assert!(
            (report.lr - want_lr).abs() <= 1e-15 * want_lr,
            "step {t}: lr {} vs {want_lr}",
            report.lr
        );
        for p in &params {
            let want = floats(&r["expected"][t][p.name()]);
            for (a, e) in p.data().iter().zip(&want) {
                assert!(
                    (a - e).abs() <= 1e-10 * e.abs().max(1.0),
                    "step {t}, {}: {a} vs {e}",
                    p.name()
                );
            }
        }
    }
    assert_eq!(
        opt.group_of(1),
        Some(1),
        "fc1.bias is in the no-decay group"
    );
}

#[test]
fn a_mid_schedule_checkpoint_resumes_the_exact_lr_sequence() {
    let r = reference();
    let (mut straight, mut p) = setup(&r);
    let (mut first, mut q) = setup(&r);
    for t in 0..50 {
        let g = grads(&r, t, &p);
        straight.step(&mut p, &g, &StepInfo::default()).unwrap();
    }
    for t in 0..25 {
        let g = grads(&r, t, &q);
        first.step(&mut q, &g, &StepInfo::default()).unwrap();
    }
    let mut resumed = Optimizer::<f64>::from_bytes(&first.to_bytes().unwrap()).unwrap();
    assert_eq!(resumed.current_lr(), first.current_lr());
    for t in 25..50 {
        let g = grads(&r, t, &q);
        resumed.step(&mut q, &g, &StepInfo::default()).unwrap();
    }
    assert_eq!(p, q);
    assert_eq!(resumed, straight);
}
